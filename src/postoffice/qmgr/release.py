"""Releasing a captured message: sending it on through the outbound path (the relay host or
MX), as a new message in the queue.

Untrusted input seen here: the addresses a person asks for (each parsed as an RFC 5321 path,
one clear line for a wrong one) and the stored message, which is queued as it is but for the
``Return-Path:`` and ``Delivered-To:`` fields our local delivery put on top: a message leaving
must not carry its last Return-Path (RFC 5321 §4.4: the final delivery adds it), and our
Delivered-To would look like a loop to the next hop.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

from postoffice.smtp.grammar import GrammarError, parse_path
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.storage import MessageStore

log = logging.getLogger("postoffice.queue")

MAX_RECIPIENTS = 100
# Our own fields at the top of a delivered copy, each with its continuation lines.
_OUR_FIELDS = re.compile(rb"\A(?:(?:return-path|delivered-to):[^\n]*\n(?:[ \t][^\n]*\n)*)+", re.IGNORECASE)


class ReleaseError(ValueError):
    """The request cannot be queued; the message says why, in one line."""


def _address(text: object, *, sender: bool) -> str:
    if not isinstance(text, str) or len(text) > 320:
        raise ReleaseError("each address must be a string of at most 320 characters")
    try:
        path, rest = parse_path(f"<{text}>", utf8=True, allow_null=sender, allow_postmaster=False)
    except GrammarError as exc:
        raise ReleaseError(f"{text[:80]!r} is not an address: {exc}") from None
    if rest:
        raise ReleaseError(f"{text[:80]!r} is not an address")
    return str(path)


def recipients(to: object) -> tuple[str, ...]:
    if not isinstance(to, list) or not 1 <= len(to) <= MAX_RECIPIENTS:
        raise ReleaseError(f"to must be a list of 1 to {MAX_RECIPIENTS} addresses")
    return tuple(dict.fromkeys(_address(item, sender=False) for item in to))


def sender(text: object) -> str:
    return "" if text in ("", "<>") else _address(text, sender=True)


def outbound(content: bytes) -> bytes:
    """``content`` without our delivery's fields on top."""
    return _OUR_FIELDS.sub(b"", content, count=1)


async def queue_release(
    spool: MessageStore, content: bytes, mail_from: str, to: Sequence[str]
) -> QueuedMessage:
    """Put ``content`` into ``spool`` for ``to`` by the outbound route. The caller hands the
    committed message to the scheduler."""
    envelope = Envelope(
        mail_from=mail_from,
        recipients=tuple(Recipient(address, address, Route.REMOTE) for address in to),
        received_at=time.time(),
        protocol="LOCAL",
    )
    writer = spool.put(envelope)
    try:
        writer.write(outbound(content))
        queued = await writer.commit()
    except BaseException:
        writer.discard()
        raise
    log.info("queue_id=%s event=released from=<%s> to=%s", queued.queue_id, mail_from, ",".join(to))
    return queued
