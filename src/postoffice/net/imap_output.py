"""How a command's responses go out: bytes as they are, literals from their files a block at a
time, and responses made as they are sent (FETCH of a whole big folder) a chunk at a time,
each written only once the client has taken the last (drain), so memory stays at a chunk.

Untrusted input seen here: none parsed; message bytes are copied as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, cast

from postoffice.imap.responses import FileLiteral, Segment

# Blocks a big literal (BODY[] of a 20 MB message) is copied in from its file.
COPY_BLOCK = 256 * 1024
# Responses made as they are sent (FETCH 1:* of a big folder) are taken this much at a time,
# and the next is made only once the client has taken the last (drain): memory stays here.
STREAM_CHUNK = 64 * 1024


async def send_segments(writer: asyncio.StreamWriter, segments: Iterable[Segment]) -> None:
    """Write responses; a FileLiteral's octets are copied from its file a block at a time,
    waiting for the client to take each (memory stays at a block, not a message). Those
    not in a list are made as they are sent: a chunk at a time in the worker thread, the
    next once the client has taken the last."""
    if isinstance(segments, list):
        await _send_list(writer, segments)
        return
    iterator = iter(segments)
    while batch := await asyncio.to_thread(_take, iterator, STREAM_CHUNK):
        await _send_list(writer, batch)
        await writer.drain()


async def _send_list(writer: asyncio.StreamWriter, segments: list[Segment]) -> None:
    pending = list(segments)
    try:
        while pending:
            segment = pending.pop(0)
            if isinstance(segment, bytes):
                writer.write(segment)
                continue
            await _copy_literal(writer, segment)
    finally:
        for segment in pending:  # the connection failed: the rest of the files close now
            if isinstance(segment, FileLiteral):
                _close_source(segment)


async def _copy_literal(writer: asyncio.StreamWriter, literal: FileLiteral) -> None:
    stream, start = cast(tuple[BinaryIO, int], literal.source)
    try:
        remaining, offset = literal.length, start
        while remaining:
            block = await asyncio.to_thread(_read_at, stream, offset, min(COPY_BLOCK, remaining))
            if not block:  # cannot happen with an open file; never send fewer octets than said
                block = b" " * min(COPY_BLOCK, remaining)
            writer.write(block)
            remaining -= len(block)
            offset += len(block)
            await writer.drain()
    finally:
        _close_source(literal)


def _take(segments: Iterator[Segment], size: int) -> list[Segment]:
    """The next segments, their bytes joined, up to ``size`` octets or a FileLiteral (which
    ends the batch: it is copied before more are made); empty at the end."""
    out: list[Segment] = []
    pieces: list[bytes] = []
    taken = 0
    for segment in segments:
        if isinstance(segment, FileLiteral):
            out += [b"".join(pieces), segment]
            return out
        pieces.append(segment)
        taken += len(segment)
        if taken >= size:
            break
    if pieces:
        out.append(b"".join(pieces))
    return out


def _read_at(stream: BinaryIO, offset: int, size: int) -> bytes:
    stream.seek(offset)
    return stream.read(size)


def _close_source(literal: FileLiteral) -> None:
    stream, _ = cast(tuple[BinaryIO, int], literal.source)
    with contextlib.suppress(OSError):
        stream.close()
