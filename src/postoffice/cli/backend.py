"""Where a command finds the accounts and the DKIM keys: the data directory's files, or, when
the configuration (or ``--database URL``) names the postgresql backend, the cluster's database,
so that ``postoffice user add`` on any node adds a user for every node.

Untrusted input seen here: ``--database`` (checked by :class:`~postoffice.pg.database.Database`:
a malformed URL or a refused login is one line and exit 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from postoffice.accounts import Accounts
from postoffice.cli.common import CommandParser
from postoffice.config import Config
from postoffice.mailauth.dkim_keys import KeyDirectory, KeyStore


def database_option() -> CommandParser:
    """``--database URL``: the cluster's database (it implies the postgresql backend)."""
    options = CommandParser(add_help=False)
    options.add_argument(
        "--database",
        metavar="URL",
        help="the cluster's PostgreSQL database (postgresql://...; implies [storage] backend ="
        ' "postgresql")',
    )
    return options


@contextlib.contextmanager
def accounts_of(config: Config) -> Iterator[Accounts]:
    """The accounts ``config`` names, for one command (the database closed after it)."""
    if not config.clustered:
        yield Accounts(config.accounts_file)
        return
    from postoffice.pgstore.accounts import PgAccounts
    from postoffice.stores import open_database

    database = open_database(config)
    try:
        yield Accounts(PgAccounts(database))
    finally:
        database.close()


@contextlib.contextmanager
def dkim_keys_of(config: Config) -> Iterator[KeyStore]:
    """Where ``config``'s DKIM keys are kept, for one command."""
    if not config.clustered:
        yield KeyDirectory(config.data_dir)
        return
    from postoffice.pgstore.dkim_keys import PgKeys
    from postoffice.stores import open_database

    database = open_database(config)
    try:
        yield PgKeys(database)
    finally:
        database.close()
