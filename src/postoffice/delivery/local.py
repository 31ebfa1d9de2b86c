"""Local delivery: each local recipient's copy goes into its mailbox, through the mailbox store.

Untrusted input seen here: recipient and sender addresses from SMTP clients (the recipient
names a mailbox only through the store, :class:`~postoffice.storage.MailboxStore`, which never
lets an address pick a location; both go into header lines with control characters replaced)
and the message bytes, copied verbatim from the spool and never parsed.

Each copy gets two header lines in front (``Return-Path``, ``Delivered-To``) and is stored
durably before the agent reports it delivered: the store's :meth:`deliver` returns only once the
copy survives a crash, so the spool may forget the message after.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from typing import BinaryIO

from postoffice.addresses import canonical
from postoffice.delivery.agent import Delivered, DeliveryResult, PermFail, TempFail
from postoffice.durable import is_storage_full
from postoffice.errors import SpoolError
from postoffice.smtp import replies
from postoffice.spool.durability import IoPool
from postoffice.spool.envelope import QueuedMessage, Recipient
from postoffice.storage import MailboxStore, MessageStore, StoredMessage

log = logging.getLogger("postoffice.delivery")

# Told of each copy stored, by either route into a mailbox (the queue's agent, direct delivery).
DeliveryHook = Callable[[StoredMessage], None]


# Control characters (and DEL) become "?"; str.translate does it in C, once per message.
_CONTROLS = {code: "?" for code in (*range(0x20), 0x7F)}


def _header_text(value: str) -> str:
    # Addresses passed the SMTP grammar, which has no CR or LF; this keeps a header line one
    # line even if that ever changes (RFC 5322 §2.2: header fields are single lines).
    return value.translate(_CONTROLS)


def delivery_headers(mail_from: str, address: str) -> bytes:
    """``Return-Path`` (RFC 5321 §4.4, ``<>`` for the null sender) and ``Delivered-To``.

    Delivered-To is Postfix local(8)'s loop-detection header, written as a bare address.
    UTF-8 addresses stay UTF-8 (RFC 6532 §3.2 allows it in header fields).
    """
    return (f"Return-Path: <{_header_text(mail_from)}>\r\nDelivered-To: {_header_text(address)}\r\n").encode()


def delivered_into(store: MailboxStore, recipient: Recipient, stored: StoredMessage) -> Delivered:
    """The result of ``recipient``'s copy stored as ``stored``."""
    return Delivered(recipient, detail=f"delivered to {store.describe(stored)}")


def _mailbox_key(address: str) -> str | ValueError:
    """What one mailbox is known by in an envelope: the canonical address (``User@`` and
    ``user@`` are one mailbox), or why the address names none."""
    try:
        return canonical(address)
    except ValueError as exc:
        return exc


class LocalAgent:
    """:class:`~postoffice.delivery.agent.DeliveryAgent` for LOCAL recipients, into ``store``.

    ``on_delivered(stored)`` is called on the event loop after each copy is stored, including
    a copy found again while recovering (the crash may have come before the call).

    Each delivery runs in a worker thread of ``io`` (the spool's, in the server), beside the
    spool's own commits, so their flushes are grouped by the file system
    (:mod:`postoffice.spool.durability`).
    """

    def __init__(
        self,
        store: MailboxStore,
        spool: MessageStore,
        *,
        on_delivered: DeliveryHook | None = None,
        io: IoPool | None = None,
    ) -> None:
        self.store = store
        self._spool = spool
        self._on_delivered = on_delivered
        self._io = io if io is not None else IoPool()

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
    ) -> list[DeliveryResult]:
        results, stored = await self._io.run(
            functools.partial(self._deliver_all, message, recipients, recovering)
        )
        if self._on_delivered is not None:
            for copy in stored:
                try:
                    self._on_delivered(copy)
                except Exception:
                    # The copy is safely stored; a failing observer must not make it a retry.
                    log.exception("queue_id=%s to=<%s> status=hook-failed", message.queue_id, copy.mailbox)
        return results

    def _deliver_all(
        self, message: QueuedMessage, recipients: Sequence[Recipient], recovering: bool
    ) -> tuple[list[DeliveryResult], list[StoredMessage]]:
        try:
            content = self._spool.open(message.queue_id)
        except SpoolError as exc:
            log.error("queue_id=%s status=deferred error=%r", message.queue_id, str(exc))
            return [TempFail(r, replies.LOCAL_ERROR) for r in recipients], []
        with content:
            return self._deliver_each(message, recipients, recovering, content)

    def _deliver_each(
        self, message: QueuedMessage, recipients: Sequence[Recipient], recovering: bool, content: BinaryIO
    ) -> tuple[list[DeliveryResult], list[StoredMessage]]:
        start = content.tell()
        # Recipients are the envelope's; any others (a caller's mistake) are numbered after
        # them, so they can never take the name of a real delivery.
        first_index: dict[str, int] = {}
        for index, recipient in enumerate((*message.envelope.recipients, *recipients)):
            mailbox = _mailbox_key(recipient.address)
            if isinstance(mailbox, str):
                first_index.setdefault(mailbox, index)
        results: list[DeliveryResult] = []
        stored: list[StoredMessage] = []
        by_mailbox: dict[str, DeliveryResult] = {}
        for recipient in recipients:
            mailbox = _mailbox_key(recipient.address)
            if isinstance(mailbox, ValueError):
                log.warning("queue_id=%s to=<%s> error=%r", message.queue_id, recipient.address, str(mailbox))
                results.append(PermFail(recipient, replies.BAD_DESTINATION_MAILBOX))
                continue
            earlier = by_mailbox.get(mailbox)
            if earlier is not None:
                # One mailbox named twice (say User@ and user@) gets one copy (RFC 5321 §3.7.2
                # wants no duplicates where they can be avoided).
                results.append(dataclasses.replace(earlier, recipient=recipient))
                continue
            # The lowest index naming this mailbox in the whole envelope, so a retry with
            # fewer recipients derives the same key (and the store the same name).
            key = f"{message.queue_id}_{first_index[mailbox]}"
            content.seek(start)
            result = self._deliver_one(message, recipient, content, key, recovering, stored)
            by_mailbox[mailbox] = result
            results.append(result)
        return results, stored

    def _deliver_one(
        self,
        message: QueuedMessage,
        recipient: Recipient,
        content: BinaryIO,
        key: str,
        recovering: bool,
        stored: list[StoredMessage],
    ) -> DeliveryResult:
        queue_id, address = message.queue_id, recipient.address
        headers = delivery_headers(message.envelope.mail_from, address)
        try:
            copy = self.store.deliver(
                address,
                headers,
                content,
                key,
                received_at=message.envelope.received_at,
                size=message.size,
                recovering=recovering,
                folder=message.envelope.folder,
            )
        except ValueError as exc:
            log.warning("queue_id=%s to=<%s> error=%r", queue_id, address, str(exc))
            return PermFail(recipient, replies.BAD_DESTINATION_MAILBOX)
        except OSError as exc:
            log.warning("queue_id=%s to=<%s> error=%r path=%s", queue_id, address, exc.strerror, exc.filename)
            full = is_storage_full(exc)
            return TempFail(recipient, replies.INSUFFICIENT_STORAGE if full else replies.LOCAL_ERROR)
        except Exception:
            # A bug or a damaged spool file: retrying later is the only safe answer.
            log.exception("queue_id=%s to=<%s> status=error", queue_id, address)
            return TempFail(recipient, replies.LOCAL_ERROR)
        stored.append(copy)
        return delivered_into(self.store, recipient, copy)
