"""Keep the index in line with what other programs do to the mailboxes: flags, deletions, files
dropped in.

Untrusted input seen here: the changes a mailbox store's watch reports (for Maildirs, names
other programs give to files, checked by :mod:`postoffice.maildir.watch` before they get here),
and the messages they hold, parsed by the index.

The mailboxes are the truth: when Dovecot marks a message ``\\Seen`` (renaming it to ``:2,S``),
expunges it, or a person drops a file into ``new/``, the index follows within a second or two
and the change is announced like any other. The store's watch
(:meth:`~postoffice.storage.MailboxStore.watch`) runs a thread and tells this watcher what
changed; the watcher follows each mailbox (:func:`~postoffice.web.follow.follow_mailbox`).

The server delivers hundreds of messages a second into the same mailboxes and indexes them
itself, so the common change is one the index already knows at the same location: a look up by
key and one ``stat``, never a parse. A message the index does not know waits ``GRACE`` seconds
before the watcher indexes it itself, for the server's own indexing gets there first; if
indexing fell behind, the index skips what the watcher did.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence

from postoffice.storage import MailboxChanges
from postoffice.web.follow import follow_mailbox
from postoffice.web.index import Change, MailIndex

log = logging.getLogger("postoffice.web.watch")

# Seconds a message the index does not know waits before the watcher indexes it itself: the
# server's own deliveries are indexed within about 0.1 s (INDEX_LINGER plus a transaction).
GRACE = 0.5

Announce = Callable[[Sequence[Change]], None]


class MaildirWatcher:
    """Keeps ``index`` in line with its store's mailboxes through the store's watch.

    ``announce`` is called (in the watch's thread) with the changes of each batch; the changes
    are also journalled in the index for other processes. ``force_polling`` goes to the watch.
    """

    def __init__(
        self, index: MailIndex, *, announce: Announce | None = None, force_polling: bool | None = None
    ) -> None:
        self.index = index
        self._announce = announce
        self._stopping = threading.Event()
        self._cache_set = False
        # Keys not known to the index when they changed, with their locations: (due, mailbox, keys).
        self._waiting: deque[tuple[float, str, dict[str, set[str]]]] = deque()
        self._watch = index.store.watch(self._changed, force_polling=force_polling)

    def start(self) -> None:
        self._watch.start()

    @property
    def polling(self) -> bool:
        return self._watch.polling

    @property
    def watching(self) -> threading.Event:
        """Set once the store's watch watches."""
        return self._watch.watching

    @property
    def running(self) -> bool:
        return self._watch.running

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching; returns once the watch has ended (within ``timeout`` seconds)."""
        self._stopping.set()
        self._watch.stop(timeout)

    def _changed(self, changes: MailboxChanges) -> None:
        """The watch's call (in its thread), with each batch and at each tick."""
        if not self._cache_set:
            # It indexes what the server's own indexing has not reached in GRACE: under a load
            # of 100 KB messages, enough to fill SQLite's default cache with their pages.
            self._cache_set = True
            with contextlib.suppress(RuntimeError, sqlite3.Error):  # closed: _follow says so
                self.index.keep_cache_small()
        now = time.monotonic()
        for mailbox, keys in changes.messages.items():
            followed = self._follow(mailbox, keys, add_new=False)
            if followed:
                self._waiting.append((now + GRACE, mailbox, followed))
        waiting = self._waiting
        while waiting and waiting[0][0] <= now and not self._stopping.is_set():
            _, mailbox, unknown = waiting.popleft()
            self._follow(mailbox, unknown, add_new=True)
        for mailbox in changes.mailboxes:
            if self._stopping.is_set():
                return
            self._follow(mailbox, None, add_new=True)

    def _follow(
        self, mailbox: str, keys: Mapping[str, Collection[str]] | None, *, add_new: bool
    ) -> dict[str, set[str]]:
        """Follow one mailbox (all of it for ``keys`` None); returns the keys left waiting."""
        index = self.index
        try:
            if keys is None and index.store.has_mailbox(mailbox):
                index.register_mailbox(mailbox)
            followed = follow_mailbox(index, mailbox, keys, add_new=add_new)
            if keys is None and not index.store.has_mailbox(mailbox):
                index.forget_mailbox(mailbox)
        except Exception as exc:
            # The mailbox is untouched; the next change to it (or the next start) tries again.
            log.warning("event=maildir-follow status=failed mailbox=%r error=%r", mailbox, str(exc))
            return {}
        if followed.changes and self._announce is not None:
            self._announce(followed.changes)
        return followed.unknown
