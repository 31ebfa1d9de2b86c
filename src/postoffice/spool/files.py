"""A spool of one file per message in three directories, made durable with fsync and rename.

Untrusted input seen here: message bytes from SMTP clients, stored verbatim and never parsed;
the envelope, stored as one line of JSON; and, when reading back, whatever lies in the spool
directory: a file that does not parse is moved to ``corrupt/``, never half-trusted. Queue IDs
given to :meth:`FileSpool.load` and friends are checked with :func:`is_queue_id` before they
become a path component.

Layout (the same three-step life as Maildir's tmp/new, cr.yp.to/proto/maildir.html, and
Postfix's incoming → active queues)::

    root/tmp/ID       being received; never got a 250, removed at start-up
    root/queue/ID     committed: fsync'd, renamed here, directory fsync'd; then the 250
    root/state/ID     what delivery has learnt so far (spool/state.py), appended and fsync'd
    root/corrupt/ID   could not be parsed; kept for a person to look at
    root/free/NAME    a small delivered message's file, kept to be reused (truncated) for a
                      new one; emptied at start-up

Reusing files: creating one file and deleting one per message cost a loaded ext4 about an
eighth of the server's CPU time in its inode allocator (measured with ``perf``: it searches
past recently freed inodes); truncating a file kept from an earlier message costs less.

Each file is ``MAGIC``, one line of envelope JSON, then the message bytes exactly as received,
below the header fields the server added (``Received:`` first, then whatever the checks at the
end of the message add): :meth:`FileMessageWriter.prepend`, and :mod:`postoffice.spool.headroom`
for how fields added at the end of a long message find room above it without a copy.

Durability follows Postfix ``mail_stream.c`` and the Maildir delivery recipe: the data is
flushed to disk before the rename, so the name in ``queue/`` never points at a partial file; the
``queue/`` directory is flushed after the rename, so the name itself survives a crash. Only
then does :meth:`FileMessageWriter.commit` return and the server may answer 250. The flushes
are shared by every message committed at the same time (:mod:`postoffice.spool.durability`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import io
import itertools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from postoffice.errors import SpoolError, StorageFullError
from postoffice.spool import headroom
from postoffice.spool import state as queue_state
from postoffice.spool.durability import IoPool, commit_file, fsync_directory
from postoffice.spool.envelope import Envelope, QueuedMessage
from postoffice.spool.ids import is_queue_id, new_queue_id

log = logging.getLogger("postoffice.spool")

MAGIC = b"POSTOFFICE-SPOOL 1\n"
# Writes reach the disk in blocks of this size; a message is never held whole in memory.
BUFFER_SIZE = 64 * 1024
# An envelope of 1000 recipients (Postfix smtpd_recipient_limit) is a few hundred KiB of JSON;
# a longer line means a damaged file, and reading it must not take unbounded memory.
MAX_ENVELOPE_LINE = 16 * 1024 * 1024
# A state log grows by a line per attempt; a year of retries is a few hundred KiB. More
# than this is damage, and reading it must not take unbounded memory.
MAX_STATE_SIZE = 16 * 1024 * 1024
# A queue ID is taken twice in a row only if another process made the same one in the same
# microsecond (see ids.py); a few attempts are plenty.
ID_ATTEMPTS = 5

# Files kept for reuse (see the module docstring): at most this many per process, and only
# files no larger than this, so free/ never holds more than a few megabytes.
FREE_FILES = 256
FREE_FILE_SIZE = 16 * 1024

# Out of space, over quota, or read-only: conditions an operator fixes, so the client is told
# to try again later (452 4.3.1, RFC 3463 "mail system full") rather than given up on.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def spool_error(exc: OSError, action: str) -> SpoolError:
    """The SpoolError for an OSError: StorageFullError when retrying later can succeed."""
    kind = StorageFullError if exc.errno in STORAGE_FULL_ERRNOS else SpoolError
    reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    return kind(f"{action}: {reason}")


def spool_header(envelope: Envelope) -> bytes:
    """What a spool file holds before the message: the magic line and the envelope line."""
    return MAGIC + _envelope_line(envelope)


def _remove_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("path=%s status=unremovable error=%s", path, exc.strerror)


class _CorruptEntry(Exception):
    """A spool file whose header does not parse."""


class _State(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    DISCARDED = "discarded"


class FileMessageWriter:
    """Streams one message into ``tmp/ID``; :meth:`commit` moves it to ``queue/ID``.

    Bytes collect in a buffer of at most ``BUFFER_SIZE`` octets (what a buffered file would
    hold anyway); the file is created when the buffer first fills. A message smaller than the
    buffer is created, written, synced and renamed by a worker thread in one go, so the
    event loop makes no file-system call for it: creating a file can wait for the file system's
    journal, which the flushes of other messages keep busy.
    """

    def __init__(self, spool: FileSpool, queue_id: str, envelope: Envelope, header: bytes) -> None:
        self._spool = spool
        self._io = spool.io
        self._queue_id = queue_id
        self._envelope = envelope
        # Paths as strings: pathlib's joins cost more than the rest of naming a file, per message.
        self._path = spool.tmp_prefix + queue_id
        self._buffer = bytearray(header)
        self._fd: int | None = None
        self._size = 0
        # Where the message starts (after the file's header): prepend() puts fields here.
        self._top = len(header)
        self._room = 0  # spaces left for added fields at the end of the envelope line on disk
        self._late = b""  # fields prepended once the message's start was on disk
        self._state = _State.OPEN
        self._target: str | None = None  # where the committed file is

    @property
    def queue_id(self) -> str:
        return self._queue_id

    @property
    def size(self) -> int:
        """Message bytes written so far (the spool header not included)."""
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
                raise spool_error(exc, f"queue_id={self._queue_id}: cannot write") from exc

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
            file = open(self._path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise spool_error(exc, f"queue_id={self._queue_id}: cannot read back") from exc
        file.seek(self._top)
        return file

    def _make_room(self) -> None:
        """The file is about to be written for the first time: leave room for late fields."""
        self._room = headroom.make_room(self._buffer, self._top)
        self._top += self._room

    def _write_out(self) -> int:
        """Create the file if need be and write the buffer to it; the file's descriptor."""
        fd = self._fd
        if fd is None:
            fd = self._fd = self._create()
        buffer = self._buffer
        view = memoryview(buffer)
        try:
            while view:
                view = view[os.write(fd, view) :]
        finally:
            view.release()
        buffer.clear()
        return fd

    def _create(self) -> int:
        """Open the file at ``self._path`` for writing, empty; its descriptor."""
        fd = self._spool._reuse_free_file(self._path)
        if fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            # O_EXCL: queue IDs are unique by construction (ids.py); a clash is refused, never
            # an overwrite.
            fd = os.open(self._path, flags, 0o600)
        return fd

    def _destination(self) -> str:
        """Where :meth:`commit` renames the file; its directory is synced after the rename."""
        return self._spool.queue_prefix + self._queue_id

    def _committed(self) -> QueuedMessage:
        return QueuedMessage(self._queue_id, self._envelope, self._size)

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
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(self._abandoned)
            raise

    async def _commit(self) -> QueuedMessage:
        def commit() -> str:
            # In a worker thread: the rest of the buffer reaches the file, its fsync puts it on
            # disk, and only then the rename, so the destination never names a partial file.
            # The file is made first, then the destination asked for: making it may change
            # where it goes (DirectMessageWriter).
            fd = self._write_out()
            if self._late:
                fd = self._fd = headroom.place(fd, self._path, self._top, self._room, self._late)
            source, target = self._path, self._destination()

            def publish() -> None:
                os.rename(source, target)
                self._close()  # here in the worker thread too: one system call fewer on the loop

            commit_file(
                fd,
                os.path.dirname(target),
                publish=publish,
                # The directory could not be synced: the rename may not survive a crash, and
                # the client is about to get a temporary failure and send again, so take the
                # file back lest a crash-free run deliver both copies.
                undo=lambda: _remove_quietly(target),
            )
            return target

        try:
            target = await self._io.run(commit)
        except OSError as exc:
            self._abort()
            raise spool_error(exc, f"queue_id={self._queue_id}: cannot commit") from exc
        self._state = _State.COMMITTED
        self._close()
        self._target = target
        return self._committed()

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
        if self._target is not None:
            _remove_quietly(self._target)
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
            _remove_quietly(self._path)


