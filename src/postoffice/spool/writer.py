"""Streaming one incoming message into a file, made durable at commit: the spool's writer.

Untrusted input seen here: message bytes from SMTP clients, written verbatim and never parsed.

A :class:`FileMessageWriter` owns the buffer, the descriptor and the commit (write out, flush,
rename, flush the name, in a worker thread of the :class:`~postoffice.spool.durability.IoPool`,
through the spool's committer: :func:`~postoffice.durable.commit_file`, or the group commit of
:mod:`postoffice.spool.group_commit`);
a :class:`FileTarget` says which file it writes and where the commit puts it. The spool's own
target is ``tmp/ID`` renamed to ``queue/ID`` (:mod:`postoffice.spool.files`); direct delivery's
is a Maildir's ``tmp/`` renamed into ``new/`` (:mod:`postoffice.delivery.direct`), which turns
into the spool's when the mailbox cannot take the file. The writer is the same either way: a
target never touches the writer's state, and the writer knows no layout.

Header fields the server adds go above the content at any time before the commit
(:meth:`FileMessageWriter.prepend`): into the buffer while the message's start is still there
(nearly all mail), else into the room a target leaves at the end of its header
(:attr:`FileTarget.room`, :mod:`postoffice.spool.headroom`), else, for a target with no room or
fields that outgrow it, by writing the file afresh in the commit's worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import io
import os
from typing import BinaryIO, Protocol

from postoffice.durable import CommitFile, commit_file, remove_quietly, storage_error, write_all
from postoffice.errors import SpoolError
from postoffice.spool import headroom
from postoffice.spool.durability import IoPool
from postoffice.spool.envelope import Envelope, QueuedMessage

# Writes reach the disk in blocks of this size; a message is never held whole in memory.
BUFFER_SIZE = 64 * 1024


class FileTarget(Protocol):
    """The file a :class:`FileMessageWriter` writes, and where its commit puts it."""

    @property
    def header(self) -> bytes:
        """What the file holds before the message bytes."""
        ...

    @property
    def path(self) -> str:
        """Where :meth:`create` makes the file (removed again if the message is dropped)."""
        ...

    @property
    def delivered(self) -> bool:
        """Whether a committed file is delivered (``QueuedMessage.delivered``), not queued."""
        ...

    @property
    def room(self) -> int:
        """Spaces :attr:`header` may take before its last octet (a newline) to make room for
        header fields prepended once the message's start is on disk; 0 when it can take none
        (such fields then cost a copy of the file at the commit). See
        :mod:`postoffice.spool.headroom`."""
        ...

    def create(self) -> int:
        """Make the file at :attr:`path`, empty and open for writing; its descriptor. Called
        once, in whichever thread fills the buffer first (the event loop's, or a worker's)."""
        ...

    def destination(self, size: int) -> str:
        """Where the commit renames the file of ``size`` octets (header included); the
        directory of that name is synced after the rename."""
        ...

    def fallback(self, error: OSError) -> FileTarget | None:
        """What to write instead when :meth:`create` failed with ``error``; None: it stands."""
        ...

    def committed(self, message: QueuedMessage, destination: str) -> None:
        """Told on the event loop once the commit has returned ``message`` to its caller."""

    def file_into(self, folder: str, envelope: Envelope) -> None:
        """Local copies go to ``folder``: ``envelope`` says so; :attr:`header` follows it."""


class _State(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    DISCARDED = "discarded"


class FileMessageWriter:
    """Streams one message into ``target``'s file; :meth:`commit` makes it durable there.

    Bytes collect in a buffer of at most ``BUFFER_SIZE`` octets (what a buffered file would
    hold anyway); the file is created when the buffer first fills. A message smaller than the
    buffer is created, written, synced and renamed by a worker thread in one go, so the
    event loop makes no file-system call for it: creating a file can wait for the file system's
    journal, which the flushes of other messages keep busy.
    """

    def __init__(
        self,
        io: IoPool,
        queue_id: str,
        envelope: Envelope,
        target: FileTarget,
        commit: CommitFile = commit_file,
    ) -> None:
        self._io = io
        self._commit_file = commit
        self._queue_id = queue_id
        self._envelope = envelope
        self._target = target
        self._buffer = bytearray(target.header)
        self._fd: int | None = None
        self._size = 0
        # Where the message starts (after the target's header): prepend() puts fields here.
        self._top = len(target.header)
        self._room = 0  # spaces left for added fields at the end of the header on disk
        self._late = b""  # fields prepended once the message's start was on disk
        self._state = _State.OPEN
        self._published: str | None = None  # where the committed file is

    @property
    def queue_id(self) -> str:
        return self._queue_id

    @property
    def size(self) -> int:
        """Message bytes written so far (the target's header not included)."""
        return self._size

    def write(self, data: bytes) -> None:
        if self._state is not _State.OPEN:
            raise SpoolError(f"queue_id={self._queue_id}: message is {self._state.value}")
        self._buffer += data
        self._size += len(data)
        if len(self._buffer) >= BUFFER_SIZE:
            try:
                if self._fd is None:
                    self._fd = self._create()
                    self._make_room()
                self._write_out()
            except OSError as exc:
                self._abort()
                raise storage_error(exc, f"queue_id={self._queue_id}: cannot write") from exc

    def prepend(self, data: bytes) -> None:
        """Put header field lines above the message (see the module docstring for how)."""
        if self._state is not _State.OPEN:
            raise SpoolError(f"queue_id={self._queue_id}: message is {self._state.value}")
        self._size += len(data)
        if self._fd is None:
            top = self._top
            self._buffer[top:top] = data
        else:
            self._late = data + self._late

    def overwrite(self, offset: int, data: bytes) -> None:
        """Replace octets of the message in place (see MessageWriter.overwrite)."""
        if self._state is not _State.OPEN:
            raise SpoolError(f"queue_id={self._queue_id}: message is {self._state.value}")
        if offset < 0 or offset + len(data) > self._size:
            raise ValueError(f"cannot overwrite {len(data)} octets at {offset}")
        start = self._top + offset
        if self._fd is None:
            self._buffer[start : start + len(data)] = data
            return
        try:
            # The unwritten tail goes out first, so the octets are where the file says.
            fd = self._write_out()
            os.pwrite(fd, data, start)
        except OSError as exc:
            self._abort()
            raise storage_error(exc, f"queue_id={self._queue_id}: cannot write") from exc

    def file_into(self, folder: str) -> None:
        """Record ``folder`` in the envelope (see MessageWriter.file_into). The envelope line
        is rewritten in place: in the buffer, or on disk into the room left at its end (JSON
        allows the trailing spaces, spool/headroom.py), so the content is never copied."""
        if self._state is not _State.OPEN:
            raise SpoolError(f"queue_id={self._queue_id}: message is {self._state.value}")
        target = self._target
        old = target.header
        self._envelope = dataclasses.replace(self._envelope, folder=folder)
        target.file_into(folder, self._envelope)
        new = target.header
        if new == old:
            return  # a mailbox file: its name says where it goes, not its header
        if self._fd is None:
            self._buffer[: len(old)] = new
            self._top += len(new) - len(old)
            return
        grow = len(new) - len(old)
        if grow > self._room:
            raise SpoolError(f"queue_id={self._queue_id}: no room to record the folder")
        try:
            os.pwrite(self._fd, new[:-1], 0)  # over the old line and the first spaces after it
        except OSError as exc:
            self._abort()
            raise storage_error(exc, f"queue_id={self._queue_id}: cannot write") from exc
        self._room -= grow

    def read_content(self) -> BinaryIO:
        """The message as stored so far. From the buffer while it holds the whole message;
        else the buffer is written out and the file read (on the caller's thread: it was just
        written, and is in the page cache)."""
        if self._state is not _State.OPEN:
            raise SpoolError(f"queue_id={self._queue_id}: message is {self._state.value}")
        if self._fd is None:
            return io.BytesIO(self._buffer[self._top :])
        try:
            self._write_out()
            file = open(self._target.path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise storage_error(exc, f"queue_id={self._queue_id}: cannot read back") from exc
        file.seek(self._top)
        return file

    def _make_room(self) -> None:
        """The file is about to be written for the first time: leave the target's room for
        late fields (only a message that outgrew the buffer can get any)."""
        room = self._target.room
        if room:
            headroom.make_room(self._buffer, self._top, room)
            self._room = room
            self._top += room

    def _write_out(self) -> int:
        """Create the file if need be and write the buffer to it; the file's descriptor."""
        fd = self._fd
        if fd is None:
            fd = self._fd = self._create()
        write_all(fd, self._buffer)
        self._buffer.clear()
        return fd

    def _create(self) -> int:
        # Called once, before anything is written: the buffer still starts with the header.
        target = self._target
        try:
            return target.create()
        except OSError as exc:
            fallback = target.fallback(exc)
            if fallback is None:
                raise
            self._buffer[: len(target.header)] = fallback.header
            self._target = fallback
            self._top = len(fallback.header)
            return fallback.create()

    async def commit(self) -> QueuedMessage:
        if self._state is not _State.OPEN:
            raise SpoolError(
                f"queue_id={self._queue_id}: cannot commit a message that is {self._state.value}"
            )
        self._state = _State.COMMITTING
        work = asyncio.ensure_future(self._commit())
        try:
            # Shielded: a cancelled session must not stop an fsync or rename half-way; the
            # message then goes the way of any message that never got its 250 (_abandoned).
            message = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(self._abandoned)
            raise
        # Not before: a session cancelled during the commit never told the client, so the file
        # is taken back (_abandoned) and nobody may hear of it.
        assert self._published is not None
        self._target.committed(message, self._published)
        return message

    async def _commit(self) -> QueuedMessage:
        def commit() -> str:
            # In a worker thread: the rest of the buffer reaches the file, its fsync puts it on
            # disk, and only then the rename, so the destination never names a partial file.
            # The file is made first, then the destination asked for: making it may change
            # the target (FileTarget.fallback).
            fd = self._write_out()
            target = self._target
            if self._late:
                fd = self._fd = headroom.place(fd, target.path, self._top, self._room, self._late)
            source, destination = target.path, target.destination(len(target.header) + self._size)

            def publish() -> None:
                os.rename(source, destination)
                self._close()  # here in the worker thread too: one system call fewer on the loop

            self._commit_file(
                fd,
                os.path.dirname(destination),
                publish=publish,
                # The directory could not be synced: the rename may not survive a crash, and
                # the client is about to get a temporary failure and send again, so take the
                # file back lest a crash-free run deliver both copies.
                undo=lambda: remove_quietly(destination),
            )
            return destination

        try:
            published = await self._io.run(commit)
        except OSError as exc:
            self._abort()
            raise storage_error(exc, f"queue_id={self._queue_id}: cannot commit") from exc
        self._state = _State.COMMITTED
        self._close()
        self._published = published
        return QueuedMessage(self._queue_id, self._envelope, self._size, delivered=self._target.delivered)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _abandoned(self, work: asyncio.Future[QueuedMessage]) -> None:
        """The committing session went away: no 250 was sent, so the message must not stay."""
        if work.cancelled() or work.exception() is not None:
            return  # _commit already removed the file
        # Nobody was told "queued" and the scheduler never heard of it; if this unlink is lost
        # in a crash the message is delivered once, which RFC 5321 §6.1 prefers to losing it.
        if self._published is not None:
            remove_quietly(self._published)
        self._state = _State.DISCARDED

    def discard(self) -> None:
        """Drop the partial message. After a commit (or while one runs) this does nothing."""
        if self._state is _State.OPEN:
            self._abort()

    def _abort(self) -> None:
        self._state = _State.DISCARDED
        self._buffer = bytearray()
        if self._fd is not None:
            self._close()
            remove_quietly(self._target.path)
