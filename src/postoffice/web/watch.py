"""Follow what other programs do to the Maildirs: flags, deletions, files dropped in.

Untrusted input seen here: the names of files and directories other programs create, rename
and remove under the mail root, as the kernel reports them. A path is used only if it has the
shape of a message in a mailbox (``<domain>/<local>/new|cur/<name>``) or of a mailbox directory,
and only if that mailbox is where :func:`~postoffice.delivery.mailbox_names.mailbox_path` puts
its address (so no symlink leads the index out of the root); the rest is ignored.

The Maildirs are the truth: when Dovecot marks a message ``\\Seen`` (renaming it to ``:2,S``),
expunges it, or a person drops a file into ``new/``, the index follows within a second or two
and the change is announced like any other. One thread per index runs ``watchfiles``: inotify
(or the platform's equivalent) where it works, listing the tree every ``POLL_DELAY_MS``
otherwise (forced by ``WATCHFILES_FORCE_POLLING``, watchfiles' own setting, or chosen when the
native watcher cannot start, e.g. past ``fs.inotify.max_user_watches``).

The server delivers hundreds of messages a second into the same Maildirs and indexes them
itself, so the common event is one the index already knows at the same name: a look up by key
and one ``stat``, never a parse (:func:`~postoffice.web.follow.follow_mailbox`). A file the index
does not know waits ``GRACE`` seconds before the watcher indexes it itself, for the server's
own indexing gets there first; if indexing fell behind, the index skips what the watcher did.

A directory appearing or going (a new mailbox or domain, or one removed) makes the watcher
reconcile the whole mailbox after ``GRACE``: files written into a new directory before the
kernel watched it bring no event of their own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from postoffice.delivery.mailbox_names import mailbox_address
from postoffice.web.follow import follow_mailbox
from postoffice.web.index import Change, MailIndex, find_maildirs
from postoffice.web.maildir import key_of

log = logging.getLogger("postoffice.web.watch")

# How long changes are gathered into one batch at most (ms), and how long a quiet spell ends a
# batch early (ms): a batch costs one query per mailbox, and a person sees a change within
# DEBOUNCE_MS + GRACE + TICK_MS, well inside two seconds.
DEBOUNCE_MS = 400
STEP_MS = 50
# How often the watcher looks at what waits for GRACE when nothing changes (ms); also how soon
# a stop is noticed while the watcher waits in watchfiles.
TICK_MS = 100
# Seconds a file the index does not know waits before the watcher indexes it itself: the
# server's own deliveries are indexed within about 0.1 s (INDEX_LINGER plus a transaction).
GRACE = 0.5
# Polling: how often the tree is listed and stat()ed (watchfiles' WATCHFILES_POLL_DELAY_MS
# overrides it). Every file is looked at each time, so not much more often than needed.
POLL_DELAY_MS = 500
# After the watcher failed, how long it waits before watching again: doubled at each failure
# in a row, up to RESTART_DELAY_MAX, so a lasting fault logs a line a minute, not a second.
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 60.0
# watchfiles' variable for forcing polling; its values mean what watchfiles says they mean.
FORCE_POLLING_VARIABLE = "WATCHFILES_FORCE_POLLING"

_MESSAGE_DIRS = ("new", "cur")

Announce = Callable[[Sequence[Change]], None]


def polling_forced() -> bool:
    """Whether ``WATCHFILES_FORCE_POLLING`` asks for polling (watchfiles' own reading of it)."""
    value = os.environ.get(FORCE_POLLING_VARIABLE, "")
    return bool(value) and value.lower() not in {"false", "disable", "disabled"}


@dataclass
class _Work:
    """Changes waiting to be applied: keys touched per mailbox directory ``(domain, local)``
    with the names events gave them, keys waiting for GRACE, directories to reconcile."""

    touched: dict[tuple[str, str], dict[str, set[str]]] = field(default_factory=dict)
    waiting: deque[tuple[float, tuple[str, str], dict[str, set[str]]]] = field(default_factory=deque)
    mailboxes: dict[tuple[str, str], float] = field(default_factory=dict)
    domains: dict[str, float] = field(default_factory=dict)


class MaildirWatcher:
    """One thread keeping ``index`` in line with the Maildirs under its mail root.

    ``announce`` is called (in the watcher's thread) with the changes of each batch; the
    changes are also journalled in the index for other processes. ``force_polling`` None means
    ``WATCHFILES_FORCE_POLLING`` decides.
    """

    def __init__(
        self, index: MailIndex, *, announce: Announce | None = None, force_polling: bool | None = None
    ) -> None:
        self.index = index
        self.root = index.mail_root
        # The kernel's paths are absolute (watchfiles makes them so): compare with an absolute root.
        self._watched = os.path.abspath(index.mail_root)
        self._prefix = self._watched + os.sep
        self._announce = announce
        self.polling = polling_forced() if force_polling is None else force_polling
        self._stopping = threading.Event()
        self._work = _Work()
        self._thread = threading.Thread(target=self._run, name="postoffice-maildir-watch", daemon=True)
        self.watching = threading.Event()  # set once the kernel (or the poller) watches

    def start(self) -> None:
        # watchfiles logs each batch at INFO; the server's deliveries would fill the log.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching; returns once the thread has ended (within ``timeout`` seconds)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("event=maildir-watch status=stop-timeout seconds=%.0f", timeout)

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        failed = False
        delay = RESTART_DELAY
        while not self._stopping.is_set():
            started = False
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                for changes in self._changes():
                    if not started:
                        started, delay = True, RESTART_DELAY
                        self._started(rescan=failed)
                    self._take(changes)
                    self._apply()
                return  # stopped
            except Exception as exc:
                failed = True
                self.watching.clear()
                error = str(exc) or type(exc).__name__
                if not started and not self.polling:
                    log.warning("event=maildir-watch status=failed error=%r action=polling", error)
                    self.polling = True
                    continue
                log.warning("event=maildir-watch status=failed error=%r action=restart", error)
                self._stopping.wait(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)

    def _changes(self) -> Iterator[set[tuple[watchfiles.Change, str]]]:
        return watchfiles.watch(
            self._watched,
            watch_filter=None,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=self._stopping,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
            force_polling=self.polling,
            poll_delay_ms=POLL_DELAY_MS,
            ignore_permission_denied=True,
        )

    def _started(self, *, rescan: bool) -> None:
        log.info("event=maildir-watch status=started mode=%s", "polling" if self.polling else "notify")
        self.watching.set()
        if rescan:
            # Changes made while nothing watched brought no event: look at every mailbox.
            now = time.monotonic()
            for _, box in find_maildirs(self.root):
                self._work.mailboxes.setdefault((box.parent.name, box.name), now)

    def _take(self, changes: set[tuple[watchfiles.Change, str]]) -> None:
        """Sort a batch of events into the work to do; what is not a Maildir's is dropped."""
        due = time.monotonic() + GRACE
        work = self._work
        for change, path in changes:
            if not path.startswith(self._prefix):
                continue
            parts = path[len(self._prefix) :].split(os.sep)
            if len(parts) == 4 and parts[2] in _MESSAGE_DIRS:
                name = parts[3]
                if not name.startswith("."):  # dot files are not messages (the specification)
                    keys = work.touched.setdefault((parts[0], parts[1]), {})
                    keys.setdefault(key_of(name), set()).add(f"{parts[2]}/{name}")
            elif change == watchfiles.Change.modified:
                continue  # a directory's own metadata (polling reports a listing's mtime)
            elif len(parts) == 1:
                work.domains.setdefault(parts[0], due)
            elif len(parts) == 2 or (len(parts) == 3 and parts[2] in _MESSAGE_DIRS):
                work.mailboxes.setdefault((parts[0], parts[1]), due)

    # -- applying ----------------------------------------------------------------------------------

    def _apply(self) -> None:
        now = time.monotonic()
        work = self._work
        touched, work.touched = work.touched, {}
        for where, keys in touched.items():
            followed = self._follow(where, keys, add_new=False)
            if followed:
                work.waiting.append((now + GRACE, where, followed))
        while work.waiting and work.waiting[0][0] <= now and not self._stopping.is_set():
            _, where, keys = work.waiting.popleft()
            self._follow(where, keys, add_new=True)
        for domain in [name for name, due in work.domains.items() if due <= now]:
            del work.domains[domain]
            for local in _subdirectories(self.root / domain):
                work.mailboxes.setdefault((domain, local), now)
        for where in [where for where, due in work.mailboxes.items() if due <= now]:
            if self._stopping.is_set():
                return
            del work.mailboxes[where]
            self._follow(where, None, add_new=True)

    def _follow(
        self, where: tuple[str, str], keys: dict[str, set[str]] | None, *, add_new: bool
    ) -> dict[str, set[str]]:
        """Follow one mailbox directory; returns the keys left waiting for GRACE."""
        address = self._address(where)
        if address is None:
            return {}
        try:
            if keys is None:
                self._register(address, where)
            followed = follow_mailbox(self.index, address, keys, add_new=add_new)
            if keys is None and not (self.root.joinpath(*where) / "cur").is_dir():
                self.index.forget_mailbox(address)
        except Exception as exc:
            # The Maildir is untouched; the next change to it (or the next start) tries again.
            log.warning("event=maildir-follow status=failed mailbox=%r error=%r", address, str(exc))
            return {}
        if followed.changes and self._announce is not None:
            self._announce(followed.changes)
        return followed.unknown

    def _register(self, address: str, where: tuple[str, str]) -> None:
        if (self.root.joinpath(*where) / "cur").is_dir():
            self.index.register_mailbox(address)

    def _address(self, where: tuple[str, str]) -> str | None:
        """The address whose mailbox is the directory ``where``, if it is one the server would
        use for that address (a name it never makes, or a symlink out of the root, is not)."""
        domain, local = where
        try:
            address = mailbox_address(domain, local)
            if self.index.maildir_of(address) != self.root / domain / local:
                return None
        except ValueError:
            return None
        # A symlink is not a mailbox here, as for a sync (find_maildirs): it could lead anywhere.
        if (self.root / domain).is_symlink() or (self.root / domain / local).is_symlink():
            return None
        return address


def _subdirectories(path: Path) -> list[str]:
    try:
        with os.scandir(path) as scan:
            return [item.name for item in scan if item.is_dir(follow_symlinks=False)]
    except OSError:
        return []
