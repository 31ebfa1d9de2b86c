"""``postoffice migrate-store``: move a server's accounts, mailboxes and queue to other storage
(an embedded data directory into a cluster's PostgreSQL database, or back).

Untrusted input seen here: the command line and the configuration, the operator's; what the
stores hold is copied by :mod:`postoffice.migration`.

The source is what ``serve`` would run on with the same ``--config``, ``--data-dir`` and
``--database``; ``--to`` names the target: a ``postgresql://`` URL or a data directory. Both
data directories are held with the server's own pid file while the run lasts, so a server
running on either is refused, and none can start meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from postoffice.cli.common import Subparsers, config_options, make_data_dir
from postoffice.config import Config, load_config
from postoffice.errors import PostofficeError
from postoffice.migration.run import Side, holdings, migrate
from postoffice.migration.tally import Tally
from postoffice.pg.database import describe
from postoffice.pg.nodes import GONE_AFTER, list_nodes
from postoffice.runtime import privileges
from postoffice.runtime.pidfile import PidFile
from postoffice.stores import open_database, open_stores

_URL_SCHEMES = ("postgresql://", "postgres://")


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "migrate-store",
        help="move the accounts, mailboxes and queue to a database or a data directory",
        description="Copy every user (with its password hash), alias, mailbox folder, message (bytes,"
        " flags, keywords, received time), subscription and queued message (envelope and delivery"
        " state) from the storage the server would use into a PostgreSQL database or another data"
        " directory. Stop the server first. Safe to run again after an interruption (--resume).",
        parents=[config_options()],
    )
    parser.add_argument(
        "--database", metavar="URL", help="the source is this PostgreSQL database (as serve --database)"
    )
    parser.add_argument(
        "--to", required=True, metavar="URL|DIR", help="the target: postgresql://... or a data directory"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on into a target that holds data already (a run that was interrupted); nothing is copied twice",
    )
    parser.set_defaults(handler=_run_migrate_store)


def _run_migrate_store(args: argparse.Namespace) -> int:
    source = load_config(args.config, data_dir=args.data_dir, database=args.database)
    privileges.become_configured_user(source)
    target = target_config(source, args.to)
    if _where(source) == _where(target):
        raise PostofficeError(f"the source and the target are both {_where(source)}")
    if not source.clustered and not source.data_dir.is_dir():
        raise PostofficeError(f"no data directory {source.data_dir} to migrate from")
    if not target.clustered:
        if not target.data_dir.parent.is_dir():
            raise PostofficeError(
                f"--to {target.data_dir}: {target.data_dir.parent} does not exist (create it first if the path is right)"
            )
        make_data_dir(target, flag=True)
    with contextlib.ExitStack() as stack:
        for config in (source, target):
            if config.clustered:
                _no_node_running(config)
            else:
                stack.enter_context(_held(config.data_dir))
        tally = asyncio.run(_migrate(source, target, resume=args.resume))
    print(tally.summary(), flush=True)
    return 0


async def _migrate(source: Config, target: Config, *, resume: bool) -> Tally:
    # One event loop for the whole run: a database's asynchronous pool (the queue's commits)
    # is made on it and must be closed on it.
    async with open_side(source) as from_side, open_side(target) as to_side:
        held = await asyncio.to_thread(holdings, to_side)
        if held and not resume:
            raise PostofficeError(
                f"{_where(target)} already holds {', '.join(held)}; give --resume to go on with an"
                " interrupted run into it (nothing is copied twice)"
            )
        print(f"migrating {_where(source)} -> {_where(target)}", flush=True)
        return await migrate(from_side, to_side, _progress)


def target_config(source: Config, to: str) -> Config:
    """The settings of the target ``--to`` names: ``source``'s, on a database or a data directory."""
    if to.startswith(_URL_SCHEMES):
        storage = dataclasses.replace(source.storage, backend="postgresql", database=to)
        return dataclasses.replace(source, storage=storage)
    storage = dataclasses.replace(source.storage, backend="embedded", database=None)
    return dataclasses.replace(source, storage=storage, data_dir=Path(to).expanduser().absolute())


def _where(config: Config) -> str:
    if config.clustered:
        return f"database {describe(config.storage.database or '')}"
    return f"data directory {config.data_dir.resolve()}"


def _progress(line: str) -> None:
    print(f"  {line}", flush=True)


@contextlib.contextmanager
def _held(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir``'s pid file: refused while a server runs there (one line), and no
    server starts there until the migration is done."""
    pid_file = PidFile(data_dir)
    pid_file.acquire()
    try:
        yield
    finally:
        pid_file.release()


def _no_node_running(config: Config) -> None:
    """Refuse a database that a node serves (its heartbeat in ``nodes`` is recent)."""
    database = open_database(config)
    try:
        with database.connection() as connection:
            running = [node for node in list_nodes(connection) if node.up]
    finally:
        database.close()
    if running:
        node = running[0]
        raise PostofficeError(
            f"node {node.name} is running on {_where(config)} (seen {node.age:.0f} s ago); stop every"
            f" node first (a stopped node's row is older than {GONE_AFTER:.0f} s)"
        )


@contextlib.asynccontextmanager
async def open_side(config: Config) -> AsyncIterator[Side]:
    """The stores ``config`` names, as one side of a migration; closed when done."""
    # clean_tmp=False: the source is read, not tidied; the target is new or our own earlier run.
    stores = await asyncio.to_thread(open_stores, config, clean_tmp=False)
    whole = None
    if stores.database is not None:
        from postoffice.pgstore.queue import PgQueue

        # A node's queue lists only what it holds a lease on; the operator's view lists all.
        whole = PgQueue(stores.database, config.data_dir / "queue-tmp", node=None)
    try:
        yield Side(stores.spool, stores.mailboxes, stores.accounts, stores.keys, whole)
    finally:
        if whole is not None:
            whole.close()
        # The queue lets go of its leases (the nodes take the messages up at once), then the
        # threads and connections go.
        await stores.aclose()