class FileSpool:
    """:class:`~postoffice.spool.base.Spool` over a local directory tree.

    One server process owns a spool: it alone receives into ``tmp/``, so at construction it
    removes leftovers there (crash debris that never got a 250). A process that only reads
    the queue (the ``queue`` command) passes ``clean_tmp=False`` to leave a running server's
    in-progress messages alone.
    """

    def __init__(self, root: Path, *, clean_tmp: bool = True, io: IoPool | None = None) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.queue_dir = root / "queue"
        self.tmp_prefix = f"{self.tmp_dir}{os.sep}"
        self.queue_prefix = f"{self.queue_dir}{os.sep}"
        self.state_dir = root / "state"
        self.corrupt_dir = root / "corrupt"
        self.free_dir = root / "free"
        # Names of the files this process kept in free/, oldest first (complete() runs in a
        # worker thread: deque appends and pops are atomic).
        self._free: collections.deque[str] = collections.deque()
        self._free_names = itertools.count()
        # Worker threads for commits, shared with local delivery in the server, so the file
        # system groups the flushes of both (see durability.py).
        self.io = io if io is not None else IoPool()
        try:
            self._make_directories()
            if clean_tmp:
                self._clean_tmp()
                self._clean_orphaned_states()
        except OSError as exc:
            raise spool_error(exc, f"cannot prepare spool {root}") from exc

    def _make_directories(self) -> None:
        # 0700: queued mail is private to the server's user, as Postfix's queue directories.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = False
        for directory in (self.tmp_dir, self.queue_dir, self.state_dir, self.corrupt_dir, self.free_dir):
            if not directory.is_dir():
                directory.mkdir(mode=0o700)
                created = True
        if created:
            # A commit's directory fsync covers names inside queue/, not queue/ itself.
            fsync_directory(self.root)

    def _clean_tmp(self) -> None:
        for entry in os.scandir(self.tmp_dir):
            # After a crash between rename and the directory sync, the same file can have a
            # name in both tmp/ and queue/; removing the tmp/ name leaves the queued one.
            log.info("queue_id=%s status=removed reason=unfinished-at-start-up", entry.name)
            _remove_quietly(Path(entry.path))
        for entry in os.scandir(self.free_dir):
            _remove_quietly(Path(entry.path))

    def _clean_orphaned_states(self) -> None:
        # complete() removes the message first, then its state; a crash in between leaves a
        # state without a message, which nothing will ever read.
        for entry in os.scandir(self.state_dir):
            if is_queue_id(entry.name) and not (self.queue_dir / entry.name).exists():
                _remove_quietly(Path(entry.path))

    # --- receiving ----------------------------------------------------------------------------

    def new_message(self, envelope: Envelope) -> FileMessageWriter:
        """Start a message: its queue ID and header, in memory until there is more to write.

        The file ``tmp/ID`` (0600, O_EXCL) appears when the content outgrows the buffer, or at
        commit, in a worker thread (see :class:`FileMessageWriter`). A read-only or full
        spool is refused here, before the client sends the content, as creating the file at
        once would.
        """
        self.check_writable()
        return FileMessageWriter(self, new_queue_id(), envelope, spool_header(envelope))

    def check_writable(self) -> None:
        """StorageFullError when the spool's file system is full or read-only."""
        # statvfs reads the file system's counters; unlike creating a file it never waits for
        # the journal.
        try:
            status = os.statvfs(self.tmp_dir)
        except OSError as exc:
            raise spool_error(exc, "cannot create spool file") from exc
        if status.f_flag & os.ST_RDONLY:
            raise spool_error(OSError(errno.EROFS, os.strerror(errno.EROFS)), "cannot create spool file")
        # Blocks reserved for root (ext4's reserved blocks) are usable when we run as root.
        free = status.f_bfree if os.geteuid() == 0 else status.f_bavail
        if free == 0:
            raise spool_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "cannot create spool file")

    # --- reading back -------------------------------------------------------------------------

    def pending(self) -> list[str]:
        try:
            names = os.listdir(self.queue_dir)
        except OSError as exc:
            raise spool_error(exc, "cannot list the queue") from exc
        # IDs sort by creation time (ids.py), so this is oldest first.
        return sorted(name for name in names if is_queue_id(name))

    def load(self, queue_id: str) -> QueuedMessage:
        with self._open(queue_id) as file:
            line = self._header_line(queue_id, file)
            try:
                envelope = _parse_envelope(line)
            except _CorruptEntry as exc:
                raise self._quarantine(queue_id, exc) from exc
            try:
                size = os.fstat(file.fileno()).st_size - file.tell()
            except OSError as exc:
                raise spool_error(exc, f"queue_id={queue_id}: cannot read") from exc
        return QueuedMessage(queue_id, envelope, size)

    def open_content(self, queue_id: str) -> BinaryIO:
        file = self._open(queue_id)
        try:
            self._header_line(queue_id, file)
        except BaseException:
            file.close()
            raise
        return file

    def complete(self, queue_id: str) -> None:
        # No directory fsync: if the removal is lost in a crash, the message is delivered again
        # with recovering=True and the agents find their earlier copies (and its state log,
        # removed second, still says which recipients are done).
        path = self._queue_path(queue_id)
        try:
            if len(self._free) < FREE_FILES and os.stat(path).st_size <= FREE_FILE_SIZE:
                name = f"{os.getpid()}.{next(self._free_names)}"
                os.rename(path, self.free_dir / name)
                self._free.append(name)
            else:
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise spool_error(exc, f"queue_id={queue_id}: cannot remove") from exc
        try:
            (self.state_dir / queue_id).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise spool_error(exc, f"queue_id={queue_id}: cannot remove its state") from exc

    def exists(self, queue_id: str) -> bool:
        return self._queue_path(queue_id).exists()

    # --- delivery state -----------------------------------------------------------------------

    def read_state(self, queue_id: str) -> queue_state.QueueState:
        path = self.state_dir / self._queue_path(queue_id).name
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_STATE_SIZE + 1)
        except FileNotFoundError:
            return queue_state.QueueState()
        except OSError as exc:
            raise spool_error(exc, f"queue_id={queue_id}: cannot read its state") from exc
        if len(data) > MAX_STATE_SIZE:
            raise SpoolError(f"queue_id={queue_id}: state log larger than {MAX_STATE_SIZE} octets")
        return queue_state.fold(data, queue_id=queue_id)

    def append_state(self, queue_id: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Append records to the message's state log and fsync them before returning.

        One ``write(2)`` in ``O_APPEND`` mode, so a record from another process (the ``queue``
        command) lands before or after this batch, never inside it. A crash can leave a torn
        last line, which :func:`~postoffice.spool.state.fold` skips.
        """
        if not records:
            return
        path = self.state_dir / self._queue_path(queue_id).name
        data = queue_state.encode(records)
        try:
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(errno.EIO, f"short write ({written} of {len(data)} octets)")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_directory(self.state_dir)
        except OSError as exc:
            raise spool_error(exc, f"queue_id={queue_id}: cannot record its state") from exc

    def _reuse_free_file(self, path: str) -> int | None:
        """Move a kept file to ``path`` and open it emptied; None when there is none.

        link() then unlink(), not rename(): like O_EXCL, link refuses to replace a file that
        already has the name. Only files this process put in ``free/`` are taken, so worker
        processes sharing the spool never take the same one.
        """
        while self._free:
            try:
                name = self._free.popleft()
            except IndexError:
                return None
            kept = f"{self.free_dir}{os.sep}{name}"
            try:
                os.link(kept, path)
            except FileNotFoundError:
                continue  # removed by someone; try the next
            _remove_quietly(kept)
            # O_NOFOLLOW: what was kept is only ever a regular file of ours, never a link.
            return os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
        return None

    def _queue_path(self, queue_id: str) -> Path:
        if not is_queue_id(queue_id):
            raise SpoolError(f"not a queue ID: {queue_id!r}")
        return self.queue_dir / queue_id

    def _open(self, queue_id: str) -> BinaryIO:
        path = self._queue_path(queue_id)
        try:
            return open(path, "rb")
        except FileNotFoundError as exc:
            raise SpoolError(f"queue_id={queue_id}: not in the queue") from exc
        except OSError as exc:
            raise spool_error(exc, f"queue_id={queue_id}: cannot open") from exc

    def _header_line(self, queue_id: str, file: BinaryIO) -> bytes:
        """Check the magic, return the envelope line and leave ``file`` at the message start."""
        try:
            if file.read(len(MAGIC)) != MAGIC:
                raise _CorruptEntry("bad magic line")
            line = file.readline(MAX_ENVELOPE_LINE + 1)
        except OSError as exc:
            raise spool_error(exc, f"queue_id={queue_id}: cannot read") from exc
        except _CorruptEntry as exc:
            raise self._quarantine(queue_id, exc) from exc
        if not line.endswith(b"\n"):
            corrupt = _CorruptEntry("envelope line truncated or too long")
            raise self._quarantine(queue_id, corrupt) from corrupt
        return line

    def _quarantine(self, queue_id: str, problem: _CorruptEntry) -> SpoolError:
        """Move a damaged file to ``corrupt/`` so it stops failing, and say so loudly."""
        target = self.corrupt_dir / queue_id
        try:
            os.replace(self.queue_dir / queue_id, target)
        except OSError as exc:
            log.error("queue_id=%s status=corrupt reason=%r error=%s", queue_id, str(problem), exc.strerror)
        else:
            log.warning("queue_id=%s status=corrupt reason=%r moved_to=%s", queue_id, str(problem), target)
        return SpoolError(f"queue_id={queue_id}: corrupt spool file ({problem})")


def _envelope_line(envelope: Envelope) -> bytes:
    # ensure_ascii escapes every non-ASCII character and JSON escapes control characters, so
    # the line holds no raw newline whatever the client sent.
    text = json.dumps(envelope.to_json_dict(), ensure_ascii=True, separators=(",", ":"))
    return text.encode("ascii") + b"\n"


def _parse_envelope(line: bytes) -> Envelope:
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return Envelope.from_json_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _CorruptEntry(f"envelope does not parse: {exc}") from exc
