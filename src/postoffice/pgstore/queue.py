"""The shared queue: a :class:`~postoffice.storage.MessageStore` in the cluster's database.

Untrusted input seen here: message bytes and envelopes from SMTP clients, stored as data
(``bytea`` chunks, the envelope as JSON text) and never interpreted; queue IDs typed by an
operator (``postoffice queue show ID``), checked with :func:`is_queue_id` before any query;
and whatever the rows hold when read back: an envelope that does not parse is a one-line
``SpoolError``, never half-trusted.

Every node receives into the same tables (v0002_queue). A message is held by the server process
that delivers it: its ``holder`` names the process (the node's name and a token of its own).
Each holder has one lease row (``queue_holders``) that it renews every quarter of the lease
time (:class:`~postoffice.pgstore.leases.LeaseKeeper`, a thread of its own, so a busy event
loop or a long stop does not let it lapse): renewing costs one row, however many messages the
node holds. The process that commits a message holds it from the start; each
:meth:`PgQueue.pending` (the scheduler's sweep) takes up messages let go, or held by a holder
whose lease ran out, with ``SELECT … FOR UPDATE SKIP LOCKED`` so that two nodes never take the
same one; a stop lets go of every message it holds, so the others take them at once. A node
that dies stops renewing, and the others take its messages once the lease time has passed.

Each recipient's final result is in the state log (:meth:`PgQueue.append_state`, committed
before the scheduler goes on) before the message's lease can lapse or be let go, so the node
that takes it over delivers only what has no result yet: nothing twice, except what a node
had handed to the next server and not yet recorded when it died, which RFC 5321 §6.1 says to
send again rather than lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import psycopg

from postoffice.durable import remove_quietly
from postoffice.errors import SpoolError
from postoffice.pg.chunks import open_chunks
from postoffice.pg.database import Database, one_line
from postoffice.pgstore.leases import LeaseKeeper
from postoffice.pgstore.queue_writer import PgMessageWriter
from postoffice.spool import state as queue_state
from postoffice.spool.durability import IoPool
from postoffice.spool.envelope import Envelope, QueuedMessage
from postoffice.spool.ids import is_queue_id, new_queue_id

log = logging.getLogger("postoffice.spool")

T = TypeVar("T")

# How long a lease lasts without renewal: the time a dead node's messages wait for another.
DEFAULT_LEASE_TIME = 60.0
# How long a commit waits for a connection when the pool has none (the database down): the
# client waits meanwhile, then gets a 451 and sends again later.
DEFAULT_CONNECT_WAIT = 10.0
# The holder of messages set aside as damaged: no process, and never a lapsed lease.
CORRUPT = "corrupt"
# Messages one sweep takes over at most, so that the survivors of a dead node share its work.
CLAIM_BATCH = 200

_RENEW = (
    "INSERT INTO queue_holders (holder, node, lease, until) VALUES (%(holder)s, %(node)s,"
    " %(lease)s * interval '1 second', now() + %(lease)s * interval '1 second')"
    " ON CONFLICT (holder) DO UPDATE SET lease = EXCLUDED.lease, until = EXCLUDED.until"
)
_INSERT = (
    "INSERT INTO queue_messages (queue_id, envelope, size, node, holder)"
    " VALUES (%(id)s, %(envelope)s, %(size)s, %(node)s, %(holder)s)"
)
# The messages of a holder whose lease has run out. One younger than that holder's lease is
# left to it even then: it may have committed it just now with a renewal late (its lease row
# lapsed, not the message's); if it is dead, the message waits no longer than its others.
_LAPSED = (
    "SELECT m.queue_id, m.holder FROM queue_messages m JOIN queue_holders h ON h.holder = m.holder"
    " WHERE h.until < now() AND m.accepted < now() - h.lease"
)
_RELEASED = "SELECT m.queue_id, m.holder FROM queue_messages m WHERE m.holder IS NULL"
_CLAIM = (
    "UPDATE queue_messages q SET holder = %(holder)s"
    " FROM ({} ORDER BY m.queue_id LIMIT %(batch)s FOR UPDATE OF m SKIP LOCKED) old"
    " WHERE q.queue_id = old.queue_id RETURNING q.queue_id, old.holder"
)
_CLAIMS = (_CLAIM.format(_RELEASED), _CLAIM.format(_LAPSED))
_TAKE_ONE = (
    "UPDATE queue_messages m SET holder = %(holder)s WHERE m.queue_id = %(id)s"
    " AND (m.holder = %(holder)s OR m.holder IS NULL OR EXISTS (SELECT 1 FROM queue_holders h"
    " WHERE h.holder = m.holder AND h.until < now() AND m.accepted < now() - h.lease)) RETURNING 1"
)
# Lease rows of holders long gone, once none of their messages is left to take over.
_FORGET_HOLDERS = (
    "DELETE FROM queue_holders h WHERE until < now() - interval '1 day'"
    " AND NOT EXISTS (SELECT 1 FROM queue_messages m WHERE m.holder = h.holder)"
)


class PgQueue:
    """:class:`~postoffice.storage.MessageStore` over the shared database (module docstring).

    ``node`` is this node's name; None makes a store that only looks and acts as an operator
    (the ``queue`` command): it holds no lease, and :meth:`pending` lists every message.
    ``tmp_dir`` is this node's own directory for messages being received.
    """

    def __init__(
        self,
        database: Database,
        tmp_dir: Path,
        *,
        node: str | None,
        lease_time: float = DEFAULT_LEASE_TIME,
        connect_wait: float = DEFAULT_CONNECT_WAIT,
        clean_tmp: bool = True,
        io: IoPool | None = None,
    ) -> None:
        self.database = database
        self.tmp_dir = tmp_dir
        self.node = node
        self.lease_time = lease_time
        self.connect_wait = connect_wait
        # The process's own token: a node restarted under the same name is another holder, and
        # two processes given one name by mistake never share leases.
        self.holder = f"{node}/{os.getpid()}.{secrets.token_hex(4)}" if node is not None else None
        self.io = io if io is not None else IoPool()
        self._keeper: LeaseKeeper | None = None
        if node is not None:
            self.renew()  # the lease row exists before any message names this holder
            tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if clean_tmp:
                for entry in os.scandir(tmp_dir):
                    remove_quietly(entry.path)  # never got a 250: nothing was stored

    def __repr__(self) -> str:
        return f"PgQueue({self.database.where}, holder={self.holder})"

    # --- receiving ----------------------------------------------------------------------------

    def put(self, envelope: Envelope) -> PgMessageWriter:
        if self.node is None:
            raise SpoolError("this queue store does not receive mail")
        return PgMessageWriter(self, new_queue_id(), envelope, self.tmp_dir)

    async def insert(
        self,
        queue_id: str,
        envelope: Envelope,
        size: int,
        chunks: Callable[[], AsyncIterator[bytes]],
        *,
        small: bool,
    ) -> bool:
        """The message row and its chunks (``chunks()`` streams them), in one transaction,
        synchronously committed; done again on another connection if the pool's was stale.
        False: the message is queued, not delivered (the writer's Sink protocol)."""
        row = {
            "id": queue_id,
            "envelope": _envelope_json(envelope),
            "size": size,
            "node": self.node,
            "holder": self.holder,
        }
        await self.transact(
            f"queue_id={queue_id}: cannot commit",
            lambda connection: _insert(connection, row, chunks(), small=small),
        )
        return False

    async def transact(self, what: str, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """``work`` on a connection of the async pool, waited for at most ``connect_wait``; done
        again on another connection if the pool's was stale (nothing was committed on it). A
        database failure is a one-line SpoolError (the client's 451, then it sends again);
        ``work`` commits what it writes itself. Direct delivery commits through this too."""
        attempts = self.database.pool_size + 1
        for attempt in range(attempts):
            try:
                async with contextlib.AsyncExitStack() as stack:
                    async with asyncio.timeout(self.connect_wait):
                        connection = await stack.enter_async_context(self.database.aconnection())
                    try:
                        return await work(connection)
                    except psycopg.OperationalError:
                        if connection.closed and attempt + 1 < attempts:
                            continue  # kept from before the database restarted: nothing was stored
                        raise
            except psycopg.Error as error:
                raise self._failure(error, what) from None
            except TimeoutError:
                raise SpoolError(
                    f"{what}: no connection to the database {self.database.where} within {self.connect_wait:g}s"
                ) from None
        raise AssertionError("unreachable")

    def forget(self, queue_id: str) -> None:
        """Take back a committed message nobody was told of (its session went away)."""
        with contextlib.suppress(SpoolError):
            self.complete(queue_id)

    # --- reading back -------------------------------------------------------------------------

    def pending(self) -> list[str]:
        """A node's: renew its leases, take up lapsed ones, and list what it holds, oldest
        first. The ``queue`` command's (no node): every message."""
        if self.holder is None:
            rows = self._run(
                "cannot list the queue",
                lambda c: c.execute("SELECT queue_id FROM queue_messages ORDER BY queue_id").fetchall(),
            )
            return [row[0] for row in rows]
        params = {"holder": self.holder, "lease": self.lease_time, "batch": CLAIM_BATCH}

        def sweep(connection: psycopg.Connection[Any]) -> list[str]:
            self._renew(connection)
            for claim in _CLAIMS:
                _log_taken(connection.execute(claim, params).fetchall())
            mine = "SELECT queue_id FROM queue_messages WHERE holder = %(holder)s ORDER BY queue_id"
            return [row[0] for row in connection.execute(mine, params).fetchall()]

        return self._run("cannot list the queue", sweep)

    def load(self, queue_id: str) -> QueuedMessage:
        self._check_id(queue_id)
        row = self._run(
            f"queue_id={queue_id}: cannot read",
            lambda c: c.execute(
                "SELECT envelope, size FROM queue_messages WHERE queue_id = %s", (queue_id,)
            ).fetchone(),
        )
        if row is None:
            raise SpoolError(f"queue_id={queue_id}: not in the queue")
        try:
            data = json.loads(row[0])
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            envelope = Envelope.from_json_dict(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._quarantine(queue_id, f"envelope does not parse ({exc})") from None
        return QueuedMessage(queue_id, envelope, int(row[1]))

    def _quarantine(self, queue_id: str, problem: str) -> SpoolError:
        """Set a damaged message aside for a person to look at (the file spool's ``corrupt/``):
        held by no process, so that no node takes it up and fails on it again and again."""
        try:
            self._run(
                f"queue_id={queue_id}: cannot set it aside",
                lambda c: c.execute(
                    "UPDATE queue_messages SET holder = %s WHERE queue_id = %s", (CORRUPT, queue_id)
                ),
            )
        except SpoolError as exc:
            log.error("queue_id=%s status=corrupt reason=%r error=%r", queue_id, problem, str(exc))
        else:
            log.warning("queue_id=%s status=corrupt reason=%r holder=%s", queue_id, problem, CORRUPT)
        return SpoolError(f"queue_id={queue_id}: {problem}")

    def open(self, queue_id: str) -> BinaryIO:
        size = self.load(queue_id).size
        # A message removed while being read is a failed read (an OSError), like a file's.
        gone = functools.partial(OSError, errno.EIO)
        return open_chunks(lambda seq: self._chunk(queue_id, seq), size, f"queue_id={queue_id}", gone)

    def _chunk(self, queue_id: str, seq: int) -> bytes | None:
        query = "SELECT data FROM queue_chunks WHERE queue_id = %s AND seq = %s"
        try:
            row = self._run(
                f"queue_id={queue_id}: cannot read", lambda c: c.execute(query, (queue_id, seq)).fetchone()
            )
        except SpoolError as error:
            # An OSError: what a reader of a message expects when it cannot go on.
            raise OSError(errno.EIO, str(error)) from None
        return None if row is None else bytes(row[0])

    def complete(self, queue_id: str) -> None:
        """Remove the message; its content and state rows go with it (ON DELETE CASCADE).

        Committed without waiting for the WAL flush, as the file spool removes a file without
        syncing its directory: a removal lost in a database crash delivers the message again
        with recovering=True, and the state log (or the mailbox store's own key) says what
        is done. One disk flush fewer per message."""
        self._check_id(queue_id)

        def remove(connection: psycopg.Connection[Any]) -> None:
            with connection.pipeline(), connection.transaction():
                connection.execute("SET LOCAL synchronous_commit = off")
                connection.execute("DELETE FROM queue_messages WHERE queue_id = %s", (queue_id,))

        self._run(f"queue_id={queue_id}: cannot remove", remove)

    def flush_removals(self) -> None:
        """Make every :meth:`complete` so far durable: one transaction that writes a row, so its
        commit waits for the WAL to be flushed up to it, which holds every removal committed
        before it (the WAL is flushed in order; a transaction that writes nothing would not wait)."""
        row = "INSERT INTO queue_flushes (node) VALUES (%s) ON CONFLICT (node) DO UPDATE SET at = now()"

        def flush(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction():
                connection.execute("SET LOCAL synchronous_commit = on")
                connection.execute(row, (self.node or "operator",))

        self._run("cannot flush the queue's removals", flush)

    def exists(self, queue_id: str) -> bool:
        """Whether the message is still queued; a node's also whether it is still its own
        to deliver (its lease held or, lapsed and untaken, taken again): a message another
        node took over meanwhile is that node's now."""
        self._check_id(queue_id)
        params = {"holder": self.holder, "id": queue_id}
        query = "SELECT 1 FROM queue_messages WHERE queue_id = %(id)s" if self.holder is None else _TAKE_ONE
        row = self._run(
            f"queue_id={queue_id}: cannot look it up", lambda c: c.execute(query, params).fetchone()
        )
        return row is not None

    # --- delivery state -----------------------------------------------------------------------

    def read_state(self, queue_id: str) -> queue_state.QueueState:
        self._check_id(queue_id)
        query = "SELECT records FROM queue_states WHERE queue_id = %s ORDER BY seq"
        rows = self._run(
            f"queue_id={queue_id}: cannot read its state", lambda c: c.execute(query, (queue_id,)).fetchall()
        )
        return queue_state.fold(b"".join(bytes(row[0]) for row in rows), queue_id=queue_id)

    def append_state(self, queue_id: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Add records to the message's log, committed (synchronously) before returning.

        Not fenced by the lease: a result learnt is recorded even by a node that lost the
        message meanwhile, so that whoever delivers it next does not deliver it again."""
        if not records:
            return
        self._check_id(queue_id)
        data = queue_state.encode(records)

        def append(connection: psycopg.Connection[Any]) -> None:
            with connection.pipeline(), connection.transaction():
                connection.execute("SET LOCAL synchronous_commit = on")
                connection.execute(
                    "INSERT INTO queue_states (queue_id, records) VALUES (%s, %s)", (queue_id, data)
                )

        try:
            self._run(f"queue_id={queue_id}: cannot record its state", append)
        except SpoolError as exc:
            if isinstance(exc.__cause__, psycopg.errors.ForeignKeyViolation):
                raise SpoolError(f"queue_id={queue_id}: not in the queue") from None
            raise

    # --- leases -------------------------------------------------------------------------------

    def start_leases(self) -> None:
        """Renew this process's leases every quarter of the lease time until :meth:`close`."""
        if self.holder is not None and self._keeper is None:
            self._keeper = LeaseKeeper(self.renew, self.lease_time / 4)
            self._keeper.start()

    def renew(self) -> int:
        """Extend this process's lease (one row, however many messages it holds); how many
        lease rows of holders long gone were forgotten."""
        return self._run("cannot renew the queue's leases", self._renew)

    def _renew(self, connection: psycopg.Connection[Any]) -> int:
        connection.execute(_RENEW, {"holder": self.holder, "node": self.node, "lease": self.lease_time})
        return connection.execute(_FORGET_HOLDERS).rowcount

    def release(self) -> int:
        """Let go of every lease this process holds (a stop): the others take them now."""
        if self.holder is None:
            return 0

        def release(connection: psycopg.Connection[Any]) -> int:
            with connection.transaction():
                count = connection.execute(
                    "UPDATE queue_messages SET holder = NULL WHERE holder = %s", (self.holder,)
                ).rowcount
                connection.execute("DELETE FROM queue_holders WHERE holder = %s", (self.holder,))
            return count

        return self._run("cannot let go of the queue's leases", release)

    def close(self) -> None:
        """Stop renewing and let the leases go (after the scheduler stopped), then the threads."""
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        try:
            released = self.release()
        except SpoolError as exc:
            log.warning("status=leases-kept error=%r", str(exc))  # they lapse after the lease time
        else:
            if released:
                log.info("status=leases-released count=%d", released)
        self.io.close()

    # --- helpers ------------------------------------------------------------------------------

    def _run(self, what: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work`` on a pooled connection; a database failure is a one-line SpoolError.

        A connection the pool kept from before the database restarted fails at its first use;
        the work is done again on another (each pooled connection may be such a one), so a
        node carries on by itself once the database is back."""
        attempts = self.database.pool_size + 1
        for attempt in range(attempts):
            try:
                with self.database.connection() as connection:
                    try:
                        return work(connection)
                    except psycopg.OperationalError:
                        if connection.closed and attempt + 1 < attempts:
                            continue  # the pool drops the closed connection
                        raise
            except psycopg.Error as error:
                raise self._failure(error, what) from error
        raise AssertionError("unreachable")

    def _failure(self, error: psycopg.Error, what: str) -> SpoolError:
        return SpoolError(f"{what}: the database {self.database.where}: {one_line(error)}")

    @staticmethod
    def _check_id(queue_id: str) -> None:
        if not is_queue_id(queue_id):
            raise SpoolError(f"not a queue ID: {queue_id!r}")


async def _insert(
    connection: psycopg.AsyncConnection[Any],
    row: Mapping[str, Any],
    chunks: AsyncIterator[bytes],
    *,
    small: bool,
) -> None:
    # A message held in memory goes in one round trip (a pipeline); a larger one streams chunk
    # by chunk, each read from its file while the last is on its way.
    pipeline = connection.pipeline() if small else contextlib.nullcontext()
    async with pipeline, connection.transaction():
        # The 250 follows this commit: it must be on disk (WAL flushed) first, whatever the
        # server's default says.
        await connection.execute("SET LOCAL synchronous_commit = on")
        await connection.execute(_INSERT, row)
        seq = 0
        async for chunk in chunks:
            await connection.execute(
                "INSERT INTO queue_chunks (queue_id, seq, data) VALUES (%s, %s, %s)", (row["id"], seq, chunk)
            )
            seq += 1


def _envelope_json(envelope: Envelope) -> str:
    # ASCII only, as the file spool's envelope line: no client byte reaches the text column raw.
    return json.dumps(envelope.to_json_dict(), ensure_ascii=True, separators=(",", ":"))


def _log_taken(taken: Sequence[tuple[str, str | None]]) -> None:
    """One line per previous holder whose messages this sweep took over (a dead node's)."""
    holders: dict[str, int] = {}
    for _, previous in taken:
        if previous is not None:
            holders[previous] = holders.get(previous, 0) + 1
    for previous, count in sorted(holders.items()):
        log.warning("status=lease-taken-over count=%d from=%s", count, previous)
