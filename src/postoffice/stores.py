"""Which stores a server process runs on, from its configuration: the embedded ones in the data
directory, or a cluster's in the shared PostgreSQL database (``[storage] backend``).

Untrusted input seen here: none beyond the configuration (the database URL is checked by
:class:`~postoffice.pg.database.Database`).

The composition root asks here and gets the queue, the mailboxes and the accounts; nothing
else in a server knows which backend it runs on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from postoffice.accounts import Accounts
from postoffice.config import Config, maildir_directory_mode
from postoffice.delivery.direct import DirectReceiver, ResultHook
from postoffice.delivery.local import DeliveryHook
from postoffice.errors import PostofficeError
from postoffice.logins import LocalLogins, Logins
from postoffice.mailauth.dkim_keys import KeyDirectory, KeyStore
from postoffice.maildir.layout import make_mail_root
from postoffice.maildir.store import MaildirStore
from postoffice.net.pop3_maildrop import FileLocks, MaildropLocks
from postoffice.pg.database import Database
from postoffice.pg.migrate import migrate
from postoffice.pgstore.mailboxes import PgMailboxStore
from postoffice.pgstore.maildrop_locks import PgMaildropLocks
from postoffice.spool.files import FileSpool
from postoffice.storage import MailboxStore, Receiver

if TYPE_CHECKING:
    from postoffice.pgstore.queue import PgQueue
    from postoffice.pgstore.shared import SharedPeople


@dataclass
class Stores:
    """The stores of one server process; ``database`` is the cluster's, None when embedded.

    ``maildrop_locks``: POP3's (RFC 1939 §8), this node's files or the cluster's database.

    ``sweep_every``: with a queue shared by several nodes, how often the scheduler looks for
    work in it (Scheduler.sweep); None when the queue is this host's alone. ``keys`` (the DKIM
    keys) and ``logins`` (web sessions, failed logins) are the cluster's too when there is one;
    ``shared`` is then the watch thread that keeps them and the accounts current."""

    spool: FileSpool | PgQueue
    mailboxes: MailboxStore
    accounts: Accounts
    keys: KeyStore
    maildrop_locks: MaildropLocks
    database: Database | None = None
    sweep_every: float | None = None
    logins: Logins = field(default_factory=LocalLogins)
    shared: SharedPeople | None = None

    def direct(self, *, on_delivered: DeliveryHook, on_result: ResultHook) -> Receiver | None:
        """Direct delivery into these mailboxes (a message for one local mailbox is stored in it
        before the 250, the rest queued): the embedded spool's file becomes the Maildir copy
        (delivery/direct.py), a cluster's message goes into the database's mailbox in one
        transaction (delivery/direct_pg.py)."""
        if isinstance(self.spool, FileSpool) and isinstance(self.mailboxes, MaildirStore):
            return DirectReceiver(self.spool, self.mailboxes, on_delivered=on_delivered, on_result=on_result)
        if isinstance(self.mailboxes, PgMailboxStore) and not isinstance(self.spool, FileSpool):
            from postoffice.delivery.direct_pg import PgDirectReceiver  # psycopg: an extra

            return PgDirectReceiver(
                self.spool, self.mailboxes, on_delivered=on_delivered, on_result=on_result
            )
        return None

    def reload_accounts(self, config: Config) -> Accounts:
        """The accounts after a reload (SIGHUP): the file may be another; a cluster's stay."""
        if self.shared is None:
            self.accounts = open_accounts(config)
        return self.accounts

    async def aclose(self) -> None:
        """After the scheduler stopped: the queue lets go of its leases, then the threads and
        the database's connections."""
        await asyncio.to_thread(self.spool.close)
        if self.shared is not None:
            await asyncio.to_thread(self.shared.close)
        if self.database is not None:
            await self.database.aclose()

    @property
    def flushes(self) -> int:
        """Flush calls (fsync, syncfs) the embedded spool's and mailboxes' commits made; 0 in a
        cluster, whose database makes its own."""
        return self.spool.flushes if isinstance(self.spool, FileSpool) else 0


def open_stores(config: Config, *, clean_tmp: bool = True) -> Stores:
    """The stores ``config`` names, ready to use (a cluster's database reached and migrated)."""
    if config.clustered:
        return _cluster(config)
    make_mail_root(config.mail_dir, maildir_directory_mode(config.mail_file_mode))
    spool = FileSpool(config.spool_dir, clean_tmp=clean_tmp, group_commit=config.queue.group_commit)
    return Stores(
        spool=spool,
        # The spool's commits: a delivery and an accepted message of the same moment share a flush.
        mailboxes=MaildirStore.from_config(config, commit=spool.commit_file),
        accounts=open_accounts(config),
        keys=KeyDirectory(config.data_dir),
        maildrop_locks=FileLocks(config.data_dir / "pop3-locks"),
    )


def open_mailboxes(config: Config) -> MailboxStore:
    """The mailboxes alone, for a process that needs nothing else (``reindex``, the web side
    of several workers)."""
    if config.clustered:
        return PgMailboxStore(open_database(config))
    return MaildirStore.from_config(config)


def open_accounts(config: Config) -> Accounts:
    """The users and aliases ``config`` names (read again on reload)."""
    return Accounts(config.accounts_file)


def open_database(config: Config) -> Database:
    """The cluster's database, reached and at this postoffice's schema version."""
    storage = config.storage
    database = Database(
        storage.database or "", pool_size=storage.pool_size, name=f"postoffice {config.node_name}"
    )
    database.open()
    migrate(database)
    return database


def open_queue_admin(config: Config) -> FileSpool | PgQueue:
    """The queue as the ``queue`` command sees it: this host's spool, or the cluster's whole
    shared queue (holding no lease: it only looks, and acts as an operator)."""
    if not config.clustered:
        if not config.spool_dir.is_dir():
            raise PostofficeError(f"no queue in {config.data_dir} (no server has run there)")
        # clean_tmp=False: a running server may be receiving into tmp/ right now.
        return FileSpool(config.spool_dir, clean_tmp=False)
    from postoffice.pgstore.queue import PgQueue

    return PgQueue(open_database(config), config.data_dir / "queue-tmp", node=None)


def _cluster(config: Config) -> Stores:
    from postoffice.pgstore.queue import PgQueue
    from postoffice.pgstore.shared import open_shared

    database = open_database(config)
    # The pools' own warnings (each failed reconnect, each lost connection) would reach stderr
    # raw, many a second while the database is down; the stores say it in one line each.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    lease = config.storage.queue_lease
    # Received mail waits in <data-dir>/queue-tmp/ until its commit puts it into the database.
    queue = PgQueue(database, config.data_dir / "queue-tmp", node=config.node_name, lease_time=lease)
    queue.start_leases()
    # The accounts, DKIM keys, web sessions and failed logins, kept current by one watch thread.
    shared = open_shared(database)
    return Stores(
        spool=queue,
        mailboxes=PgMailboxStore(database),
        accounts=shared.accounts,
        keys=shared.keys,
        maildrop_locks=PgMaildropLocks(database),
        database=database,
        sweep_every=min(5.0, lease / 4),
        logins=shared.logins,
        shared=shared,
    )
