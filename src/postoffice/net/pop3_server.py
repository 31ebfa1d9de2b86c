"""The POP3 listeners (RFC 1939): accept connections, enforce connection limits, shut down.

Untrusted input seen here: connection attempts (peer addresses). The limits are the SMTP
listeners' (``[limits] connections`` and ``connections_per_client``, trusted networks exempt),
counted for POP3 sessions apart: over one, the client hears ``-ERR [SYS/TEMP]`` and is closed.

Kinds: ``pop3`` offers STLS (RFC 2595, port 110) when a certificate is loaded; ``pop3s`` is
TLS from the first byte (RFC 8314 §3.3, port 995). Login only inside TLS, except from loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Sequence

from postoffice.config import Limits, Listener
from postoffice.errors import ConfigError, ListenError
from postoffice.net.listeners import Security
from postoffice.net.pop3_maildrop import MaildropLocks
from postoffice.net.pop3_session import Pop3Services, Pop3Session
from postoffice.net.server import BoundAddress, BoundSocket
from postoffice.net.tls import SHUTDOWN_TIMEOUT
from postoffice.pop3.server import Pop3Settings
from postoffice.storage import MailboxStore

log = logging.getLogger("postoffice.pop3")

# RFC 1939 §3: "an inactivity autologout timer ... of at least 10 minutes".
IDLE_TIMEOUT = 600.0


class Pop3Server:
    """Every POP3 listener of the process and the sessions they carry."""

    def __init__(
        self,
        *,
        hostname: str,
        listeners: tuple[Listener, ...],
        security: Security,
        store: MailboxStore,
        locks: MaildropLocks,
        limits: Limits,
        capture: bool,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._listeners = listeners
        self._security = security
        self._limits = limits
        tls = security.tls is not None
        self._services = {
            kind: Pop3Services(
                settings=Pop3Settings(hostname=hostname, tls=tls, tls_active=kind == "pop3s"),
                security=security,
                store=store,
                locks=locks,
                capture=capture,
                idle_timeout=idle_timeout,
                admit=self._admit,
                on_closed=self._forget,
            )
            for kind in ("pop3", "pop3s")
        }
        self._servers: list[asyncio.Server] = []
        self.sessions: set[Pop3Session] = set()
        self._per_client: Counter[str] = Counter()
        self.bound: list[BoundAddress] = []

    async def start(self, *, sockets: Sequence[BoundSocket] | None = None) -> list[BoundAddress]:
        """Listen and serve every POP3 listener; ListenError if one cannot listen. ``sockets``:
        bound already (before root was given up), listened on instead of binding."""
        bound: Sequence[tuple[Listener, socket.socket | None]] = (
            [(listener, None) for listener in self._listeners] if sockets is None else sockets
        )
        for listener, sock in bound:
            server = await self._listen(listener, sock)
            self._servers.append(server)
            for listening in server.sockets:
                host, port = listening.getsockname()[:2]
                self.bound.append(BoundAddress(listener.kind, host, port))
        return self.bound

    async def _listen(self, listener: Listener, sock: socket.socket | None) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        context = None
        if listener.kind == "pop3s":
            if self._security.tls is None:
                raise ConfigError("implicit TLS needs a certificate", key="listen.pop3s")
            context = self._security.tls.context
        services = self._services[listener.kind]
        shutdown_timeout = SHUTDOWN_TIMEOUT if context is not None else None
        if sock is not None:
            return await loop.create_server(
                lambda: Pop3Session(services), sock=sock, ssl=context, ssl_shutdown_timeout=shutdown_timeout
            )
        try:
            return await loop.create_server(
                lambda: Pop3Session(services),
                listener.host,
                listener.port,
                reuse_address=True,
                family=socket.AF_UNSPEC,
                ssl=context,
                ssl_shutdown_timeout=shutdown_timeout,
            )
        except OSError as exc:
            raise ListenError.from_os_error(listener.kind, listener.host, listener.port, exc) from None

    def _admit(self, session: Pop3Session) -> bool:
        limits = self._limits
        if len(self.sessions) >= limits.connections:
            log.warning("session=%s event=refused reason=connections client=%s", session.id, session.peer)
            return False
        trusted = limits.is_trusted(session.peer)
        if self._per_client[session.peer] >= limits.connections_per_client and not trusted:
            log.warning("session=%s event=refused reason=per-client client=%s", session.id, session.peer)
            return False
        self.sessions.add(session)
        self._per_client[session.peer] += 1
        return True

    def _forget(self, session: Pop3Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self._per_client[session.peer] -= 1
            if self._per_client[session.peer] <= 0:
                del self._per_client[session.peer]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let commands in progress finish, then close every session (none
        enters UPDATE: RFC 1939 §6 applies deletions only at the client's QUIT)."""
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        while any(session.busy for session in self.sessions) and loop.time() < end:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.close_with_goodbye()
        while self.sessions and loop.time() < end:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.abort()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=max(0.0, end - loop.time()))
