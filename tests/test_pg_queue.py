"""The shared queue in PostgreSQL (pgstore/queue.py) against a real, throwaway server: the
MessageStore behaviours the file spool has (tests/test_spool.py), the leases that let several
nodes share one queue, and a 50 MB message streamed in and out with bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pg_server import PostgresServer
from postoffice.errors import SpoolError
from postoffice.pg.database import Database
from postoffice.pg.migrate import migrate
from postoffice.pgstore.queue import PgQueue
from postoffice.pgstore.queue_writer import BUFFER_SIZE, CHUNK_SIZE, PgMessageWriter
from postoffice.spool import state as records
from postoffice.spool.envelope import Envelope, Recipient, Route
from postoffice.spool.ids import is_queue_id

LARGE = b"Subject: large\r\n\r\n" + b"0123456789abcdef\r\n" * 40_000  # 720 KB: a file, 3 chunks


def make_envelope(*addresses: str) -> Envelope:
    recipients = tuple(Recipient(a, a, Route.REMOTE) for a in addresses or ("far@example.net",))
    return Envelope(mail_from="sender@example.org", recipients=recipients, received_at=1_700_000_000.5)


@pytest.fixture
async def database(pg_url: str) -> AsyncIterator[Database]:
    database = Database(pg_url)
    migrate(database)
    yield database
    await database.aclose()


def node(database: Database, tmp_path: Path, name: str = "a", lease_time: float = 60.0) -> PgQueue:
    return PgQueue(database, tmp_path / f"tmp-{name}", node=name, lease_time=lease_time)


async def store(queue: PgQueue, content: bytes, envelope: Envelope | None = None) -> str:
    writer = queue.put(envelope or make_envelope())
    writer.write(content)
    return (await writer.commit()).queue_id


def rows(database: Database, table: str) -> int:
    with database.connection() as connection:
        row = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


async def test_round_trip_envelope_and_content(database: Database, tmp_path: Path) -> None:
    queue = node(database, tmp_path)
    envelope = Envelope(
        mail_from="",
        recipients=(
            Recipient("ü@exämple.com", "Ü@exämple.com", Route.LOCAL, notify=("FAILURE",), orcpt="rfc822;x@y"),
            Recipient("far@example.net", "far@example.net", Route.REMOTE),
        ),
        received_at=1_700_000_123.25,
        client_address="2001:db8::7",
        helo="evil\r\nname\x00",
        smtputf8=True,
        extra={"k": "v"},
    )
    writer = queue.put(envelope)
    for start in range(0, len(LARGE), 1000):
        writer.write(LARGE[start : start + 1000])
    queued = await writer.commit()

    assert is_queue_id(queued.queue_id) and queued.size == len(LARGE) and queued.envelope == envelope
    assert queue.pending() == [queued.queue_id]
    assert queue.load(queued.queue_id) == queued
    with queue.open(queued.queue_id) as content:
        assert content.readline() == b"Subject: large\r\n"
        assert b"Subject: large\r\n" + content.read() == LARGE
    assert rows(database, "queue_chunks") == -(-len(LARGE) // CHUNK_SIZE)
    assert os.listdir(tmp_path / "tmp-a") == []  # the temporary file went with the commit


async def test_a_message_is_read_again_from_where_a_reader_went_back_to(
    database: Database, tmp_path: Path
) -> None:
    # Local delivery reads the message once per mailbox, seeking back to its start each time.
    queue = node(database, tmp_path)
    queue_id = await store(queue, LARGE)
    with queue.open(queue_id) as content:
        start = content.tell()
        assert content.read() == LARGE
        content.seek(start)
        assert content.read() == LARGE
        middle = CHUNK_SIZE + 5  # into the second chunk
        content.seek(middle)
        assert content.tell() == middle and content.read(10) == LARGE[middle : middle + 10]
        content.seek(-4, os.SEEK_END)
        assert content.read() == LARGE[-4:]


@pytest.mark.parametrize("content", [b"Subject: small\r\n\r\nbody\r\n", LARGE], ids=["small", "large"])
async def test_fields_prepended_at_the_end_go_above_the_content(
    database: Database, tmp_path: Path, content: bytes
) -> None:
    queue = node(database, tmp_path)
    writer = queue.put(make_envelope())
    writer.prepend(b"Received: by us\r\n")
    writer.write(content)
    assert writer.read_content().read() == b"Received: by us\r\n" + content
    writer.overwrite(len(b"Received: by us\r\n"), b"X")  # "Subject" becomes "Xubject"
    writer.prepend(b"Authentication-Results: mx.test; spf=pass\r\n")
    writer.file_into(".Junk")
    queued = await writer.commit()

    expected = b"Authentication-Results: mx.test; spf=pass\r\nReceived: by us\r\nX" + content[1:]
    with queue.open(queued.queue_id) as stored:
        assert stored.read() == expected
    loaded = queue.load(queued.queue_id)
    assert loaded.size == len(expected) and loaded.envelope.folder == ".Junk"


async def test_message_is_invisible_until_commit_and_discard_leaves_nothing(
    database: Database, tmp_path: Path
) -> None:
    queue = node(database, tmp_path)
    writer = queue.put(make_envelope())
    writer.write(LARGE)
    assert queue.pending() == [] and not queue.exists(writer.queue_id)
    assert len(os.listdir(tmp_path / "tmp-a")) == 1  # outgrew the buffer: on disk, not in memory
    writer.discard()
    writer.discard()
    assert os.listdir(tmp_path / "tmp-a") == [] and rows(database, "queue_messages") == 0
    with pytest.raises(SpoolError, match="discarded"):
        writer.write(b"more")


async def test_cancelled_commit_leaves_no_message(database: Database, tmp_path: Path) -> None:
    queue = node(database, tmp_path)
    writer = queue.put(make_envelope())
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    task = asyncio.ensure_future(writer.commit())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if rows(database, "queue_messages") == 0:
            break
        await asyncio.sleep(0.05)
    assert rows(database, "queue_messages") == 0


async def test_state_log_and_complete(database: Database, tmp_path: Path) -> None:
    queue = node(database, tmp_path)
    queue_id = await store(queue, LARGE, make_envelope("a@x.test", "b@x.test"))
    assert queue.read_state(queue_id) == records.QueueState()
    queue.append_state(queue_id, [records.HOLD])
    queue.append_state(queue_id, [records.notified_record([1], None), records.RELEASE])
    state = queue.read_state(queue_id)
    assert not state.held and state.notified == {1}

    queue.complete(queue_id)
    queue.complete(queue_id)  # may be repeated
    assert not queue.exists(queue_id) and queue.pending() == []
    assert rows(database, "queue_chunks") == rows(database, "queue_states") == 0
    with pytest.raises(SpoolError, match="not in the queue"):
        queue.load(queue_id)
    with pytest.raises(SpoolError, match="not in the queue"):
        queue.append_state(queue_id, [records.HOLD])


async def test_a_queue_id_taken_by_another_node_is_refused_never_overwritten(
    database: Database, tmp_path: Path
) -> None:
    a, b = node(database, tmp_path, "a"), node(database, tmp_path, "b")
    queue_id = await store(a, b"first\r\n")
    clash = PgMessageWriter(
        b, queue_id, make_envelope(), tmp_path / "tmp-b"
    )  # the same microsecond and digits
    clash.write(b"second\r\n")
    with pytest.raises(SpoolError, match="cannot commit"):
        await clash.commit()
    with a.open(queue_id) as content:
        assert content.read() == b"first\r\n"
    assert rows(database, "queue_chunks") == 1


@pytest.mark.parametrize("bad", ["", "../x", "0" * 15 + "/", "0' OR '1'='1"])
async def test_invalid_ids_are_refused_before_any_query(database: Database, tmp_path: Path, bad: str) -> None:
    queue = node(database, tmp_path)
    for call in (queue.load, queue.open, queue.exists, queue.read_state, queue.complete):
        with pytest.raises(SpoolError, match="not a queue ID"):
            call(bad)


async def test_an_envelope_that_does_not_parse_is_one_line_and_set_aside(
    database: Database, tmp_path: Path
) -> None:
    queue = node(database, tmp_path)
    queue_id = await store(queue, b"x\r\n")
    with database.connection() as connection:
        connection.execute("UPDATE queue_messages SET envelope = '[1, 2'")
    with pytest.raises(SpoolError, match="envelope does not parse"):
        queue.load(queue_id)
    # Set aside: no node takes it up (and fails on it) again; an operator still sees it.
    queue.release()
    assert queue.pending() == [] and node(database, tmp_path, "b").pending() == []
    assert PgQueue(database, tmp_path / "unused", node=None).pending() == [queue_id]


# --- several nodes on one queue ------------------------------------------------------------------


async def test_two_nodes_never_hold_the_same_message(database: Database, tmp_path: Path) -> None:
    a, b = node(database, tmp_path, "a"), node(database, tmp_path, "b")
    mine = {await store(a, b"from a\r\n") for _ in range(5)}
    theirs = {await store(b, b"from b\r\n") for _ in range(5)}
    # Each node holds what it received, and sweeping takes nothing that is leased.
    assert set(a.pending()) == mine and set(b.pending()) == theirs
    assert all(a.exists(queue_id) for queue_id in mine)
    assert not any(a.exists(queue_id) for queue_id in theirs)  # b's to deliver
    # Released (b stopped): a takes them; b, started again, finds nothing of its own.
    b.release()
    assert set(a.pending()) == mine | theirs
    assert b.pending() == []


async def test_an_expired_lease_is_taken_over(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = node(database, tmp_path, "dead", lease_time=0.5)
    survivor = node(database, tmp_path, "survivor")
    queue_id = await store(dead, LARGE)
    dead.append_state(queue_id, [records.notified_record([0], None)])
    assert survivor.pending() == []
    time.sleep(0.6)  # "dead" renews no more
    assert survivor.pending() == [queue_id]
    assert f"from={dead.holder}" in caplog.text
    # What the dead node recorded is what the survivor sees; it cannot take the message back.
    assert survivor.read_state(queue_id).notified == {0}
    assert not dead.exists(queue_id) and dead.pending() == []


async def test_renewing_keeps_a_lease_past_its_time(database: Database, tmp_path: Path) -> None:
    busy = node(database, tmp_path, "busy", lease_time=0.8)
    other = node(database, tmp_path, "other")
    queue_id = await store(busy, b"x\r\n")
    busy.start_leases()  # renews every 0.2 s
    try:
        time.sleep(1.2)
        assert other.pending() == [] and busy.exists(queue_id)
    finally:
        busy.close()  # lets go: the other takes it at once
    assert other.pending() == [queue_id]


async def test_concurrent_sweeps_split_the_work(database: Database, tmp_path: Path) -> None:
    dead = node(database, tmp_path, "dead", lease_time=0.1)
    for _ in range(40):
        await store(dead, b"x\r\n")
    time.sleep(0.2)
    sweepers = [node(database, tmp_path, name) for name in ("b", "c", "d")]
    claimed = await asyncio.gather(*(asyncio.to_thread(s.pending) for s in sweepers))
    every = [queue_id for ids in claimed for queue_id in ids]
    assert len(every) == len(set(every)) == 40


async def test_the_operators_store_lists_everything_and_holds_nothing(
    database: Database, tmp_path: Path
) -> None:
    a = node(database, tmp_path, "a")
    queue_id = await store(a, b"x\r\n")
    operator = PgQueue(database, tmp_path / "unused", node=None)
    assert operator.pending() == [queue_id] and operator.exists(queue_id)
    assert a.exists(queue_id)  # still a's
    with pytest.raises(SpoolError):
        operator.put(make_envelope())


# --- size and failures ------------------------------------------------------------------------------


async def test_a_50_mb_message_streams_in_and_out_in_bounded_memory(
    database: Database, tmp_path: Path
) -> None:
    queue = node(database, tmp_path)
    block = (b"x" * 998 + b"\r\n") * 64  # 64 KB
    count = 50 * 1024 * 1024 // len(block)
    tracemalloc.start()
    try:
        written, read = hashlib.sha256(), hashlib.sha256()
        writer = queue.put(make_envelope())
        for index in range(count):
            block = block[1:] + block[:1] if index % 7 == 0 else block  # not one block repeated
            writer.write(block)
            written.update(block)
        queued = await writer.commit()
        size = 0
        with queue.open(queued.queue_id) as content:
            while data := content.read(BUFFER_SIZE):
                read.update(data)
                size += len(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert queued.size == size == count * len(block) and read.digest() == written.digest()
    assert peak < 8 * 1024 * 1024, f"peak {peak} octets"


async def test_a_database_down_at_the_commit_is_a_spool_error_then_it_recovers(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.url(postgres.create_database())
    database = Database(url)
    migrate(database)
    queue = PgQueue(database, tmp_path / "tmp", node="a", connect_wait=2)
    try:
        assert is_queue_id(await store(queue, b"before\r\n"))
        postgres.stop()
        try:
            writer = queue.put(make_envelope())
            writer.write(b"during\r\n")
            with pytest.raises(SpoolError, match=r"cannot commit: (the|no connection to the) database"):
                await writer.commit()
            with pytest.raises(SpoolError, match="the database"):
                queue.pending()
        finally:
            postgres.start()
        for _ in range(50):  # the pools reconnect by themselves
            try:
                await store(queue, b"after\r\n")
                break
            except SpoolError:
                await asyncio.sleep(0.2)
        assert len(queue.pending()) == 2
    finally:
        await database.aclose()


async def test_flushing_removals_makes_every_one_before_it_durable(
    database: Database, tmp_path: Path
) -> None:
    # complete() commits without waiting for the disk; flush_removals() waits for the WAL to be
    # flushed past every removal before it (the scheduler calls it once for a group).
    queue = node(database, tmp_path)
    queue_ids = [await store(queue, b"Subject: gone\r\n\r\nx\r\n") for _ in range(5)]
    for queue_id in queue_ids:
        queue.complete(queue_id)
    with database.connection() as connection:
        removed_at = connection.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
    queue.flush_removals()
    with database.connection() as connection:
        flushed = connection.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", removed_at).fetchone()
    assert flushed == (True,)
    assert queue.pending() == []


async def test_late_fields_longer_than_a_chunk_still_leave_whole_chunks(
    database: Database, tmp_path: Path
) -> None:
    # Every chunk but the last is whole, so a reader finds any offset's chunk by division.
    queue = node(database, tmp_path)
    writer = queue.put(make_envelope("far@example.net"))
    writer.write(LARGE)  # past the buffer: a file
    field = b"X-Long: " + b"a" * (CHUNK_SIZE + 1000) + b"\r\n"
    writer.prepend(field)
    queued = await writer.commit()
    with queue.open(queued.queue_id) as content:
        assert content.read() == field + LARGE
        content.seek(CHUNK_SIZE * 2 + 7)
        assert content.read(5) == (field + LARGE)[CHUNK_SIZE * 2 + 7 : CHUNK_SIZE * 2 + 12]
    with database.connection() as connection:
        sizes = [row[0] for row in connection.execute("SELECT length(data) FROM queue_chunks ORDER BY seq")]
    assert sizes[:-1] == [CHUNK_SIZE] * (len(sizes) - 1)


async def test_local_deliveries_from_the_shared_queue_never_wait_on_each_others_connections(
    pg_url: str, tmp_path: Path
) -> None:
    # Each delivery reads the queue (a connection) into a mailbox (a connection): holding one
    # while waiting for the other deadlocked as soon as every pooled connection was held so.
    from postoffice.pgstore.mailboxes import PgMailboxStore

    database = Database(pg_url, pool_size=2)
    migrate(database)
    try:
        queue, mailboxes = node(database, tmp_path), PgMailboxStore(database)
        queue_ids = [await store(queue, LARGE) for _ in range(6)]

        def deliver(index: int) -> str:
            with queue.open(queue_ids[index]) as content:
                stored = mailboxes.deliver(
                    f"u{index}@example.com",
                    b"X-To: u\r\n",
                    content,
                    f"k{index}",
                    received_at=1.0,
                    size=len(LARGE),
                    recovering=False,
                )
            return stored.key

        keys = await asyncio.wait_for(asyncio.gather(*(asyncio.to_thread(deliver, i) for i in range(6))), 60)
        assert keys == [f"k{i}" for i in range(6)]
        with mailboxes.read(mailboxes.list_messages("u5@example.com")[0]) as copy:
            assert copy.read() == b"X-To: u\r\n" + LARGE
    finally:
        database.close()
