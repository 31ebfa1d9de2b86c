"""The storage seam: the two protocols through which everything that keeps mail is reached.

Untrusted input seen here: none; these are interfaces and value types. What an implementation
sees (message bytes from SMTP clients, addresses, names other programs give to files) its own
module says.

:class:`MessageStore` is the queue: accepted mail, durable before the 250 and kept until every
recipient has a final result (``put`` a message, ``open`` it again, ``complete`` it). The SMTP
session needs only :class:`Receiver` (``put``), the queue manager the whole store.

:class:`MailboxStore` is the mailboxes: local delivery ``deliver``\\ s a copy into one; the web
side (and IMAP or POP3 later) ``list``\\ s, ``read``\\ s, sets flags on and ``expunge``\\ s what
they hold, and follows what other programs change there (``watch``).

The embedded implementations are :class:`postoffice.spool.files.FileSpool` (one file per
message) and :class:`postoffice.maildir.store.MaildirStore` (Maildirs under a mail root); a
backend shared by several nodes (PostgreSQL) implements the same protocols, and the queue
manager, the delivery agents, the web index and the SMTP session do not change.
"""

from __future__ import annotations

import string
import threading
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, TypeVar

from postoffice.spool.envelope import Envelope, QueuedMessage
from postoffice.spool.state import QueueState

T = TypeVar("T")

# The flag a reader sets on a message it has seen (Maildir's "S", IMAP's \Seen, RFC 9051 §2.3.2).
SEEN = "S"


def with_seen(flags: str, seen: bool) -> str:
    """``flags`` with the seen flag set (``seen``) or cleared."""
    return flags.replace(SEEN, "") + (SEEN if seen else "")


# IMAP keywords (RFC 9051 §2.3.2) are numbered per folder, and a message's flags carry the
# lower-case letter of each number it has ("a" for 0): 26 a folder at most, as Maildir allows.
KEYWORD_LETTERS = string.ascii_lowercase


def number_keywords(
    known: Sequence[str], names: Collection[str], *, add: bool
) -> tuple[list[str] | None, str]:
    """The letters of keywords ``names`` among a folder's ``known`` ones (by number, ``""`` for a
    number not in use; matched without regard to case), and, when ``add`` numbered unknown ones
    (the next free numbers, in name order; past 26 they are dropped), the list to store, else
    None. Every store numbers keywords with this, so they get the same letters in each."""
    numbered = list(known)
    by_name = {name.casefold(): index for index, name in enumerate(numbered) if name}
    missing = [name for name in names if name.casefold() not in by_name]
    changed = False
    if add:
        for name in sorted(missing):  # the same numbers whatever order a set gives
            free = numbered.index("") if "" in numbered else len(numbered)
            if free >= len(KEYWORD_LETTERS):
                break
            numbered[free : free + 1] = [name]
            by_name[name.casefold()] = free
            changed = True
    indexes = {by_name[name.casefold()] for name in names if name.casefold() in by_name}
    return (numbered if changed else None), "".join(KEYWORD_LETTERS[index] for index in sorted(indexes))


# --- the queue ------------------------------------------------------------------------------------


class MessageWriter(Protocol):
    """Streams one incoming message into the store; nothing is visible until :meth:`commit`."""

    @property
    def queue_id(self) -> str: ...

    def write(self, data: bytes) -> None:
        """Append message bytes. Raises StorageFullError (ENOSPC/EROFS) or SpoolError."""

    def prepend(self, data: bytes) -> None:
        """Put header field lines (each ending in CRLF) above everything written or prepended
        so far: trace fields (``Received:``) before the content, ``Authentication-Results:``
        and the like at its end. Allowed until :meth:`commit`, and cheap at any time: the
        writer places them without copying the content where it can (see
        :meth:`~postoffice.spool.writer.FileMessageWriter.prepend`)."""

    def overwrite(self, offset: int, data: bytes) -> None:
        """Replace ``len(data)`` octets of the content, ``offset`` octets from the start of what
        :meth:`read_content` returns, in place: a header field renamed to a name of the same
        length (a forged Authentication-Results, RFC 8601 §5), at no copy of the content. Only
        before fields are prepended at the end of the message."""

    def file_into(self, folder: str) -> None:
        """Local copies of this message go to the mailbox's ``folder`` (DMARC quarantine:
        "Junk"), recorded with the message before :meth:`commit`."""

    def read_content(self) -> BinaryIO:
        """The message as stored so far, from its first octet: what checks at the end of the
        message read (fields prepended once the content began may or may not be in it)."""
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
    """Where an SMTP session puts an incoming message: a :class:`MessageStore`, or something
    that delivers some messages at once and puts the rest into one."""

    def put(self, envelope: Envelope) -> MessageWriter:
        """Start storing a message for ``envelope``; StorageFullError when storage is full."""
        ...


