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
end of the message add): :meth:`~postoffice.spool.writer.FileMessageWriter.prepend`, and
:mod:`postoffice.spool.headroom` for how fields added at the end of a long message find room
above it without a copy (the envelope line may end in spaces).

Durability follows Postfix ``mail_stream.c`` and the Maildir delivery recipe: the data is
flushed to disk before the rename, so the name in ``queue/`` never points at a partial file; the
``queue/`` directory is flushed after the rename, so the name itself survives a crash. Only
then does the writer's commit (:mod:`postoffice.spool.writer`) return and the server may answer
250. The flushes are shared by every message committed at the same time: in the server one
``syncfs(2)`` covers the commits of a moment (:mod:`postoffice.spool.group_commit`), else the
file threads flush side by side (:mod:`postoffice.spool.durability`); the recipe itself is
:mod:`postoffice.durable`'s.
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from postoffice.durable import fsync_directory, remove_quietly, storage_error
from postoffice.errors import SpoolError
from postoffice.spool import headroom
from postoffice.spool import state as queue_state
from postoffice.spool.durability import IoPool
from postoffice.spool.envelope import Envelope, QueuedMessage
from postoffice.spool.group_commit import committer
from postoffice.spool.ids import is_queue_id, new_queue_id
from postoffice.spool.writer import FileMessageWriter, FileTarget

log = logging.getLogger("postoffice.spool")

MAGIC = b"POSTOFFICE-SPOOL 1\n"
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


def spool_header(envelope: Envelope) -> bytes:
    """What a spool file holds before the message: the magic line and the envelope line."""
    return MAGIC + _envelope_line(envelope)


class _CorruptEntry(Exception):
    """A spool file whose header does not parse."""


class _QueueFile:
    """:class:`~postoffice.spool.writer.FileTarget` of a message received into the spool:
    ``tmp/ID``, renamed to ``queue/ID`` at commit."""

    delivered = False
    # JSON allows trailing whitespace: the envelope line takes the room (spool/headroom.py).
    room = headroom.ADDED_FIELDS_ROOM

    def __init__(self, spool: FileSpool, queue_id: str, envelope: Envelope) -> None:
        self._spool = spool
        self._queue_id = queue_id
        self._envelope = envelope
        # Paths as strings: pathlib's joins cost more than the rest of naming a file, per message.
        self.path = spool.tmp_prefix + queue_id

    @functools.cached_property
    def header(self) -> bytes:
        # When asked: a direct delivery's fallback is rarely needed, and the envelope's JSON
        # costs more than the rest of starting a message.
        return spool_header(self._envelope)

    def create(self) -> int:
        return self._spool.create_file(self.path)

    def destination(self, size: int) -> str:
        return self._spool.queue_prefix + self._queue_id

    def fallback(self, error: OSError) -> FileTarget | None:
        return None

    def committed(self, message: QueuedMessage, destination: str) -> None:
        pass

    def file_into(self, folder: str, envelope: Envelope) -> None:
        self._envelope = envelope
        self.__dict__.pop("header", None)  # made again from the new envelope when asked


