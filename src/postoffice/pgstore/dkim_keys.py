"""A cluster's DKIM signing keys in the shared database, behind
:class:`~postoffice.mailauth.dkim_keys.KeyStore`: every node signs with the same keys, and
``postoffice dkim generate`` run anywhere makes one for all of them.

Untrusted input seen here: the rows of ``dkim_keys`` (PEM, parsed and checked as a key file
is: a row that is not a usable key is skipped with a line, as a bad file is).

The private keys sit in the database as PEM, as they sit in ``<data-dir>/dkim`` as files:
whoever can read the database can sign as the domain, as whoever can read the data directory
could. Keep the database's access (and TLS to it) as tight as the data directory's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import psycopg

from postoffice.errors import DatabaseError, DkimError
from postoffice.mailauth.dkim_keys import DkimKey, KeyRing, check_domain, check_selector, load_private_key
from postoffice.pg.database import Database, one_line
from postoffice.pgstore.watch import CHANGES, SharedWatch

NAME = "dkim_keys"  # its row in shared_versions
_VERSION = "SELECT version FROM shared_versions WHERE name = %s"
_BUMP = "UPDATE shared_versions SET version = version + 1 WHERE name = %s"


class PgKeys:
    """The keys in the database; ``watch`` (a server's) makes :meth:`stamp` free."""

    def __init__(self, database: Database, watch: SharedWatch | None = None) -> None:
        self._database = database
        self._watch = watch
        self.where = f"the database {database.where}"

    def stamp(self) -> Hashable:
        known = self._watch.version(NAME) if self._watch is not None else None
        if known is not None:
            return known
        try:
            with self._database.connection() as conn:
                row = conn.execute(_VERSION, (NAME,)).fetchone()
        except (psycopg.Error, DatabaseError) as error:
            raise DkimError(f"keys in {self.where}: {one_line(error)}") from None
        return -1 if row is None else int(row[0])

    def ring(self) -> KeyRing:
        try:
            with self._database.connection() as conn:
                rows = conn.execute(
                    "SELECT domain, selector, private_key, signing FROM dkim_keys ORDER BY domain, selector"
                ).fetchall()
        except (psycopg.Error, DatabaseError) as error:
            raise DkimError(f"keys in {self.where}: {one_line(error)}") from None
        keys: list[DkimKey] = []
        problems: list[str] = []
        for domain, selector, pem, signing in rows:
            name = f"{selector}._domainkey.{domain} in {self.where}"
            try:
                keys.append(DkimKey(domain, selector, None, signing, load_private_key(bytes(pem), name)))
            except DkimError as exc:
                problems.append(f"{name}: skipped: {exc}")
        return KeyRing(tuple(keys), tuple(problems))

    def add(self, domain: str, selector: str, pem: bytes) -> None:
        added = self._change(
            "INSERT INTO dkim_keys (domain, selector, private_key) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (check_domain(domain), check_selector(selector), pem),
        )
        if not added:
            raise DkimError(
                f"{domain} already has a key {selector} in {self.where}: choose another --selector"
            )

    def retire(self, domain: str, selector: str) -> str:
        found = self._change(
            "UPDATE dkim_keys SET signing = false WHERE domain = %s AND selector = %s",
            (check_domain(domain), check_selector(selector)),
        )
        if not found:
            raise DkimError(f"no key {selector} of {domain} in {self.where}")
        return self.where

    def _change(self, statement: str, values: tuple[Any, ...]) -> bool:
        """Run ``statement``; if it changed a row, bump the version and tell the nodes."""
        try:
            with self._database.connection() as conn, conn.transaction():
                if conn.execute(statement, values).rowcount == 0:
                    return False
                conn.execute(_BUMP, (NAME,))
                conn.execute("SELECT pg_notify(%s, %s)", (CHANGES, NAME))
        except (psycopg.Error, DatabaseError) as error:
            raise DkimError(f"keys in {self.where}: {one_line(error)}") from None
        return True
