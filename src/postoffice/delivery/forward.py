"""Forwarding: the copy of a message that an alias sends on to an outside address.

Untrusted input seen here: the queued message (anyone's content, whose Authentication-Results
field of ours the seal copies) and its envelope sender (anyone's address, parsed by the SMTP
grammar), which becomes an SRS address.

A forwarded recipient (route FORWARD, :mod:`postoffice.recipients`) is not sent from the
message it arrived in: the local recipients of that message keep its envelope sender, and the
copy needs another one. So this agent writes a new message into the queue, one per alias
domain, for those recipients (route REMOTE), with

* the envelope sender rewritten with SRS into the alias's domain, so SPF at the next hop
  checks our address against our domain's record (:mod:`postoffice.mailauth.forwarding`);
* an ARC set on top (RFC 8617 §5.1), sealed with that domain's DKIM key, so the next hop can
  see what we saw of DKIM, SPF and DMARC (:mod:`postoffice.mailauth.arc_sealer`);

and hands it to the queue like any message. The recipient is then done here ("forwarded as
ID"), and its DSN requests (NOTIFY, ORCPT) and the message's RET and ENVID travel with the copy,
whose reports go to the SRS address and from there back to the sender. The copy keeps the
original's arrival time, so the queue lifetime counts from when we accepted the message.

A crash after the copy is committed and before the original's result is recorded forwards the
message twice at the next start: a duplicate, which RFC 5321 §6.1 prefers to a loss.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence

from postoffice.delivery.agent import Delivered, DeliveryResult, TempFail
from postoffice.errors import PostofficeError, StorageFullError
from postoffice.mailauth.arc_sealer import SEAL_SIZE_LIMIT, ArcSealer
from postoffice.mailauth.forwarding import SenderRewriting
from postoffice.smtp import replies
from postoffice.spool.envelope import QueuedMessage, Recipient, Route
from postoffice.storage import MessageStore, MessageWriter

log = logging.getLogger("postoffice.delivery")

BLOCK_SIZE = 64 * 1024


class ForwardAgent:
    """:class:`~postoffice.delivery.agent.DeliveryAgent` for FORWARD recipients: each alias
    domain's copy into ``spool``, handed to ``submit`` (the scheduler) once committed.
    ``default_domain`` rewrites for a recipient whose alias names no domain (``postmaster``)."""

    def __init__(
        self,
        spool: MessageStore,
        rewriting: SenderRewriting,
        sealer: ArcSealer,
        submit: Callable[[QueuedMessage], None],
        *,
        default_domain: str,
    ) -> None:
        self._spool = spool
        self._rewriting = rewriting
        self._sealer = sealer
        self._submit = submit
        self._default_domain = default_domain

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
    ) -> list[DeliveryResult]:
        groups: dict[str, list[int]] = {}
        for position, recipient in enumerate(recipients):
            groups.setdefault(self._domain_of(recipient), []).append(position)
        results: list[DeliveryResult | None] = [None] * len(recipients)
        for domain, positions in groups.items():
            group = [recipients[position] for position in positions]
            for position, result in zip(positions, await self._forward(message, domain, group), strict=True):
                results[position] = result
        return [result for result in results if result is not None]

    def _domain_of(self, recipient: Recipient) -> str:
        domain = recipient.original.rpartition("@")[2].rstrip(">").lower()
        return domain or self._default_domain

    async def _forward(
        self, message: QueuedMessage, domain: str, recipients: Sequence[Recipient]
    ) -> list[DeliveryResult]:
        what = f"queue_id={message.queue_id}"
        try:
            copy = await self._copy(message, domain, recipients, what)
        except (PostofficeError, OSError) as exc:
            # Nothing was queued: the next round tries again (a full disk, an unreadable secret).
            reply = replies.INSUFFICIENT_STORAGE if isinstance(exc, StorageFullError) else replies.LOCAL_ERROR
            log.warning(
                "%s event=forward-failed domain=%s error=%r", what, domain, f"{type(exc).__name__}: {exc}"
            )
            return [TempFail(recipient, reply) for recipient in recipients]
        log.info(
            "%s event=forwarded copy=%s from=<%s> to=%s",
            what,
            copy.queue_id,
            copy.envelope.mail_from,
            ",".join(f"<{recipient.address}>" for recipient in recipients),
        )
        self._submit(copy)
        detail = f"forwarded as {copy.queue_id}"
        # The copy carries the recipient's NOTIFY: its reports are the copy's to send.
        return [Delivered(recipient, detail, dsn_passed_on=True) for recipient in recipients]

    async def _copy(
        self, message: QueuedMessage, domain: str, recipients: Sequence[Recipient], what: str
    ) -> QueuedMessage:
        original = message.envelope
        sender = self._rewriting.sender_for(original.mail_from, domain)
        envelope = dataclasses.replace(
            original,
            mail_from=sender,
            recipients=tuple(dataclasses.replace(recipient, route=Route.REMOTE) for recipient in recipients),
            folder=None,
            extra={**original.extra, "forwarded_from": message.queue_id},
        )
        arc_set = await asyncio.to_thread(self._seal, message, domain, what)
        writer = self._spool.put(envelope)
        try:
            await asyncio.to_thread(self._write, writer, message.queue_id, arc_set)
            return await writer.commit()
        except BaseException:
            writer.discard()
            raise

    def _seal(self, message: QueuedMessage, domain: str, what: str) -> bytes:
        content: bytes | None = None
        if message.size <= SEAL_SIZE_LIMIT:
            with self._spool.open(message.queue_id) as stream:
                content = stream.read(SEAL_SIZE_LIMIT + 1)
        return self._sealer.arc_set(content, domain, what=what)

    def _write(self, writer: MessageWriter, queue_id: str, arc_set: bytes) -> None:
        if arc_set:
            writer.write(arc_set)
        with self._spool.open(queue_id) as content:
            while block := content.read(BLOCK_SIZE):
                writer.write(block)
