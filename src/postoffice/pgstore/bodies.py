"""Message bodies in the database: chunks of ``CHUNK`` octets in ``mail_chunks``, streamed in
and out, so a 50 MB message never sits whole in memory (issue 21).

Untrusted input seen here: message bytes (from the spool, or an IMAP APPEND), stored verbatim
and never parsed.

Every chunk but a body's last holds exactly ``CHUNK`` octets (:mod:`postoffice.pg.chunks`,
which reads them back).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, cast

from postoffice.errors import MessageGone
from postoffice.pg.chunks import CHUNK, open_chunks

# What a message written a piece at a time (an IMAP APPEND literal) keeps in memory before it
# goes to a temporary file.
SPOOL_IN_MEMORY = CHUNK

Connect = Callable[[], Any]  # a context manager giving a pooled connection (Database.connection)

# A body's statements (the blocking write_body's and direct delivery's, pgstore/mail_delivery.py):
# the first chunk takes the body's number, so a small message is one statement.
FIRST_CHUNK = (
    "INSERT INTO mail_chunks (body, seq, data) VALUES (nextval('mail_bodies'), 0, %s) RETURNING body"
)
NEXT_CHUNK = "INSERT INTO mail_chunks (body, seq, data) VALUES (%s, %s, %s)"
EMPTY_BODY = "SELECT nextval('mail_bodies')"  # an empty message: a number, no chunk


def chunks_of(headers: bytes, content: BinaryIO, size: int) -> Iterator[bytes]:
    """``headers`` then ``size`` octets of ``content``, in chunks of exactly ``CHUNK`` octets
    (the last shorter); OSError if ``content`` ends early."""
    buffer = bytearray(headers)
    left = size
    while True:
        while len(buffer) >= CHUNK:
            yield bytes(buffer[:CHUNK])
            del buffer[:CHUNK]
        if left <= 0:
            break
        data = content.read(min(CHUNK, left))
        if not data:
            raise OSError(f"the message ended {left} octets early")
        buffer += data
        left -= len(data)
    if buffer:
        yield bytes(buffer)


def stage(headers: bytes, content: BinaryIO, size: int) -> tuple[BinaryIO, int]:
    """``headers`` then ``size`` octets of ``content`` copied aside (in memory up to a chunk, then
    a temporary file) and rewound; with their length. A delivery reads its content this way
    before it takes a connection: reading may itself take one (a cluster's queue is in the
    database), and a thread holding one connection while it waits for another deadlocks once
    every connection of the pool is held so."""
    staged = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - the caller closes it
    try:
        for chunk in chunks_of(headers, content, size):
            staged.write(chunk)
        staged.seek(0)
    except BaseException:
        staged.close()
        raise
    return cast(BinaryIO, staged), len(headers) + size


def write_body(connection: Any, chunks: Iterator[bytes]) -> tuple[int, int]:
    """Store ``chunks`` as a new body (inside the caller's transaction); its id and size. The
    first chunk takes the body's number, so a small message is one statement."""
    body: int | None = None
    size = 0
    with connection.cursor() as cursor:
        for seq, chunk in enumerate(chunks):
            if body is None:
                cursor.execute(FIRST_CHUNK, (chunk,))
                body = int(cursor.fetchone()[0])
            else:
                cursor.execute(NEXT_CHUNK, (body, seq, chunk))
            size += len(chunk)
        if body is None:
            body = int(cursor.execute(EMPTY_BODY).fetchone()[0])
    return body, size


def copy_body(connection: Any, body: int) -> int:
    """A new body with the chunks of ``body``, copied inside the server."""
    row = connection.execute(
        "WITH new AS (SELECT nextval('mail_bodies') AS id)"
        " , copied AS (INSERT INTO mail_chunks (body, seq, data)"
        "   SELECT new.id, seq, data FROM mail_chunks, new WHERE body = %s)"
        " SELECT id FROM new",
        (body,),
    ).fetchone()
    return int(row[0])


def reader(connect: Connect, body: int, size: int, name: str) -> BinaryIO:
    """A buffered, seekable reader of ``body`` (``size`` octets); MessageGone if it goes."""

    def fetch(seq: int) -> bytes | None:
        with connect() as connection:
            row = connection.execute(
                "SELECT data FROM mail_chunks WHERE body = %s AND seq = %s", (body, seq)
            ).fetchone()
        return None if row is None else bytes(row[0])

    return open_chunks(fetch, size, name, lambda what: MessageGone(f"{what} is gone"))


class SpooledMessage:
    """A message written a piece at a time (IMAP APPEND): kept in memory while small, then in a
    temporary file, and streamed into the database by ``add``."""

    def __init__(self, address: str, folder: str | None) -> None:
        self.address = address
        self.folder = folder
        # Closed by discard (or add), as long as the literal lasts.
        spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        self.file: tempfile.SpooledTemporaryFile[bytes] | None = spooled
        self._size = 0
        self.error: OSError | None = None

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self.file is None:
            return  # failed or discarded: the rest of the literal is read and dropped
        try:
            self.file.write(data)
        except OSError as error:
            self.error = error
            self.discard()
            return
        self._size += len(data)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def content(self) -> BinaryIO:
        """The bytes written, from the start; the write error, if one failed."""
        if self.error is not None:
            raise self.error
        if self.file is None:
            raise FileNotFoundError("the message was discarded")
        self.file.seek(0)
        return self.file  # type: ignore[return-value]
