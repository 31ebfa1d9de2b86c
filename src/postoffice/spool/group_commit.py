"""Group commit: the spool and mailbox commits that finish together share one flush.

Untrusted input seen here: none; callers hand over descriptors of files they wrote and functions
that rename them.

Every accepted message needs two things on disk before its 250 (:mod:`postoffice.durable`): its
data, before the rename that names it (so the name never points at a partial file), and then
the name. Done file by file that is an ``fsync`` of the file and one of its directory per
message, each waiting for the disk. :class:`GroupCommit` runs the same recipe with the flushes
shared: a commit writes its file without flushing it, and waits for the next ``syncfs(2)`` of
the file system, which one thread makes for every commit waiting at that moment; then it renames
the file and waits for the next ``syncfs`` again. A ``syncfs`` that *starts* after a commit
began waiting covers what that commit wrote and renamed (it writes back every dirty page and
inode of the file system and commits its journal), so each commit keeps the order the recipe
needs (data, rename, name) and nothing is answered before its own bytes and name are on disk.
The renames of one batch and the data of the next go to disk in the same ``syncfs``: under load
the file system is flushed once per window for all of them, not twice per message.

The window adapts to the load, as a database's group commit does. One commit alone is flushed
at once (no waiting when idle). When several are under way, the flushing thread waits until each
of them is waiting too, at most as long as the previous flush took and never more than
:data:`MAX_WINDOW`, so the stragglers of a burst join this flush instead of paying for the next.

Why ``syncfs`` rather than a journal of segment files: the spool file, or for direct delivery
the Maildir file, *is* the durable copy; a journal would write every message twice and need a
replay that rewrites files at start-up, where this keeps the files, their recovery and every
guarantee exactly as the per-file recipe gives them, and changes only how many flushes pay for
them. Its cost: ``syncfs`` also writes back other programs' dirty data on the same file system,
so a file system shared with a heavy writer makes each flush longer (the window still shares
it), and it waits for the kernel's write-back worker, which must be scheduled on the cores the
server uses: on a busy machine a ``syncfs`` took several times an ``fsync``, and group commit
lost where it had won on a quieter one (docs/delivery.md, Group commit). So it is a setting,
``[queue] group_commit``, off by default. A file on another file system than the spool's (a
mail root mounted elsewhere) is made durable file by file, as before: ``syncfs`` of the spool's would not cover it. So is everything
where ``syncfs`` is missing (not Linux) or cannot report a failed write-back (Linux before 5.8).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from postoffice.durable import commit_file

log = logging.getLogger("postoffice.spool")

# The longest a flush waits for commits still under way to join it: a few milliseconds, far
# below a client's patience (RFC 5321 §4.5.3.2 gives the end of data 10 minutes) and about what
# one flush of a busy disk takes anyway.
MAX_WINDOW = 0.004
# Failed flushes remembered for the commits that waited for them (flushes fail rarely: EIO).
_FAILURES_KEPT = 64

SyncFs = Callable[[int], int]


# syncfs(2) reports write-back errors only since Linux 5.8 (errseq on the superblock); before,
# it returned 0 whatever happened, and a commit must hear of a failed flush as fsync tells it.
REPORTS_ERRORS = (5, 8)


def kernel_version(release: str) -> tuple[int, int]:
    """``(major, minor)`` of a ``uname -r`` string such as ``6.1.0-18-amd64``; (0, 0) if unreadable."""
    parts = release.split(".", 2)
    try:
        return int(parts[0]), int("".join(itertools.takewhile(str.isdigit, parts[1])))
    except (IndexError, ValueError):
        return 0, 0


def load_syncfs() -> SyncFs | None:
    """``syncfs(2)`` from the C library, where it reports failures (Linux 5.8 and later);
    None elsewhere."""
    if not sys.platform.startswith("linux") or kernel_version(os.uname().release) < REPORTS_ERRORS:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return cast(SyncFs, function)


class PerFileCommit:
    """The recipe file by file (:func:`~postoffice.durable.commit_file`: two flushes each),
    counted as :class:`GroupCommit` counts its flushes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flushes = 0

    @property
    def flushes(self) -> int:
        """Flush calls (fsync, syncfs) made so far."""
        return self._flushes

    def commit_file(
        self,
        fd: int,
        directory: str | Path,
        publish: Callable[[], object],
        undo: Callable[[], object] | None = None,
    ) -> None:
        """Blocking: :func:`postoffice.durable.commit_file`, counted."""
        try:
            commit_file(fd, directory, publish, undo)
        finally:
            with self._lock:
                self._flushes += 2  # the file, then its directory (one too many if the first failed)

    def close(self) -> None:
        """Nothing to stop."""


