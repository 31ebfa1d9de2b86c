"""Writing files so that they survive a crash: the one copy of the write-fsync-rename recipe.

Untrusted input seen here: none; callers hand over bytes and paths they chose.

The recipe is the Maildir specification's (cr.yp.to/proto/maildir.html) and Postfix
``mail_stream.c``'s: write the data under a temporary name, flush it to disk (``fsync``), give it
its real name (``rename``, or ``link``), then flush the directory, for a rename is durable only
once the directory entry is (rename(2), fsync(2)). A reader never sees a partial file under the
real name, and once the directory flush returns the name survives a power cut.

Every part of the server that makes a file durable does it through here: the spool's message
files and state logs, Maildir deliveries (queued and direct), the accounts file, the
self-signed certificate. Each step is one system call, as a hand-written copy would make: the
spool's commit, the hottest path in the server, pays nothing for sharing it.

A full disk, a full quota or read-only storage is something an operator fixes, so callers turn
those errors into :class:`~postoffice.errors.StorageFullError` (a 452 4.3.1 for an SMTP client,
RFC 3463 "mail system full") rather than a permanent failure: :func:`storage_error`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from postoffice.errors import SpoolError, StorageFullError

log = logging.getLogger("postoffice.durable")

# Out of space, over quota, or read-only: conditions an operator fixes, so the client is told
# to try again later (452 4.3.1, RFC 3463 "mail system full") rather than given up on.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def is_storage_full(exc: OSError) -> bool:
    """Whether ``exc`` says the storage is full or read-only (retrying later can succeed)."""
    return exc.errno in STORAGE_FULL_ERRNOS


def storage_error(exc: OSError, action: str) -> SpoolError:
    """The SpoolError for an OSError: StorageFullError when retrying later can succeed.

    ``action`` says what failed ("queue_id=X: cannot write"); the error's text adds why.
    """
    kind = StorageFullError if is_storage_full(exc) else SpoolError
    reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    return kind(f"{action}: {reason}")


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (``write(2)`` may take fewer than it is given)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    finally:
        # Let a bytearray be resized again at once (a live view pins its buffer).
        view.release()


def fsync_directory(path: str | Path) -> None:
    """Make the names in a directory durable (a rename is not, until its directory is synced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(
    fd: int,
    directory: str | Path,
    publish: Callable[[], object],
    undo: Callable[[], object] | None = None,
) -> None:
    """Blocking: fsync the written file ``fd``, ``publish()``, fsync ``directory``.

    The caller closes ``fd`` afterwards (or ``publish`` does);
    ``publish`` (a rename or link into ``directory``) runs only once the data is on disk, so
    the published name never points at a partial file; when ``directory`` cannot be synced
    after it, ``undo`` takes the published file back, since the caller is about to report a
    failure and the name may not survive a crash anyway. OSError from any step propagates.
    """
    os.fsync(fd)
    publish()
    try:
        fsync_directory(directory)
    except OSError:
        if undo is not None:
            with contextlib.suppress(OSError):
                undo()
        raise


class CommitFile(Protocol):
    """Something that commits a written file as :func:`commit_file` does (same contract): that
    function itself, or the spool's group commit (:mod:`postoffice.spool.group_commit`), which
    shares its flushes with the other commits of the moment."""

    def __call__(
        self,
        fd: int,
        directory: str | Path,
        publish: Callable[[], object],
        undo: Callable[[], object] | None = None,
    ) -> None: ...


def remove_quietly(path: str | Path) -> bool:
    """Unlink ``path``; False if it was not there. Any other failure is logged, not raised:
    whoever calls this is already on its way out (cleaning up, or reporting another error)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("path=%s status=unremovable error=%s", path, exc.strerror)
        return False
    return True


def replace_file(path: Path, data: bytes, *, mode: int = 0o600) -> os.stat_result:
    """Replace ``path`` with a file holding ``data`` (mode exactly ``mode``), atomically:
    a reader sees the old file or the new one, whole. Returns the new file's status.

    The temporary file is ``.<name>.tmp`` beside it, so the caller must keep two writers apart
    (a lock, or being the only one); one left by a writer that crashed is replaced. The data
    and then the rename are flushed, so the new file survives a crash once this returns.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            write_all(fd, data)
            os.fsync(fd)
            status = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)
    return status
