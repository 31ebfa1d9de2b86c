"""The mailboxes in PostgreSQL (pgstore/mailboxes.py) beyond the one suite every store passes
(test_mailbox_store.py): big messages in bounded memory, several nodes on one database, the
LISTEN/NOTIFY watch feeding each node's own web index, and a watch that loses its connection.
"""

from __future__ import annotations

import io
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from postoffice import cli
from postoffice.pgstore.bodies import CHUNK
from postoffice.pgstore.mail_watch import changes_of
from postoffice.pgstore.mailboxes import PgMailboxStore
from postoffice.storage import MailboxChanges, StoredMessage
from postoffice.web.index import Change, MailIndex
from postoffice.web.watch import MaildirWatcher

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
HEADERS = b"Return-Path: <a@example.org>\r\nDelivered-To: ann@example.test\r\n"
MESSAGE = (
    b"From: Bob <bob@example.org>\r\nSubject: across nodes\r\nMessage-ID: <x@example.org>\r\n\r\nHi.\r\n"
)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None and found is not False:
            return found
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")


def deliver(
    store: PgMailboxStore, key: str, body: bytes = MESSAGE, address: str = "ann@example.test"
) -> StoredMessage:
    return store.deliver(
        address, HEADERS, io.BytesIO(body), key, received_at=time.time(), size=len(body), recovering=False
    )


# A repeating pattern (period 251, prime to every chunk size) to make and check big messages by.
PERIOD = 251
BLOCK = bytes(index % PERIOD for index in range(PERIOD * 400))


def pattern(offset: int, count: int) -> bytes:
    """``count`` octets (at most about 100 kB) of the pattern from ``offset``."""
    start = offset % PERIOD
    return BLOCK[start : start + count]