class FileSpool:
    """:class:`~postoffice.storage.MessageStore` over a local directory tree.

    One server process owns a spool: it alone receives into ``tmp/``, so at construction it
    removes leftovers there (crash debris that never got a 250). A process that only reads
    the queue (the ``queue`` command) passes ``clean_tmp=False`` to leave a running server's
    in-progress messages alone.
    """

    def __init__(
        self,
        root: Path,
        *,
        clean_tmp: bool = True,
        io: IoPool | None = None,
        group_commit: bool = False,
    ) -> None:
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
            # How a written file is made durable: file by file, or with ``group_commit`` one
            # syncfs for the commits of a moment (spool/group_commit.py), which the server's
            # local deliveries share (commit_file).
            self._committer = committer(root, group=group_commit)
        except OSError as exc:
            raise storage_error(exc, f"cannot prepare spool {root}") from exc
        self.commit_file = self._committer.commit_file

    @property
    def flushes(self) -> int:
        """Flush calls (fsync, syncfs) the commits made through :attr:`commit_file` so far."""
        return self._committer.flushes

    def close(self) -> None:
        """Wait for the commits handed over, then end the worker threads and the flushing one."""
        self.io.close()
        self._committer.close()

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
            remove_quietly(Path(entry.path))
        for entry in os.scandir(self.free_dir):
            remove_quietly(Path(entry.path))

    def _clean_orphaned_states(self) -> None:
        # complete() removes the message first, then its state; a crash in between leaves a
        # state without a message, which nothing will ever read.
        for entry in os.scandir(self.state_dir):
            if is_queue_id(entry.name) and not (self.queue_dir / entry.name).exists():
                remove_quietly(Path(entry.path))

    # --- receiving ----------------------------------------------------------------------------

    def put(self, envelope: Envelope) -> FileMessageWriter:
        """Start a message: its queue ID and header, in memory until there is more to write.

        The file ``tmp/ID`` (0600, O_EXCL) appears when the content outgrows the buffer, or at
        commit, in a worker thread (see :class:`~postoffice.spool.writer.FileMessageWriter`).
        A read-only or full spool is refused here, before the client sends the content, as
        creating the file at once would.
        """
        self.check_writable()
        queue_id = new_queue_id()
        target = _QueueFile(self, queue_id, envelope)
        return FileMessageWriter(self.io, queue_id, envelope, target, self.commit_file)

    def queue_file(self, queue_id: str, envelope: Envelope) -> FileTarget:
        """Where a message received into the spool is written: ``tmp/ID``, then ``queue/ID``."""
        return _QueueFile(self, queue_id, envelope)

    def writer(self, queue_id: str, envelope: Envelope, target: FileTarget) -> FileMessageWriter:
        """A writer for a message written into ``target`` with this spool's worker threads
        (direct delivery's, which falls back to :meth:`queue_file`)."""
        return FileMessageWriter(self.io, queue_id, envelope, target, self.commit_file)

    def check_writable(self) -> None:
        """StorageFullError when the spool's file system is full or read-only."""
        # statvfs reads the file system's counters; unlike creating a file it never waits for
        # the journal.
        try:
            status = os.statvfs(self.tmp_dir)
        except OSError as exc:
            raise storage_error(exc, "cannot create spool file") from exc
        if status.f_flag & os.ST_RDONLY:
            raise storage_error(OSError(errno.EROFS, os.strerror(errno.EROFS)), "cannot create spool file")
        # Blocks reserved for root (ext4's reserved blocks) are usable when we run as root.
        free = status.f_bfree if os.geteuid() == 0 else status.f_bavail
        if free == 0:
            raise storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "cannot create spool file")

    # --- reading back -------------------------------------------------------------------------

    def pending(self) -> list[str]:
        try:
            names = os.listdir(self.queue_dir)
        except OSError as exc:
            raise storage_error(exc, "cannot list the queue") from exc
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
                raise storage_error(exc, f"queue_id={queue_id}: cannot read") from exc
        return QueuedMessage(queue_id, envelope, size)

    def open(self, queue_id: str) -> BinaryIO:
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
            raise storage_error(exc, f"queue_id={queue_id}: cannot remove") from exc
        try:
            (self.state_dir / queue_id).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, f"queue_id={queue_id}: cannot remove its state") from exc

    def flush_removals(self) -> None:
        # complete() takes names out of queue/ only: flushing it makes them all durable.
        try:
            fsync_directory(self.queue_dir)
        except OSError as exc:
            raise storage_error(exc, "cannot flush the queue directory") from exc

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
            raise storage_error(exc, f"queue_id={queue_id}: cannot read its state") from exc
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
            raise storage_error(exc, f"queue_id={queue_id}: cannot record its state") from exc

    def create_file(self, path: str) -> int:
        """Open ``path`` for writing, empty, as a new file of this spool: a kept file of
        ``free/`` moved there, or a new one (0600, O_EXCL); its descriptor."""
        fd = self._reuse_free_file(path)
        if fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            # O_EXCL: queue IDs are unique by construction (ids.py); a clash is refused, never
            # an overwrite.
            fd = os.open(path, flags, 0o600)
        return fd

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
            remove_quietly(kept)
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
            raise storage_error(exc, f"queue_id={queue_id}: cannot open") from exc

    def _header_line(self, queue_id: str, file: BinaryIO) -> bytes:
        """Check the magic, return the envelope line and leave ``file`` at the message start."""
        try:
            if file.read(len(MAGIC)) != MAGIC:
                raise _CorruptEntry("bad magic line")
            line = file.readline(MAX_ENVELOPE_LINE + 1)
        except OSError as exc:
            raise storage_error(exc, f"queue_id={queue_id}: cannot read") from exc
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
