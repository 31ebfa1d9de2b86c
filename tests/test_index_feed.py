"""The index feed (web/feed.py): workers' delivered messages, indexed by one process.

A real MailIndex on disk and real socket pairs, with the worker ends driven here by plain
blocking sends, as the workers' event loops would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_until
from postoffice.maildir.names import mailbox_path
from postoffice.maildir.store import MaildirStore
from postoffice.storage import StoredMessage
from postoffice.web.feed import SYNC_REQUEST, FeedWriter, IndexFeed, feed_streams
from postoffice.web.index import MailIndex
from postoffice.web.index_db import PAGE_CACHE_KIB
from test_web_index import as_stored

pytestmark = pytest.mark.timeout(30)


def deliver(mail_root: Path, address: str, name: str) -> Path:
    box = mailbox_path(mail_root, address)
    for part in ("tmp", "new", "cur"):
        (box / part).mkdir(parents=True, exist_ok=True)
    path = box / "new" / name
    # Written in tmp/ and renamed, as a delivery is: the feed's own sync, running meanwhile,
    # must never find (and index) a file half-written.
    (box / "tmp" / name).write_bytes(
        f"From: a@example.org\r\nTo: {address}\r\nSubject: {name}\r\n\r\nbody\r\n".encode()
    )
    (box / "tmp" / name).rename(path)
    return path


def line(path: Path) -> bytes:
    """The feed's line for the message a worker delivered into ``path``."""
    stored = as_stored(path)
    return (
        json.dumps([stored.mailbox, stored.key, stored.location, stored.flags, stored.received]).encode()
        + b"\n"
    )


def subjects(index_file: Path, mail_root: Path) -> list[str]:
    index = MailIndex(index_file, MaildirStore(mail_root, "mx.test"))
    try:
        return sorted(row.subject for row in index.rows_after(0, 10_000))
    finally:
        index.close()


@pytest.fixture
def streams() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    pairs = feed_streams(2)
    yield pairs
    for pair in pairs:
        for end in pair:
            end.close()


def start_feed(
    tmp_path: Path, streams: list[tuple[socket.socket, socket.socket]], **options: int
) -> tuple[IndexFeed, Path, Path]:
    mail_root, index_file = tmp_path / "mail", tmp_path / "index.sqlite3"
    mail_root.mkdir(exist_ok=True)
    settings = {"batch": 4, "max_backlog": 1000, **options}
    feed = IndexFeed(
        MailIndex(index_file, MaildirStore(mail_root, "mx.test")),
        [own for own, _ in streams],
        batch=settings["batch"],
        linger=0.02,
        max_backlog=settings["max_backlog"],
    )
    feed.start()
    return feed, mail_root, index_file


def start_feed_synced(
    tmp_path: Path, streams: list[tuple[socket.socket, socket.socket]], **options: int
) -> tuple[IndexFeed, Path, Path, str]:
    """A feed whose start's sync is over; also the name of the one message that sync found.

    The start's sync lists every mailbox before it adds what it found, so once that message is
    in the index, whatever a test delivers next reaches the index only the way the test means
    (the lines it sends, a sync it asks for), never through the start's sync, running meanwhile.
    """
    mail_root = tmp_path / "mail"
    mail_root.mkdir()
    before = deliver(mail_root, "old@example.test", "1700000000.old.mx")
    feed, mail_root, index_file = start_feed(tmp_path, streams, **options)
    # (A stop during the start's reconciliation would end it early, by design.)
    wait_until(lambda: subjects(index_file, mail_root) == [before.name], what="the start's sync")
    return feed, mail_root, index_file, before.name


def test_every_workers_deliveries_are_indexed_and_the_feed_ends_with_the_workers(
    tmp_path: Path, streams: list[tuple[socket.socket, socket.socket]]
) -> None:
    feed, mail_root, index_file, before = start_feed_synced(tmp_path, streams)
    first, second = streams[0][1], streams[1][1]
    paths = [deliver(mail_root, f"u{n % 2}@example.test", f"17000000{n:02d}.m{n}.mx") for n in range(10)]
    lines = [line(path) for path in paths]
    # A line split across sends, another worker's lines between, a line naming a file outside
    # any mailbox's new/ and cur/, and one that is no message at all.
    outside = json.dumps(["u0@example.test", "passwd", "../../../../etc/passwd", "", 0.0]).encode()
    first.sendall(lines[0][:10])
    second.sendall(b"".join(lines[5:]) + outside + b"\n/etc/passwd\n")
    first.sendall(lines[0][10:] + b"".join(lines[1:5]))
    first.close()
    second.close()
    feed.stop()
    assert subjects(index_file, mail_root) == sorted([before, *(path.name for path in paths)])


def test_a_sync_request_reconciles_with_the_maildirs(
    tmp_path: Path, streams: list[tuple[socket.socket, socket.socket]]
) -> None:
    feed, mail_root, index_file, before = start_feed_synced(tmp_path, streams)
    unsent = deliver(mail_root, "ann@example.test", "1700000001.unsent.mx")  # never streamed
    streams[0][1].sendall(SYNC_REQUEST + b"\n")
    found = sorted([before, unsent.name])
    wait_until(lambda: subjects(index_file, mail_root) == found, what="the sync found it")
    for _, end in streams:
        end.close()
    feed.stop()


def test_a_backlog_over_its_bound_is_caught_up_by_a_sync(
    tmp_path: Path, streams: list[tuple[socket.socket, socket.socket]]
) -> None:
    feed, mail_root, index_file, before = start_feed_synced(tmp_path, streams, batch=2, max_backlog=3)
    paths = [deliver(mail_root, "bob@example.test", f"17000001{n:02d}.b{n}.mx") for n in range(30)]
    # 30 lines against a backlog of 3: what does not fit is left to the sync.
    streams[0][1].sendall(b"".join(line(path) for path in paths))
    everything = sorted([before, *(path.name for path in paths)])
    wait_until(lambda: subjects(index_file, mail_root) == everything, what="the sync caught up")
    for _, end in streams:
        end.close()
    feed.stop()


@pytest.mark.skipif(sys.platform != "linux", reason="socket pairs as the workers use them")
def test_the_writer_sends_from_an_event_loop(
    tmp_path: Path, streams: list[tuple[socket.socket, socket.socket]]
) -> None:
    feed, mail_root, index_file, before = start_feed_synced(tmp_path, streams)
    path = deliver(mail_root, "cy@example.test", "1700000002.c.mx")
    writer = FeedWriter(streams[0][1])

    async def send() -> None:
        # The second names nothing there is, with a newline in its name: still one line.
        await writer.send([as_stored(path), StoredMessage("cy@example.test", "x", "new/x\nnewline")])

    asyncio.run(send())
    writer.close()
    streams[1][1].close()
    feed.stop()
    assert subjects(index_file, mail_root) == sorted([before, path.name])


def test_the_feeds_connection_keeps_a_small_page_cache(
    tmp_path: Path, streams: list[tuple[socket.socket, socket.socket]]
) -> None:
    # The indexing process's writer filled SQLite's default 2 MB cache with 100 KB messages' pages.
    feed, _, _, _ = start_feed_synced(tmp_path, streams)
    try:
        sizes = [int(c.execute("PRAGMA cache_size").fetchone()[0]) for c in feed.index._connections]
        assert -PAGE_CACHE_KIB in sizes, sizes
    finally:
        for _, end in streams:
            end.close()
        feed.stop()
