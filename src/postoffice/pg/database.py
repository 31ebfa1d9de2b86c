"""Connections to the shared PostgreSQL database: two bounded pools, and one-line failures.

Untrusted input seen here: the URL the operator gives (``postgresql://…``, a ``key=value``
string, or nothing: then libpq's ``PG*`` environment variables and defaults) and the server's
error messages. The password is never written anywhere: :func:`describe` names a database by
host, port, database and user only.

Blocking callers (the storage seam's methods run in threads) take a connection from
:meth:`Database.connection`; code on the event loop (the SMTP commit, LISTEN) from
:meth:`Database.aconnection`, whose pool is made on the loop that first asks. Both are
psycopg 3 pools: bounded, reconnecting, and psycopg prepares a statement on the server once
it has run a few times on a connection (``prepare_threshold``), so hot queries are parsed and
planned once per connection. TLS to the database is what the URL asks for (``sslmode=…``,
``sslrootcert=…``), as with any libpq client.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from postoffice.errors import DatabaseError

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

# libpq error states after which trying again cannot help (PostgreSQL, Appendix A): the login
# was refused, or the database or role does not exist.
_PERMANENT_STATES = frozenset({"28000", "28P01", "3D000", "42704"})
_PERMANENT_WORDS = ("password authentication failed", "does not exist", "no password supplied", "role ")


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as error:  # the extra is not installed
        raise DatabaseError(
            f"the postgresql backend needs psycopg: pip install 'postoffice[postgresql]' ({error})",
            permanent=True,
        ) from None
    return psycopg


def describe(url: str) -> str:
    """``user@host:port/database`` of ``url`` (libpq's defaults filled in), never its password."""
    psycopg = _psycopg()
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise DatabaseError(f"the database URL is not valid: {one_line(error)}", permanent=True) from None
    # What the URL leaves out, libpq takes from the PG* environment variables (libpq, §34.15).
    for key, variable in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("dbname", "PGDATABASE"),
    ):
        info.setdefault(key, os.environ.get(variable) or None)
    host = str(info.get("host") or "the default socket")
    port = str(info.get("port") or "5432")
    user = str(info.get("user") or "the login user")
    return f"{user}@{host}:{port}/{info.get('dbname') or user}"


def one_line(error: BaseException) -> str:
    """The error's message on one line (libpq's are several, indented)."""
    return re.sub(r"\s+", " ", str(error)).strip() or type(error).__name__


def is_permanent(error: BaseException) -> bool:
    """Whether a failure to connect is one that waiting cannot cure (a refused login)."""
    state = getattr(error, "sqlstate", None)
    if state in _PERMANENT_STATES:
        return True
    text = str(error).lower()
    return any(words in text for words in _PERMANENT_WORDS)


# A pool retries a failed connect with a doubling delay (1, 2, 4, 8, 16 s ...) until
# reconnect_timeout, then lets the next request start afresh at 1 s. Its default (5 minutes)
# left a node failing for as long again as the database had been down; 5 s bounds that.
RECONNECT_WAIT = 5.0


class Database:
    """The cluster's database, by URL: :meth:`open` checks it can be reached, then pools."""

    def __init__(self, url: str = "", *, pool_size: int = 10, name: str = "postoffice") -> None:
        self.url = url
        self.pool_size = pool_size
        self.name = name
        self.where = describe(url)  # a malformed URL is a DatabaseError now, before anything starts
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._async_pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None

    def __repr__(self) -> str:
        return f"Database({self.where})"

    @property
    def _kwargs(self) -> dict[str, Any]:
        # autocommit: every statement outside `with connection.transaction()` commits alone.
        return {"application_name": self.name, "autocommit": True}

    def check(self, timeout: float = 10.0) -> None:
        """Connect once: DatabaseError (one line, ``permanent`` set) if that fails."""
        psycopg = _psycopg()
        try:
            psycopg.connect(self.url, connect_timeout=max(1, int(timeout)), **self._kwargs).close()
        except psycopg.Error as error:
            raise DatabaseError(
                f"cannot connect to the database {self.where}: {one_line(error)}",
                permanent=is_permanent(error),
            ) from None

    def open(self, timeout: float = 10.0) -> None:
        """:meth:`check`, then make the blocking pool (idempotent)."""
        if self._pool is not None:
            return
        self.check(timeout)
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs=self._kwargs,
            name=f"{self.name}-blocking",
            open=False,
            timeout=timeout,
            # A connection is tried before it is handed out: after the database restarted, a
            # caller gets a fresh connection rather than one the server already closed.
            check=ConnectionPool.check_connection,
            reconnect_timeout=RECONNECT_WAIT,
        )
        self._pool.open(wait=False)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for a blocking caller (opens the pool on first use)."""
        if self._pool is None:
            self.open()
        assert self._pool is not None
        with self._pool.connection() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def aconnection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for a caller on the event loop (the pool is made on first use)."""
        if self._async_pool is None:
            from psycopg_pool import AsyncConnectionPool

            pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                kwargs=self._kwargs,
                name=f"{self.name}-async",
                open=False,
                check=AsyncConnectionPool.check_connection,
                reconnect_timeout=RECONNECT_WAIT,
            )
            self._async_pool = pool
            await pool.open(wait=False)
        async with self._async_pool.connection() as connection:
            yield connection

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def aclose(self) -> None:
        if self._async_pool is not None:
            await self._async_pool.close()
            self._async_pool = None
        self.close()
