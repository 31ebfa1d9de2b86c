"""Open SMTP sessions to remote servers, and the cache that keeps idle ones for the next message.

Untrusted input seen here: none is read; a session holds a client connected to a remote server
(:mod:`postoffice.client.connection` reads what it sends), and this module only asks whether
it is still connected and which extensions it offered.

After Postfix's connection cache: a connection is kept for a short while after a transaction
(``smtp_connection_cache_time_limit`` 2 s) and reused for the next message to the same
destination, but not once it is older than ``smtp_connection_reuse_time_limit`` (300 s).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from postoffice.client.connection import SmtpClient
from postoffice.delivery.dns import Endpoint

# Postfix smtp_connection_cache_time_limit = 2s: how long an idle connection is kept.
IDLE_TIMEOUT = 2.0
# Postfix smtp_connection_reuse_time_limit = 300s: a connection is not reused after this.
REUSE_TIME_LIMIT = 300.0
# QUIT is a courtesy; a server that does not answer within this is simply disconnected.
QUIT_TIMEOUT = 5.0
# A connection idle for longer is checked with RSET before it is reused (Postfix's "RSET
# probe"); one used again sooner goes straight to MAIL. The probe finds a connection that died
# silently while idle before MAIL could wait its full timeout for it; within a second of its
# last reply that is not to be expected, and a connection that did die (or a server that says
# 421) fails at MAIL, which RFC 5321 §5.1 lets the client retry elsewhere: on a new connection.
# Skipping it saves a round trip per message when a connection carries one message after
# another.
PROBE_AFTER_IDLE = 1.0


@dataclass(slots=True)
class Session:
    """An open, greeted (and maybe encrypted, authenticated) connection to one endpoint."""

    client: SmtpClient
    endpoint: Endpoint
    created: float
    idle_timer: asyncio.TimerHandle | None = None
    local: str = ""  # our address on the connection (a TLS report's sending-mta-ip)
    idle_since: float = 0.0  # time.monotonic() when it was last put in the cache

    def idle_for(self) -> float:
        """Seconds since the session went into the cache."""
        return time.monotonic() - self.idle_since

    @property
    def remote_mta(self) -> str:
        return self.endpoint.host

    def offers(self, keyword: str) -> bool:
        return keyword in self.client.extensions


class SessionCache:
    """Idle connections by destination, kept for ``idle`` seconds (Postfix's connection cache)."""

    def __init__(self, idle: float, reuse_time_limit: float) -> None:
        self._idle_time = idle
        self._reuse_time_limit = reuse_time_limit
        self._idle: dict[str, list[Session]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, destination: str) -> Session | None:
        sessions = self._idle.get(destination)
        while sessions:
            session = sessions.pop()
            if session.idle_timer is not None:
                session.idle_timer.cancel()
                session.idle_timer = None
            if not sessions:
                del self._idle[destination]
            if session.client.is_connected and time.monotonic() - session.created < self._reuse_time_limit:
                return session
            self.close(session)
            sessions = self._idle.get(destination)
        return None

    def put(self, destination: str, session: Session) -> None:
        if not session.client.is_connected or time.monotonic() - session.created >= self._reuse_time_limit:
            self.close(session)
            return
        session.idle_since = time.monotonic()
        self._idle.setdefault(destination, []).append(session)
        session.idle_timer = asyncio.get_running_loop().call_later(
            self._idle_time, self._expire, destination, session
        )

    def _expire(self, destination: str, session: Session) -> None:
        sessions = self._idle.get(destination, [])
        if session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._idle[destination]
        session.idle_timer = None
        self.close(session)

    def close(self, session: Session) -> None:
        """QUIT politely in the background (RFC 5321 §4.1.1.10), then drop the connection."""
        if not session.client.is_connected:
            session.client.close()
            return
        task = asyncio.create_task(session.client.quit(timeout=QUIT_TIMEOUT))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self) -> None:
        for destination in list(self._idle):
            for session in self._idle.pop(destination):
                if session.idle_timer is not None:
                    session.idle_timer.cancel()
                self.close(session)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def idle_count(self) -> int:
        return sum(len(sessions) for sessions in self._idle.values())
