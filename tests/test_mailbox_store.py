"""One suite for every MailboxStore (storage.py): deliver, list, read, flags, expunge, watch.

Each implementation runs the same tests through the protocol alone: the embedded Maildir store
and the PostgreSQL one (a new database each test). What a test needs that the protocol cannot
do (another program renaming a file behind the store's back) is in the implementation's own
suite (test_maildir.py, test_web_watch.py).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postoffice.errors import MessageGone
from postoffice.maildir.store import MaildirStore
from postoffice.pg.database import Database
from postoffice.pg.migrate import migrate
from postoffice.pgstore.mailboxes import PgMailboxStore
from postoffice.storage import MailboxChanges, MailboxStore, StoredMessage, with_seen


def postgresql_store(request: pytest.FixtureRequest, tmp_path: Path) -> MailboxStore:
    """A PgMailboxStore over a new database of the session's PostgreSQL (tests/pg_server.py)."""
    database = Database(request.getfixturevalue("pg_url"), pool_size=4)
    database.open()
    request.addfinalizer(database.close)
    migrate(database)
    return PgMailboxStore(database)


STORES: dict[str, Callable[[pytest.FixtureRequest, Path], MailboxStore]] = {
    "maildir": lambda request, tmp_path: MaildirStore(tmp_path / "mail", "mx.test"),
    "postgresql": postgresql_store,
}
HEADERS = b"Return-Path: <a@example.org>\r\nDelivered-To: ann@example.test\r\n"
BODY = b"Subject: hello\r\n\r\nHello, Ann.\r\n"


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MailboxStore:
    return STORES[request.param](request, tmp_path)


def deliver(
    store: MailboxStore, address: str, key: str, *, body: bytes = BODY, recovering: bool = False
) -> StoredMessage:
    return store.deliver(
        address,
        HEADERS,
        io.BytesIO(body),
        key,
        received_at=1700000000.7,
        size=len(body),
        recovering=recovering,
    )


def content(store: MailboxStore, message: StoredMessage) -> bytes:
    with store.read(message) as stream:
        return stream.read()


# --- delivering and reading ---------------------------------------------------------------------


def test_a_delivered_message_is_listed_and_reads_back_whole(store: MailboxStore) -> None:
    stored = deliver(store, "Ann@Example.TEST", "Q1_0")
    assert stored.mailbox == "ann@example.test"
    assert stored.flags == "" and not stored.seen and stored.received == 1700000000.0
    assert content(store, stored) == HEADERS + BODY
    assert store.list_messages("ann@example.test") == [stored]
    assert store.list_messages("ANN@example.test") == [stored]  # any spelling of the address
    assert list(store.mailboxes()) == ["ann@example.test"] and store.has_mailbox("ann@example.test")
    assert "ann" in store.describe(stored)


def test_a_delivery_found_again_while_recovering_is_not_stored_twice(store: MailboxStore) -> None:
    first = deliver(store, "ann@example.test", "Q2_0")
    again = deliver(store, "ann@example.test", "Q2_0", recovering=True)
    assert again == first and len(store.list_messages("ann@example.test")) == 1


def test_each_key_is_its_own_message(store: MailboxStore) -> None:
    one = deliver(store, "ann@example.test", "Q3_0", body=b"Subject: one\r\n\r\n1\r\n")
    two = deliver(store, "ann@example.test", "Q4_0", body=b"Subject: two\r\n\r\n2\r\n")
    assert one.key != two.key
    assert {m.key for m in store.list_messages("ann@example.test")} == {one.key, two.key}
    assert content(store, two).endswith(b"2\r\n")


@pytest.mark.parametrize("address", ["no-domain", "@example.test", "x@[x:/etc]", "a@" + "b" * 300 + ".test"])
def test_an_address_that_names_no_mailbox_is_refused(store: MailboxStore, address: str) -> None:
    with pytest.raises(ValueError):
        deliver(store, address, "Q5_0")
    assert store.mailbox_name(address) is None and not store.has_mailbox(address)
    assert list(store.mailboxes()) == []


