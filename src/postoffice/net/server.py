"""The SMTP listeners: accept connections, enforce connection limits, shut down gracefully.

Untrusted input seen here: connection attempts (peer addresses). Limits follow Postfix:
``connections`` in total and ``connections_per_client`` per address, trusted networks exempt
(``smtpd_client_event_limit_exceptions``). Over a limit the client gets ``421 4.7.0`` and the
connection is closed; the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from postoffice.config import Limits, Listener, ProxyProtocol
from postoffice.errors import ConfigError, ListenError
from postoffice.mailauth.dkim_signer import Signer
from postoffice.net.chaos import ChaosCheck
from postoffice.net.listeners import LOCAL_KIND, SUBMISSION_KINDS, Security, settings_for
from postoffice.net.local_socket import bind_local_socket, remove_local_socket
from postoffice.net.proxy_gate import ProxyGate
from postoffice.net.session import SessionObserver, SessionServices, SmtpSession
from postoffice.net.tls import SHUTDOWN_TIMEOUT
from postoffice.policy import Policy
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtp.server import ServerSettings
from postoffice.smtpd import Services
from postoffice.smtpd.chaos import ChaosRules
from postoffice.smtpd.checks.signing import DkimSigning
from postoffice.smtpd.stages import Check
from postoffice.smtpd.standard import standard_stages
from postoffice.spool.envelope import QueuedMessage
from postoffice.storage import Receiver

log = logging.getLogger("postoffice.net")

# A socket bound (not yet listening) to a listener's concrete address, by a process that could
# bind it (root, for port 25) for one that no longer could (postoffice.runtime.prebound).
BoundSocket = tuple[Listener, socket.socket]


@dataclass(frozen=True, slots=True)
class BoundAddress:
    """Where a listener actually listens (the port is known after binding port 0)."""

    kind: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port}"


class SmtpServer:
    """Every SMTP listener of the process and the sessions they carry."""

    def __init__(
        self,
        *,
        settings: ServerSettings,
        limits: Limits,
        policy: Policy,
        spool: Receiver,
        on_queued: Callable[[QueuedMessage], None],
        listeners: tuple[Listener, ...],
        observer: SessionObserver | None = None,
        security: Security | None = None,
        proxy: ProxyProtocol | None = None,
        signer: Signer | None = None,
        inbound: Check | None = None,
        local_socket: Path | None = None,
        chaos: ChaosRules | None = None,
    ) -> None:
        """``local_socket``: where the trusted local socket listens (net.local_socket); None:
        nowhere."""
        self._settings = settings
        self._policy = policy
        self._spool = spool
        self._on_queued = on_queued
        self._observer = observer
        self._security = security or Security()
        self._listeners = listeners
        self._limits = limits
        self._proxy = proxy or ProxyProtocol()
        # DKIM signing of authenticated users' mail, hashed off the event loop.
        self._signing = None if signer is None else DkimSigning(signer, asyncio.to_thread)
        self._inbound = inbound  # mail authentication on the listeners that are not for submission
        self._local_socket = local_socket
        self._owns_local_socket = False  # made it, so takes its name away at the end
        # Fault injection, where it is allowed (capture mode, or allow_chaos).
        self._chaos = ChaosCheck(chaos) if chaos is not None and chaos.enabled else None
        self._by_kind: dict[str, SessionServices] = {}
        self._servers: list[asyncio.Server] = []
        self.sessions: set[SmtpSession] = set()
        self._per_client: Counter[str] = Counter()
        self.bound: list[BoundAddress] = []

    async def start(
        self, *, reuse_port: bool = False, sockets: Sequence[BoundSocket] | None = None
    ) -> list[BoundAddress]:
        """Listen and serve; ``reuse_port`` lets several processes listen on one address
        (SO_REUSEPORT)."""
        bound = await self.bind(reuse_port=reuse_port, sockets=sockets)
        await self.serve()
        return bound

    async def serve(self) -> None:
        """Accept connections on the sockets :meth:`bind` opened."""
        for server in self._servers:
            await server.start_serving()

    async def bind(
        self,
        *,
        reuse_port: bool = False,
        sockets: Sequence[BoundSocket] | None = None,
        local: socket.socket | None = None,
    ) -> list[BoundAddress]:
        """Open every listener without accepting yet, so that a taken port (ListenError) is
        found before anything else starts; :meth:`serve` then accepts. ``sockets``: bound
        already (before root was given up), listened on instead of binding. ``local``: the
        local socket, bound by the parent of several workers (else bound here if configured)."""
        bound: Sequence[tuple[Listener, socket.socket | None]] = (
            [(listener, None) for listener in self._listeners] if sockets is None else sockets
        )
        for listener, sock in bound:
            server = await self._listen(listener, sock, reuse_port)
            self._servers.append(server)
            for listening in server.sockets:
                host, port = listening.getsockname()[:2]
                self.bound.append(BoundAddress(listener.kind, host, port))
        await self._listen_locally(local)
        return self.bound

    async def _listen_locally(self, sock: socket.socket | None) -> None:
        """The local socket for ``postoffice sendmail``; one that cannot be made is one log
        line, and sendmail uses the MX port as before."""
        path = self._local_socket
        if path is None:
            return
        if sock is None:
            try:
                sock = bind_local_socket(path)
            except OSError as exc:
                log.warning(
                    "event=local-socket-failed path=%s error=%r", path, exc.strerror or type(exc).__name__
                )
                return
            self._owns_local_socket = True
        server = await asyncio.get_running_loop().create_unix_server(
            self._factory_for(LOCAL_KIND), sock=sock, backlog=1024, start_serving=False
        )
        self._servers.append(server)

    async def _listen(
        self, listener: Listener, sock: socket.socket | None, reuse_port: bool
    ) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        security = self._security
        context = None
        if listener.kind == "smtps":
            if security.tls is None:
                raise ConfigError("implicit TLS needs a certificate", key="listen.smtps")
            # RFC 8314 §3: TLS from the first byte; sessions start once the handshake is done.
            context = security.tls.context
        factory = self._factory(listener)
        # A TLS close waits this long for the client's close_notify (RFC 8446 §6.1 does not ask
        # us to wait at all): a client that stops answering cannot keep its slot.
        shutdown_timeout = SHUTDOWN_TIMEOUT if context is not None else None
        if sock is not None:
            return await loop.create_server(
                factory,
                sock=sock,
                backlog=1024,
                ssl=context,
                ssl_shutdown_timeout=shutdown_timeout,
                start_serving=False,
            )
        try:
            return await loop.create_server(
                factory,
                listener.host,
                listener.port,
                reuse_address=True,
                reuse_port=reuse_port or None,
                backlog=1024,
                family=socket.AF_UNSPEC,
                ssl=context,
                ssl_shutdown_timeout=shutdown_timeout,
                start_serving=False,
            )
        except OSError as exc:
            # asyncio's text repeats the address as a tuple; say it the way the config does.
            raise ListenError.from_os_error(listener.kind, listener.host, listener.port, exc) from None

    def _listener_services(self, kind: str) -> SessionServices:
        """What a session on a ``kind`` listener offers (STARTTLS, AUTH, submission rules)."""
        services = self._by_kind.get(kind)
        if services is None:
            security = self._security
            settings = settings_for(kind, self._settings, security)
            stages = standard_stages(
                policy=self._policy,
                hostname=settings.hostname,
                junk_commands=self._limits.junk_commands,
                submission=kind in SUBMISSION_KINDS,
                authenticator=None if kind == LOCAL_KIND else security.login,
                signing=self._signing,
                inbound=None if kind == LOCAL_KIND else self._inbound,
                chaos=self._chaos,
            )
            on_queued = self._on_queued
            services = SessionServices(
                settings=settings,
                limits=self._limits,
                conversation=Services(
                    stages=stages,
                    store=self._spool,
                    on_queued=lambda result: on_queued(result.queued),
                    login=security.login,
                    tls=security.tls is not None,
                    observer=self._observer,
                    spawn=asyncio.ensure_future,
                ),
                admit=self._admit,
                on_closed=self._forget,
                security=security,
                local=kind == LOCAL_KIND,
            )
            self._by_kind[kind] = services
        return services

    def _factory(self, listener: Listener) -> Callable[[], asyncio.Protocol]:
        return self._factory_for(listener.kind)

    def _factory_for(self, kind: str) -> Callable[[], asyncio.Protocol]:
        # Services are looked up per connection, so reconfigure() applies to new sessions.
        if self._proxy.expects_header(kind):
            proxy = self._proxy
            return lambda: ProxyGate(
                SmtpSession(self._listener_services(kind)), proxy, self._limits.command_timeout
            )
        return lambda: SmtpSession(self._listener_services(kind))

    def reconfigure(self, *, settings: ServerSettings, limits: Limits, policy: Policy) -> None:
        """New settings, limits and policy for sessions that start from now on (SIGHUP)."""
        self._settings, self._limits, self._policy = settings, limits, policy
        self._by_kind.clear()

    def _admit(self, session: SmtpSession) -> Reply:
        limits = self._limits
        if len(self.sessions) >= limits.connections:
            log.warning("session=%s event=refused reason=connections client=%s", session.id, session.peer)
            return replies.TOO_MANY_CONNECTIONS
        # The local socket's clients are this machine's own programs, all with no address:
        # only the total limit applies to them.
        if (
            session.local is None
            and self._per_client[session.peer] >= limits.connections_per_client
            and not limits.is_trusted(session.peer)
        ):
            log.warning("session=%s event=refused reason=per-client client=%s", session.id, session.peer)
            return replies.TOO_MANY_CONNECTIONS_FROM_CLIENT
        self.sessions.add(session)
        self._per_client[session.peer] += 1
        return replies.greeting(self._settings.hostname)

    def _forget(self, session: SmtpSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self._per_client[session.peer] -= 1
            if self._per_client[session.peer] <= 0:
                del self._per_client[session.peer]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting and say 421 (RFC 5321 §3.8) to every session, within ``grace`` seconds.

        Idle sessions hear it at once; a transaction in progress may finish until shortly
        before the grace runs out, keeping the last :data:`SHUTDOWN_TIMEOUT` (at most half the
        grace) for the last 421s to leave. A connection still open at the end of the grace is
        dropped: none outlives the server, and a supervisor's SIGKILL after the grace
        (systemd's TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds) finds nothing to do.
        """
        for server in self._servers:
            server.close()
        if self._owns_local_socket and self._local_socket is not None:
            remove_local_socket(self._local_socket)
        goodbye = replies.shutting_down(self._settings.hostname)
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        last_call = end - min(SHUTDOWN_TIMEOUT, grace / 2)
        while True:
            self._say_goodbye(goodbye, idle_only=True)
            if not self._open_sessions() or loop.time() >= last_call:
                break
            await asyncio.sleep(0.05)
        self._say_goodbye(goodbye, idle_only=False)
        while self.sessions and loop.time() < end:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            log.info("session=%s event=dropped reason=shutdown client=%s", session.id, session.peer)
            session.abort()
        for server in self._servers:
            # Python 3.12's wait_closed also waits for connections that are no session yet (an
            # implicit TLS handshake in progress, until its own timeout): not past the grace.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=max(0.0, end - loop.time()))

    def _say_goodbye(self, goodbye: Reply, *, idle_only: bool) -> None:
        for session in list(self.sessions):
            if not session.closing and (session.idle or not idle_only):
                session.outcome = "shutdown"
                session.close_with(goodbye)

    def _open_sessions(self) -> bool:
        """Sessions that have not been told to go yet (closing ones are on their way)."""
        return any(not session.closing for session in self.sessions)
