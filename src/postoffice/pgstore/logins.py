"""A cluster's web sessions and failed logins in the shared database (:mod:`postoffice.logins`).

Untrusted input seen here: session tokens from cookies (only their SHA-256 is looked up: the
table alone lets nobody in) and throttle keys (client addresses, typed account names), cut to
:data:`MAX_KEY` characters before they are stored or sent.

Sessions: one indexed read per web request on the event loop's pool; the last use is written
at most once a :data:`TOUCH_EVERY` (the idle timeout is hours), and expired rows go at logins.
Failed logins: written by a worker thread (a throttle never waits for the database), announced
on ``postoffice_failures`` to every node's watch, and kept for the window so a node that starts
knows them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg

from postoffice.errors import DatabaseError
from postoffice.logins import FAIL, FailureListener, SessionRecord
from postoffice.pg.database import Database, one_line
from postoffice.pgstore.watch import FAILURES, SharedWatch

log = logging.getLogger("postoffice.cluster")

MAX_KEY = 320  # an address is at most 254 octets (RFC 5321 §4.5.3.1.3, with RFC 3696 errata)
TOUCH_EVERY = 60.0
# Expired sessions are deleted at every this-many-th login (a cheap indexed delete).
PURGE_EVERY = 50
# The longest a session lives (web.auth's SESSION_LIFETIME is less): older rows are purged.
SESSION_MAX_AGE = 8 * 24 * 3600.0


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class PgSessions:
    """Web sessions in ``web_sessions``, shared by every node. While the database cannot be
    reached a session is not found (the request is refused, never let in) and a login fails
    with DatabaseError; each is one line in the log."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._puts = 0

    async def get(self, token: str) -> SessionRecord | None:
        try:
            async with self._database.aconnection() as conn:
                cursor = await conn.execute(
                    "SELECT address, csrf_token, created, last_used FROM web_sessions WHERE token_hash = %s",
                    (_digest(token),),
                )
                row = await cursor.fetchone()
        except psycopg.Error as error:
            log.warning("event=session-not-read database=%s reason=%r", self._database.where, one_line(error))
            return None
        return None if row is None else SessionRecord(*row)

    async def put(self, token: str, record: SessionRecord) -> None:
        self._puts += 1
        purge = self._puts % PURGE_EVERY == 1
        await self._run(
            "INSERT INTO web_sessions (token_hash, address, csrf_token, created, last_used)"
            " VALUES (%s, %s, %s, %s, %s)",
            (_digest(token), record.address, record.csrf_token, record.created, record.last_used),
            raises=True,
        )
        if purge:
            await self._run(
                "DELETE FROM web_sessions WHERE created < %s", (record.created - SESSION_MAX_AGE,)
            )

    async def touch(self, token: str, now: float) -> None:
        await self._run(
            "UPDATE web_sessions SET last_used = %s WHERE token_hash = %s AND last_used < %s",
            (now, _digest(token), now - TOUCH_EVERY),
        )

    async def drop(self, token: str) -> None:
        await self._run("DELETE FROM web_sessions WHERE token_hash = %s", (_digest(token),))

    async def _run(self, statement: str, values: tuple[object, ...], *, raises: bool = False) -> None:
        try:
            async with self._database.aconnection() as conn:
                await conn.execute(statement.encode(), values)
        except psycopg.Error as error:
            line = f"web sessions in the database {self._database.where}: {one_line(error)}"
            if raises:
                raise DatabaseError(line, permanent=False) from None
            log.warning("event=session-not-written reason=%r", line)


class PgFailureFeed:
    """One throttle's failed logins, told to and heard from the other nodes."""

    def __init__(self, logins: PgLogins, kind: str, window: float) -> None:
        self._logins = logins
        self.kind = kind
        self.window = window
        self._writes = 0

    def publish(self, op: str, key: str) -> None:
        self._logins.writer.submit(self._write, op, key[:MAX_KEY])

    def subscribe(self, listener: FailureListener) -> None:
        node = self._logins.node
        self._logins.watch.on_failure(self.kind, _others(node, listener))

    def recent(self) -> list[tuple[str, float]]:
        try:
            with self._logins.database.connection() as conn:
                rows = conn.execute(
                    "SELECT key, extract(epoch FROM clock_timestamp() - at)::float8 FROM login_failures"
                    " WHERE kind = %s AND at > clock_timestamp() - make_interval(secs => %s) ORDER BY at",
                    (self.kind, self.window),
                ).fetchall()
        except (psycopg.Error, DatabaseError) as error:
            log.warning("event=failures-not-read kind=%s reason=%r", self.kind, one_line(error))
            return []
        return [(key, float(age)) for key, age in rows]

    def _write(self, op: str, key: str) -> None:
        """In the writer thread: keep it for nodes that start later, and tell those running."""
        self._writes += 1
        payload = json.dumps({"node": self._logins.node, "kind": self.kind, "op": op, "key": key})
        try:
            with self._logins.database.connection() as conn, conn.transaction():
                if op == FAIL:
                    conn.execute("INSERT INTO login_failures (kind, key) VALUES (%s, %s)", (self.kind, key))
                else:
                    conn.execute("DELETE FROM login_failures WHERE kind = %s AND key = %s", (self.kind, key))
                if self._writes % PURGE_EVERY == 1:
                    conn.execute(
                        "DELETE FROM login_failures WHERE kind = %s AND at < now() - make_interval(secs => %s)",
                        (self.kind, self.window),
                    )
                conn.execute("SELECT pg_notify(%s, %s)", (FAILURES, payload))
        except (psycopg.Error, DatabaseError) as error:
            # This node counted it; the others will not hear of this one. Said, not raised.
            log.warning("event=failure-not-shared kind=%s reason=%r", self.kind, one_line(error))


def _others(node: str, listener: FailureListener) -> Callable[[str, str, str], None]:
    """``listener`` for the reports of other nodes: this node applied its own already."""

    def heard(sender: str, op: str, key: str) -> None:
        if sender != node:
            listener(op, key)

    return heard


class PgLogins:
    """A cluster node's :class:`~postoffice.logins.Logins`: sessions and failures shared."""

    def __init__(self, database: Database, watch: SharedWatch) -> None:
        self.database = database
        self.watch = watch
        self.node = secrets.token_hex(8)  # this process, told apart from the others' reports
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="postoffice-failures")

    def sessions(self) -> PgSessions:
        return PgSessions(self.database)

    def failures(self, kind: str, window: float) -> PgFailureFeed:
        return PgFailureFeed(self, kind, window)

    def close(self) -> None:
        # Reports not written yet are dropped (counters, not mail): a database that is down
        # must not hold a stopping node for a pool timeout per report.
        self.writer.shutdown(wait=True, cancel_futures=True)
