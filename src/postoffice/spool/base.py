"""The spool interface: what the SMTP session and the scheduler need from durable storage.

Untrusted input seen here: message bytes from SMTP clients, written as opaque data.

A second backend (say, PostgreSQL shared by several nodes) implements these two protocols and
nothing in :mod:`postoffice.net` or :mod:`postoffice.smtp` changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, BinaryIO, Protocol, TypeVar

from postoffice.spool.envelope import Envelope, QueuedMessage
from postoffice.spool.state import QueueState

T = TypeVar("T")


class MessageWriter(Protocol):
    """Streams one incoming message into the spool; nothing is visible until :meth:`commit`."""

    @property
    def queue_id(self) -> str: ...

    def write(self, data: bytes) -> None:
        """Append message bytes. Raises StorageFullError (ENOSPC/EROFS) or SpoolError."""

    def prepend(self, data: bytes) -> None:
        """Put header field lines (each ending in CRLF) above everything written or prepended
        so far: trace fields (``Received:``) before the content, ``Authentication-Results:``
        and the like at its end. Allowed until :meth:`commit`, and cheap at any time: the
        writer places them without copying the content (see
        :meth:`~postoffice.spool.files.FileMessageWriter.prepend`)."""

    def read_content(self) -> BinaryIO:
        """The message as stored so far, from its first octet: what checks at the end of the
        message read (fields prepended after the content began are not in it yet)."""
        ...

    async def commit(self) -> QueuedMessage:
        """Make the message durable (data and directory fsync'd) and queue it.

        Only after this returns may the server answer 250 (RFC 5321 §6.1: the receiver
        "accepts responsibility" with that reply).
        """
        ...

    def discard(self) -> None:
        """Drop the partial message; safe to call twice and after a failed commit."""


class Receiver(Protocol):
    """Where an SMTP session stores an incoming message: a :class:`Spool`, or something that
    delivers some messages at once and hands the rest to one."""

    def new_message(self, envelope: Envelope) -> MessageWriter: ...


class Spool(Protocol):
    """Durable message storage: accepted mail stays here until every recipient is final."""

    def new_message(self, envelope: Envelope) -> MessageWriter: ...

    def pending(self) -> list[str]:
        """Queue IDs committed but not completed, oldest first (used at start-up)."""
        ...

    def load(self, queue_id: str) -> QueuedMessage: ...

    def open_content(self, queue_id: str) -> BinaryIO:
        """The message bytes, positioned at the start of the message."""
        ...

    def complete(self, queue_id: str) -> None:
        """Every recipient has a final result: forget the message (and its state)."""

    def exists(self, queue_id: str) -> bool:
        """Whether the message is still queued (an operator may have deleted it)."""
        ...

    def read_state(self, queue_id: str) -> QueueState:
        """What delivery has recorded for the message; empty when nothing yet."""
        ...

    def append_state(self, queue_id: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Durably add records (:mod:`postoffice.spool.state`) to the message's state."""


class Blocking(Protocol):
    """Runs a blocking spool call off the event loop (``asyncio.to_thread``, ``IoPool.run``).

    :class:`Spool` calls wait for the disk; a caller on an event loop runs them through one of
    these rather than on the loop itself.
    """

    def __call__(self, call: Callable[[], T], /) -> Awaitable[T]: ...
