"""Direct delivery in a cluster: a message for one local mailbox goes into the shared database's
mailbox at the end of DATA, in one transaction, instead of through the shared queue.

Untrusted input seen here: the envelope (addresses parsed by the SMTP grammar and checked by the
policy; the mailbox's name comes only from the mailbox store's rules) and the message bytes,
stored verbatim.

What :mod:`postoffice.delivery.direct` does for the embedded Maildirs, for the database: the
same messages qualify (one LOCAL recipient, no RFC 3461 NOTIFY=SUCCESS), and instead of an
envelope row, its chunks and a state log committed, answered, read back, stored into the
mailbox in a second transaction and deleted from the queue, the message row, its body chunks,
its UID and mod-sequence and the notification other nodes' watches follow are written once and
committed synchronously before the 250 (RFC 5321 §6.1: the responsibility is discharged before
it is accepted). The database down at the commit is the client's 451 and nothing is stored,
as on the queue's path; a mailbox that refuses the message (a constraint, a trigger: whatever
the database says that is not "unreachable") sends it to the queue, which retries and, in the
end, bounces with the reason.

This is composition, not a second writer: the queue's
:class:`~postoffice.pgstore.queue_writer.PgMessageWriter` collects the message (in memory, then
a local temporary file) and streams it at the commit into a sink; here the sink is the mailbox
store's :meth:`~postoffice.pgstore.mailboxes.PgMailboxStore.deliver_on`, on a connection the
queue's :meth:`~postoffice.pgstore.queue.PgQueue.transact` provides (its connection wait, its
retry on a stale connection, its one-line errors). A copy stored so is reported through the
same hooks (web index, metrics, the ``status=delivered`` line) as the embedded direct delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg

from postoffice.delivery.direct import ResultHook, direct_recipient, report_delivered
from postoffice.delivery.local import DeliveryHook, delivery_headers
from postoffice.errors import SpoolError
from postoffice.pg.database import one_line
from postoffice.pgstore.mail_delivery import NoFolder, headed
from postoffice.pgstore.mailboxes import PgMailboxStore
from postoffice.pgstore.queue import PgQueue
from postoffice.pgstore.queue_writer import PgMessageWriter
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient
from postoffice.spool.ids import new_queue_id
from postoffice.storage import MessageWriter, StoredMessage

log = logging.getLogger("postoffice.spool")


class PgDirectReceiver:
    """What an SMTP session of a cluster node stores a message with: its mailbox, or else the
    shared queue. ``on_delivered`` and ``on_result`` as :class:`~postoffice.delivery.direct.DirectReceiver`'s."""

    def __init__(
        self,
        queue: PgQueue,
        store: PgMailboxStore,
        *,
        on_delivered: DeliveryHook | None = None,
        on_result: ResultHook | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self._on_delivered = on_delivered
        self._on_result = on_result

    def put(self, envelope: Envelope) -> MessageWriter:
        recipient = direct_recipient(envelope)
        if recipient is None or self.store.mailbox_name(recipient.address) is None:
            return self.queue.put(envelope)  # the queue's agent bounces a mailbox-less address
        queue_id = new_queue_id()
        sink = _MailboxSink(self, recipient)
        return PgMessageWriter(sink, queue_id, envelope, self.queue.tmp_dir)

    def delivered(self, message: QueuedMessage, stored: StoredMessage) -> None:
        report_delivered(self.store, message, stored, self._on_result, self._on_delivered)


class _MailboxSink:
    """The :class:`~postoffice.pgstore.queue_writer.Sink` of one direct delivery: the mailbox,
    or the queue when the mailbox refuses the message."""

    def __init__(self, receiver: PgDirectReceiver, recipient: Recipient) -> None:
        self._receiver = receiver
        self._recipient = recipient
        self._stored: StoredMessage | None = None
        self._queued = False

    async def insert(
        self,
        queue_id: str,
        envelope: Envelope,
        size: int,
        chunks: Callable[[], AsyncIterator[bytes]],
        *,
        small: bool,
    ) -> bool:
        receiver, address = self._receiver, self._recipient.address
        try:
            place = receiver.store.place(address, envelope.folder)
            stored = await self._deliver(queue_id, envelope, place, chunks, small=small)
        except (ValueError, _Refused) as refusal:
            # The queue retries it and, in the end, bounces it with the reason; the client
            # need not care (direct.py's fallback).
            log.warning(
                "queue_id=%s to=<%s> error=%r status=queued reason=mailbox-refused",
                queue_id,
                address,
                str(refusal),
            )
            self._queued = True
            return await receiver.queue.insert(queue_id, envelope, size, chunks, small=small)
        self._stored = stored
        message = QueuedMessage(queue_id, envelope, size, delivered=True)
        # Soon rather than now: the session logs the message as queued first, so the log reads
        # in the order a queued message's does (direct.py's order).
        asyncio.get_running_loop().call_soon(receiver.delivered, message, stored)
        return True

    async def _deliver(
        self,
        queue_id: str,
        envelope: Envelope,
        place: tuple[str, str],
        chunks: Callable[[], AsyncIterator[bytes]],
        *,
        small: bool,
    ) -> StoredMessage:
        receiver = self._receiver
        # The recipient index 0 names the message, as the local agent names a queued delivery.
        key = f"{queue_id}_0"
        headers = delivery_headers(envelope.mail_from, self._recipient.address)
        what = f"queue_id={queue_id}: cannot deliver"
        whole = False
        for _ in range(2):

            async def work(connection: Any, whole: bool = whole) -> StoredMessage:
                try:
                    content = headed(headers, chunks())
                    return await receiver.store.deliver_on(
                        connection,
                        place,
                        key,
                        content,
                        received_at=envelope.received_at,
                        whole=whole,
                        small=small,
                    )
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise  # the database unreachable: the client's 451 (transact)
                except psycopg.Error as error:
                    raise _Refused(one_line(error)) from None

            try:
                return await receiver.queue.transact(what, work)
            except NoFolder:
                # The mailbox's first message (or its folder's): made in a transaction of its
                # own, as PgMailboxStore.deliver makes it, then the message.
                try:
                    whole = await asyncio.to_thread(receiver.store.make_place, *place)
                except OSError as error:
                    raise SpoolError(f"{what}: {error.strerror or error}") from None
        raise _Refused(f"{place[0]}: folder {place[1]!r} keeps going away")

    def forget(self, queue_id: str) -> None:
        """Take back a copy stored for a session that went away before its 250."""
        if self._queued:
            self._receiver.queue.forget(queue_id)
        elif self._stored is not None:
            with contextlib.suppress(OSError, ValueError):
                self._receiver.store.expunge(self._stored)


class _Refused(Exception):
    """What the mailbox's database said when it refused a message (not its being unreachable)."""
