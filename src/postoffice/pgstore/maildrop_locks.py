"""POP3's exclusive-access lock on a maildrop (RFC 1939 §8) for a whole cluster, in the
shared database: a second POP3 session for the same mailbox, on any node, hears
``-ERR [IN-USE]`` (RFC 2449 §8.1.1) as it does on one node.

Untrusted input seen here: the mailbox address a login resolved to, hashed into the lock's key
(never put into SQL text).

The lock is a session-level advisory lock (``pg_try_advisory_lock``) held on a connection of
its own for the POP3 session's life, outside the pools (a pooled connection goes back to the
pool still holding it). PostgreSQL lets it go when that connection ends however it ends: the
session's QUIT or close, the node's process dying (its socket closes), or the database
dropping the connection; keepalives make it let go of a node gone from the network too.
"""

from __future__ import annotations

import hashlib
from typing import Any

from postoffice.errors import DatabaseError
from postoffice.pg.database import Database, one_line

# Told apart from the other advisory keys (pg.migrate's): a prefix hashed with the mailbox.
_KEY_PREFIX = b"postoffice pop3 maildrop\0"
# The database's TCP keepalives for this session (PostgreSQL §19.3.1), so that it lets go of
# the lock of a node gone from the network after about idle + interval * count = 60 s rather
# than the system's two hours; ignored on a Unix socket, where none is needed. Then the lock.
_LOCK = """SELECT set_config('tcp_keepalives_idle', '30', false),
    set_config('tcp_keepalives_interval', '10', false),
    set_config('tcp_keepalives_count', '3', false),
    pg_try_advisory_lock(%s)"""


def lock_key(mailbox: str) -> int:
    """The advisory lock's bigint key for ``mailbox``: the first 8 bytes of a SHA-256."""
    digest = hashlib.sha256(_KEY_PREFIX + mailbox.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PgMaildropLock:
    """A held lock: its connection, whose end releases it."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def release(self) -> None:
        # Closing ends the database session, and with it every advisory lock it held.
        self._connection.close()


class PgMaildropLocks:
    """The maildrop locks of every node sharing ``database``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def acquire(self, mailbox: str) -> PgMaildropLock | None:
        import psycopg

        database = self._database
        connection = None
        try:
            connection = psycopg.connect(
                psycopg.conninfo.make_conninfo(database.url, connect_timeout=10),
                autocommit=True,
                application_name=f"{database.name} pop3",
            )
            row = connection.execute(_LOCK, (lock_key(mailbox),)).fetchone()
        except BaseException as error:
            if connection is not None:
                connection.close()
            if isinstance(error, psycopg.Error):
                reason = f"cannot lock the maildrop in {database.where}: {one_line(error)}"
                raise DatabaseError(reason, permanent=False) from None
            raise
        if row is None or not row[-1]:
            connection.close()
            return None
        return PgMaildropLock(connection)
