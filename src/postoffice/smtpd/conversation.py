"""One SMTP conversation, sans-I/O: the core's events run through the stages.

Untrusted input seen here: every byte the client sends, handed unread to the core
(:class:`~postoffice.smtp.server.ServerConnection`), and the events it makes of them: commands
for the stages' checks, message content for the spool writer.

This is the transaction layer between the transport and the core (uvicorn's protocol /
application split). The transport (:mod:`postoffice.net.session`) owns the socket, flow
control, timeouts, TLS and closing; it feeds bytes in, writes :meth:`Conversation.data_to_send`
out, and does what :meth:`Conversation.process` returns:

* ``NEED_DATA``: everything available was handled; write the replies, read on.
* :class:`Wait`: a command's handler is waiting (a commit's fsync, a password check, a check's
  lookup); stop reading, await ``work`` in a task, then call ``process()`` again.
* ``START_TLS``: the 220 is queued and the core has dropped every plaintext octet it held
  (RFC 3207 §4.2); write it, then run the TLS handshake before reading again.
* :class:`Close`: the session is over; write what is queued and close.

Each decision event's handler is a coroutine run by :func:`~postoffice.smtpd.drive.drive`, so
commands whose checks never suspend are answered without a task or a trip through the event
loop. No socket, clock or event loop is touched here: tests drive a conversation with bytes
alone (``tests/smtpd_pair.py``), and so does the fuzzer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from postoffice import metrics
from postoffice.smtp import events as ev
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtp.server import ServerConnection, ServerSettings
from postoffice.smtp.state import State
from postoffice.smtpd.auth import Authenticator, AuthExchange
from postoffice.smtpd.content import Content, MessageResult
from postoffice.smtpd.context import Client, Context, LocalPeer, Spawn, Transaction
from postoffice.smtpd.drive import Suspended, drive
from postoffice.smtpd.stages import Stage, Stages, run_checks
from postoffice.storage import Receiver

log = logging.getLogger("postoffice.smtp")


class Observer(Protocol):
    """Sees every line of the conversation (for transcripts); secrets arrive redacted."""

    def client_said(self, session_id: str, peer: str, line: str) -> None: ...

    def server_said(self, session_id: str, peer: str, reply: Reply) -> None: ...


@dataclass(frozen=True, slots=True)
class Services:
    """What a conversation needs from the rest of the server (built per listener by net.server)."""

    stages: Stages
    store: Receiver
    on_queued: Callable[[MessageResult], None]
    login: Authenticator | None = None  # AUTH is offered
    tls: bool = False  # STARTTLS can be served (a certificate is configured)
    observer: Observer | None = None
    clock: Callable[[], float] = time.time
    spawn: Spawn | None = None  # starts checks' background work (asyncio.ensure_future)


# --- what the transport is asked to do -----------------------------------------------------------


class _Signal:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Signal("NEED_DATA")
START_TLS: Final = _Signal("START_TLS")


@dataclass(frozen=True, slots=True)
class Wait:
    """Await ``work`` (in a task, reading paused), then call ``process()`` again. ``where``
    names it in the one log line should it fail."""

    work: Suspended
    where: str


@dataclass(frozen=True, slots=True)
class Close:
    """The session is over; ``outcome`` (for metrics) when the conversation knows it."""

    outcome: str | None


Step = _Signal | Wait | Close

# Where a suspended handler of each event is waiting, for the log line should it fail.
_WHERE: Final[dict[type, str]] = {
    ev.HelloReceived: Stage.HELO.value,
    ev.MailReceived: Stage.MAIL.value,
    ev.RcptReceived: Stage.RCPT.value,
    ev.DataReceived: Stage.DATA_START.value,
    ev.MessageStart: Stage.DATA_START.value,
    ev.MessageComplete: "commit",
    ev.AuthRequested: "auth",
    ev.AuthResponse: "auth",
    ev.Replied: Stage.REPLIED.value,
}


class Conversation:
    """One session's conversation: bytes in, replies out, every command through its stage."""

    def __init__(
        self,
        services: Services,
        settings: ServerSettings,
        *,
        session_id: str,
        address: str,
        local: LocalPeer | None = None,
    ) -> None:
        """``local``: the client came through the server's local socket (see Client.local)."""
        self.core = ServerConnection(settings)
        self.client = Client(session_id, address, self.core, local)
        self._services = services
        self._stages = services.stages
        ctx = self._ctx = Context(self.client, Stage.CONNECT, services.spawn)
        self._content = Content(ctx, services.stages, services.store, services.on_queued, services.clock)
        self._auth = AuthExchange(services.login, ctx)
        self.handled = 0  # events handled so far (the transport's activity clock)
        self._outcome: str | None = None
        self._gone = False  # the connection was lost: nothing more is answered
        # Straight to the core, without a call of ours in between (they run for every read).
        self.receive_data = self.core.receive_data
        self.data_to_send = self.core.data_to_send

    # --- the transport's interface ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.core.state

    @property
    def in_transaction(self) -> bool:
        return self.core.in_transaction

    @property
    def tls_active(self) -> bool:
        return self.core.tls_active

    def open(self, admitted: Reply) -> Step:
        """Greet the client: ``admitted`` (220, or the 421 of a connection limit) unless a
        connect check refuses it."""
        suspended = drive(self._greet(admitted))
        if suspended is not None:
            return Wait(suspended, Stage.CONNECT.value)
        return self.process()

    def process(self) -> Step:
        """Handle every event the bytes so far make, until one needs the transport.

        (``receive_data(bytes)`` and ``data_to_send()`` are the core's own, see __init__.)
        """
        core, content = self.core, self._content
        while True:
            event = core.next_event()
            kind = type(event)
            if kind is ev.NeedData:
                return NEED_DATA
            self.handled += 1
            if kind is ev.MessageData:  # the hot path of a large message: no coroutine
                content.write(cast(ev.MessageData, event).data)
                continue
            sync = _SYNC_HANDLERS.get(kind)
            if sync is not None:
                step = sync(self, event)
                if step is not None:
                    return step
                continue
            handler = _HANDLERS[kind](self, event)
            try:  # drive(), inlined: this runs for every command
                waiting_on = handler.send(None)
            except StopIteration:
                pass
            else:
                return Wait(Suspended(handler, waiting_on), _WHERE.get(kind, "session"))

    def close_with(self, reply: Reply) -> None:
        """End the conversation on our side with ``reply`` (timeout, shutdown)."""
        self.core.close_with(reply)
        self._observe_reply(reply)

    def connection_lost(self) -> None:
        """The connection is gone: drop the message being received, answer nothing more."""
        self._gone = True
        self._content.discard()
        self._ctx.transaction.end()

    # --- answering ----------------------------------------------------------------------------

    def _answer(self, line: str, reply: Reply) -> None:
        core = self.core
        if self._gone or core.state is State.CLOSED:
            return  # closed while the handler waited (shutdown, timeout): the 421 said it all
        if reply.code == 421:
            core.close_with(reply)  # RFC 5321 §3.8: a 421 closes the transmission channel
        else:
            core.send(reply)
        self._observe(line, reply)
        state = core.state
        if (state is State.READY or state is State.INIT) and self._ctx.transaction.mail is not None:
            self._end_transaction()

    def _end_transaction(self) -> None:
        """The core left the transaction (message answered, RSET, HELO, a refused MAIL)."""
        content = self._content
        content.discard()
        content.failure = None
        self._ctx.transaction.end()
        self._ctx.transaction = Transaction(None)

    def _observe(self, line: str, reply: Reply) -> None:
        observer = self._services.observer
        if observer is not None:
            client = self.client
            if line:
                observer.client_said(client.id, client.address, line)
            observer.server_said(client.id, client.address, reply)

    def _observe_reply(self, reply: Reply) -> None:
        observer = self._services.observer
        if observer is not None:
            observer.server_said(self.client.id, self.client.address, reply)

    def _closing(self, event: ev.Closing) -> Step:
        reply, outcome = event.reply, self._outcome
        if outcome is None:
            if reply is replies.TOO_MANY_ERRORS or reply is replies.TOO_MANY_JUNK_COMMANDS:
                outcome = "errors"
            elif reply is not None and reply.code == replies.CLOSING.code:
                outcome = "quit"
        return Close(outcome)

    # --- the stages ---------------------------------------------------------------------------

    async def _greet(self, admitted: Reply) -> None:
        greeting = admitted
        if greeting.code == 220 and self._stages.connect:
            greeting = await run_checks(Stage.CONNECT, self._stages.connect, self._ctx) or greeting
        if greeting.code != 220:
            self._outcome = "refused"
        if not self._gone:
            self.core.greet(greeting)
            self._observe_reply(greeting)

    async def _hello(self, event: ev.HelloReceived) -> None:
        ctx = self._ctx
        ctx.command, ctx.line = event.command, event.line
        checks = self._stages.helo
        refusal = await run_checks(Stage.HELO, checks, ctx) if checks else None
        self._answer(event.line, refusal or self.core.hello_reply(event))

    async def _mail(self, event: ev.MailReceived) -> None:
        ctx = self._ctx
        command = event.command
        ctx.command, ctx.line = command, event.line
        ctx.transaction.end()
        ctx.transaction = Transaction(command)  # a refused MAIL ends it again (_answer)
        reply = await run_checks(Stage.MAIL, self._stages.mail, ctx) or replies.SENDER_OK
        if reply.positive:
            log.info("session=%s event=mail from=<%s> size=%s", self.client.id, command.path, command.size)
        self._answer(event.line, reply)

    async def _rcpt(self, event: ev.RcptReceived) -> None:
        ctx = self._ctx
        command = event.command
        ctx.command, ctx.line = command, event.line
        reply = await run_checks(Stage.RCPT, self._stages.rcpt, ctx)
        local, remote, forward = ctx.take_routes()
        if reply is None:
            ctx.transaction.add_recipients(command, local, remote, forward)
            reply = replies.RECIPIENT_OK
        else:
            log.info("session=%s event=reject to=<%s> reply=%r", self.client.id, command.path, str(reply))
            metrics.current().recipient_rejected()
        self._answer(event.line, reply)

    async def _data(self, event: ev.DataReceived) -> None:
        self._ctx.line = event.line
        # A refused DATA is answered here and the transaction stays open (a later DATA or BDAT
        # may succeed): its failure is not kept.
        self._answer(event.line, await self._content.start())

    def _message_start(self, event: ev.MessageStart) -> Step | None:
        content = self._content
        if content.writer is not None or content.failure is not None:
            return None  # DATA: opened at the 354 already
        # BDAT: the first chunk opens the message; a refusal answers that chunk.
        suspended = drive(self._open_for_bdat())
        return None if suspended is None else Wait(suspended, Stage.DATA_START.value)

    async def _open_for_bdat(self) -> None:
        content = self._content
        reply = await content.start()
        if reply.code != replies.START_MAIL_INPUT.code:
            content.failure = reply

    def _chunk(self, event: ev.ChunkReceived) -> Step | None:
        # A refused chunk ends the transaction (RFC 3030 §2), and with it the message.
        self._answer(event.line, self._content.failure or replies.chunk_received(event.size))
        return None

    async def _complete(self, event: ev.MessageComplete) -> None:
        self._answer("", await self._content.finish())

    def _rejected(self, event: ev.MessageRejected) -> Step | None:
        # The core refused the content at its end (size, bare line endings) and answered.
        self._observe("", event.reply)
        metrics.current().message_rejected()
        self._end_transaction()
        return None

    def _starttls(self, event: ev.StartTlsRequested) -> Step | None:
        if not self._services.tls:  # the core refuses STARTTLS where not offered; defence in depth
            self._answer(event.line, replies.TLS_NOT_AVAILABLE)
            return None
        self._answer(event.line, replies.READY_TO_START_TLS)
        if self.core.state is State.CLOSED:
            return None
        # From here on nothing is read in plaintext: the core drops what it holds (a command
        # pipelined after STARTTLS is an attack) before the transport reads again.
        self.core.start_tls()
        self.client.user = None
        return START_TLS

    async def _auth_requested(self, event: ev.AuthRequested) -> None:
        ctx = self._ctx
        ctx.command, ctx.line = event.command, event.line
        if not self._auth.offered:  # the core refuses AUTH where it is not offered; defence in depth
            reply = replies.NOT_IMPLEMENTED
        else:
            reply = await run_checks(Stage.AUTH, self._stages.auth, ctx) or await self._auth.start(event)
        self._answer(event.line, reply)

    async def _auth_response(self, event: ev.AuthResponse) -> None:
        self._answer("***", await self._auth.respond(event))

    async def _replied(self, event: ev.Replied) -> None:
        self._observe(event.line, event.reply)
        core = self.core
        state = core.state
        if (state is State.READY or state is State.INIT) and self._ctx.transaction.mail is not None:
            self._end_transaction()  # RSET
        ctx = self._ctx
        ctx.command, ctx.line = None, event.line
        checks = self._stages.replied
        refusal = await run_checks(Stage.REPLIED, checks, ctx) if checks else None
        if refusal is not None and not self._gone and core.state is not State.CLOSED:
            core.close_with(refusal)
            self._observe_reply(refusal)


# Each event's handler, by the event's type: a coroutine function of Conversation where the
# event goes through a stage (its checks may wait), else a plain one returning the next step.
_HANDLERS: Final[dict[type, Callable[[Conversation, Any], Coroutine[Any, Any, None]]]] = {
    ev.HelloReceived: Conversation._hello,
    ev.MailReceived: Conversation._mail,
    ev.RcptReceived: Conversation._rcpt,
    ev.DataReceived: Conversation._data,
    ev.MessageComplete: Conversation._complete,
    ev.AuthRequested: Conversation._auth_requested,
    ev.AuthResponse: Conversation._auth_response,
    ev.Replied: Conversation._replied,
}
_SYNC_HANDLERS: Final[dict[type, Callable[[Conversation, Any], Step | None]]] = {
    ev.MessageStart: Conversation._message_start,
    ev.ChunkReceived: Conversation._chunk,
    ev.MessageRejected: Conversation._rejected,
    ev.StartTlsRequested: Conversation._starttls,
    ev.Closing: Conversation._closing,
}
