"""Writing a message into a Maildir: the specification's delivery recipe, made crash-safe.

Untrusted input seen here: the message bytes, copied verbatim from the spool and never parsed.
Paths come from :mod:`postoffice.maildir.names` and :func:`~postoffice.maildir.layout.maildir_name`
only.

The recipe (cr.yp.to/proto/maildir.html): write ``tmp/NAME``, flush it, link it to
``new/NAME``, then (as qmail-local does not, but a crash-safe queue needs) flush ``new/``
before the spool forgets the message: file by file (:func:`postoffice.durable.commit_file`), or
in the server with the other commits of the moment (:mod:`postoffice.spool.group_commit`). A reader never sees a partial
file in ``new/``: the name appears there only after the data is on disk.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import BinaryIO

from postoffice.durable import remove_quietly, write_all
from postoffice.errors import DeliveryError

# Copy block: the message streams from the spool file and is never held whole in memory.
BLOCK_SIZE = 64 * 1024
# File systems without hard links (some FUSE and network mounts) refuse link(2) with these;
# rename(2) is then the way into new/, as Dovecot does by default.
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV})
# copy_file_range(2) across file systems fails with EXDEV on kernels before 5.3, and some file
# systems do not support it at all: then the copy goes through user space.
_NO_COPY_RANGE_ERRNOS = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


def create_mail_file(path: Path | str, flags: int, mode: int) -> int:
    """``os.open(path, flags | O_CREAT, mode)``, the file getting exactly ``mode``."""
    fd = os.open(path, flags | os.O_CREAT, mode)
    if mode & 0o077:
        # The umask (022, 027) takes group bits away; the owner's read and write no umask in
        # use does, so the default 0600 costs no second call.
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
    return fd


def write_unsynced(path: Path, headers: bytes, content: BinaryIO, size: int, mode: int) -> int:
    """``headers`` then ``size`` bytes of ``content`` into a new file ``path``; its descriptor,
    for :func:`~postoffice.durable.commit_file` to sync and publish (the file is removed again
    if writing fails)."""
    # O_TRUNC: a file left in tmp/ by a crashed attempt of this same delivery is rewritten.
    flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = create_mail_file(path, flags, mode)
    try:
        write_all(fd, headers)
        _copy(content, fd, size)
    except BaseException:
        os.close(fd)
        remove_quietly(path)
        raise
    return fd


def _copy(content: BinaryIO, fd: int, size: int) -> None:
    """Copy ``size`` bytes from ``content`` (a spool file, at the message start) to ``fd``.

    In the kernel (copy_file_range(2)) where it can be, so the message never passes through
    Python's memory; block by block otherwise.
    """
    remaining = size
    offset = content.tell()
    copy_file_range = getattr(os, "copy_file_range", None)
    try:
        source = content.fileno()
    except io.UnsupportedOperation:
        copy_file_range = None  # not a file (a stream in memory): through user space
    if copy_file_range is not None:
        try:
            while remaining:
                copied: int = copy_file_range(source, fd, remaining, offset)
                if copied == 0:
                    raise DeliveryError(f"spool content ends {remaining} bytes early")
                offset += copied
                remaining -= copied
            return
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE_ERRNOS or remaining != size:
                raise
    content.seek(offset)
    while remaining:
        block = content.read(min(BLOCK_SIZE, remaining))
        if not block:
            raise DeliveryError(f"spool content ends {remaining} bytes early")
        write_all(fd, block)
        remaining -= len(block)


def publish(temporary: Path, final: Path) -> None:
    """Give the synced file ``temporary`` its name ``final`` in ``new/`` (the caller removes
    ``temporary`` after)."""
    try:
        os.link(temporary, final)
    except FileExistsError:
        # The name is unique to this delivery, so an earlier attempt of it got this far; its
        # data was synced before the link, so that copy is whole.
        pass
    except OSError as exc:
        if exc.errno not in _NO_LINK_ERRNOS:
            raise
        os.rename(temporary, final)


def find_delivered(maildir: Path, name: str, unique_prefix: str) -> Path | None:
    """An earlier copy of this delivery: in ``new/``, or moved to ``cur/`` by a reader.

    In ``cur/`` a reader appends ":2,<flags>" (and Dovecot may add ",W=" fields), so the
    match is on "<time>.<unique>." only, which no other delivery shares.
    """
    candidate = maildir / "new" / name
    if candidate.exists():
        return candidate
    with os.scandir(maildir / "cur") as entries:
        for entry in entries:
            if entry.name.startswith(unique_prefix):
                return Path(entry.path)
    return None
