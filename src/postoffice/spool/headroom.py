"""Room above a message already written, for header fields added at its end.

Untrusted input seen here: none; the fields come from our own checks (Authentication-Results,
a spam verdict), the file from our own writer.

Checks at the end of a message add fields that belong at its top, above content already
streamed into the spool. A message that fits the writer's buffer (nearly all mail) is still in
memory then, and they are simply put in place. For a file that outgrew the buffer the writer
left ``ADDED_FIELDS_ROOM`` spaces at the end of the envelope line when it first wrote it
(:func:`make_room`, as the spool's target asks; JSON allows trailing whitespace); at the commit
:func:`place` writes the fields into that room with one ``pwrite``: the envelope line ends
earlier and the message starts with them, at the same size, so the content is never copied and
readers need nothing new::

    before: MAGIC {"envelope"...}<room spaces>\\n Received: ...
    after:  MAGIC {"envelope"...}<fewer spaces>\\n Authentication-Results: ...\\r\\n Received: ...

Only fields that outgrow the room, or a file with no envelope line to pad (a Maildir file of
:mod:`postoffice.delivery.direct`, whose target leaves no room), are placed by writing the file
afresh, in the commit's worker thread: :func:`copy_with`.
"""

from __future__ import annotations

import contextlib
import errno
import os

# An Authentication-Results field with SPF, DKIM and DMARC results and a spam verdict take
# about a kilobyte; four leave room for several.
ADDED_FIELDS_ROOM = 4096
_COPY_BLOCK = 64 * 1024


def make_room(buffer: bytearray, top: int, room: int) -> None:
    """Put ``room`` spaces before the newline that ends ``buffer[:top]`` (the header, whose
    last line is the envelope line for the spool's files: :attr:`FileTarget.room
    <postoffice.spool.writer.FileTarget.room>`)."""
    newline = top - 1
    buffer[newline:newline] = b" " * room


def place(fd: int, path: str, top: int, room: int, fields: bytes) -> int:
    """Put ``fields`` above the message that starts at ``top`` in the file ``fd`` (at ``path``),
    into the ``room`` left before it; the descriptor to go on with (a new one after a copy)."""
    if len(fields) <= room:
        _write_at(fd, b" " * (room - len(fields)) + b"\n" + fields, top - room - 1)
        return fd
    return copy_with(fd, path, top, fields)


def copy_with(fd: int, path: str, top: int, fields: bytes) -> int:
    """Write the file at ``path`` afresh with ``fields`` at ``top``, replacing it; the new
    file's descriptor (``fd`` is closed). The one case that copies the content."""
    fresh_path = path + ".new"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fresh = os.open(fresh_path, flags, os.fstat(fd).st_mode & 0o7777)
    try:
        source = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            head = os.pread(source, top, 0)
            _write_at(fresh, head + fields, 0)
            _copy_range(source, fresh, top, len(head) + len(fields))
        finally:
            os.close(source)
        os.rename(fresh_path, path)
    except BaseException:
        os.close(fresh)
        with contextlib.suppress(OSError):
            os.unlink(fresh_path)
        raise
    os.close(fd)
    return fresh


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _copy_range(source: int, target: int, start: int, at: int) -> None:
    """Copy ``source`` from ``start`` to its end into ``target`` at ``at``, in the kernel where
    it can (copy_file_range; a reflink on file systems that share blocks)."""
    remaining = os.fstat(source).st_size - start
    while remaining > 0:
        try:
            copied = os.copy_file_range(source, target, remaining, start, at)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            copied = os.pwrite(target, os.pread(source, min(remaining, _COPY_BLOCK), start), at)
        if copied == 0:
            raise OSError(errno.EIO, "file shrank while being copied")
        start, at, remaining = start + copied, at + copied, remaining - copied
