"""What a cluster node keeps of the people side: the accounts, the DKIM keys and the logins
(sessions, failed logins), all over one database and one watch thread.

Untrusted input seen here: none beyond what the modules it opens see.
"""

from __future__ import annotations

from dataclasses import dataclass

from postoffice.accounts import Accounts
from postoffice.pg.database import Database
from postoffice.pgstore.accounts import PgAccounts
from postoffice.pgstore.dkim_keys import PgKeys
from postoffice.pgstore.logins import PgLogins
from postoffice.pgstore.watch import SharedWatch


@dataclass
class SharedPeople:
    watch: SharedWatch
    accounts: Accounts
    keys: PgKeys
    logins: PgLogins

    def close(self) -> None:
        self.logins.close()
        self.watch.stop()


def open_shared(database: Database) -> SharedPeople:
    """The accounts, keys and logins of ``database``, with the watch started (it waits a few
    seconds at most for the first versions, then lookups read the database until it has them)."""
    watch = SharedWatch(database)
    watch.start()
    return SharedPeople(
        watch, Accounts(PgAccounts(database, watch)), PgKeys(database, watch), PgLogins(database, watch)
    )
