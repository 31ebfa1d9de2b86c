"""``postoffice db``: a cluster's shared database — make its schema, bring it up to date, see
its version and its nodes (docs/cluster.md).

Untrusted input seen here: the command line and the configuration file (the operator's), and
what the database answers (shown as text; the password is never shown).

``init`` and ``migrate`` both apply the schema versions not applied yet, in one transaction
under an advisory lock (:mod:`postoffice.pg.migrate`): run twice, the second finds nothing to
do; run beside a starting node or another ``migrate``, one waits for the other, and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from postoffice.cli.common import CommandParser, Subparsers
from postoffice.errors import DatabaseError

if TYPE_CHECKING:
    from postoffice.pg.database import Database


def add_parser(subparsers: Subparsers) -> None:
    db = subparsers.add_parser(
        "db",
        help="the cluster's shared PostgreSQL database: schema and nodes",
        description="Make, update and inspect the PostgreSQL database a cluster of postoffice nodes"
        " shares (docs/cluster.md). The database is --database URL, else the configuration's"
        " [storage] database, else libpq's PG* environment variables.",
    )
    actions = db.add_subparsers(title="actions", metavar="ACTION", required=True)
    options = CommandParser(add_help=False)
    options.add_argument("--database", metavar="URL", help="postgresql://user:password@host:port/database")
    options.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file ([storage])")
    for name, helptext in (
        ("init", "make the schema in an empty database (nothing to do if it is made)"),
        ("migrate", "apply the schema versions this postoffice has and the database lacks"),
    ):
        action = actions.add_parser(
            name, help=helptext, description=helptext.capitalize() + ".", parents=[options]
        )
        action.set_defaults(handler=_run_migrate, action=name)
    status = actions.add_parser(
        "status",
        help="the schema's version, what is pending, and the cluster's nodes",
        description="Show the schema version, the versions not applied yet, and every node"
        " (name, version, started, last seen).",
        parents=[options],
    )
    status.set_defaults(handler=_run_status)
    forget = actions.add_parser(
        "forget",
        help="remove a node that left the cluster from the nodes list",
        description="Remove a node's row (a node still running writes it again).",
        parents=[options],
    )
    forget.add_argument("name", metavar="NAME")
    forget.set_defaults(handler=_run_forget)


def _url(args: argparse.Namespace) -> str:
    if args.database is not None:
        return str(args.database)
    if args.config is not None:
        from postoffice.config import load_config

        return load_config(args.config).storage.database or ""
    return ""  # libpq's PG* environment variables and defaults


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[Database]:
    """The database, reached (DatabaseError, one line, when it cannot be)."""
    from postoffice.pg.database import Database

    database = Database(_url(args), pool_size=1, name="postoffice db")
    try:
        database.open()
        yield database
    finally:
        database.close()


def _guarded(work: Callable[[Database], int], args: argparse.Namespace) -> int:
    """``work`` on the database; what the driver raises becomes one line."""
    import psycopg

    from postoffice.pg.database import one_line

    with _database(args) as database:
        try:
            return work(database)
        except psycopg.Error as error:
            raise DatabaseError(f"database {database.where}: {one_line(error)}", permanent=False) from None


def _run_migrate(args: argparse.Namespace) -> int:
    from postoffice.pg.migrate import migrate, status

    def work(database: Database) -> int:
        _say_if_locked(database)
        applied = migrate(database)
        version = status(database).version
        if not applied:
            print(f"database {database.where} is at schema version {version}: nothing to do")
            return 0
        done = ", ".join(f"{m.version} ({m.name})" for m in applied)
        print(f"database {database.where}: applied schema version {done}; now at version {version}")
        return 0

    return _guarded(work, args)


def _say_if_locked(database: Database) -> None:
    """One line when another node or command holds the migration lock: this one will wait."""
    from postoffice.pg.migrate import LOCK_KEY

    # A bigint advisory key shows in pg_locks as two 32-bit halves (PostgreSQL, pg_locks).
    high, low = LOCK_KEY >> 32, LOCK_KEY & 0xFFFF_FFFF
    with database.connection() as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = %s AND objid = %s AND objsubid = 1",
            (high, low),
        ).fetchone()
    if row and row[0]:
        print(
            f"postoffice: another node is migrating the database {database.where}; waiting for it",
            file=sys.stderr,
            flush=True,
        )


def _when(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _run_status(args: argparse.Namespace) -> int:
    from postoffice.pg.migrate import status
    from postoffice.pg.nodes import list_nodes, queue_size

    def work(database: Database) -> int:
        schema = status(database)
        print(f"database {database.where}")
        if not schema.applied:
            print("schema: none (an empty database: run postoffice db init)")
        else:
            newest = schema.applied[-1]
            print(f"schema version {schema.version} ({newest.name}, applied {_when(newest.at)})")
        pending = ", ".join(f"{m.version} ({m.name})" for m in schema.pending)
        print(f"pending: {pending} (postoffice db migrate applies them)" if pending else "pending: none")
        if not schema.applied:
            return 0
        with database.connection() as connection:
            nodes, queue = list_nodes(connection), queue_size(connection)
        if queue is not None:
            print(f"cluster queue: {queue} messages")
        print(f"nodes: {len(nodes)}" + ("" if nodes else " (none has started yet)"))
        for node in nodes:
            state = "up" if node.up else "GONE"
            print(
                f"  {node.name}  {state}  version {node.version}  started {_when(node.started)}"
                f"  last seen {_when(node.seen)} ({node.age:.0f}s ago)"
            )
        return 0

    return _guarded(work, args)


def _run_forget(args: argparse.Namespace) -> int:
    from postoffice.pg.nodes import forget

    def work(database: Database) -> int:
        with database.connection() as connection:
            if not forget(connection, args.name):
                raise DatabaseError(
                    f"database {database.where} has no node named {args.name!r}", permanent=True
                )
        print(f"node {args.name} removed from the nodes list")
        return 0

    return _guarded(work, args)
