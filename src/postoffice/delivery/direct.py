"""Final delivery at the end of DATA: a message for one local mailbox goes straight into it.

Untrusted input seen here: the envelope (addresses already parsed by the SMTP grammar and
checked by the policy; the mailbox directory comes only from
:func:`~postoffice.delivery.mailbox_names.mailbox_path`) and the message bytes, stored verbatim.

The queue exists for what cannot be finished while the client waits: other servers, retries,
reports. A message for one local mailbox needs none of that, so instead of being written to
the spool, answered, read back and written again into the Maildir, it is written once: into the
mailbox's ``tmp/``, fsync'd, renamed into ``new/``, and ``new/`` fsync'd, and only then does the
client get its 250 (RFC 5321 §6.1: the reply means "accepted responsibility"; here the
responsibility is already discharged). An LMTP server (RFC 2033) answers the same way, after
the delivery. A full or read-only disk is the client's to retry (4xx), as with the spool.

Everything else goes through the spool as before: several recipients (each copy carries its own
Delivered-To, and a partial failure needs the queue), remote routes, a sender who asked for a
success report (RFC 3461 NOTIFY=SUCCESS, which the queue's reporting sends), and a message whose
mailbox cannot take it right now (the writer turns into the spool's before writing a byte, and
the queue retries, then bounces).

Crash safety is the spool's: until the rename into ``new/`` and its directory sync, nothing was
acknowledged; a file left in ``tmp/`` by a crash is never read (the Maildir specification tells
readers to ignore ``tmp/``), and :meth:`MaildirStore.prepare` removes such leftovers once they
are 36 hours old, as the specification asks.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from postoffice.delivery.agent import DeliveryResult
from postoffice.delivery.mailbox_names import mailbox_location, mailbox_path
from postoffice.delivery.maildir import (
    DeliveryHook,
    MaildirStore,
    create_mail_file,
    delivered_to_maildir,
    delivery_headers,
    maildir_name,
)
from postoffice.spool.base import MessageWriter
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import STORAGE_FULL_ERRNOS, FileMessageWriter, FileSpool, spool_header
from postoffice.spool.ids import new_queue_id

log = logging.getLogger("postoffice.spool")

ResultHook = Callable[[QueuedMessage, Recipient, DeliveryResult], None]


class DirectReceiver:
    """What an SMTP session stores a message with: its mailbox, or else the spool.

    ``on_delivered(address, path)`` and ``on_result(message, recipient, result)`` are told of a
    direct delivery as the Maildir agent and the scheduler tell of a queued one.
    """

    def __init__(
        self,
        spool: FileSpool,
        store: MaildirStore,
        *,
        on_delivered: DeliveryHook | None = None,
        on_result: ResultHook | None = None,
    ) -> None:
        self.spool = spool
        self.store = store
        self._on_delivered = on_delivered
        self._on_result = on_result

    def new_message(self, envelope: Envelope) -> MessageWriter:
        maildir = self._direct_mailbox(envelope)
        if maildir is None:
            return self.spool.new_message(envelope)
        # The spool's check: a full or read-only disk is refused before the content, and the
        # spool is where the message goes should its mailbox refuse it.
        self.spool.check_writable()
        return DirectMessageWriter(self, new_queue_id(), envelope, maildir)

    def _direct_mailbox(self, envelope: Envelope) -> Path | None:
        """The Maildir of the one local recipient, when nothing needs the queue."""
        if len(envelope.recipients) != 1:
            return None
        recipient = envelope.recipients[0]
        if recipient.route is not Route.LOCAL or "SUCCESS" in recipient.notify:
            return None
        try:
            # The names alone, here on the event loop; the symlink check is made in the file
            # thread just before the file is created (DirectMessageWriter._create_in_mailbox).
            return mailbox_location(self.store.mail_root, recipient.address)
        except ValueError:
            return None  # the queue's agent turns it into a bounce, with its reason

    def _delivered(self, message: QueuedMessage, target: str) -> None:
        path = Path(target)
        recipient = message.envelope.recipients[0]
        result = delivered_to_maildir(recipient, path)
        log.info(
            "queue_id=%s to=<%s> status=delivered detail=%r",
            message.queue_id,
            recipient.address,
            result.detail,
        )
        try:
            if self._on_result is not None:
                self._on_result(message, recipient, result)  # metrics
            if self._on_delivered is not None:
                self._on_delivered(recipient.address, path)  # the web index
        except Exception:
            # The copy is safely stored and acknowledged; an observer's failure stays its own.
            log.exception("queue_id=%s to=<%s> status=hook-failed", message.queue_id, recipient.address)


class DirectMessageWriter(FileMessageWriter):
    """Streams a message into ``<maildir>/tmp/``; :meth:`commit` delivers it into ``new/``.

    When the mailbox cannot take the file, the writer becomes the spool's before anything is
    written, and the message is queued like any other (its agent retries, then bounces).
    """

    def __init__(self, receiver: DirectReceiver, queue_id: str, envelope: Envelope, maildir: Path) -> None:
        headers = delivery_headers(envelope.mail_from, envelope.recipients[0].address)
        super().__init__(receiver.spool, queue_id, envelope, headers)
        self._receiver = receiver
        self._maildir = maildir
        self._maildir_prefix = f"{maildir}{os.sep}"
        self._header_size = len(headers)
        # The recipient index 0 names the file, as the Maildir agent names a queued delivery.
        self._key = f"{queue_id}_0"
        self._path = f"{self._maildir_prefix}tmp{os.sep}{self._key}"
        self._direct = True  # False once the mailbox refused and the spool took over

    def _create(self) -> int:
        # Called once, before anything is written: the buffer still starts with our headers.
        try:
            return self._create_in_mailbox()
        except OSError as exc:
            if exc.errno in STORAGE_FULL_ERRNOS:
                raise  # the spool shares the disk, as a rule: the client is told to retry later
            # A mailbox that cannot take the message now (a file in the way, permissions) is
            # the queue's to retry and, in the end, to bounce; the client need not care.
            log.warning(
                "queue_id=%s to=<%s> error=%r path=%s status=queued reason=mailbox-unwritable",
                self.queue_id,
                self._envelope.recipients[0].address,
                exc.strerror,
                exc.filename,
            )
            self._queue_instead()
            return super()._create()

    def _create_in_mailbox(self) -> int:
        store = self._receiver.store
        try:
            mailbox_path(store.mail_root, self._envelope.recipients[0].address)
        except ValueError as exc:
            # A symlink out of the mail root appeared: the queue's agent refuses it and bounces.
            raise OSError(errno.ELOOP, str(exc), str(self._maildir)) from None
        store.prepare(self._maildir)
        # The store's mail_file_mode: the file is renamed into new/ as it is.
        flags = os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return create_mail_file(self._path, flags, store.file_mode)
        except FileNotFoundError:
            # The Maildir went away since this process made it (a person removed it).
            store.prepare(self._maildir, again=True)
            return create_mail_file(self._path, flags, store.file_mode)

    def _queue_instead(self) -> None:
        """Become the spool's writer: the spool's header in place of the delivery headers."""
        self._direct = False
        header = spool_header(self._envelope)
        self._buffer[: self._header_size] = header
        self._top = len(header)
        self._path = self._receiver.spool.tmp_prefix + self.queue_id

    def _make_room(self) -> None:
        # A Maildir file has no envelope line to leave room in: fields added at the end of a
        # message that outgrew the buffer cost a copy at the commit (spool/files.py).
        if not self._direct:
            super()._make_room()

    def _destination(self) -> str:
        if not self._direct:
            return super()._destination()
        name = maildir_name(
            self._key,
            self._envelope.received_at,
            self._receiver.store.hostname,
            self._header_size + self.size,
        )
        return f"{self._maildir_prefix}new{os.sep}{name}"

    def _committed(self) -> QueuedMessage:
        return QueuedMessage(self.queue_id, self._envelope, self.size, delivered=self._direct)

    async def commit(self) -> QueuedMessage:
        message = await super().commit()
        # Not in _committed: a session cancelled during the commit never told the client, so
        # the copy is taken back (FileMessageWriter._abandoned) and nobody may hear of it.
        # Soon rather than now: the session logs the message as queued first, so the log reads
        # in the order a queued message's does.
        if message.delivered and self._target is not None:
            asyncio.get_running_loop().call_soon(self._receiver._delivered, message, self._target)
        return message
