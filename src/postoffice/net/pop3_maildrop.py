"""A POP3 maildrop: one mailbox's inbox, locked for one session, read and changed through the
:class:`~postoffice.storage.MailboxStore` seam.

Untrusted input seen here: the mailbox address a login resolved to, and the messages' bytes
(sized and copied, never parsed beyond line ends: :mod:`postoffice.pop3.content`). Every
method blocks; the session runs them in a thread.

RFC 1939 §8: "the POP3 server ... acquire[s] an exclusive-access lock on the maildrop"; the
lock comes from a :class:`MaildropLocks`. On one node (:class:`FileLocks`) it is an ``flock`` on
a file of its own under the data directory (named by a hash of the mailbox), so it holds
between the sessions of one process and between worker processes alike, and goes with the
process if it dies; in a cluster the database holds it for every node
(:mod:`postoffice.pgstore.maildrop_locks`). It keeps other POP3 sessions out; deliveries, the
web UI and IMAP go on, and the maildrop is the listing taken at login (RFC 1939 §5: new mail
appears at the next session).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Protocol

from postoffice.errors import MessageGone
from postoffice.maildir.folders import INBOX, folder_of
from postoffice.pop3.content import transmitted_size
from postoffice.pop3.events import Entry
from postoffice.storage import MailboxStore, StoredMessage, with_seen

# Read messages in pieces of this size: a message is never whole in memory.
CHUNK = 64 * 1024
# RFC 1939 §7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
_UID_MAX = 70
# Sizes as sent, by (mailbox, key): a Maildir message's content never changes (only its name
# does), so each is counted once, not at every login. Bounded: past this many, start again.
_SIZES_KEPT = 100_000
_sizes: dict[tuple[str, str], int] = {}
_sizes_lock = threading.Lock()


def transmitted(store: MailboxStore, message: StoredMessage) -> int:
    """The size RETR sends ``message`` with (counted once per message; MessageGone if gone)."""
    known = (message.mailbox, message.key)
    with _sizes_lock:
        size = _sizes.get(known)
    if size is None:
        size = transmitted_size(chunks(store, message))
        with _sizes_lock:
            if len(_sizes) >= _SIZES_KEPT:
                _sizes.clear()
            _sizes[known] = size
    return size


def unique_id(key: str) -> str:
    """The UIDL of the message ``key``: the key itself (a Maildir base name, stable for the
    message's life), or a hash of it where the key is longer than RFC 1939 allows."""
    if 0 < len(key) <= _UID_MAX and all("!" <= char <= "~" for char in key):
        return key
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def chunks(store: MailboxStore, message: StoredMessage) -> Generator[bytes]:
    """The message's bytes in pieces (MessageGone if it is no longer there)."""
    with store.read(message) as file:
        while chunk := file.read(CHUNK):
            yield chunk


class MaildropLock(Protocol):
    """One maildrop's exclusive-access lock, held until released."""

    def release(self) -> None: ...


class MaildropLocks(Protocol):
    """Where the maildrop locks are taken: blocking, run in a thread."""

    def acquire(self, mailbox: str) -> MaildropLock | None:
        """``mailbox``'s lock, or None if another session holds it (RFC 2449 IN-USE)."""
        ...


class FileLock:
    """An ``flock`` held on an open file: closing the file releases it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FileLocks:
    """The maildrop locks of one node: a file per mailbox under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def acquire(self, mailbox: str) -> FileLock | None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = hashlib.sha256(mailbox.encode("utf-8", "surrogateescape")).hexdigest()
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return FileLock(fd)


class Maildrop:
    """One locked inbox: its messages as listed at login, in delivery order."""

    def __init__(self, store: MailboxStore, mailbox: str, lock: MaildropLock) -> None:
        self.store = store
        self.mailbox = mailbox
        self._lock: MaildropLock | None = lock
        self.messages: list[StoredMessage] = []
        self.entries: list[Entry] = []

    @classmethod
    def open(cls, store: MailboxStore, mailbox: str, locks: MaildropLocks) -> Maildrop | None:
        """Lock and list ``mailbox``'s inbox; None if another session holds it (RFC 2449 IN-USE)."""
        lock = locks.acquire(mailbox)
        if lock is None:
            return None
        drop = cls(store, mailbox, lock)
        try:
            drop._list()
        except BaseException:
            drop.close()
            raise
        return drop

    def _list(self) -> None:
        inbox = (
            found for found in self.store.list_messages(self.mailbox) if folder_of(found.location) == INBOX
        )
        listed = sorted(inbox, key=lambda found: (found.received, found.key))
        for message in listed:
            try:
                size = transmitted(self.store, message)
            except MessageGone:
                continue  # removed by another program since the listing
            self.messages.append(message)
            self.entries.append(Entry(unique_id(message.key), size))

    def seen(self, number: int) -> None:
        """RETR marks the message seen (Maildir's ``S`` flag: moved to ``cur/`` with ``:2,S``)."""
        message = self._current(number - 1)
        if message is not None and not message.seen:
            with contextlib.suppress(MessageGone):
                self.messages[number - 1] = self.store.set_flags(message, with_seen(message.flags, True))

    def read(self, number: int) -> Generator[bytes]:
        message = self._current(number - 1)
        if message is None:
            raise MessageGone(f"{self.mailbox}: message {number} is gone")
        self.messages[number - 1] = message
        return chunks(self.store, message)

    def _current(self, index: int) -> StoredMessage | None:
        """The message where it is now (the web UI or IMAP may have flagged it meanwhile)."""
        message = self.messages[index]
        return self.store.find(self.mailbox, message.key, message.location)

    def remove(self, uids: tuple[str, ...]) -> bool:
        """UPDATE (RFC 1939 §6): remove the messages named; False if some could not be."""
        wanted = set(uids)
        removed = True
        for index, entry in enumerate(self.entries):
            if entry.uid not in wanted:
                continue
            message = self._current(index)
            if message is None:
                continue  # gone already: what DELE asked for
            try:
                removed = self.store.expunge(message) and removed
            except OSError:
                removed = False
        return removed

    def close(self) -> None:
        """Give the lock back."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
