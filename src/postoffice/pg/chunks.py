"""A message stored as numbered chunks of ``CHUNK`` octets (the queue's ``queue_chunks``, the
mailboxes' ``mail_chunks``), read back a chunk at a time: never whole in memory.

Untrusted input seen here: the stored bytes, passed on verbatim.

Every chunk but a message's last holds exactly ``CHUNK`` octets (both writers cut them so), so
the chunk that holds an offset is ``offset // CHUNK``: a reader seeks anywhere without reading
what comes before, and local delivery can go back to the start once per mailbox.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable
from typing import Any

CHUNK = 256 * 1024

# Fetch(seq) -> chunk ``seq``'s bytes, or None when there is no such row.
Fetch = Callable[[int], "bytes | None"]


class ChunkReader(io.RawIOBase):
    """``size`` octets in chunks given by ``fetch``, one chunk kept at a time. A chunk that is
    missing raises ``gone(name)`` (the message was removed while being read); one that is short
    (damage) an OSError: never a short message handed on as if whole."""

    def __init__(self, fetch: Fetch, size: int, name: str, gone: Callable[[str], Exception]) -> None:
        super().__init__()
        self._fetch = fetch
        self._size = size
        self._name = name
        self._gone = gone
        self._position = 0
        self._chunk: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        if self._position >= self._size:
            return 0
        seq, start = divmod(self._position, CHUNK)
        data = self._chunk_at(seq)[start:]
        count = min(len(buffer), len(data), self._size - self._position)
        if count <= 0:
            raise OSError(
                errno.EIO, f"{self._name}: chunk {seq} ends at {self._position} of {self._size} octets"
            )
        buffer[:count] = data[:count]
        self._position += count
        return count

    def _chunk_at(self, seq: int) -> bytes:
        if self._chunk is None or self._chunk[0] != seq:
            data = self._fetch(seq)
            if data is None:
                raise self._gone(self._name)
            self._chunk = (seq, data)
        return self._chunk[1]

    def close(self) -> None:
        self._chunk = None
        super().close()


def open_chunks(fetch: Fetch, size: int, name: str, gone: Callable[[str], Exception]) -> io.BufferedReader:
    """A buffered, seekable reader of the chunks (``readline`` works too)."""
    return io.BufferedReader(ChunkReader(fetch, size, name, gone), buffer_size=64 * 1024)
