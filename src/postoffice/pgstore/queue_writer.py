"""Streaming one incoming message towards the shared queue: a local temporary file, then one
database transaction at the commit.

Untrusted input seen here: message bytes from SMTP clients, written verbatim and never parsed.

The content collects in a buffer of at most ``BUFFER_SIZE`` octets; a message that outgrows it
goes on into a file of this node's own (``<data-dir>/queue-tmp/ID``), so a 50 MB message is
never whole in memory. Nothing reaches the database before :meth:`PgMessageWriter.commit`,
which streams the content in 256 KiB chunks, with the envelope row, in one transaction
(:meth:`postoffice.pgstore.queue.PgQueue.insert`); the 250 waits for its commit (RFC 5321 §6.1).
Header fields prepended once the content is in the file wait in memory and go first at the
commit: the database row is written front to back, so they cost no copy of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import io
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from postoffice.durable import remove_quietly, storage_error, write_all
from postoffice.errors import SpoolError
from postoffice.pg.chunks import CHUNK
from postoffice.spool.envelope import Envelope, QueuedMessage

# What stays in memory before the content goes to the temporary file (spool/writer.py's).
BUFFER_SIZE = 64 * 1024
# One bytea row of content: large enough that a message is few rows, small enough that a
# row is never a burden to hold (PostgreSQL TOASTs it in 2 KiB pieces on disk either way).
CHUNK_SIZE = CHUNK  # every chunk but the last holds exactly this many (pg/chunks.py reads them)


class Sink(Protocol):
    """Where a writer's commit puts the message: the shared queue
    (:class:`~postoffice.pgstore.queue.PgQueue`), or a mailbox (direct delivery,
    :mod:`postoffice.delivery.direct_pg`, which falls back to the queue)."""

    async def insert(
        self,
        queue_id: str,
        envelope: Envelope,
        size: int,
        chunks: Callable[[], AsyncIterator[bytes]],
        *,
        small: bool,
    ) -> bool:
        """Store the message; True if it is delivered (in its mailbox), False if queued."""
        ...

    def forget(self, queue_id: str) -> None: ...


class _State(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    DISCARDED = "discarded"


class PgMessageWriter:
    """:class:`~postoffice.storage.MessageWriter` of the shared queue (see the module docstring)."""

    def __init__(self, sink: Sink, queue_id: str, envelope: Envelope, tmp_dir: Path) -> None:
        self._sink = sink
        self._queue_id = queue_id
        self._envelope = envelope
        self._path = str(tmp_dir / queue_id)
        self._buffer = bytearray()
        self._fd: int | None = None
        self._late = b""  # fields prepended once the content went to the file
        self._size = 0
        self._state = _State.OPEN

    @property
    def queue_id(self) -> str:
        return self._queue_id

    @property
    def size(self) -> int:
        return self._size

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise SpoolError(f"queue_id={self._queue_id}: message is {self._state.value}")

    def write(self, data: bytes) -> None:
        self._check_open()
        self._buffer += data
        self._size += len(data)
        if len(self._buffer) >= BUFFER_SIZE:
            self._guarded(self._write_out)

    def prepend(self, data: bytes) -> None:
        self._check_open()
        self._size += len(data)
        if self._fd is None:
            self._buffer[0:0] = data
        else:
            self._late = data + self._late

    def overwrite(self, offset: int, data: bytes) -> None:
        self._check_open()
        if offset < 0 or offset + len(data) > self._size - len(self._late):
            raise ValueError(f"cannot overwrite {len(data)} octets at {offset}")
        if self._fd is None:
            self._buffer[offset : offset + len(data)] = data
            return
        self._guarded(lambda: os.pwrite(self._write_out(), data, offset))

    def file_into(self, folder: str) -> None:
        self._check_open()
        self._envelope = dataclasses.replace(self._envelope, folder=folder)

    def read_content(self) -> BinaryIO:
        """The content so far (fields prepended after the file began are not in it)."""
        self._check_open()
        if self._fd is None:
            return io.BytesIO(bytes(self._buffer))
        self._guarded(self._write_out)
        try:
            return open(self._path, "rb")
        except OSError as exc:
            raise storage_error(exc, f"queue_id={self._queue_id}: cannot read back") from exc

    def _guarded(self, work: Callable[[], object]) -> None:
        try:
            work()
        except OSError as exc:
            self._abort()
            raise storage_error(exc, f"queue_id={self._queue_id}: cannot write") from exc

    def _write_out(self) -> int:
        fd = self._fd
        if fd is None:
            # Read and write: the commit reads it back into the database.
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = self._fd = os.open(self._path, flags, 0o600)
        write_all(fd, self._buffer)
        self._buffer.clear()
        return fd

    # --- the commit -------------------------------------------------------------------------

    async def commit(self) -> QueuedMessage:
        if self._state is not _State.OPEN:
            raise SpoolError(
                f"queue_id={self._queue_id}: cannot commit a message that is {self._state.value}"
            )
        self._state = _State.COMMITTING
        work = asyncio.ensure_future(self._commit())
        try:
            # Shielded: a cancelled session must not cut the transaction short; the message then
            # goes the way of any that never got its 250 (_abandoned).
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(self._abandoned)
            raise

    async def _commit(self) -> QueuedMessage:
        small = self._fd is None and len(self._buffer) <= CHUNK_SIZE
        try:
            if self._fd is not None:
                await asyncio.to_thread(self._write_out)
            delivered = await self._sink.insert(
                self._queue_id, self._envelope, self._size, self._chunks, small=small
            )
        except SpoolError:
            self._abort()
            raise
        except OSError as exc:
            self._abort()
            raise storage_error(exc, f"queue_id={self._queue_id}: cannot commit") from exc
        self._state = _State.COMMITTED
        self._release()
        return QueuedMessage(self._queue_id, self._envelope, self._size, delivered=delivered)

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The message in CHUNK_SIZE pieces: the late fields, then the file; or the buffer."""
        fd = self._fd
        if fd is None:
            for start in range(0, len(self._buffer), CHUNK_SIZE):
                yield bytes(self._buffer[start : start + CHUNK_SIZE])
            return
        pending, offset = self._late, 0
        while True:
            # In a thread: the file was just written and is in the page cache, but 256 KiB of
            # copying still has no place on the event loop.
            data = await asyncio.to_thread(os.pread, fd, CHUNK_SIZE, offset)
            offset += len(data)
            pending += data
            # Whole chunks only, whatever the late fields' length, so a reader can seek.
            while len(pending) >= CHUNK_SIZE:
                yield pending[:CHUNK_SIZE]
                pending = pending[CHUNK_SIZE:]
            if not data:
                if pending:
                    yield pending
                return

    def _abandoned(self, work: asyncio.Future[QueuedMessage]) -> None:
        """The committing session went away: no 250 was sent, so the message must not stay."""
        self._state = _State.DISCARDED
        if work.cancelled() or work.exception() is not None:
            return  # nothing was stored
        # If this is lost the message is delivered once without its 250: a duplicate at worst
        # when the client sends again, which RFC 5321 §6.1 prefers to a loss.
        asyncio.get_running_loop().run_in_executor(None, self._sink.forget, self._queue_id)

    def discard(self) -> None:
        """Drop the partial message. After a commit (or while one runs) this does nothing."""
        if self._state is _State.OPEN:
            self._abort()

    def _abort(self) -> None:
        self._state = _State.DISCARDED
        self._release()

    def _release(self) -> None:
        self._buffer = bytearray()
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            remove_quietly(Path(self._path))