def test_mailbox_names_are_canonical(store: MailboxStore) -> None:
    assert (
        store.mailbox_name("José@Example.TEST")
        == store.mailbox_name("jose\u0301@example.test")
        == "josé@example.test"
    )
    assert not store.has_mailbox("josé@example.test")  # named, not made
    assert store.list_messages("josé@example.test") == []


# --- finding ----------------------------------------------------------------------------------


def test_a_message_is_found_at_its_location_or_wherever_it_went(store: MailboxStore) -> None:
    stored = deliver(store, "ann@example.test", "Q6_0")
    assert store.look_up("ann@example.test", {stored.key: [stored.location]}) == {stored.key: stored}
    assert store.find("ann@example.test", stored.key, stored.location) == stored
    moved = store.set_flags(stored, "S")
    assert store.look_up("ann@example.test", {stored.key: [stored.location]}) == {}
    assert store.find("ann@example.test", stored.key, stored.location) == moved
    assert store.find("ann@example.test", "no-such-key") is None


def test_a_location_is_never_a_path_of_its_own(store: MailboxStore) -> None:
    stored = deliver(store, "ann@example.test", "Q7_0")
    for location in (
        "../../../etc/passwd",
        "tmp/" + stored.key,
        "/etc/passwd",
        "cur/../new/x",
        f"./new/{stored.location}",
        f"../new/{stored.location}",
        f".Sent/../{stored.location}",
        f".a..b/{stored.location}",
        f"./{stored.location}",
    ):
        assert store.look_up("ann@example.test", {stored.key: [location]}) == {}
        bogus = StoredMessage(stored.mailbox, stored.key, location)
        with pytest.raises(MessageGone):
            store.read(bogus)
        assert store.expunge(bogus) is False
    other_key = StoredMessage(stored.mailbox, "another", stored.location)
    with pytest.raises(MessageGone):
        store.read(other_key)


# --- folders and UIDs, for mail clients --------------------------------------------------------


def test_folders_are_made_renamed_and_removed(store: MailboxStore) -> None:
    deliver(store, "ann@example.test", "Q1_0")
    assert store.folders("ann@example.test") == ["INBOX"]
    store.create_folder("ann@example.test", "Sent")
    store.create_folder("ann@example.test", "Archive/2026")
    with pytest.raises(FileExistsError):
        store.create_folder("ann@example.test", "Sent")
    for bad in ("", "a//b", "..", "a..b", "~x", "a.b", "/x"):
        with pytest.raises(ValueError):
            store.create_folder("ann@example.test", bad)
    store.rename_folder("ann@example.test", "Archive/2026", "Old")
    assert store.folders("ann@example.test") == ["INBOX", "Old", "Sent"]
    store.delete_folder("ann@example.test", "Old")
    assert store.folders("ann@example.test") == ["INBOX", "Sent"]
    with pytest.raises(FileNotFoundError):
        store.listing("ann@example.test", "Old")


def test_a_folder_renamed_takes_its_subfolders_and_messages(store: MailboxStore) -> None:
    stored = deliver(store, "ann@example.test", "Q1_0")
    store.create_folder("ann@example.test", "Projects")
    store.create_folder("ann@example.test", "Projects/2026")
    store.create_folder("ann@example.test", "Projectsx")
    store.move(stored, "Projects/2026")
    before = store.listing("ann@example.test", "Projects/2026")
    store.rename_folder("ann@example.test", "Projects", "Done")
    assert store.folders("ann@example.test") == ["INBOX", "Done", "Done/2026", "Projectsx"]
    after = store.listing("ann@example.test", "Done/2026")
    assert after.uidvalidity == before.uidvalidity and [uid for uid, _ in after.messages] == [1]
    [(_, moved)] = after.messages
    assert moved.location.startswith(".Done.2026/") and content(store, moved) == HEADERS + BODY
    with pytest.raises(FileNotFoundError):
        store.rename_folder("ann@example.test", "Projects", "Again")
    with pytest.raises(FileExistsError):
        store.rename_folder("ann@example.test", "Done", "Projectsx")


