"""What a delivery agent promises: per-recipient results for one queued message.

Untrusted input seen here: recipient addresses (already validated by the SMTP grammar).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from postoffice.smtp.replies import Reply
from postoffice.spool.envelope import QueuedMessage, Recipient


@dataclass(frozen=True, slots=True)
class Delivered:
    recipient: Recipient
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TempFail:
    """Try again later (RFC 5321 §4.5.4.1 retry strategy)."""

    recipient: Recipient
    reply: Reply


@dataclass(frozen=True, slots=True)
class PermFail:
    """Never going to work: the sender gets a bounce (RFC 3464)."""

    recipient: Recipient
    reply: Reply


DeliveryResult = Delivered | TempFail | PermFail


class DeliveryAgent(Protocol):
    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
    ) -> list[DeliveryResult]:
        """Deliver ``message`` to ``recipients``; exactly one result per recipient, in order.

        ``recovering`` is true when an earlier attempt may have partly happened (after a crash):
        agents then check for copies already delivered, so that each recipient gets it once.
        """
        ...
