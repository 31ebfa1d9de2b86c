"""The mailbox store interface: where local delivery puts one copy of a message.

Untrusted input seen here: the recipient address and the message bytes, both from SMTP
clients. An implementation must map the address to storage without letting it pick a location
(:mod:`postoffice.delivery.mailbox_names` does that for directories).

:class:`~postoffice.delivery.maildir.MaildirStore` is the implementation for a local disk; a
store shared by several nodes can replace it without touching the agent or the scheduler.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Protocol


class MailboxStore(Protocol):
    def deliver(
        self,
        address: str,
        headers: bytes,
        content: BinaryIO,
        key: str,
        *,
        received_at: float,
        size: int,
        recovering: bool,
    ) -> Path:
        """Durably store ``headers`` then ``size`` bytes read from ``content`` for ``address``.

        ``key`` names this one delivery (queue ID and recipient) and is the same on every
        attempt: with ``recovering``, a copy already stored under it is returned instead of
        storing a second one. Returns where the message now is.

        Blocking; callers run it in a worker thread. Raises ValueError when the address names
        no valid mailbox (permanent) and OSError for storage trouble (temporary).
        """
        ...