def test_uids_ascend_stay_and_are_never_reused(store: MailboxStore) -> None:
    first = deliver(store, "ann@example.test", "Q1_0")
    deliver(store, "ann@example.test", "Q2_0")
    listing = store.listing("ann@example.test", None)
    assert [uid for uid, _ in listing.messages] == [1, 2]
    assert listing.messages[0][1].key == first.key and listing.uidnext == 3
    store.expunge(listing.messages[1][1])
    deliver(store, "ann@example.test", "Q3_0")
    again = store.listing("ann@example.test", None)
    assert [uid for uid, _ in again.messages] == [1, 3]
    assert again.uidvalidity == listing.uidvalidity
    store.set_flags(again.messages[0][1], "S")
    assert [(uid, message.flags) for uid, message in store.listing("ann@example.test", None).messages] == [
        (1, "S"),
        (3, ""),
    ]


def test_append_copy_and_move_between_folders(store: MailboxStore) -> None:
    deliver(store, "ann@example.test", "Q1_0")
    store.create_folder("ann@example.test", "Sent")
    uid, added = store.add(
        "ann@example.test", "Sent", b"Subject: sent\r\n\r\nx\r\n", flags="S", received=1.7e9
    )
    assert uid == 1 and added.flags == "S" and content(store, added) == b"Subject: sent\r\n\r\nx\r\n"
    [(_, inbox_message)] = store.listing("ann@example.test", None).messages
    copy_uid, copied = store.copy(inbox_message, "Sent", move=False)
    assert copy_uid == 2 and content(store, copied) == content(store, inbox_message)
    moved_uid, moved = store.copy(store.set_flags(copied, "F"), None, move=True)
    assert moved_uid == 2 and moved.flags == "F"
    assert [uid for uid, _ in store.listing("ann@example.test", "Sent").messages] == [1]
    assert [uid for uid, _ in store.listing("ann@example.test", None).messages] == [1, 2]
    with pytest.raises(MessageGone):
        store.copy(copied, None, move=True)  # it was moved away already


# --- flags and expunging ------------------------------------------------------------------------


def test_flags_are_set_exactly_and_in_order(store: MailboxStore) -> None:
    stored = deliver(store, "ann@example.test", "Q8_0")
    seen = store.set_flags(stored, with_seen(stored.flags, True))
    assert seen.seen and seen.flags == "S" and seen.key == stored.key
    flagged = store.set_flags(seen, "SFR")
    assert flagged.flags == "FRS"
    unseen = store.set_flags(flagged, with_seen(flagged.flags, False))
    assert unseen.flags == "FR" and not unseen.seen
    assert store.list_messages("ann@example.test") == [unseen]
    assert content(store, unseen) == HEADERS + BODY
    with pytest.raises(MessageGone):
        store.set_flags(stored, "S")  # not where it was any more


def test_an_expunged_message_is_gone_for_good(store: MailboxStore) -> None:
    stored = deliver(store, "ann@example.test", "Q9_0")
    assert store.expunge(stored) is True
    assert store.expunge(stored) is False
    assert store.list_messages("ann@example.test") == []
    assert store.find("ann@example.test", stored.key, stored.location) is None
    with pytest.raises(MessageGone):
        store.read(stored)
    with pytest.raises(MessageGone):
        store.set_flags(stored, "S")


# --- folders ----------------------------------------------------------------------------------


def test_a_message_moves_between_folders_keeping_its_key_and_flags(store: MailboxStore) -> None:
    stored = store.set_flags(deliver(store, "ann@example.test", "F1_0"), "S")
    assert store.folders("ann@example.test") == ["INBOX"]
    junk = store.move(stored, "Junk")
    assert (junk.key, junk.flags) == (stored.key, "S") and junk.location.startswith(".Junk/cur/")
    assert store.folders("ann@example.test") == ["INBOX", "Junk"]
    assert store.list_messages("ann@example.test") == [junk]  # listed with its folder
    assert content(store, junk) == HEADERS + BODY
    assert store.find("ann@example.test", junk.key, stored.location) == junk
    unseen = store.set_flags(junk, "")
    assert unseen.location.startswith(".Junk/cur/") and not unseen.seen
    back = store.move(unseen, "INBOX")
    assert back.location.startswith("cur/") and content(store, back) == HEADERS + BODY
    nested = store.move(back, "Archive/2024")
    assert nested.location.startswith(".Archive.2024/cur/")
    assert store.folders("ann@example.test") == ["INBOX", "Archive/2024", "Junk"]
    with pytest.raises(MessageGone):
        store.move(back, "Trash")  # not where it was any more
    for bad in ("../x", "a/../b", ".hidden", "", "a//b", "x" * 100):
        with pytest.raises(ValueError):
            store.move(nested, bad)


