"""One SMTP session over TCP: the transport under a :class:`~postoffice.smtpd.Conversation`.

Untrusted input seen here: every byte from the client's socket, handed unread to the
conversation (the sans-I/O transaction layer, :mod:`postoffice.smtpd`), which decides
everything about it. This module owns only what needs the event loop: the transport, flow
control, timeouts, the TLS handshake and closing.

Events are handled synchronously inside ``data_received``; only what a command really waits
for (a commit's fsync, the password check of AUTH, a check's lookup) runs in a task, with
reading paused meanwhile, and so does the TLS handshake after STARTTLS. An idle session
therefore costs one protocol object and one timer, not a coroutine stack.

STARTTLS (RFC 3207 §4.2, CVE-2011-0411, CVE-2024-34083): once the 220 is queued the core has
dropped every plaintext octet it held, and reading stops before control returns to the event
loop; the next octet this session sees comes out of the TLS layer.

Closing: however a session ends on our side (QUIT, a 421 from a limit, the AUTH throttle, a
timeout, shutdown), its last reply is written and :meth:`SmtpSession._close_transport` closes the
connection exactly once: a TLS transport closed twice loses its TLS layer (asyncio's
``_SSLProtocolTransport`` then fails on every call), and with it the reply still buffered.

The session boundary: every entry point the event loop or the server calls (protocol callbacks,
timers, the tasks of commit, AUTH and STARTTLS, ``close_with``) runs under :func:`_guarded`.
Whatever escapes it is one log line (``event=internal-error``, no traceback) and the end of that
session alone; the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar, cast

from postoffice import metrics
from postoffice.config import Limits
from postoffice.net.listeners import Security, for_client
from postoffice.net.local_socket import peer_of
from postoffice.net.tls import SHUTDOWN_TIMEOUT
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtp.server import ServerSettings
from postoffice.smtp.state import State
from postoffice.smtpd import (
    NEED_DATA,
    START_TLS,
    Close,
    Conversation,
    LocalPeer,
    Observer,
    Services,
    Step,
    Wait,
)

log = logging.getLogger("postoffice.smtp")

# The transcript observer's interface, under the name net.transcript knows it by.
SessionObserver = Observer

_session_ids = itertools.count(1)
# Set in each worker of several (``serve --workers``), so that session IDs in the one log
# never repeat across processes.
_session_prefix = ""


def name_sessions(prefix: str) -> None:
    """Start every session ID made in this process from now on with ``prefix``."""
    global _session_prefix
    _session_prefix = prefix


@dataclass(frozen=True, slots=True)
class SessionServices:
    """What a session needs from the rest of the server (built per listener by net.server)."""

    settings: ServerSettings
    limits: Limits
    conversation: Services  # stages, spool, what is told of queued messages, AUTH, transcripts
    admit: Callable[[SmtpSession], Reply]  # the greeting, or 421 when over a connection limit
    on_closed: Callable[[SmtpSession], None]
    security: Security = field(default_factory=Security)
    local: bool = False  # the server's local socket (net.local_socket): the peer's credentials count


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(
    method: Callable[Concatenate[SmtpSession, _P], _R],
) -> Callable[Concatenate[SmtpSession, _P], _R | None]:
    """The session boundary: an exception escaping ``method`` ends this session, in one log line.

    Raised inside a protocol callback, it would reach asyncio's exception handler as a
    traceback and leave the connection (and its slot) in whatever state it was in.
    """

    @functools.wraps(method)
    def guarded(self: SmtpSession, /, *args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._fail(method.__name__, exc)
            return None

    return guarded


class SmtpSession(asyncio.Protocol):
    def __init__(self, services: SessionServices) -> None:
        self.services = services
        self.id = f"{_session_prefix}{next(_session_ids):06X}"
        self.peer = ""
        # The client's address as a trusted PROXY header states it (net.proxy_gate sets it
        # before connection_made); limits, logs and Received: then use it instead of the proxy's.
        self.proxied_peer: str | None = None
        # The process on the other end of the local socket (SO_PEERCRED); None over TCP.
        self.local: LocalPeer | None = None
        self.outcome = "disconnect"  # how the session ended, for metrics
        self.conversation: Conversation | None = None  # from connection_made on
        self._transport: asyncio.Transport | None = None
        self._busy = False  # a task (commit, AUTH, a check, the handshake) is running; events wait
        self._writing_paused = False  # the client is not reading our replies
        self._task: asyncio.Future[None] | None = None
        self._closing = False  # our side has closed (or aborted) the connection
        self._closed = False  # connection_lost: the session is over
        self._last_activity = 0.0
        self._in_data = False
        self._data_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._handshaking = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    @_guarded
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        services = self.services
        if services.local:
            self.local = local = peer_of(transport.get_extra_info("socket"))
            log.info("session=%s event=connect client=local %s", self.id, local)
        else:
            peer = transport.get_extra_info("peername")
            self.peer = self.proxied_peer or (str(peer[0]) if peer else "")
            log.info("session=%s event=connect client=%s", self.id, self.peer)
        settings = for_client(services.settings, services.security, self.peer)
        conversation = Conversation(
            services.conversation, settings, session_id=self.id, address=self.peer, local=self.local
        )
        self.conversation = conversation
        self._touch()
        metrics.current().connection_opened("smtp")
        if services.settings.implicit_tls:
            self._log_tls(transport)
        greeting = services.admit(self)
        if greeting.code != 220:
            self.outcome = "refused"
        self._follow(conversation.open(greeting))
        if not self._closing:
            self._schedule_timeout()

    @_guarded
    def data_received(self, data: bytes) -> None:
        conversation = self.conversation
        assert conversation is not None
        if conversation.core.state in (State.DATA, State.BDAT):
            self._touch()  # message content: the timeout is per block (§4.5.3.2.5-6)
        # Outside a message only a complete command counts as activity (below, in _process):
        # a client trickling one byte a second (slowloris) must not hold its slot for ever
        # (Postfix smtpd_per_record_deadline).
        conversation.receive_data(data)
        self._process()

    @_guarded
    def pause_writing(self) -> None:
        # A client that pipelines commands without reading the replies would make them pile up
        # in the transport's buffer without bound; stop reading its commands until it catches
        # up (uvicorn flow_control.py does the same for HTTP).
        self._writing_paused = True
        self._pause()

    @_guarded
    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self._busy:
            self._resume()

    @_guarded
    def eof_received(self) -> bool:
        conversation = self.conversation
        assert conversation is not None
        conversation.receive_data(b"")
        self._process()
        # We close the transport ourselves once replies are written. Over TLS asyncio closes it
        # anyway (it has no half-closed TLS) and warns if asked to keep it open.
        return not conversation.tls_active

    @_guarded
    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return  # after a failed handshake both asyncio and _upgrade may report it
        self._closed = True
        self._closing = True
        try:
            if self._timer is not None:
                self._timer.cancel()
            if self.conversation is not None:
                self.conversation.connection_lost()
            log.info("session=%s event=disconnect client=%s outcome=%s", self.id, self.peer, self.outcome)
            metrics.current().session_ended(self.outcome)
        finally:
            self.services.on_closed(self)  # the connection slot is given back whatever happened

    # --- the session boundary -----------------------------------------------------------------

    def _fail(self, where: str, exc: Exception) -> None:
        log.error(
            "session=%s event=internal-error client=%s where=%s error=%r",
            self.id,
            self.peer,
            where,
            f"{type(exc).__name__}: {exc}",
        )
        self.abort()

    def abort(self) -> None:
        """Drop the connection now, unsent replies and all, and end the session."""
        self._closing = True
        transport = self._transport
        if transport is not None:
            # The last resort after a failure: a transport left broken by it must not keep the
            # session (and its connection slot) alive.
            with contextlib.suppress(Exception):
                transport.abort()
        self.connection_lost(None)

    def _start(self, work: Awaitable[None], where: str) -> asyncio.Task[None]:
        """Run ``work`` (a commit, a password check, a handshake) inside the session boundary."""

        async def guarded() -> None:
            try:
                await work
            except Exception as exc:
                self._fail(where, exc)

        return self._loop.create_task(guarded())

    # --- driving the conversation -------------------------------------------------------------

    def _process(self) -> None:
        conversation = self.conversation
        if self._busy or self._closing or conversation is None:
            return
        handled = conversation.handled
        step = conversation.process()
        if conversation.handled != handled:
            self._touch()
        in_data = conversation.core.state is State.DATA
        entered_data = in_data and not self._in_data
        if entered_data:
            self._data_started = self._loop.time()
        self._in_data = in_data
        if step is NEED_DATA:
            self._flush()
        else:
            self._follow(step)
        if entered_data:
            self._rearm_if_sooner()

    def _follow(self, step: Step) -> None:
        """Do what the conversation asks of the transport (see smtpd.conversation)."""
        self._flush()  # the 220 to STARTTLS goes out in plaintext, before the handshake
        if isinstance(step, Wait):
            self._busy = True
            self._pause()
            self._task = self._start(self._finish(step.work), step.where)
        elif step is START_TLS:
            self._busy = True
            self._handshaking = True
            self._pause()
            self._task = self._start(self._upgrade(), "starttls")
        elif isinstance(step, Close):
            if step.outcome is not None:
                self.outcome = step.outcome
            self._close_transport()

    async def _finish(self, work: Awaitable[None]) -> None:
        await work
        if self._closing:  # dropped meanwhile, or the shutdown grace ran out and 421 was said
            return
        self._busy = False
        self._resume()
        self._process()

    # --- STARTTLS (RFC 3207) ------------------------------------------------------------------

    async def _upgrade(self) -> None:
        tls = self.services.security.tls
        transport = self._transport
        assert tls is not None and transport is not None
        try:
            secure = await self._loop.start_tls(
                transport, self, tls.context, server_side=True, ssl_shutdown_timeout=SHUTDOWN_TIMEOUT
            )
        except Exception as exc:  # the handshake failed or timed out, or shutdown aborted it
            if not self._closing:
                log.info("session=%s event=tls-failed client=%s reason=%s", self.id, self.peer, _reason(exc))
                metrics.current().tls_handshake(False)
            self.abort()
            return
        self._handshaking = False
        if secure is None or secure.is_closing() or self._closing:
            # The connection went without an error mid-handshake (close_with aborted it at
            # shutdown, say): asyncio then returns None, uvloop a closed transport, and neither
            # tells this session again. Nobody else will end it.
            self.abort()
            return
        # From here on the TLS transport is the connection; the TCP one below it is its own.
        self._transport = secure
        self._log_tls(secure)
        self._busy = False
        self._resume()
        self._process()  # the client may already have sent EHLO inside TLS

    def _log_tls(self, transport: asyncio.BaseTransport) -> None:
        metrics.current().tls_handshake(True)
        tls = transport.get_extra_info("ssl_object")
        if isinstance(tls, (ssl.SSLObject, ssl.SSLSocket)):
            cipher = tls.cipher()
            log.info(
                "session=%s event=tls client=%s version=%s cipher=%s",
                self.id,
                self.peer,
                tls.version(),
                cipher[0] if cipher else "",
            )

    # --- transport helpers --------------------------------------------------------------------

    def _flush(self) -> None:
        conversation = self.conversation
        if conversation is None:
            return
        data = conversation.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _pause(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._writing_paused:
            return  # resume_writing() resumes once the client has read its replies
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _close_transport(self) -> None:
        """Close the connection once what is written has been sent; only the first call acts.

        Several paths may ask (our 421 is followed by the core's Closing event, shutdown asks
        every idle session again), and a TLS transport must be closed only once.
        """
        transport = self._transport
        if transport is None or self._closing:
            return
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        unsent = transport.get_write_buffer_size()
        transport.close()
        if unsent:
            # close() waits until the client has taken what is still buffered; one that reads
            # nothing would keep the connection, and its connection slot, for ever. It gets one
            # more command timeout to read, then the connection is dropped. (Over TLS the TLS
            # layer gives up sooner, after SHUTDOWN_TIMEOUT.)
            self._timer = self._loop.call_later(self.services.limits.command_timeout, transport.abort)

    @property
    def closing(self) -> bool:
        """Our side has closed the connection; the session ends when the transport says so."""
        return self._closing

    @_guarded
    def close_with(self, reply: Reply) -> None:
        """End the session with ``reply`` (timeouts, shutdown) unless it is already ending."""
        if self._closing:
            return
        if self._handshaking and self._transport is not None:
            # Mid-handshake the wire belongs to TLS: a plaintext 421 would only garble it.
            self._closing = True
            self._transport.abort()
            return
        if self.conversation is not None:
            self.conversation.close_with(reply)
        self._flush()
        if self._writing_paused and self._transport is not None:
            # The client reads nothing: close() would wait for it forever to drain our replies,
            # holding the connection (and a connection slot) open.
            self._closing = True
            self._transport.abort()
            return
        self._close_transport()

    @property
    def idle(self) -> bool:
        """No message is being received or committed, no password being checked: safe to
        close at shutdown. A TLS handshake in progress counts as idle (nothing is lost)."""
        if self._handshaking:
            return True
        conversation = self.conversation
        return not self._busy and not (conversation is not None and conversation.in_transaction)

    # --- timeouts (RFC 5321 §4.5.3.2) ---------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    def _deadline(self) -> float:
        limits = self.services.limits
        if self._busy:
            return self._loop.time() + limits.command_timeout  # our own commit: never the client's fault
        if self._in_data:
            return min(
                self._last_activity + limits.data_block_timeout,
                self._data_started + limits.data_done_timeout,
            )
        return self._last_activity + limits.command_timeout

    def _schedule_timeout(self) -> None:
        # One timer per session, re-armed lazily when it fires: activity only stores a time.
        self._timer = self._loop.call_at(self._deadline(), self._on_timer)

    def _rearm_if_sooner(self) -> None:
        # The timer is re-armed lazily, which only ever moves it later. Entering DATA can bring
        # the deadline forward (data_block_timeout < command_timeout): move the timer with it.
        # Nothing else can (activity and our own work only move it later), so only then.
        timer = self._timer
        if timer is not None and self._deadline() < timer.when():
            timer.cancel()
            self._schedule_timeout()

    @_guarded
    def _on_timer(self) -> None:
        if self._closing:
            return
        if self._loop.time() >= self._deadline():
            state = self.conversation.state.value if self.conversation is not None else ""
            log.info("session=%s event=timeout client=%s state=%s", self.id, self.peer, state)
            self.outcome = "timeout"
            self.close_with(replies.TIMEOUT)
            return
        self._schedule_timeout()


def _reason(exc: BaseException) -> str:
    """One line for the log: an OpenSSL reason ("WRONG_VERSION_NUMBER") or the exception's name."""
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else type(exc).__name__