class Pattern(io.RawIOBase):
    """``size`` octets of the pattern, made as they are read (never whole in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left, len(BLOCK) - PERIOD)
        buffer[:count] = pattern(self.offset, count)
        self.offset += count
        self.left -= count
        return count


def test_a_50_mb_message_goes_in_and_out_in_bounded_memory(
    pg_mailbox_nodes: Callable[[], PgMailboxStore],
) -> None:
    store = pg_mailbox_nodes()
    size = 50 * 1024 * 1024
    deliver(store, "small")  # the pools and the schema are warm before memory is measured
    tracemalloc.start()
    try:
        stored = store.deliver(
            "ann@example.test",
            HEADERS,
            io.BufferedReader(Pattern(size)),
            "big",
            received_at=time.time(),
            size=size,
            recovering=False,
        )
        _, peak_in = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with store.read(stored) as stream:
            assert stream.read(len(HEADERS)) == HEADERS
            total, same = 0, True
            while chunk := stream.read(90_000):
                same = same and chunk == pattern(total, len(chunk))
                total += len(chunk)
        _, peak_out = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size and same
    # A few chunks at a time, never the message: 50 MB in, 50 MB out, under 4 MB either way.
    assert peak_in < 16 * CHUNK, peak_in
    assert peak_out < 16 * CHUNK, peak_out


def test_two_nodes_see_each_others_changes(pg_mailbox_nodes: Callable[[], PgMailboxStore]) -> None:
    one, two = pg_mailbox_nodes(), pg_mailbox_nodes()
    stored = deliver(one, "Q1_0")
    assert two.list_messages("ann@example.test") == [stored]
    with two.read(stored) as stream:
        assert stream.read() == HEADERS + MESSAGE
    seen = two.set_flags(stored, "S")
    assert one.find("ann@example.test", stored.key) == seen
    two.create_folder("ann@example.test", "Sent")
    uid, added = one.add("ann@example.test", "Sent", b"Subject: x\r\n\r\n", flags="", received=time.time())
    assert uid == 1 and two.folders("ann@example.test") == ["INBOX", "Sent"]
    assert [message.key for _, message in two.listing("ann@example.test", "Sent").messages] == [added.key]
    listing = one.listing("ann@example.test", None)
    assert two.listing("ann@example.test", None) == listing and listing.highestmodseq >= 2
    assert one.expunge(seen) and not two.expunge(seen)


def test_uids_from_nodes_delivering_at_once_ascend_without_gaps(
    pg_mailbox_nodes: Callable[[], PgMailboxStore],
) -> None:
    stores = [pg_mailbox_nodes(), pg_mailbox_nodes()]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            for count in range(20):
                deliver(stores[index], f"N{index}_{count}")
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    listing = stores[0].listing("ann@example.test", None)
    assert [uid for uid, _ in listing.messages] == list(range(1, 41)) and listing.uidnext == 41


def test_keywords_and_subscriptions_are_shared(pg_mailbox_nodes: Callable[[], PgMailboxStore]) -> None:
    one, two = pg_mailbox_nodes(), pg_mailbox_nodes()
    deliver(one, "Q1_0")
    assert one.subscriptions("ann@example.test") is None
    assert one.keyword_letters("ann@example.test", None, {"$Junk", "$Forwarded"}, add=True) == "ab"
    assert two.keywords("ann@example.test", None) == ["$Forwarded", "$Junk"]
    assert two.keyword_letters("ann@example.test", None, {"$junk", "unknown"}, add=False) == "b"
    two.set_subscriptions("ann@example.test", ["INBOX", "Sent", "Sent"])
    assert one.subscriptions("ann@example.test") == ["INBOX", "Sent"]
    with pytest.raises(FileNotFoundError):
        one.keyword_letters("ann@example.test", "Nowhere", {"$Junk"}, add=True)


def test_a_notification_anyone_could_send_is_checked() -> None:
    changes = changes_of(
        ['{"m": "a@x.test", "k": "K", "l": ["new/K", 3]}', "nonsense", "[1]", '{"m": 5}', '{"m": "b@x.test"}']
    )
    assert changes == MailboxChanges({"a@x.test": {"K": {"new/K"}}}, ["b@x.test"])


class Announced:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, changes: Sequence[Change]) -> None:
        self.changes.extend(changes)


def test_mail_delivered_on_one_node_is_in_every_nodes_index_within_a_second(
    pg_mailbox_nodes: Callable[[], PgMailboxStore], tmp_path: Path
) -> None:
    """Each node keeps its own SQLite index; LISTEN/NOTIFY keeps it in line with the database."""
    one, two = pg_mailbox_nodes(), pg_mailbox_nodes()
    deliver(one, "Q0_0")  # the mailbox exists; the index starts from a sync
    index = MailIndex(tmp_path / "index.sqlite3", two, authserv_id="mx.test")
    index.sync()
    announced = Announced()
    watcher = MaildirWatcher(index, announce=announced)
    watcher.start()
    try:
        assert watcher.watching.wait(10)
        started = time.monotonic()
        stored = deliver(one, "Q1_0")
        wait_for(lambda: stored.key in index.rows_by_key("ann@example.test", None), 1.0, "listed on node two")
        assert time.monotonic() - started < 1.0
        assert any(change.row.key == stored.key for change in announced.changes)
        seen = one.set_flags(stored, "S")
        wait_for(
            lambda: index.rows_by_key("ann@example.test", [seen.key])[seen.key].seen, 1.0, "seen on node two"
        )
        one.expunge(seen)
        wait_for(lambda: seen.key not in index.rows_by_key("ann@example.test", None), 1.0, "gone on node two")
    finally:
        watcher.stop()
        index.close()


def test_a_watch_that_loses_its_connection_reconnects_and_resyncs(
    pg_mailbox_nodes: Callable[[], PgMailboxStore], pg_url: str
) -> None:
    store = pg_mailbox_nodes()
    deliver(store, "Q0_0")
    batches: list[MailboxChanges] = []
    watch = store.watch(batches.append)
    watch.start()
    try:
        assert watch.watching.wait(10)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE '%-watch'"
            )
        wait_for(lambda: any("ann@example.test" in batch.mailboxes for batch in list(batches)), 10, "resync")
        assert watch.watching.is_set()
        count = len(batches)
        stored = deliver(store, "Q1_0")
        wait_for(
            lambda: any(stored.key in b.messages.get("ann@example.test", {}) for b in batches[count:]),
            5,
            "a change",
        )
    finally:
        watch.stop()
    assert not watch.running


def test_a_listing_is_reused_until_another_node_changes_the_folder(
    pg_mailbox_nodes: Callable[[], PgMailboxStore],
) -> None:
    """IMAP IDLE lists the folder several times a second: one small query while nothing changed."""
    one, two = pg_mailbox_nodes(), pg_mailbox_nodes()
    stored = deliver(two, "Q1_0")
    deliver(two, "Q2_0")
    first = one.listing("ann@example.test", None)
    assert one.listing("ann@example.test", None) is first

    def current() -> list[StoredMessage]:
        return [message for _, message in one.listing("ann@example.test", None).messages]

    looked = two.set_flags(stored, "")  # the same flags, but out of new/: another location
    assert current()[0] == looked
    flagged = two.set_flags(looked, "F")
    assert current()[0] == flagged
    assert one.listing("ann@example.test", None).modseqs[1] > first.modseqs[1]
    moved = two.move(flagged, "Archive")
    assert [message.key for message in current()] == ["Q2_0"]
    two.copy(moved, None, move=True)
    assert [message.key for message in current()] == ["Q2_0", "Q1_0"]
    two.expunge(current()[0])
    assert [message.key for message in current()] == ["Q1_0"]


def test_reindex_on_a_node_indexes_the_databases_mailboxes(
    pg_mailbox_nodes: Callable[[], PgMailboxStore],
    pg_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deliver(pg_mailbox_nodes(), "Q1_0")
    config = tmp_path / "postoffice.toml"
    config.write_text(f'[storage]\nbackend = "postgresql"\ndatabase = "{pg_url}"\n')
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    assert cli.main(["reindex", "--config", str(config), "--data-dir", str(data_dir)]) == 0
    assert "indexed 1 mailboxes: 1 added, 0 removed" in capsys.readouterr().out


@pytest.mark.parametrize("size", [0, CHUNK - len(HEADERS), CHUNK, 2 * CHUNK + 1])
def test_bodies_read_back_whole_and_seek_across_chunks(
    pg_mailbox_nodes: Callable[[], PgMailboxStore], size: int
) -> None:
    store = pg_mailbox_nodes()
    body = bytes(index % 253 for index in range(size))
    stored = deliver(store, "Q1_0", body)
    with store.read(stored) as stream:
        assert stream.read() == HEADERS + body
        stream.seek(CHUNK - 3)
        assert stream.read(7) == (HEADERS + body)[CHUNK - 3 : CHUNK + 4]


def test_a_key_delivered_again_without_recovering_is_a_second_message(
    pg_mailbox_nodes: Callable[[], PgMailboxStore],
) -> None:
    store = pg_mailbox_nodes()
    first = deliver(store, "Q1_0")
    second = deliver(store, "Q1_0")
    assert first.key != second.key and len(store.list_messages("ann@example.test")) == 2
    again = store.deliver(
        "ann@example.test",
        HEADERS,
        io.BytesIO(MESSAGE),
        "Q1_0",
        received_at=1.0,
        size=len(MESSAGE),
        recovering=True,
    )
    assert again == first


def test_a_message_that_ends_early_is_not_stored(pg_mailbox_nodes: Callable[[], PgMailboxStore]) -> None:
    store = pg_mailbox_nodes()
    deliver(store, "Q0_0")
    with pytest.raises(OSError, match="ended 10 octets early"):
        store.deliver(
            "ann@example.test",
            HEADERS,
            io.BytesIO(MESSAGE),
            "Q1_0",
            received_at=1.0,
            size=len(MESSAGE) + 10,
            recovering=False,
        )
    assert [message.key for message in store.list_messages("ann@example.test")] == ["Q0_0"]
    with psycopg.connect(store.database.url) as connection:
        assert connection.execute("SELECT count(DISTINCT body) FROM mail_chunks").fetchone() == (1,)


def test_bodies_go_with_their_messages_and_folders(pg_mailbox_nodes: Callable[[], PgMailboxStore]) -> None:
    store = pg_mailbox_nodes()

    def bodies() -> int:
        with psycopg.connect(store.database.url) as connection:
            row = connection.execute("SELECT count(DISTINCT body) FROM mail_chunks").fetchone()
        assert row is not None
        return int(row[0])

    one, two = deliver(store, "Q1_0"), deliver(store, "Q2_0")
    _, copied = store.copy(one, None, move=False)  # a copy has its own chunks
    assert bodies() == 3
    store.expunge(one)
    assert bodies() == 2
    with store.read(copied) as stream:
        assert stream.read() == HEADERS + MESSAGE
    store.move(two, "Old")
    store.delete_folder("ann@example.test", "Old")
    assert bodies() == 1