# --- watching ---------------------------------------------------------------------------------


class Recorder:
    """Every batch a watch reported, from its thread."""

    def __init__(self) -> None:
        self.batches: list[MailboxChanges] = []
        self._lock = threading.Lock()

    def __call__(self, changes: MailboxChanges) -> None:
        with self._lock:
            self.batches.append(changes)

    def wait_for(self, condition: Callable[[list[MailboxChanges]], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if condition(list(self.batches)):
                    return
            time.sleep(0.05)
        raise AssertionError(f"not reported in {timeout} s: {self.batches!r}")


def touched(batches: list[MailboxChanges], mailbox: str, key: str) -> set[str]:
    """Every location a change to ``key`` in ``mailbox`` was reported at."""
    return {location for batch in batches for location in batch.messages.get(mailbox, {}).get(key, ())}


@pytest.fixture
def watched(store: MailboxStore) -> Iterator[tuple[MailboxStore, Recorder]]:
    recorder = Recorder()
    watch = store.watch(recorder)
    assert not watch.running
    watch.start()
    try:
        assert watch.watching.wait(10), "the watch never started"
        yield store, recorder
    finally:
        watch.stop()
        assert not watch.running


def test_a_watch_reports_deliveries_flags_and_expunges(watched: tuple[MailboxStore, Recorder]) -> None:
    store, recorder = watched
    deliver(store, "early@example.test", "W0_0")  # its mailbox exists before the next one
    recorder.wait_for(lambda batches: any("early@example.test" in b.mailboxes for b in batches))
    stored = deliver(store, "early@example.test", "W1_0")
    recorder.wait_for(lambda batches: stored.location in touched(batches, stored.mailbox, stored.key))
    seen = store.set_flags(stored, "S")
    recorder.wait_for(lambda batches: seen.location in touched(batches, seen.mailbox, seen.key))
    store.expunge(seen)
    count = len(recorder.batches)
    recorder.wait_for(lambda batches: seen.location in touched(batches[count:], seen.mailbox, seen.key))


def test_a_new_mailbox_is_reported_whole(watched: tuple[MailboxStore, Recorder]) -> None:
    store, recorder = watched
    deliver(store, "new@example.test", "W2_0")
    recorder.wait_for(lambda batches: any("new@example.test" in batch.mailboxes for batch in batches))


def test_a_quiet_watch_still_calls_at_each_tick(watched: tuple[MailboxStore, Recorder]) -> None:
    _, recorder = watched
    recorder.wait_for(lambda batches: len([b for b in batches if not b.messages and not b.mailboxes]) >= 3)


def test_a_watch_reports_moves_into_and_within_folders(watched: tuple[MailboxStore, Recorder]) -> None:
    store, recorder = watched
    deliver(store, "fold@example.test", "W3_0")
    recorder.wait_for(lambda batches: any("fold@example.test" in b.mailboxes for b in batches))
    stored = deliver(store, "fold@example.test", "W4_0")
    recorder.wait_for(lambda batches: stored.location in touched(batches, stored.mailbox, stored.key))
    count = len(recorder.batches)
    trash = store.move(stored, "Trash")  # the folder is new: its mailbox is looked at whole
    recorder.wait_for(lambda batches: any("fold@example.test" in b.mailboxes for b in batches[count:]))
    seen = store.set_flags(trash, "S")
    recorder.wait_for(lambda batches: seen.location in touched(batches, seen.mailbox, seen.key))
