"""Reading a queued message back out of the shared queue, one 256 KiB chunk at a time.

Untrusted input seen here: the stored message bytes (from SMTP clients), passed on verbatim.
A message whose rows end before its recorded size (removed while being read, or damaged) is
an ``OSError``, never a short message handed on as if whole.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable

# Fetch(seq) -> that chunk's bytes, or None when there is no such row.
Fetch = Callable[[int], "bytes | None"]


class ChunkReader(io.RawIOBase):
    """The rows of one message as a raw stream; wrap in :class:`io.BufferedReader`."""

    def __init__(self, queue_id: str, size: int, fetch: Fetch) -> None:
        self._queue_id = queue_id
        self._size = size
        self._fetch = fetch
        self._seq = 0
        self._chunk = memoryview(b"")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        # Local delivery reads the message once per mailbox, going back to where it started.
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Go to ``offset``: back to the first chunk, then forward, a chunk fetched at a time
        (chunks are not assumed to be of one size; going back to the start costs nothing)."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target < self._position:
            self._seq, self._chunk, self._position = 0, memoryview(b""), 0
        scratch = bytearray(min(max(target - self._position, 1), 1 << 18))
        while self._position < min(target, self._size):
            if not self.readinto(memoryview(scratch)[: target - self._position]):
                break
        self._position = max(self._position, target)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._position >= self._size:
            return 0
        if not self._chunk:
            data = self._fetch(self._seq)
            if not data:
                raise OSError(
                    errno.EIO,
                    f"queue_id={self._queue_id}: content ends at {self._position} of {self._size} octets",
                )
            self._seq += 1
            self._chunk = memoryview(data)
        count = min(len(buffer), len(self._chunk), self._size - self._position)
        buffer[:count] = self._chunk[:count]
        self._chunk = self._chunk[count:]
        self._position += count
        return count


def open_chunks(queue_id: str, size: int, fetch: Fetch, chunk_size: int) -> io.BufferedReader:
    """A buffered reader of the message (``readline`` for the ``queue show`` command too)."""
    return io.BufferedReader(ChunkReader(queue_id, size, fetch), chunk_size)
