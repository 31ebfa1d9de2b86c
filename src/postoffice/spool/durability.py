"""Group commit: make many files durable, publish them, and make the names durable, together.

Untrusted input seen here: none; callers hand over file descriptors and directory paths they
made, and a function that publishes a file (a rename or link they chose).

Every accepted message needs the same three steps before its 250 (Postfix ``mail_stream.c``,
the Maildir recipe): its data on disk, then its name moved into place, then that name on disk.
Doing them one message at a time costs two flushes per message, each as slow as the disk; a
server that does so cannot pass a few hundred messages a second. Here one thread does the
flushing for every message at once, as databases share log flushes (PostgreSQL's group commit):
each round makes durable the data of every file handed over since the last round *and* the
names published in the last round, so under load one flush serves two groups of messages and
every caller still returns only after its data and its name are durable.

Two ways to flush, chosen per platform:

- ``syncfs`` (Linux 5.8 and later): one ``syncfs(2)`` per file system per round. Linux's
  ``sync``/``syncfs`` "provide the same guarantees as fsync() called on every file in the ...
  filesystem" (syncfs(2), NOTES), so it covers every file and directory this process wrote
  before the call. Since 5.8 it reports write-back errors that happened since the last
  ``syncfs`` on the same open file, so a long-lived descriptor per file system sees every one;
  on an error every caller of that round is failed (we cannot tell whose data was lost).
- ``fsync``: ``fsync`` on each file, then on each directory once per round (other systems, and
  older kernels, where ``syncfs`` never reports an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import enum
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("postoffice.spool")

# syncfs(2) reports write-back errors from this release on (commit 735e4ae5ba28, "vfs: track
# per-sb writeback errors and report them to syncfs"); before it, it always returns 0.
_SYNCFS_ERRORS_SINCE = (5, 8)
# Directories remembered with their file system (one per mailbox); past this, forget them all.
_KNOWN_DIRECTORIES = 10_000
# fsync mode: how many fsyncs of one round run at once.
_FSYNC_THREADS = 16
# Seconds the flushing thread waits for work before it ends.
_IDLE_EXIT = 5.0


class SyncMethod(enum.Enum):
    SYNCFS = "syncfs"
    FSYNC = "fsync"


def _kernel_version() -> tuple[int, int]:
    release = os.uname().release
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux") or _kernel_version() < _SYNCFS_ERRORS_SINCE:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    # A CDLL call releases the GIL, so the event loop runs while the disk works.
    call: Callable[[int], int] = function
    return call


_syncfs = _load_syncfs()


def syncfs_available() -> bool:
    return _syncfs is not None


def default_method() -> SyncMethod:
    """fsync: measured faster on a file system other programs write to as well.

    syncfs flushes every program's dirty data on the file system, so its cost follows theirs;
    concurrent fsyncs cost one journal commit for our files only. On a file system of its own
    (a dedicated spool volume) syncfs is the cheaper of the two for large batches.
    """
    return SyncMethod.FSYNC


def fsync_directory(path: Path) -> None:
    """Make the names in a directory durable (a rename is not, until its directory is synced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True, eq=False)
class _Request:
    write: Callable[[], int]  # finishes writing the file; its descriptor, to be made durable
    directory: Path  # where publish() makes its name
    publish: Callable[[], None]
    undo: Callable[[], None] | None
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    fd: int = -1
    error: OSError | None = field(default=None)
    name_error: OSError | None = field(default=None)  # fsync mode: its directory failed


