"""Watching the Maildirs under a mail root: what other programs change there, as it happens.

Untrusted input seen here: the names of files and directories other programs create, rename
and remove under the mail root, as the kernel reports them. A path is used only if it has the
shape of a message in a mailbox (``<domain>/<local>/new|cur/<name>``, or in a Maildir++ folder
``<domain>/<local>/.Folder/new|cur/<name>``) or of a mailbox directory,
and only if that mailbox is where :func:`~postoffice.maildir.names.mailbox_path` puts its
address (so no symlink leads a consumer out of the root); the rest is ignored.

One thread runs ``watchfiles``: inotify (or the platform's equivalent) where it works, listing
the tree every ``POLL_DELAY_MS`` otherwise (forced by ``WATCHFILES_FORCE_POLLING``, watchfiles'
own setting, or chosen when the native watcher cannot start, e.g. past
``fs.inotify.max_user_watches``). Each batch of events becomes a
:class:`~postoffice.storage.MailboxChanges`: the messages touched, by mailbox and key, with the
names the events gave them, and the mailboxes to look at whole.

A directory appearing or going (a new mailbox or domain, or one removed) names its mailboxes
only after ``GRACE``: files written into a new directory before the kernel watched it bring no
event of their own, so the consumer looks at the whole mailbox once they are there. After the
watch failed and started again, every mailbox is named: what changed meanwhile brought no event.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from postoffice.maildir.folders import INBOX, name_of
from postoffice.maildir.layout import MESSAGE_DIRS, find_mailboxes, key_of
from postoffice.maildir.names import mailbox_address, mailbox_path
from postoffice.storage import MailboxChanges, OnChanges

log = logging.getLogger("postoffice.maildir.watch")

# How long changes are gathered into one batch at most (ms), and how long a quiet spell ends a
# batch early (ms): a consumer sees a change within DEBOUNCE_MS + TICK_MS (+ GRACE for a
# directory), well inside two seconds.
DEBOUNCE_MS = 400
STEP_MS = 50
# How often the consumer is called when nothing changes (ms), for its timed work; also how soon
# a stop is noticed while the watch waits in watchfiles.
TICK_MS = 100
# Seconds a new or removed directory settles before its mailboxes are named (see above).
GRACE = 0.5
# Polling: how often the tree is listed and stat()ed (watchfiles' WATCHFILES_POLL_DELAY_MS
# overrides it). Every file is looked at each time, so not much more often than needed.
POLL_DELAY_MS = 500
# After the watch failed, how long it waits before watching again: doubled at each failure
# in a row, up to RESTART_DELAY_MAX, so a lasting fault logs a line a minute, not a second.
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 60.0
# watchfiles' variable for forcing polling; its values mean what watchfiles says they mean.
FORCE_POLLING_VARIABLE = "WATCHFILES_FORCE_POLLING"


def polling_forced() -> bool:
    """Whether ``WATCHFILES_FORCE_POLLING`` asks for polling (watchfiles' own reading of it)."""
    value = os.environ.get(FORCE_POLLING_VARIABLE, "")
    return bool(value) and value.lower() not in {"false", "disable", "disabled"}


@dataclass
class _Pending:
    """Directories waiting for GRACE: mailbox directories ``(domain, local)`` and domains."""

    mailboxes: dict[tuple[str, str], float] = field(default_factory=dict)
    domains: dict[str, float] = field(default_factory=dict)


class MaildirWatch:
    """The :class:`~postoffice.storage.MailboxWatch` of a Maildir store: one thread calling
    ``on_changes`` with what changed under ``mail_root``. ``force_polling`` None means
    ``WATCHFILES_FORCE_POLLING`` decides."""

    def __init__(self, mail_root: Path, on_changes: OnChanges, *, force_polling: bool | None = None) -> None:
        self.root = mail_root
        # The kernel's paths are absolute (watchfiles makes them so): compare with an absolute root.
        self._watched = os.path.abspath(mail_root)
        self._prefix = self._watched + os.sep
        self._on_changes = on_changes
        self._polling = polling_forced() if force_polling is None else force_polling
        self._stopping = threading.Event()
        self._pending = _Pending()
        self._thread = threading.Thread(target=self._run, name="postoffice-maildir-watch", daemon=True)
        self._watching = threading.Event()  # set once the kernel (or the poller) watches

    @property
    def polling(self) -> bool:
        return self._polling

    @property
    def watching(self) -> threading.Event:
        return self._watching

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        # watchfiles logs each batch at INFO; the server's deliveries would fill the log.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
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
                for events in self._events():
                    if not started:
                        started, delay = True, RESTART_DELAY
                        self._started(rescan=failed)
                    self._on_changes(self._changes(events))
                return  # stopped
            except Exception as exc:
                failed = True
                self._watching.clear()
                error = str(exc) or type(exc).__name__
                if not started and not self._polling:
                    log.warning("event=maildir-watch status=failed error=%r action=polling", error)
                    self._polling = True
                    continue
                log.warning("event=maildir-watch status=failed error=%r action=restart", error)
                self._stopping.wait(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)

    def _events(self) -> Iterator[set[tuple[watchfiles.Change, str]]]:
        return watchfiles.watch(
            self._watched,
            watch_filter=None,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=self._stopping,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
            force_polling=self._polling,
            poll_delay_ms=POLL_DELAY_MS,
            ignore_permission_denied=True,
        )

    def _started(self, *, rescan: bool) -> None:
        log.info("event=maildir-watch status=started mode=%s", "polling" if self._polling else "notify")
        self._watching.set()
        if rescan:
            # Changes made while nothing watched brought no event: look at every mailbox.
            now = time.monotonic()
            for _, box in find_mailboxes(self.root):
                self._pending.mailboxes.setdefault((box.parent.name, box.name), now)

    def _changes(self, events: set[tuple[watchfiles.Change, str]]) -> MailboxChanges:
        """Sort a batch of events into what changed; what is not a Maildir's is dropped."""
        due = time.monotonic() + GRACE
        pending = self._pending
        touched: dict[tuple[str, str], dict[str, set[str]]] = {}
        for change, path in events:
            if not path.startswith(self._prefix):
                continue
            parts = path[len(self._prefix) :].split(os.sep)
            location = _location(parts)
            if location is not None:
                keys = touched.setdefault((parts[0], parts[1]), {})
                keys.setdefault(key_of(parts[-1]), set()).add(location)
            elif change == watchfiles.Change.modified:
                continue  # a directory's own metadata (polling reports a listing's mtime)
            elif len(parts) == 1:
                pending.domains.setdefault(parts[0], due)
            elif len(parts) == 2 or (len(parts) in (3, 4) and _maildir_part(parts[2:])):
                # A mailbox, one of its new/ or cur/, or a Maildir++ folder (or its new/, cur/).
                pending.mailboxes.setdefault((parts[0], parts[1]), due)
        messages = {}
        for where, keys in touched.items():
            address = self._address(where)
            if address is not None:
                messages[address] = keys
        return MailboxChanges(messages, self._settled())

    def _settled(self) -> list[str]:
        """The mailboxes of directories that have waited GRACE, to look at whole."""
        now = time.monotonic()
        pending = self._pending
        for domain in [name for name, due in pending.domains.items() if due <= now]:
            del pending.domains[domain]
            for local in _subdirectories(self.root / domain):
                pending.mailboxes.setdefault((domain, local), now)
        settled: list[str] = []
        for where in [where for where, due in pending.mailboxes.items() if due <= now]:
            if self._stopping.is_set():
                break
            del pending.mailboxes[where]
            address = self._address(where)
            if address is not None:
                settled.append(address)
        return settled

    def _address(self, where: tuple[str, str]) -> str | None:
        """The address whose mailbox is the directory ``where``, if it is one the server would
        use for that address (a name it never makes, or a symlink out of the root, is not)."""
        domain, local = where
        try:
            address = mailbox_address(domain, local)
            if mailbox_path(self.root, address) != self.root / domain / local:
                return None
        except ValueError:
            return None
        # A symlink is not a mailbox here, as for a sync (find_mailboxes): it could lead anywhere.
        if (self.root / domain).is_symlink() or (self.root / domain / local).is_symlink():
            return None
        return address


def _location(parts: list[str]) -> str | None:
    """The message location of a path under the root split in parts: ``<domain>/<local>/`` then
    ``new|cur/<name>``, or ``.Folder/new|cur/<name>`` (Maildir++); None for anything else."""
    inbox = len(parts) == 4 and parts[2] in MESSAGE_DIRS
    folder = len(parts) == 5 and parts[3] in MESSAGE_DIRS and name_of(parts[2]) not in (None, INBOX)
    if not (inbox or folder):
        return None
    where = parts[2:]
    if where[-1].startswith("."):
        return None  # dot files are not messages (the specification)
    return "/".join(where)


def _maildir_part(parts: list[str]) -> bool:
    """``new``/``cur`` of the inbox, or a Maildir++ folder or its ``new``/``cur``."""
    if len(parts) == 1:
        return parts[0] in MESSAGE_DIRS or name_of(parts[0]) not in (None, INBOX)
    return name_of(parts[0]) not in (None, INBOX) and parts[1] in MESSAGE_DIRS


def _subdirectories(path: Path) -> list[str]:
    try:
        with os.scandir(path) as scan:
            return [item.name for item in scan if item.is_dir(follow_symlinks=False)]
    except OSError:
        return []
