"""Final delivery at the end of DATA: a message for one local mailbox goes straight into it.

Untrusted input seen here: the envelope (addresses already parsed by the SMTP grammar and
checked by the policy; the mailbox's file comes only from the Maildir store, which never lets
an address pick a location) and the message bytes, stored verbatim.

The queue exists for what cannot be finished while the client waits: other servers, retries,
reports. A message for one local mailbox needs none of that, so instead of being written to
the spool, answered, read back and written again into the Maildir, it is written once: into the
mailbox's ``tmp/``, flushed, renamed into ``new/``, and the name flushed (by the spool's committer:
in the server, the shared ``syncfs`` of :mod:`postoffice.spool.group_commit`), and only then does the
client get its 250 (RFC 5321 §6.1: the reply means "accepted responsibility"; here the
responsibility is already discharged). An LMTP server (RFC 2033) answers the same way, after
the delivery. A full or read-only disk is the client's to retry (4xx), as with the spool.

Everything else goes through the spool as before: several recipients (each copy carries its own
Delivered-To, and a partial failure needs the queue), remote routes, a sender who asked for a
success report (RFC 3461 NOTIFY=SUCCESS, which the queue's reporting sends), and a message whose
mailbox cannot take it right now (the writer turns to the spool's file before writing a byte,
and the queue retries, then bounces).

This is composition, not a second writer: the spool's
:class:`~postoffice.spool.writer.FileMessageWriter` streams the message, with a target naming
the Maildir store's file (:meth:`~postoffice.maildir.store.MaildirStore.new_file`, the same
names and mode as the store's own :meth:`deliver`) and the spool's own file to fall back to. A
copy stored either way is reported through the same hook as the queue's local agent reports.

Crash safety is the spool's: until the rename into ``new/`` and its directory sync, nothing was
acknowledged; a file left in ``tmp/`` by a crash is never read (the Maildir specification tells
readers to ignore ``tmp/``), and :meth:`MaildirStore.prepare` removes such leftovers once they
are 36 hours old, as the specification asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from postoffice.delivery.agent import DeliveryResult
from postoffice.delivery.local import DeliveryHook, delivered_into, delivery_headers
from postoffice.durable import is_storage_full
from postoffice.maildir.store import MaildirFile, MaildirStore
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool
from postoffice.spool.ids import new_queue_id
from postoffice.spool.writer import FileTarget
from postoffice.storage import MailboxStore, MessageWriter, StoredMessage

log = logging.getLogger("postoffice.spool")

ResultHook = Callable[[QueuedMessage, Recipient, DeliveryResult], None]


class DirectReceiver:
    """What an SMTP session stores a message with: its mailbox, or else the spool.

    ``on_delivered(stored)`` and ``on_result(message, recipient, result)`` are told of a
    direct delivery as the local agent and the scheduler tell of a queued one.
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

    def put(self, envelope: Envelope) -> MessageWriter:
        recipient = direct_recipient(envelope)
        if recipient is None:
            return self.spool.put(envelope)
        queue_id = new_queue_id()
        headers = delivery_headers(envelope.mail_from, recipient.address)
        try:
            # The recipient index 0 names the file, as the local agent names a queued delivery.
            file = self.store.new_file(recipient.address, f"{queue_id}_0", envelope.received_at, headers)
        except ValueError:
            return self.spool.put(envelope)  # the queue's agent turns it into a bounce, with its reason
        # The spool's check: a full or read-only disk is refused before the content, and the
        # spool is where the message goes should its mailbox refuse it.
        self.spool.check_writable()
        queued = self.spool.queue_file(queue_id, envelope)
        target = _MailboxTarget(file, queued, queue_id, recipient, self._delivered)
        return self.spool.writer(queue_id, envelope, target)

    def _delivered(self, message: QueuedMessage, stored: StoredMessage) -> None:
        report_delivered(self.store, message, stored, self._on_result, self._on_delivered)


def report_delivered(
    store: MailboxStore,
    message: QueuedMessage,
    stored: StoredMessage,
    on_result: ResultHook | None,
    on_delivered: DeliveryHook | None,
) -> None:
    """Log a direct delivery's copy and tell the hooks, as the local agent and the scheduler
    tell of a queued one (the embedded and the cluster receivers both)."""
    recipient = message.envelope.recipients[0]
    result = delivered_into(store, recipient, stored)
    log.info(
        "queue_id=%s to=<%s> status=delivered detail=%r",
        message.queue_id,
        recipient.address,
        result.detail,
    )
    try:
        if on_result is not None:
            on_result(message, recipient, result)  # metrics
        if on_delivered is not None:
            on_delivered(stored)  # the web index
    except Exception:
        # The copy is safely stored and acknowledged; an observer's failure stays its own.
        log.exception("queue_id=%s to=<%s> status=hook-failed", message.queue_id, recipient.address)


def direct_recipient(envelope: Envelope) -> Recipient | None:
    """The one local recipient, when nothing needs the queue."""
    if len(envelope.recipients) != 1:
        return None
    recipient = envelope.recipients[0]
    if recipient.route is not Route.LOCAL or "SUCCESS" in recipient.notify:
        return None
    return recipient


class _MailboxTarget:
    """:class:`~postoffice.spool.writer.FileTarget` of a direct delivery: the Maildir store's
    ``file``, or, when the mailbox cannot take it, the spool's ``queued`` file."""

    delivered = True
    # A mail file has no envelope line to leave room in: fields added at the end of a message
    # that outgrew the buffer cost a copy of the file at the commit (spool/headroom.py).
    room = 0

    def __init__(
        self,
        file: MaildirFile,
        queued: FileTarget,
        queue_id: str,
        recipient: Recipient,
        delivered: Callable[[QueuedMessage, StoredMessage], None],
    ) -> None:
        self._file = file
        self._queued = queued
        self._queue_id = queue_id
        self._recipient = recipient
        self._report = delivered
        self.header = file.header
        self.path = file.path

    def create(self) -> int:
        return self._file.create()

    def destination(self, size: int) -> str:
        return self._file.destination(size)

    def fallback(self, error: OSError) -> FileTarget | None:
        if is_storage_full(error):
            return None  # the spool shares the disk, as a rule: the client is told to retry later
        # A mailbox that cannot take the message now (a file in the way, permissions) is the
        # queue's to retry and, in the end, to bounce; the client need not care.
        log.warning(
            "queue_id=%s to=<%s> error=%r path=%s status=queued reason=mailbox-unwritable",
            self._queue_id,
            self._recipient.address,
            error.strerror,
            error.filename,
        )
        return self._queued

    def file_into(self, folder: str, envelope: Envelope) -> None:
        self._file.file_into(folder)
        self._queued.file_into(folder, envelope)

    def committed(self, message: QueuedMessage, destination: str) -> None:
        # Soon rather than now: the session logs the message as queued first, so the log reads
        # in the order a queued message's does.
        asyncio.get_running_loop().call_soon(self._report, message, self._file.stored(destination))
