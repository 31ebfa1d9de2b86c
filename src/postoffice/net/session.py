"""One SMTP session over TCP: drives the sans-I/O core with an ``asyncio.Protocol``.

Untrusted input seen here: every byte from the client's socket, handed to
:class:`~postoffice.smtp.server.ServerConnection` unread. Decisions come from
:mod:`postoffice.policy`; message content streams into the spool as it arrives and is never held
whole in memory. ``250 queued as`` is sent only after :meth:`MessageWriter.commit` returned,
i.e. once the message is durable (RFC 5321 §6.1, Postfix ``mail_stream.c``).

Events are handled synchronously inside ``data_received``; only the commit at the end of a
message, the password check of AUTH and the TLS handshake after STARTTLS are awaited, in a
task, with reading paused meanwhile. An idle session therefore costs one protocol object and
one timer, not a coroutine stack.

STARTTLS (RFC 3207 §4.2, CVE-2011-0411, CVE-2024-34083): once the 220 is queued, reading stops
and the core drops every plaintext octet it holds *before* control returns to the event loop;
the next octet this session sees comes out of the TLS layer.

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
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

from postoffice import metrics
from postoffice.config import Limits
from postoffice.errors import SpoolError, StorageFullError
from postoffice.net.listeners import Security, for_client
from postoffice.net.tls import SHUTDOWN_TIMEOUT
from postoffice.policy import Policy, RecipientVerdict
from postoffice.smtp import events as ev
from postoffice.smtp import replies, sasl
from postoffice.smtp.replies import Reply
from postoffice.smtp.server import ServerConnection, ServerSettings
from postoffice.smtp.state import State
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.storage import MessageWriter, Receiver
from postoffice.trace import received_header, with_protocol

log = logging.getLogger("postoffice.smtp")

_session_ids = itertools.count(1)
# Set in each worker of several (``serve --workers``), so that session IDs in the one log
# never repeat across processes.
_session_prefix = ""


def name_sessions(prefix: str) -> None:
    """Start every session ID made in this process from now on with ``prefix``."""
    global _session_prefix
    _session_prefix = prefix


# Postfix smtpd_junk_command_limit: commands that move no mail forward. A client that sends
# nothing else is probing or holding a slot, not delivering.
_JUNK_VERBS = frozenset({"NOOP", "VRFY", "EXPN", "ETRN", "RSET"})


class SessionObserver(Protocol):
    """Sees every line of the conversation (for transcripts); secrets arrive redacted."""

    def client_said(self, session_id: str, peer: str, line: str) -> None: ...

    def server_said(self, session_id: str, peer: str, reply: Reply) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionServices:
    """What a session needs from the rest of the server (built by :mod:`postoffice.app`)."""

    settings: ServerSettings
    limits: Limits
    policy: Policy
    spool: Receiver
    on_queued: Callable[[QueuedMessage], None]
    admit: Callable[[SmtpSession], Reply]  # the greeting, or 421 when over a connection limit
    on_closed: Callable[[SmtpSession], None]
    observer: SessionObserver | None = None
    security: Security = field(default_factory=Security)
    submission: bool = False  # RFC 6409: MAIL needs AUTH, and the sender must be the user's


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
        self.outcome = "disconnect"  # how the session ended, for metrics
        self._junk = 0
        self.core = ServerConnection(services.settings)
        self._transport: asyncio.Transport | None = None
        self._busy = False  # an await (commit) is in progress; events wait
        self._writing_paused = False  # the client is not reading our replies
        self._commit_task: asyncio.Future[None] | None = None
        self._closing = False  # our side has closed (or aborted) the connection
        self._closed = False  # connection_lost: the session is over
        self._last_activity = 0.0
        self._data_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._user: str | None = None  # the authenticated user (RFC 4954)
        self._sasl: sasl.Exchange | None = None
        self._tls_task: asyncio.Future[None] | None = None
        self._auth_task: asyncio.Future[None] | None = None
        self._handshaking = False
        self._reset_transaction()

    # --- transaction state owned by the session -----------------------------------------------

    def _reset_transaction(self) -> None:
        self._mail_from: str | None = None
        self._mail_smtputf8 = False
        self._mail_body = "7BIT"
        self._mail_size: int | None = None
        self._mail_ret: str | None = None  # RFC 3461 DSN parameters, kept for the bounce
        self._mail_envid: str | None = None
        self._recipients: list[Recipient] = []
        self._writer: MessageWriter | None = None
        self._write_failure: Reply | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    @_guarded
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = self.proxied_peer or (str(peer[0]) if peer else "")
        services = self.services
        self.core = ServerConnection(for_client(services.settings, services.security, self.peer))
        self._touch()
        log.info("session=%s event=connect client=%s", self.id, self.peer)
        metrics.current().connection_opened("smtp")
        if services.settings.implicit_tls:
            self._log_tls(transport)
        greeting = self.services.admit(self)
        if greeting.code != 220:
            self.outcome = "refused"
        self.core.greet(greeting)
        self._observe_reply(greeting)
        self._flush()
        if self.core.state is State.CLOSED:
            self._close_transport()
            return
        self._schedule_timeout()

    @_guarded
    def data_received(self, data: bytes) -> None:
        if self.core.state in (State.DATA, State.BDAT):
            self._touch()  # message content: the timeout is per block (§4.5.3.2.5-6)
        # Outside a message only a complete command counts as activity (below, in _process):
        # a client trickling one byte a second (slowloris) must not hold its slot for ever
        # (Postfix smtpd_per_record_deadline).
        self.core.receive_data(data)
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
        self.core.receive_data(b"")
        self._process()
        # We close the transport ourselves once replies are written. Over TLS asyncio closes it
        # anyway (it has no half-closed TLS) and warns if asked to keep it open.
        return not self.core.tls_active

    @_guarded
    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return  # after a failed handshake both asyncio and _upgrade may report it
        self._closed = True
        self._closing = True
        try:
            if self._timer is not None:
                self._timer.cancel()
            self._discard_message()
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

    def _start(self, work: Coroutine[Any, Any, None], where: str) -> asyncio.Task[None]:
        """Run ``work`` (a commit, a password check, a handshake) inside the session boundary."""

        async def guarded() -> None:
            try:
                await work
            except Exception as exc:
                self._fail(where, exc)

        return self._loop.create_task(guarded())

    # --- the event pump -----------------------------------------------------------------------

    def _process(self) -> None:
        if self._busy or self._closing:
            return
        core = self.core
        while not self._busy:  # an event may start an await: AUTH's password check, STARTTLS
            event = core.next_event()
            if isinstance(event, ev.NeedData):
                break
            self._touch()
            if isinstance(event, ev.MessageComplete):
                self._busy = True
                self._pause()
                self._commit_task = self._start(self._complete_message(), "commit")
                break
            if isinstance(event, ev.Closing):
                if event.reply is replies.TOO_MANY_ERRORS:
                    self.outcome = "errors"
                elif event.reply is not None and event.reply.code == replies.CLOSING.code:
                    self.outcome = "quit"
                self._flush()
                self._close_transport()
                return
            self._handle(event)
        self._flush()  # the 220 to STARTTLS goes out in plaintext, before the handshake
        if self._handshaking and self._tls_task is None:
            self._tls_task = self._start(self._upgrade(), "starttls")
        self._rearm_if_sooner()

    def _handle(self, event: ev.Event) -> None:
        core = self.core
        if isinstance(event, ev.MessageData):
            self._write(event.data)
        elif isinstance(event, ev.Replied):
            self._observe(event.line, event.reply)
            self._count_junk(event.line)
        elif isinstance(event, ev.HelloReceived):
            self._answer(event.line, core.hello_reply(event))
        elif isinstance(event, ev.MailReceived):
            self._on_mail(event)
        elif isinstance(event, ev.RcptReceived):
            self._on_rcpt(event)
        elif isinstance(event, ev.DataReceived):
            reply = self._open_message()
            # Refused DATA is answered here and the transaction stays open (a later DATA or
            # BDAT may succeed): the failure must not outlive this reply.
            self._write_failure = None
            self._answer(event.line, reply)
        elif isinstance(event, ev.MessageStart):
            if self._writer is None and self._write_failure is None:
                self._open_message()  # BDAT: the first chunk opens the spool file
        elif isinstance(event, ev.ChunkReceived):
            self._answer(event.line, self._write_failure or replies.chunk_received(event.size))
            if self._write_failure is not None:
                self._discard_message()
        elif isinstance(event, ev.MessageRejected):
            self._observe("", event.reply)
            metrics.current().message_rejected()
            self._discard_message()
        elif isinstance(event, ev.StartTlsRequested):
            self._on_starttls(event)
        elif isinstance(event, ev.AuthRequested):
            self._on_auth(event)
        elif isinstance(event, ev.AuthResponse):
            self._on_auth_response(event)

    def _count_junk(self, line: str) -> None:
        if line.split(" ", 1)[0].upper() not in _JUNK_VERBS:
            return
        self._junk += 1
        if self._junk >= self.services.limits.junk_commands:
            log.info("session=%s event=junk-limit client=%s count=%d", self.id, self.peer, self._junk)
            self.outcome = "errors"
            self.core.close_with(replies.TOO_MANY_JUNK_COMMANDS)
            self._observe_reply(replies.TOO_MANY_JUNK_COMMANDS)

    def _answer(self, line: str, reply: Reply) -> None:
        self.core.send(reply)
        self._observe(line, reply)

    def _observe(self, line: str, reply: Reply) -> None:
        observer = self.services.observer
        if observer is not None:
            if line:
                observer.client_said(self.id, self.peer, line)
            observer.server_said(self.id, self.peer, reply)

    def _observe_reply(self, reply: Reply) -> None:
        if self.services.observer is not None:
            self.services.observer.server_said(self.id, self.peer, reply)

    # --- STARTTLS (RFC 3207) -------------------------------------------------------------------

    def _on_starttls(self, event: ev.StartTlsRequested) -> None:
        tls = self.services.security.tls
        if tls is None:  # the core refuses STARTTLS where it is not offered; defence in depth
            self._answer(event.line, replies.TLS_NOT_AVAILABLE)
            return
        self._answer(event.line, replies.READY_TO_START_TLS)
        # From here on nothing is read in plaintext: the transport stops delivering, and the
        # core drops what it already holds (a command pipelined after STARTTLS is an attack).
        self._pause()
        self.core.start_tls()
        self._user = None
        self._busy = True
        self._handshaking = True

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

    # --- AUTH (RFC 4954) ----------------------------------------------------------------------

    def _on_auth(self, event: ev.AuthRequested) -> None:
        login = self.services.security.login
        if login is None:  # the core refuses AUTH where no mechanism is offered; defence in depth
            self._answer(event.line, replies.NOT_IMPLEMENTED)
            return
        refusal = login.refusal(self.id, self.peer)
        if refusal is not None:
            self._refuse_and_close(event.line, refusal)
            return
        exchange = sasl.start(event.command.mechanism)
        if exchange is None:
            self._answer(event.line, replies.AUTH_UNKNOWN_MECHANISM)
            return
        self._sasl = exchange
        self._sasl_step(event.line, exchange.begin(event.command.initial_response))

    def _on_auth_response(self, event: ev.AuthResponse) -> None:
        exchange = self._sasl
        if exchange is None:  # the core reads a response only after our 334
            self._answer("***", replies.BAD_SEQUENCE)
            return
        self._sasl_step("***", exchange.respond(event.data))

    def _sasl_step(self, line: str, step: sasl.Step) -> None:
        exchange = self._sasl
        assert exchange is not None
        if isinstance(step, Reply):
            if step.code != 334:
                self._sasl = None
            self._answer(line, step)
            return
        self._sasl = None
        self._busy = True
        self._pause()
        self._auth_task = self._start(self._check_login(line, exchange.mechanism, step), "auth")

    async def _check_login(self, line: str, mechanism: str, credentials: sasl.Credentials) -> None:
        login = self.services.security.login
        assert login is not None
        result = await login.login(credentials, mechanism=mechanism, session_id=self.id, client=self.peer)
        if self._closing or self.core.state is State.CLOSED:
            return  # closed meanwhile (shutdown): the 421 has answered the AUTH
        if result.disconnect:
            self._refuse_and_close(line, result.reply)
            return
        if result.user is not None:
            self._user = result.user
        self._answer(line, result.reply)
        self._busy = False
        self._resume()
        self._process()

    def _refuse_and_close(self, line: str, reply: Reply) -> None:
        """Answer the pending command with ``reply`` (a 421) and end the session."""
        self.core.close_with(reply)
        self._observe(line, reply)
        self._flush()
        self._close_transport()

    # --- MAIL / RCPT --------------------------------------------------------------------------

    def _on_mail(self, event: ev.MailReceived) -> None:
        command = event.command
        reply = self.services.policy.check_sender(
            command.path, authenticated_user=self._user, submission=self.services.submission
        )
        if reply.positive:
            self._reset_transaction()
            self._mail_from = str(command.path)
            self._mail_smtputf8 = command.smtputf8
            self._mail_body = command.body or "7BIT"
            self._mail_size = command.size
            self._mail_ret = command.ret
            self._mail_envid = command.envid
            log.info("session=%s event=mail from=<%s> size=%s", self.id, self._mail_from, command.size)
        self._answer(event.line, reply)

    def _on_rcpt(self, event: ev.RcptReceived) -> None:
        command = event.command
        original = str(command.path)
        try:
            verdict = self.services.policy.check_recipient(command.path, authenticated_user=self._user)
        except Exception:
            # The accounts file unreadable or damaged, say: a temporary failure the client can
            # retry (RFC 5321 §4.2.5), never a dropped connection or our exception text.
            log.exception("session=%s event=policy-error to=<%s>", self.id, original)
            verdict = RecipientVerdict(replies.LOCAL_ERROR)
        if verdict.reply.positive:
            known = {(r.address, r.route) for r in self._recipients}
            for route, addresses in ((Route.LOCAL, verdict.local), (Route.REMOTE, verdict.remote)):
                for address in addresses:
                    if (address, route) not in known:  # one copy per mailbox (RFC 5321 §3.3 note)
                        known.add((address, route))
                        self._recipients.append(
                            Recipient(address, original, route, command.notify, command.orcpt)
                        )
        else:
            log.info("session=%s event=reject to=<%s> reply=%r", self.id, original, str(verdict.reply))
            metrics.current().recipient_rejected()
        self._answer(event.line, verdict.reply)

    # --- message content ----------------------------------------------------------------------

    def _open_message(self) -> Reply:
        """Open the spool file for the content; 354, or why it cannot be stored."""
        core = self.core
        now = time.time()
        envelope = Envelope(
            mail_from=self._mail_from or "",
            recipients=tuple(self._recipients),
            received_at=now,
            client_address=self.peer,
            helo=core.helo_name,
            protocol=with_protocol(
                esmtp=core.esmtp,
                tls=core.tls_active,
                authenticated=core.authenticated,
                smtputf8=self._mail_smtputf8,
            ),
            body=self._mail_body,
            smtputf8=self._mail_smtputf8,
            declared_size=self._mail_size,
            ret=self._mail_ret,
            envid=self._mail_envid,
            auth_user=self._user,
        )
        try:
            writer = self.services.spool.put(envelope)
            only = self._recipients[0].original if len(self._recipients) == 1 else None
            writer.write(
                received_header(
                    helo=core.helo_name,
                    client_address=self.peer,
                    hostname=self.services.settings.hostname,
                    protocol=envelope.protocol,
                    queue_id=writer.queue_id,
                    recipient=only,
                    when=now,
                )
            )
        except StorageFullError:
            log.warning("session=%s event=spool-full", self.id)
            metrics.current().spool_failed()
            self._write_failure = replies.INSUFFICIENT_STORAGE
            return replies.INSUFFICIENT_STORAGE
        except SpoolError:
            log.exception("session=%s event=spool-error", self.id)
            self._write_failure = replies.LOCAL_ERROR
            return replies.LOCAL_ERROR
        self._writer = writer
        self._data_started = self._loop.time()
        return replies.START_MAIL_INPUT

    def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None:
            return
        try:
            writer.write(data)
        except StorageFullError:
            log.warning("session=%s event=spool-full", self.id)
            metrics.current().spool_failed()
            self._fail_write(replies.INSUFFICIENT_STORAGE)
        except SpoolError:
            log.exception("session=%s event=spool-error", self.id)
            self._fail_write(replies.LOCAL_ERROR)

    def _fail_write(self, reply: Reply) -> None:
        """Keep reading the message (the client must reach the end), but store no more of it."""
        self._write_failure = reply
        self._discard_message()

    async def _complete_message(self) -> None:
        reply = await self._commit()
        if self._closing:  # dropped meanwhile, or the shutdown grace ran out and 421 was said
            return
        self._answer("", reply)
        self._busy = False
        self._reset_transaction()
        self._resume()
        self._process()

    async def _commit(self) -> Reply:
        writer = self._writer
        if writer is None:
            return self._write_failure or replies.LOCAL_ERROR
        try:
            queued = await writer.commit()
        except StorageFullError:
            log.warning("session=%s queue_id=%s event=spool-full", self.id, writer.queue_id)
            metrics.current().spool_failed()
            writer.discard()
            return replies.INSUFFICIENT_STORAGE
        except Exception:  # the client must get an answer, never our exception text
            log.exception("session=%s event=commit-error", self.id)
            writer.discard()
            return replies.LOCAL_ERROR
        finally:
            self._writer = None
        log.info(
            "session=%s queue_id=%s event=queued from=<%s> nrcpt=%d size=%d",
            self.id,
            queued.queue_id,
            queued.envelope.mail_from,
            len(queued.envelope.recipients),
            queued.size,
        )
        metrics.current().message_accepted(queued.size)
        self._junk = 0
        self.services.on_queued(queued)
        return replies.queued(queued.queue_id)

    def _discard_message(self) -> None:
        if self._writer is not None:
            self._writer.discard()
            self._writer = None

    # --- transport helpers --------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.core.data_to_send()
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
        self.core.close_with(reply)
        self._observe_reply(reply)
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
        return not self._busy and not self.core.in_transaction

    # --- timeouts (RFC 5321 §4.5.3.2) ---------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    def _deadline(self) -> float:
        limits = self.services.limits
        if self._busy:
            return self._loop.time() + limits.command_timeout  # our own commit: never the client's fault
        if self.core.state is State.DATA:
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
        timer = self._timer
        if timer is not None and self._deadline() < timer.when():
            timer.cancel()
            self._schedule_timeout()

    @_guarded
    def _on_timer(self) -> None:
        if self._closing:
            return
        if self._loop.time() >= self._deadline():
            log.info("session=%s event=timeout client=%s state=%s", self.id, self.peer, self.core.state.value)
            self.outcome = "timeout"
            self.close_with(replies.TIMEOUT)
            return
        self._schedule_timeout()


def _reason(exc: BaseException) -> str:
    """One line for the log: an OpenSSL reason ("WRONG_VERSION_NUMBER") or the exception's name."""
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else type(exc).__name__
