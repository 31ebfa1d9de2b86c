"""One message stored into a cluster's mailbox on the event loop, in one transaction: direct
delivery's half in the database (:mod:`postoffice.delivery.direct_pg` is the other).

Untrusted input seen here: the message bytes (stored verbatim, as chunks) and the recipient's
address, already checked by :meth:`~postoffice.pgstore.mailboxes.PgMailboxStore.mailbox_name`;
every value is a statement parameter.

The statements are :class:`~postoffice.pgstore.mailboxes.PgMailboxStore`'s own (the look-up
:data:`~postoffice.pgstore.mail_rows.PLACED`, the chunks of :mod:`postoffice.pgstore.bodies`,
:data:`~postoffice.pgstore.mail_rows.INSERT_MESSAGE` with its UID, mod-sequence and the
notification other nodes' watches listen for), sent on the async pool's connection that the
queue would have used, so a message for one local mailbox costs one transaction, committed
synchronously before the 250 (RFC 5321 §6.1), and no queue row at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from postoffice.pg.chunks import CHUNK
from postoffice.pgstore import bodies
from postoffice.pgstore.mail_rows import (
    CHANNEL,
    INSERT_MESSAGE,
    PLACED,
    location,
    payload,
    placed_ids,
)
from postoffice.storage import StoredMessage


class NoFolder(LookupError):
    """The mailbox or its folder is not there yet: made outside the transaction, then again."""


async def deliver(
    connection: Any,
    mailbox: str,
    folder: str,
    key: str,
    content: AsyncIterator[bytes],
    *,
    received: float,
    whole: bool,
    small: bool = False,
) -> StoredMessage:
    """Store ``content`` (the delivery's header fields first) as message ``key`` of ``folder``
    in ``mailbox`` and commit, synchronously. ``whole``: the mailbox was made just now, so its
    watchers are told to look at all of it. A message ``key`` already there is this delivery's,
    committed by an attempt whose connection broke at the commit: it is not stored twice.
    ``small``: the message is in memory and fits in one chunk, so the statements go in a
    pipeline (three round trips, as the queue's commit of such a message takes one)."""
    stored = StoredMessage(mailbox, key, location(folder, key, "", True), "", received)
    pipeline = connection.pipeline() if small else contextlib.nullcontext()
    async with pipeline, connection.transaction():
        # The 250 follows this commit: it must be on disk (WAL flushed) first, whatever the
        # server's default says.
        await connection.execute("SET LOCAL synchronous_commit = on")
        found = placed_ids(await (await connection.execute(PLACED, (folder, key, mailbox))).fetchone())
        if found is None:
            raise NoFolder(f"{mailbox}: no folder {folder!r}")
        owner, target, earlier = found
        if earlier:
            return stored
        body, size = await _write_body(connection, content)
        changed = payload(mailbox) if whole else payload(mailbox, key, (stored.location,))
        row = await (
            await connection.execute(
                INSERT_MESSAGE,
                (target, owner, target, key, "", True, received, size, body, CHANNEL, changed),
            )
        ).fetchone()
        if row is None:
            raise NoFolder(f"{mailbox}: folder {folder!r} was removed meanwhile")
    return stored


async def _write_body(connection: Any, chunks: AsyncIterator[bytes]) -> tuple[int, int]:
    """:func:`postoffice.pgstore.bodies.write_body` on the async connection: its id and size."""
    body: int | None = None
    size = 0
    seq = 0
    async for chunk in chunks:
        if body is None:
            body = int((await (await connection.execute(bodies.FIRST_CHUNK, (chunk,))).fetchone())[0])
        else:
            await connection.execute(bodies.NEXT_CHUNK, (body, seq, chunk))
        seq += 1
        size += len(chunk)
    if body is None:
        body = int((await (await connection.execute(bodies.EMPTY_BODY)).fetchone())[0])
    return body, size


async def headed(headers: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``headers`` then ``chunks``, cut again into chunks of exactly ``CHUNK`` octets (the last
    shorter), as every reader of a body expects (:mod:`postoffice.pg.chunks`)."""
    pending = bytearray(headers)
    async for chunk in chunks:
        pending += chunk
        while len(pending) >= CHUNK:
            yield bytes(pending[:CHUNK])
            del pending[:CHUNK]
    if pending:
        yield bytes(pending)
