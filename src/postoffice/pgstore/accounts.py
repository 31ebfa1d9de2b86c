"""A cluster's users and aliases in the shared database, behind :class:`AccountsBackend`.

Untrusted input seen here: the rows of ``account_users`` and ``account_aliases`` (written by
:class:`~postoffice.accounts.Accounts` on some node, whose rules every address went through).
Hashes never leave this module but as :class:`~postoffice.accounts.UserRecord`, whose repr
hides them; a database failure is one line (AccountError) naming the database, never a hash.

Each node keeps the whole table in memory, as the embedded backend keeps the whole file: a
lookup at RCPT or AUTH is a dictionary access. It is read again when ``shared_versions``'
``accounts`` row moves: with a :class:`~postoffice.pgstore.watch.SharedWatch` (a server) the
watch thread notices and reloads, so lookups never wait for the database (only the first, if
the watch has not read the versions yet); without one (a command) every lookup asks for the
version first, one indexed read. A writer locks the version
row (writers take turns, as the file's writers take its lock), reads, applies the change,
writes what differs, bumps the version and notifies, all in one transaction.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from postoffice.accounts import AccountsData, UserRecord
from postoffice.errors import AccountError, DatabaseError
from postoffice.pg.database import Database, one_line
from postoffice.pgstore.watch import CHANGES, SharedWatch

NAME = "accounts"  # its row in shared_versions

_VERSION = "SELECT version FROM shared_versions WHERE name = %s"
_BUMP = "UPDATE shared_versions SET version = version + 1 WHERE name = %s RETURNING version"


class PgAccounts:
    """Users and aliases in the database; ``watch`` (a server's) keeps them current."""

    def __init__(self, database: Database, watch: SharedWatch | None = None) -> None:
        self.where = f"database {database.where}"
        self._database = database
        self._watch = watch
        self._cache: tuple[int, AccountsData] | None = None
        self._reading = threading.Lock()  # one full read at a time
        if watch is not None:
            watch.on_change(NAME, self._changed)

    def __repr__(self) -> str:
        return f"PgAccounts({self.where!r})"

    def load(self) -> AccountsData:
        cached = self._cache
        if cached is not None and self._watch is not None and self._watch.version(NAME) is not None:
            return cached[1]  # the watch thread reloads it when the version moves
        return self._fetch()

    def _changed(self, version: int) -> None:
        cached = self._cache
        if cached is None or cached[0] < version:
            self._fetch()

    def _fetch(self) -> AccountsData:
        """The data of the current version: read again only if the version moved."""
        with self._reading, _failures(self.where):
            with self._database.connection() as conn:
                version = _one(conn.execute(_VERSION, (NAME,)).fetchone())
                cached = self._cache
                if cached is not None and cached[0] == version:
                    return cached[1]
                # Version first, then the rows: a write committed between the two leaves newer
                # rows under an older version, which is read again next time (never the reverse).
                data = _read(conn)
            self._cache = (version, data)
            return data

    def update(self, change: Callable[[AccountsData], AccountsData]) -> None:
        with _failures(self.where), self._database.connection() as conn, conn.transaction():
            conn.execute(_VERSION + " FOR UPDATE", (NAME,))  # writers take turns
            current = _read(conn)
            new = change(current)  # an AccountError here rolls the transaction back
            if new is current:
                return
            _write(conn, current, new)
            version = _one(conn.execute(_BUMP, (NAME,)).fetchone())
            conn.execute("SELECT pg_notify(%s, %s)", (CHANGES, NAME))
        self._cache = (version, new)


@contextlib.contextmanager
def _failures(where: str) -> Iterator[None]:
    """A database failure as one AccountError line (a 454 at AUTH, a line from a command)."""
    try:
        yield
    except (psycopg.Error, DatabaseError) as error:
        raise AccountError(f"accounts in {where}: {one_line(error)}") from None


def _one(row: tuple[Any, ...] | None) -> int:
    if row is None:
        raise AccountError("the accounts schema is missing its version row (postoffice db migrate)")
    return int(row[0])


def _read(conn: psycopg.Connection[Any]) -> AccountsData:
    users = {
        address: UserRecord(password, admin)
        for address, password, admin in conn.execute("SELECT address, password, admin FROM account_users")
    }
    aliases = {
        alias: tuple(targets) for alias, targets in conn.execute("SELECT alias, targets FROM account_aliases")
    }
    return AccountsData(users, aliases)


def _write(conn: psycopg.Connection[Any], old: AccountsData, new: AccountsData) -> None:
    """Only what differs: a login's rehash rewrites one row, not the table."""
    with conn.cursor() as cursor:
        gone_users = [(name,) for name in old.users if name not in new.users]
        cursor.executemany("DELETE FROM account_users WHERE address = %s", gone_users)
        changed_users = [
            (name, user.password, user.admin)
            for name, user in new.users.items()
            if old.users.get(name) != user
        ]
        cursor.executemany(
            "INSERT INTO account_users (address, password, admin) VALUES (%s, %s, %s)"
            " ON CONFLICT (address) DO UPDATE SET password = excluded.password, admin = excluded.admin",
            changed_users,
        )
        gone_aliases = [(name,) for name in old.aliases if name not in new.aliases]
        cursor.executemany("DELETE FROM account_aliases WHERE alias = %s", gone_aliases)
        changed_aliases = [
            (name, list(targets)) for name, targets in new.aliases.items() if old.aliases.get(name) != targets
        ]
        cursor.executemany(
            "INSERT INTO account_aliases (alias, targets) VALUES (%s, %s)"
            " ON CONFLICT (alias) DO UPDATE SET targets = excluded.targets",
            changed_aliases,
        )
