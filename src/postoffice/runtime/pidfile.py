"""``<data-dir>/postoffice.pid``: which process serves a data directory, and how to poke it.

Untrusted input seen here: the pid file, which anyone with access to the data directory can
write. A number in it is signalled only while the file is locked, i.e. while the server that
wrote it is alive: a stale pid left by a crash (``kill -9``) may by now belong to an unrelated
process, which must never get our signal (SIGUSR1's default action would kill it).

The running server holds an exclusive ``flock`` on the file for its whole life (the kernel
drops it when the process dies, however it dies). A second server on the same data directory
sees the lock and refuses to start: two queue managers on one spool would deliver every
message twice. The ``queue`` command takes a shared lock to test for a server, without
blocking.

Signals the server understands (as Postfix's ``postqueue -f`` pokes qmgr through a FIFO):

* SIGUSR1: look at the queue again and retry every deferred message now (``queue flush``);
* SIGUSR2: look at the queue again (after ``queue hold``, ``release`` or ``delete``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from pathlib import Path

from postoffice.errors import PostofficeError

FILE_NAME = "postoffice.pid"
FLUSH_SIGNAL = signal.SIGUSR1
RESCAN_SIGNAL = signal.SIGUSR2


class AlreadyRunning(PostofficeError):
    """Another server holds the data directory."""


class PidFile:
    """Held by ``postoffice serve`` from start to exit."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_pid(fd)
            os.close(fd)
            holder = f" (pid {other})" if other else ""
            raise AlreadyRunning(
                f"another postoffice server is using {self.path.parent}{holder}; stop it first"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Truncated, not removed: removing would race with a new server creating and locking
        # a fresh file under the same name while a client still holds the old one open.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def running_server(data_dir: Path) -> int | None:
    """The pid of the server using ``data_dir``, or None when none is running."""
    path = data_dir / FILE_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)  # locked: its writer is alive
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def poke(data_dir: Path, signum: signal.Signals) -> int | None:
    """Send ``signum`` to the running server; its pid, or None when no server is running."""
    pid = running_server(data_dir)
    if pid is None:
        return None
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return None
    return pid


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None