class MessageStore(Receiver, Protocol):
    """Durable message storage: accepted mail stays here until every recipient is final."""

    def pending(self) -> list[str]:
        """Queue IDs committed but not completed, oldest first (used at start-up)."""
        ...

    def load(self, queue_id: str) -> QueuedMessage: ...

    def open(self, queue_id: str) -> BinaryIO:
        """The message bytes, positioned at the start of the message."""
        ...

    def complete(self, queue_id: str) -> None:
        """Every recipient has a final result: forget the message (and its state). The removal
        may be lost in a crash until :meth:`flush_removals`."""

    def flush_removals(self) -> None:
        """Make every :meth:`complete` so far durable (one flush for many)."""

    def exists(self, queue_id: str) -> bool:
        """Whether the message is still queued (an operator may have deleted it)."""
        ...

    def read_state(self, queue_id: str) -> QueueState:
        """What delivery has recorded for the message; empty when nothing yet."""
        ...

    def append_state(self, queue_id: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Durably add records (:mod:`postoffice.spool.state`) to the message's state."""


class Blocking(Protocol):
    """Runs a blocking store call off the event loop (``asyncio.to_thread``, ``IoPool.run``).

    :class:`MessageStore` calls wait for the disk; a caller on an event loop runs them through
    one of these rather than on the loop itself.
    """

    def __call__(self, call: Callable[[], T], /) -> Awaitable[T]: ...


# --- the mailboxes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message in a mailbox, as its store names it.

    ``mailbox`` is the canonical address (:func:`postoffice.addresses.canonical`); ``key`` names
    the message in its mailbox for its whole life; ``location`` is where the store keeps it now
    (for a Maildir ``new/NAME`` or ``cur/NAME:2,FLAGS``), which changes with its flags and is the
    first place to look for it; ``flags`` are its flag letters in ASCII order (Maildir's: "S"
    seen, "R" replied, "F" flagged, "T" trashed, "D" draft); ``received`` is when it was
    delivered (Unix time).
    """

    mailbox: str
    key: str
    location: str
    flags: str = ""
    received: float = 0.0

    @property
    def seen(self) -> bool:
        return SEEN in self.flags


@dataclass(frozen=True, slots=True)
class MailboxChanges:
    """What another program (or a delivery) changed in the mailboxes, as a watch saw it.

    ``messages``: mailbox -> key -> the locations the change was seen at (the message may have
    arrived, moved, or gone: look). ``mailboxes``: mailboxes that may have changed as a whole
    (made, removed, or changed while nobody watched): look at everything in them.
    """

    messages: Mapping[str, Mapping[str, Collection[str]]] = field(default_factory=dict)
    mailboxes: Collection[str] = ()


OnChanges = Callable[[MailboxChanges], None]


@dataclass(frozen=True, slots=True)
class FolderListing:
    """What a mail client sees of one folder (IMAP, RFC 9051 §2.3.1.1): its UIDVALIDITY, the
    next UID it will give, and its messages with their UIDs, in ascending UID order. UIDs are
    kept by the store, durably: the same message has the same UID after a restart."""

    uidvalidity: int
    uidnext: int
    messages: Sequence[tuple[int, StoredMessage]]
    # CONDSTORE (RFC 7162): the highest mod-sequence, and each message's (by UID), raised each
    # time its flags change.
    highestmodseq: int = 1
    modseqs: Mapping[int, int] = field(default_factory=dict)


class MailboxWatch(Protocol):
    """A running watch of a :class:`MailboxStore` (see :meth:`MailboxStore.watch`)."""

    @property
    def polling(self) -> bool:
        """Whether changes are found by looking again and again rather than being told."""
        ...

    @property
    def watching(self) -> threading.Event:
        """Set while changes are being followed."""
        ...

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching; returns once the watch has ended (within ``timeout`` seconds)."""


class PendingMessage(Protocol):
    """A message being written a piece at a time (an APPEND literal too big to hold): given to
    :meth:`MailboxStore.add` once whole, or discarded. A write that fails is remembered (add
    raises it) so the rest of the literal can still be read and dropped."""

    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def discard(self) -> None:
        """Forget it (nothing if it was added already)."""


class MailboxStore(Protocol):
    """The mailboxes of local users, addressed by mail address, never by a path.

    Methods block (callers on an event loop run them in a thread). ValueError means the address
    names no mailbox this store could hold (permanent); OSError is trouble with the storage
    (temporary); :class:`~postoffice.errors.MessageGone` means a message is no longer where it
    was (another program moved or removed it): find it again.
    """

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
        folder: str | None = None,
    ) -> StoredMessage:
        """Durably store ``headers`` then ``size`` bytes read from ``content`` for ``address``
        (into its ``folder``, "Junk" say, when given; else its inbox).

        ``key`` names this one delivery (queue ID and recipient) and is the same on every
        attempt: with ``recovering``, a copy already stored under it is returned instead of
        storing a second one.
        """
        ...

    def describe(self, message: StoredMessage) -> str:
        """Where ``message`` is, for a log line or a report ("maildir /srv/mail/...")."""
        ...

    def mailbox_name(self, address: str) -> str | None:
        """The name the store knows ``address``'s mailbox by (its canonical form); None if
        the address names no mailbox this store could hold."""
        ...

    def mailboxes(self) -> Iterator[str]:
        """Every mailbox there is, by name."""
        ...

    def has_mailbox(self, address: str) -> bool: ...

    def list_messages(self, address: str) -> list[StoredMessage]:
        """Every message in ``address``'s mailbox, its folders' too (none if it has no mailbox
        yet); a message's location says its folder (``.Junk/cur/NAME``, maildir/folders.py)."""
        ...

    def look_up(self, address: str, candidates: Mapping[str, Sequence[str]]) -> dict[str, StoredMessage]:
        """For each key of ``candidates``, the message at the first of its locations that still
        holds it; keys found at none are left out. Cheap: no listing."""
        ...

    def find(self, address: str, key: str, location: str | None = None) -> StoredMessage | None:
        """Message ``key``: at ``location`` if it is still there, else wherever it is now."""
        ...

    def read(self, message: StoredMessage) -> BinaryIO:
        """The message's bytes (headers first), from its location; MessageGone if not there."""
        ...

    def set_flags(self, message: StoredMessage, flags: str) -> StoredMessage:
        """Give ``message`` exactly ``flags``; returns it as it is now (MessageGone if moved)."""
        ...

    def expunge(self, message: StoredMessage) -> bool:
        """Remove the message for good; False if it was not at its location."""
        ...

    def folders(self, address: str) -> list[str]:
        """The folders of ``address``'s mailbox by name ("INBOX" first, then "Junk", "Archive/2024",
        ...: maildir/folders.py names them)."""
        ...

    def move(self, message: StoredMessage, folder: str) -> StoredMessage:
        """Move ``message`` into ``folder`` of its mailbox (made if missing), keeping its key and
        flags; returns it where it is now. ValueError for a name no folder can have."""
        ...

    # --- what mail clients (IMAP) do: folder None is the inbox ----------------------------------

    def create_folder(self, address: str, folder: str) -> None:
        """Make ``folder``: FileExistsError if it exists, ValueError for a name it cannot have."""

    def delete_folder(self, address: str, folder: str) -> None:
        """Remove ``folder`` and its messages; FileNotFoundError if there is none."""

    def rename_folder(self, address: str, old: str, new: str) -> None:
        """Rename ``old`` (with its subfolders) to ``new``."""

    def subscriptions(self, address: str) -> list[str] | None:
        """The folders the user subscribed to (IMAP SUBSCRIBE, "INBOX" among them if it is);
        None if the user never chose (then every folder counts as subscribed)."""
        ...

    def set_subscriptions(self, address: str, folders: Collection[str]) -> None:
        """Remember exactly ``folders`` as subscribed, durably."""

    def listing(self, address: str, folder: str | None) -> FolderListing:
        """The folder's messages with their UIDs (new ones get theirs now); FileNotFoundError
        if the folder does not exist."""
        ...

    def keywords(self, address: str, folder: str | None) -> list[str]:
        """The folder's keywords, by the number a message's lower-case flag letter stands for
        (``a`` is 0); ``""`` for a number not in use."""
        ...

    def keyword_letters(self, address: str, folder: str | None, names: Collection[str], *, add: bool) -> str:
        """The flag letters of keywords ``names`` in ``folder``; with ``add``, unknown ones are
        numbered now (26 a folder at most; past that they are not kept)."""
        ...

    def begin_append(self, address: str, folder: str | None) -> PendingMessage:
        """A message to be written as it arrives (a big APPEND literal), in ``folder`` when it
        exists, else where :meth:`add` can still move it to any folder of the mailbox."""
        ...

    def add(
        self,
        address: str,
        folder: str | None,
        content: bytes | PendingMessage,
        *,
        flags: str,
        received: float,
    ) -> tuple[int, StoredMessage]:
        """Store ``content`` in ``folder`` (a client's APPEND), durably; its UID and message.
        A PendingMessage is published as it is (its write errors raised now), not copied."""
        ...

    def copy(self, message: StoredMessage, folder: str | None, *, move: bool) -> tuple[int, StoredMessage]:
        """Copy (or with ``move``, move) ``message`` into ``folder`` of its mailbox with its
        flags; its UID and message there. MessageGone if it is not where it was."""
        ...

    def watch(self, on_changes: OnChanges, *, force_polling: bool | None = None) -> MailboxWatch:
        """A watch (not started) calling ``on_changes`` in its own thread with each batch of
        changes made to the mailboxes, and with an empty batch at least every few tenths of a
        second while nothing changes (so that timed work can run). ``force_polling`` None: the
        store chooses."""
        ...
