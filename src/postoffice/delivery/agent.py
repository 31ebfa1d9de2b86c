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
    """Done: stored in a mailbox here, or accepted by the next server (``remote_mta``).

    ``reply`` is the next server's acceptance, quoted in a success DSN. ``dsn_passed_on`` is
    true when that server supports DSN and was given NOTIFY, so that reporting success is now
    its job (RFC 3461 §5.2.2: the relaying MTA sends no "relayed" DSN then).
    """

    recipient: Recipient
    detail: str = ""
    remote_mta: str | None = None
    reply: Reply | None = None
    dsn_passed_on: bool = False


@dataclass(frozen=True, slots=True)
class TempFail:
    """Try again later (RFC 5321 §4.5.4.1 retry strategy).

    ``remote_mta`` names the server that gave ``reply``; None when the reply is ours.
    """

    recipient: Recipient
    reply: Reply
    remote_mta: str | None = None


@dataclass(frozen=True, slots=True)
class PermFail:
    """Never going to work: the sender gets a bounce (RFC 3464)."""

    recipient: Recipient
    reply: Reply
    remote_mta: str | None = None


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