class GroupCommitter:
    """One flushing thread shared by every commit of this process."""

    def __init__(self, method: SyncMethod | None = None) -> None:
        self.method = method if method is not None else default_method()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._incoming: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        # One long-lived descriptor per file system (st_dev): syncfs reports a write-back error
        # once per open file, so a descriptor kept open sees every error after it was opened.
        self._devices: dict[int, int] = {}
        self._known: set[Path] = set()  # directories whose file system is in _devices
        self.rounds = 0  # flushes done, for tests and statistics
        self._fsync_pool: ThreadPoolExecutor | None = None

    def watch(self, directory: Path) -> None:
        """Open the file system of ``directory`` for syncfs now, before anything is written."""
        if self.method is SyncMethod.SYNCFS:
            with self._lock:
                self._device_fd(directory)

    async def commit(
        self,
        write: Callable[[], int],
        directory: Path,
        publish: Callable[[], None],
        undo: Callable[[], None] | None = None,
    ) -> None:
        """Run ``write()``, make its file durable, run ``publish()``, make ``directory`` durable.

        Everything runs in the flushing thread, in that order: ``write`` finishes the file
        (creating it if need be) and returns its descriptor; ``publish`` (a rename or a link)
        runs only once that file's data is on disk; ``undo`` runs when the names could not be
        made durable after ``publish`` ran, to take the published file back. ``write`` and
        ``publish`` raise OSError to fail this commit. The caller owns the descriptor and
        closes it after this returns or raises.
        """
        loop = asyncio.get_running_loop()
        request = _Request(write, directory, publish, undo, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise OSError("the committer is closed")
            if self.method is SyncMethod.SYNCFS:
                self._device_fd(directory)
            self._incoming.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="postoffice-commit", daemon=True)
                self._thread.start()
            else:
                self._wake.notify()
        await request.done

    def close(self) -> None:
        """Finish the commits handed over and stop the thread."""
        with self._lock:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            for fd in self._devices.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._devices.clear()
            self._known.clear()
            pool, self._fsync_pool = self._fsync_pool, None
        if pool is not None:
            pool.shutdown()

    # --- the flushing thread ----------------------------------------------------------------

    def _device_fd(self, directory: Path) -> None:
        if directory in self._known:
            return
        if len(self._known) > _KNOWN_DIRECTORIES:
            self._known.clear()
        device = os.stat(directory).st_dev
        if device not in self._devices:
            self._devices[device] = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._known.add(directory)

    def _run(self) -> None:
        published: list[_Request] = []  # publish() ran; their names wait for the next flush
        while True:
            with self._lock:
                if not self._incoming and not published and not self._closed:
                    self._wake.wait(_IDLE_EXIT)
                if not self._incoming and not published:
                    # Idle (or closed): the next commit starts a new thread.
                    self._thread = None
                    return
                batch, self._incoming = self._incoming, []
            finished = self._round(batch, published)
            published = [request for request in batch if request.error is None]
            self._resolve(finished)

    def _round(self, batch: list[_Request], published: list[_Request]) -> list[_Request]:
        """One flush: ``batch``'s data and ``published``'s names; then publish ``batch``."""
        self.rounds += 1
        for request in batch:
            try:
                request.fd = request.write()
            except OSError as exc:
                request.error = exc
        data_error, name_error = self._flush(batch, published)
        for request in published:
            if name_error is not None or request.name_error is not None:
                request.error = name_error or request.name_error
                if request.undo is not None:
                    with contextlib.suppress(OSError):
                        request.undo()
        for request in batch:
            if request.error is None and data_error is not None:
                request.error = data_error
            if request.error is not None:
                continue
            try:
                request.publish()
            except OSError as exc:
                request.error = exc
        # Requests that failed here are finished now; the others finish after the next flush.
        return [*published, *(request for request in batch if request.error is not None)]

    def _flush(
        self, batch: list[_Request], published: list[_Request]
    ) -> tuple[OSError | None, OSError | None]:
        """Flush; the error for the data of ``batch`` and the one for the names of ``published``."""
        if self.method is SyncMethod.SYNCFS:
            assert _syncfs is not None
            with self._lock:
                fds = list(self._devices.values())
            for fd in fds:
                if _syncfs(fd) != 0:
                    number = ctypes.get_errno()
                    error = OSError(number, os.strerror(number))
                    return error, error
            return None, None
        # Every fsync of the round at once: the file system commits its journal once for all
        # of them (ext4's jbd2 joins concurrent fsyncs into one transaction), where fsyncs one
        # after another would each wait for a commit of their own.
        jobs: list[Callable[[], None]] = [
            functools.partial(_fsync_into, request) for request in batch if request.error is None
        ]
        for directory in {request.directory for request in published}:
            jobs.append(functools.partial(_fsync_directory_into, directory, published))
        if len(jobs) == 1:
            jobs[0]()
        elif jobs:
            list(self._pool().map(_call, jobs))
        return None, None

    def _pool(self) -> ThreadPoolExecutor:
        if self._fsync_pool is None:
            self._fsync_pool = ThreadPoolExecutor(_FSYNC_THREADS, thread_name_prefix="postoffice-fsync")
        return self._fsync_pool

    def _resolve(self, finished: list[_Request]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Request]] = {}
        for request in finished:
            by_loop.setdefault(request.loop, []).append(request)
        for loop, requests in by_loop.items():
            # One wake-up of the event loop for the whole round, not one per commit.
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, requests)


def _call(job: Callable[[], None]) -> None:
    job()


def _fsync_into(request: _Request) -> None:
    try:
        os.fsync(request.fd)
    except OSError as exc:
        request.error = exc


def _fsync_directory_into(directory: Path, published: list[_Request]) -> None:
    try:
        fsync_directory(directory)
    except OSError as exc:
        for request in published:
            if request.directory == directory:
                request.name_error = exc


def _settle(requests: list[_Request]) -> None:
    for request in requests:
        if request.done.done():
            continue
        if request.error is None:
            request.done.set_result(None)
        else:
            request.done.set_exception(request.error)
