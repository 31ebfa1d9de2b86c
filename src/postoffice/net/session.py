"""One SMTP session over TCP: drives the sans-I/O core with an ``asyncio.Protocol``.

Untrusted input seen here: every byte from the client's socket, handed to
:class:`~postoffice.smtp.server.ServerConnection` unread. Decisions come from
:mod:`postoffice.policy`; message content streams into the spool as it arrives and is never held
whole in memory. ``250 queued as`` is sent only after :meth:`MessageWriter.commit` returned,
i.e. once the message is durable (RFC 5321 §6.1, Postfix ``mail_stream.c``).

Events are handled synchronously inside ``data_received``; only the commit at the end of a
message is awaited, in a task, with reading paused meanwhile. An idle session therefore costs
one protocol object and one timer, not a coroutine stack.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from postoffice.config import Limits
from postoffice.errors import SpoolError, StorageFullError
from postoffice.policy import Policy
from postoffice.smtp import events as ev
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtp.server import ServerConnection, ServerSettings
from postoffice.smtp.state import State
from postoffice.spool.base import MessageWriter, Spool
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.trace import received_header, with_protocol

log = logging.getLogger("postoffice.smtp")

_session_ids = itertools.count(1)


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
    spool: Spool
    on_queued: Callable[[QueuedMessage], None]
    admit: Callable[[SmtpSession], Reply]  # the greeting, or 421 when over a connection limit
    on_closed: Callable[[SmtpSession], None]
    observer: SessionObserver | None = None


class SmtpSession(asyncio.Protocol):
    def __init__(self, services: SessionServices) -> None:
        self.services = services
        self.id = f"{next(_session_ids):06X}"
        self.peer = ""
        self.core = ServerConnection(services.settings)
        self._transport: asyncio.Transport | None = None
        self._busy = False  # an await (commit) is in progress; events wait
        self._writing_paused = False  # the client is not reading our replies
        self._commit_task: asyncio.Future[None] | None = None
        self._closed = False
        self._last_activity = 0.0
        self._data_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._reset_transaction()

    # --- transaction state owned by the session -----------------------------------------------

    def _reset_transaction(self) -> None:
        self._mail_from: str | None = None
        self._mail_smtputf8 = False
        self._mail_body = "7BIT"
        self._mail_size: int | None = None
        self._recipients: list[Recipient] = []
        self._writer: MessageWriter | None = None
        self._write_failure: Reply | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self._touch()
        log.info("session=%s event=connect client=%s", self.id, self.peer)
        greeting = self.services.admit(self)
        self.core.greet(greeting)
        self._observe_reply(greeting)
        self._flush()
        if self.core.state is State.CLOSED:
            self._close_transport()
            return
        self._schedule_timeout()

    def data_received(self, data: bytes) -> None:
        self._touch()
        self.core.receive_data(data)
        self._process()

    def pause_writing(self) -> None:
        # A client that pipelines commands without reading the replies would make them pile up
        # in the transport's buffer without bound; stop reading its commands until it catches
        # up (uvicorn flow_control.py does the same for HTTP).
        self._writing_paused = True
        self._pause()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self._busy:
            self._resume()

    def eof_received(self) -> bool:
        self.core.receive_data(b"")
        self._process()
        return True  # we close the transport ourselves once replies are written

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._discard_message()
        log.info("session=%s event=disconnect client=%s", self.id, self.peer)
        self.services.on_closed(self)

    # --- the event pump -----------------------------------------------------------------------

    def _process(self) -> None:
        if self._busy or self._closed:
            return
        core = self.core
        while True:
            event = core.next_event()
            if isinstance(event, ev.NeedData):
                break
            if isinstance(event, ev.MessageComplete):
                self._busy = True
                self._pause()
                self._commit_task = asyncio.ensure_future(self._complete_message())
                break
            if isinstance(event, ev.Closing):
                self._flush()
                self._close_transport()
                return
            self._handle(event)
        self._flush()
        self._rearm_if_sooner()

    def _handle(self, event: ev.Event) -> None:
        core = self.core
        if isinstance(event, ev.MessageData):
            self._write(event.data)
        elif isinstance(event, ev.Replied):
            self._observe(event.line, event.reply)
        elif isinstance(event, ev.HelloReceived):
            self._answer(event.line, core.hello_reply(event))
        elif isinstance(event, ev.MailReceived):
            self._on_mail(event)
        elif isinstance(event, ev.RcptReceived):
            self._on_rcpt(event)
        elif isinstance(event, ev.DataReceived):
            self._answer(event.line, self._open_message())
        elif isinstance(event, ev.MessageStart):
            if self._writer is None and self._write_failure is None:
                self._open_message()  # BDAT: the first chunk opens the spool file
        elif isinstance(event, ev.ChunkReceived):
            self._answer(event.line, self._write_failure or replies.chunk_received(event.size))
            if self._write_failure is not None:
                self._discard_message()
        elif isinstance(event, ev.MessageRejected):
            self._observe("", event.reply)
            self._discard_message()
        elif isinstance(event, (ev.StartTlsRequested, ev.AuthRequested)):
            self._answer(event.line, replies.NOT_IMPLEMENTED)
        elif isinstance(event, ev.AuthResponse):
            self._answer("***", replies.NOT_IMPLEMENTED)

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

    # --- MAIL / RCPT --------------------------------------------------------------------------

    def _on_mail(self, event: ev.MailReceived) -> None:
        command = event.command
        reply = self.services.policy.check_sender(command.path, authenticated_user=None)
        if reply.positive:
            self._reset_transaction()
            self._mail_from = str(command.path)
            self._mail_smtputf8 = command.smtputf8
            self._mail_body = command.body or "7BIT"
            self._mail_size = command.size
            log.info("session=%s event=mail from=<%s> size=%s", self.id, self._mail_from, command.size)
        self._answer(event.line, reply)

    def _on_rcpt(self, event: ev.RcptReceived) -> None:
        command = event.command
        verdict = self.services.policy.check_recipient(command.path, authenticated_user=None)
        original = str(command.path)
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
        )
        try:
            writer = self.services.spool.new_message(envelope)
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
        if self._closed:
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
        if self._transport is not None:
            self._transport.close()

    def close_with(self, reply: Reply) -> None:
        """End the session with ``reply`` (timeouts, shutdown) unless a commit is in flight."""
        if self._closed:
            return
        self.core.close_with(reply)
        self._observe_reply(reply)
        self._flush()
        if self._writing_paused and self._transport is not None:
            # The client reads nothing: close() would wait for it forever to drain our replies,
            # holding the connection (and a connection slot) open.
            self._transport.abort()
            return
        self._close_transport()

    @property
    def idle(self) -> bool:
        """No message is being received or committed: safe to close at shutdown."""
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

    def _on_timer(self) -> None:
        if self._closed:
            return
        if self._loop.time() >= self._deadline():
            log.info("session=%s event=timeout client=%s state=%s", self.id, self.peer, self.core.state.value)
            self.close_with(replies.TIMEOUT)
            return
        self._schedule_timeout()
