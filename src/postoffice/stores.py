"""Which stores a server process runs on, from its configuration: the embedded ones in the data
directory, or a cluster's in the shared PostgreSQL database (``[storage] backend``).

Untrusted input seen here: none beyond the configuration (the database URL is checked by
:class:`~postoffice.pg.database.Database`).

The composition root asks here and gets the queue, the mailboxes and the accounts; nothing
else in a server knows which backend it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass

from postoffice.accounts import Accounts
from postoffice.config import Config, maildir_directory_mode
from postoffice.errors import DatabaseError
from postoffice.maildir.layout import make_mail_root
from postoffice.maildir.store import MaildirStore
from postoffice.pg.database import Database
from postoffice.pg.migrate import migrate
from postoffice.pgstore.mailboxes import PgMailboxStore
from postoffice.spool.files import FileSpool
from postoffice.storage import MailboxStore


@dataclass
class Stores:
    """The stores of one server process; ``database`` is the cluster's, None when embedded."""

    spool: FileSpool
    mailboxes: MailboxStore
    accounts: Accounts
    database: Database | None = None


def open_stores(config: Config, *, clean_tmp: bool = True) -> Stores:
    """The stores ``config`` names, ready to use (a cluster's database reached and migrated)."""
    if config.clustered:
        return _cluster(config)
    make_mail_root(config.mail_dir, maildir_directory_mode(config.mail_file_mode))
    return Stores(
        spool=FileSpool(config.spool_dir, clean_tmp=clean_tmp),
        mailboxes=MaildirStore.from_config(config),
        accounts=open_accounts(config),
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


def _cluster(config: Config) -> Stores:
    database = open_database(config)
    mailboxes = PgMailboxStore(database)  # noqa: F841 - with the queue and the accounts, next
    database.close()
    raise DatabaseError(
        f"database {database.where}: the postgresql backend's stores are not built yet", permanent=True
    )