class GroupCommit:
    """Commits of files on ``anchor``'s file system, flushed together by one thread (above)."""

    def __init__(self, anchor: Path, syncfs: SyncFs, *, max_window: float = MAX_WINDOW) -> None:
        self._anchor = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._device = os.fstat(self._anchor).st_dev
        self._syncfs = syncfs
        self._max_window = max_window
        self._per_file = PerFileCommit()  # files on another file system
        lock = threading.Lock()
        self._work = threading.Condition(lock)  # the flushing thread waits here
        self._flushed = threading.Condition(lock)  # commits wait here
        self._started = 0  # flushes begun; a flush's number is its place in this count
        self._done = 0  # flushes finished (they finish in order)
        self._wanted = 0  # the highest flush number a commit waits for
        self._in_flight = 0  # commits between entering and leaving commit_file
        self._joined = 0  # commits waiting for the next flush (the one not begun yet)
        self._last = 0.0  # how long the last flush took (seconds)
        self._flushes = 0
        self._failures: dict[int, OSError] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def flushes(self) -> int:
        """Flush calls (syncfs, and the fsyncs of files elsewhere) made so far."""
        return self._flushes + self._per_file.flushes

    def covers(self, fd: int) -> bool:
        """Whether the file ``fd`` is on the file system this flushes."""
        return os.fstat(fd).st_dev == self._device

    def commit_file(
        self,
        fd: int,
        directory: str | Path,
        publish: Callable[[], object],
        undo: Callable[[], object] | None = None,
    ) -> None:
        """Blocking, as :func:`postoffice.durable.commit_file` (same contract): the written file
        ``fd`` on disk, then ``publish()``, then the name on disk, with shared flushes."""
        if not self.covers(fd):
            self._per_file.commit_file(fd, directory, publish, undo)
            return
        with self._work:
            self._in_flight += 1
        try:
            self._wait_for_flush()  # the data (and the file's inode) before it has its name
            publish()
            try:
                self._wait_for_flush()  # the name
            except OSError:
                if undo is not None:
                    with contextlib.suppress(OSError):
                        undo()
                raise
        finally:
            with self._work:
                self._in_flight -= 1
                self._work.notify()  # the flusher may be waiting for this commit to join

    def close(self) -> None:
        """Stop the flushing thread once the flushes asked for are made; close the anchor."""
        with self._work:
            self._closed = True
            thread, self._thread = self._thread, None
            self._work.notify()
        if thread is not None:
            thread.join()
        with contextlib.suppress(OSError):
            os.close(self._anchor)

    def _wait_for_flush(self) -> None:
        """Wait for a flush that starts after this call (one already running may have missed
        what the caller just wrote); its failure is the caller's."""
        with self._work:
            if self._closed:
                raise OSError("the spool's group commit is closed")
            self._start_thread()
            number = self._started + 1
            self._wanted = max(self._wanted, number)
            self._joined += 1
            self._work.notify()
            while self._done < number:
                self._flushed.wait()
            failure = self._failures.get(number)
        if failure is not None:
            raise OSError(failure.errno, failure.strerror)

    def _start_thread(self) -> None:
        # Started at the first commit, in the process that commits (after a fork of workers).
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="postoffice-flush", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._work:
                while self._wanted <= self._done and not self._closed:
                    self._work.wait()
                if self._wanted <= self._done:
                    return  # closed, and nobody waits
                self._gather()
                self._started += 1
                self._joined = 0
                number = self._started
            started = time.monotonic()
            failure = self._flush()
            took = time.monotonic() - started
            with self._work:
                self._last = took
                self._flushes += 1
                if failure is not None:
                    self._failures[number] = failure
                    self._failures.pop(number - _FAILURES_KEPT, None)
                self._done = number
                self._flushed.notify_all()

    def _gather(self) -> None:
        """Called with the lock held: wait while commits under way may still join this flush
        (not at all when every one of them has joined: one commit alone goes at once). A commit
        woken by the last flush counts as under way: it comes back for its rename's flush."""
        deadline = time.monotonic() + min(self._max_window, self._last)
        while self._joined < self._in_flight and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._work.wait(left)

    def _flush(self) -> OSError | None:
        if self._syncfs(self._anchor) == 0:
            return None
        number = ctypes.get_errno()
        failure = OSError(number, os.strerror(number))
        log.error("status=flush-failed error=%r", failure.strerror)
        return failure


Committer = PerFileCommit | GroupCommit


def committer(anchor: Path, *, group: bool) -> Committer:
    """How the spool and the mailboxes commit files: in groups on ``anchor``'s file system when
    ``group`` and the system has ``syncfs``, else file by file."""
    syncfs = load_syncfs() if group else None
    if syncfs is None:
        return PerFileCommit()
    return GroupCommit(anchor, syncfs)
