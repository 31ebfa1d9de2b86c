"""The message of a transaction: its envelope, its spool writer, the data stages and the commit.

Untrusted input seen here: message content, streamed into the spool writer as it arrives and
never held whole in memory; the envelope's addresses and HELO name, already parsed. ``250
queued as`` is answered only after :meth:`MessageWriter.commit` returned, i.e. once the
message is durable (RFC 5321 §6.1, Postfix ``mail_stream.c``).

A spool error never reaches the client as text: a full or read-only disk is ``452 4.3.1`` (try
later), anything else ``451 4.3.0``, each one log line. After a write fails the rest of the
content is still read (the client must reach its end) but not stored, and the end of the
message gets the failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from postoffice import metrics
from postoffice.errors import SpoolError, StorageFullError
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtpd.context import Context, Message
from postoffice.smtpd.stages import Stage, Stages, run_checks
from postoffice.spool.envelope import Envelope, QueuedMessage
from postoffice.storage import MessageWriter, Receiver
from postoffice.trace import with_protocol

log = logging.getLogger("postoffice.smtp")


@dataclass(frozen=True, slots=True)
class MessageResult:
    """What became of a message the server accepted: where it is queued, and the folder a
    data-end check chose for its local copies (None: the inbox)."""

    queued: QueuedMessage
    folder: str | None = None


class Content:
    """The current transaction's message, from data-start to the commit."""

    __slots__ = ("_clock", "_ctx", "_on_queued", "_stages", "_store", "failure", "writer")

    def __init__(
        self,
        ctx: Context,
        stages: Stages,
        store: Receiver,
        on_queued: Callable[[MessageResult], None],
        clock: Callable[[], float],
    ) -> None:
        self._ctx = ctx
        self._stages = stages
        self._store = store
        self._on_queued = on_queued
        self._clock = clock
        self.writer: MessageWriter | None = None
        # Why the content is not being stored: answered at the end of the message (or of the
        # BDAT chunk), while the rest of the content is read and dropped.
        self.failure: Reply | None = None

    async def start(self) -> Reply:
        """Open the message (354), or say why it cannot be stored: the data-start stage."""
        ctx = self._ctx
        envelope = self._envelope()
        try:
            writer = self._store.put(envelope)
        except SpoolError as exc:
            return self._spool_failed(exc)
        ctx.message = Message(envelope, writer)
        refusal = await run_checks(Stage.DATA_START, self._stages.data_start, ctx)
        if refusal is not None:
            writer.discard()
            ctx.message = None
            return refusal
        self.writer = writer
        return replies.START_MAIL_INPUT

    def _envelope(self) -> Envelope:
        ctx = self._ctx
        client, transaction = ctx.client, ctx.transaction
        mail = ctx.mail
        return Envelope(
            mail_from=transaction.mail_from,
            recipients=tuple(transaction.recipients),
            received_at=self._clock(),
            client_address=client.address,
            helo=client.helo,
            protocol=with_protocol(
                esmtp=client.esmtp,
                tls=client.tls,
                authenticated=client.user is not None,
                smtputf8=mail.smtputf8,
            ),
            body=mail.body or "7BIT",
            smtputf8=mail.smtputf8,
            declared_size=mail.size,
            ret=mail.ret,  # RFC 3461 DSN parameters, kept for the bounce
            envid=mail.envid,
            auth_user=client.user,
            requiretls=mail.requiretls,
        )

    def write(self, data: bytes) -> None:
        writer = self.writer
        if writer is None:
            return
        try:
            writer.write(data)
        except SpoolError as exc:
            self.failure = self._spool_failed(exc)
            self.discard()

    async def finish(self) -> Reply:
        """The whole message is in: the data-end stage (deferred checks first), then the
        commit; the reply to the end of the message."""
        writer = self.writer
        if writer is None:
            return self.failure or replies.LOCAL_ERROR
        ctx = self._ctx
        transaction = ctx.transaction
        checks = transaction.deferred + self._stages.data_end
        refusal = await run_checks(Stage.DATA_END, checks, ctx) if checks else None
        if self.writer is not writer:
            return replies.LOCAL_ERROR  # discarded meanwhile: the client went away
        if refusal is not None:
            log.info("session=%s event=reject-message reply=%r", ctx.client.id, str(refusal))
            metrics.current().message_rejected()
            self.discard()
            return refusal
        self.writer = None
        ctx.message = None
        try:
            if transaction.folder is not None:
                writer.file_into(transaction.folder)
            queued = await writer.commit()
        except Exception as exc:  # the client must get an answer, never our exception text
            writer.discard()
            return self._spool_failed(exc, writer.queue_id, event="commit-error")
        self._queued(MessageResult(queued, transaction.folder))
        return replies.queued(queued.queue_id)

    def _queued(self, result: MessageResult) -> None:
        queued, client = result.queued, self._ctx.client
        log.info(
            "session=%s queue_id=%s event=queued from=<%s> nrcpt=%d size=%d%s",
            client.id,
            queued.queue_id,
            queued.envelope.mail_from,
            len(queued.envelope.recipients),
            queued.size,
            "" if result.folder is None else f" folder={result.folder}",
        )
        metrics.current().message_accepted(queued.size)
        client.queued += 1
        self._on_queued(result)

    def _spool_failed(self, exc: Exception, queue_id: str | None = None, event: str = "spool-error") -> Reply:
        """One log line for a spool failure; the reply the client gets for it."""
        where = "" if queue_id is None else f" queue_id={queue_id}"
        session = self._ctx.client.id
        if isinstance(exc, StorageFullError):
            log.warning("session=%s%s event=spool-full", session, where)
            metrics.current().spool_failed()
            return replies.INSUFFICIENT_STORAGE
        log.error("session=%s%s event=%s error=%r", session, where, event, f"{type(exc).__name__}: {exc}")
        return replies.LOCAL_ERROR

    def discard(self) -> None:
        """Drop the message being received (a refusal, a failure, the end of the transaction)."""
        writer, self.writer = self.writer, None
        self._ctx.message = None
        if writer is not None:
            writer.discard()
