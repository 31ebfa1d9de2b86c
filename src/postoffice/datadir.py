"""The data directory's lock: one ``postoffice serve`` (with its workers) per directory.

Untrusted input seen here: none; the path comes from the operator's configuration.

Two servers on one spool would each take the other's half-received files in ``tmp/`` for
crash debris and remove them, and both would deliver what a previous run left in the queue.
``flock(2)`` on ``<data_dir>/postoffice.lock`` keeps a second server out; the kernel drops the
lock when the holder exits, however it exits, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from postoffice.errors import PostofficeError

LOCK_NAME = "postoffice.lock"


class DataDirInUse(PostofficeError):
    """Another server holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirInUse`; OSError if the file cannot be made."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(f"{self.path.parent} is in use by another postoffice serve") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
