"""The mailbox index against real Maildirs: delivery, sync, files moved or removed by other
programs, damaged index files, the ``reindex`` command, and the index surviving restarts."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import smtplib
import sqlite3
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import RunningServer
from postoffice import cli
from postoffice.maildir.layout import key_of
from postoffice.maildir.names import mailbox_address, mailbox_path
from postoffice.maildir.store import MaildirStore
from postoffice.storage import StoredMessage
from postoffice.web import message
from postoffice.web.index import SCHEMA_VERSION, MailIndex
from postoffice.web.search import compile_query
from web_helpers import client, make_message, messages, send

EVERYTHING = compile_query("")


def deliver(mail_root: Path, address: str, name: str, subject: str, *, subdir: str = "new") -> Path:
    box = mailbox_path(mail_root, address)
    for part in ("tmp", "new", "cur"):
        (box / part).mkdir(parents=True, exist_ok=True)
    path = box / subdir / name
    path.write_bytes(
        f"From: a@example.org\r\nTo: {address}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n".encode()
    )
    return path


def as_stored(path: Path) -> StoredMessage:
    """The message a file written by :func:`deliver` is, as the Maildir store names it."""
    box = path.parent.parent
    address = mailbox_address(box.parent.name, box.name)
    key = key_of(path.name)
    return MaildirStore(box.parent.parent, "mx.test").look_up(
        address, {key: [f"{path.parent.name}/{path.name}"]}
    )[key]


@pytest.fixture
def mail_root(tmp_path: Path) -> Path:
    root = tmp_path / "mail"
    root.mkdir()
    return root


@pytest.fixture
def index(tmp_path: Path, mail_root: Path) -> MailIndex:
    idx = MailIndex(tmp_path / "index.sqlite3", MaildirStore(mail_root, "mx.test"))
    yield idx  # type: ignore[misc]
    idx.close()


def subjects(index: MailIndex, mailbox: str | None = None) -> list[str]:
    page = index.page([mailbox] if mailbox else None, EVERYTHING, limit=100, offset=0)
    return [row.subject for row in page.rows]


def test_add_records_a_delivery_once(index: MailIndex, mail_root: Path) -> None:
    path = deliver(mail_root, "Ann@Example.test", "1700000000.A_0.mx", "first")
    added = index.add(as_stored(path))
    assert added is not None and added.mailbox == "ann@example.test" and added.seen is False
    assert index.add(as_stored(path)) is None  # found again while recovering: no duplicate
    assert subjects(index) == ["first"]
    # A location outside new/ and cur/ is never read, whoever names it.
    assert index.add(StoredMessage("ann@example.test", "elsewhere", "../../elsewhere")) is None


def test_a_batch_of_long_texts_is_written_in_parts_and_all_of_it_indexed(
    index: MailIndex, mail_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("postoffice.web.index.PREPARED_TEXT_BUDGET", 25)  # two bodies fill it
    paths = [
        deliver(mail_root, "ann@example.test", f"17000000{n:02d}.B{n}_0.mx", f"long {n}") for n in range(7)
    ]
    transactions = 0
    insert_many = index.insert_many

    def counting(items: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return insert_many(items)

    monkeypatch.setattr(index, "insert_many", counting)
    assert len(index.add_many([as_stored(p) for p in paths])) == 7
    assert transactions == 4  # 2 + 2 + 2 + the last one
    assert sorted(subjects(index)) == [f"long {n}" for n in range(7)]


def test_sync_follows_what_other_programs_did(index: MailIndex, mail_root: Path) -> None:
    kept = deliver(mail_root, "bo@example.test", "1700000001.K_0.mx", "kept")
    gone = deliver(mail_root, "bo@example.test", "1700000002.G_0.mx", "gone")
    read = deliver(mail_root, "bo@example.test", "1700000003.R_0.mx", "read")
    for path in (kept, gone, read):
        index.add(as_stored(path))
    ids = {row.subject: row.id for row in index.page(None, EVERYTHING, limit=10, offset=0).rows}
    # mutt reads one, a person deletes one, a new one arrives while the server is down.
    os.rename(read, read.parent.parent / "cur" / (read.name + ":2,S"))
    gone.unlink()
    deliver(mail_root, "bo@example.test", "1700000004.N_0.mx", "new while down")
    # A user whose mailbox is still empty is listed too.
    (mailbox_path(mail_root, "empty@example.test") / "cur").mkdir(parents=True)
    report = index.sync()
    assert (report.mailboxes, report.added, report.removed, report.updated) == (2, 1, 1, 1)
    assert subjects(index) == ["new while down", "read", "kept"]
    by_subject = {row.subject: row for row in index.page(None, EVERYTHING, limit=10, offset=0).rows}
    assert by_subject["read"].seen is True and by_subject["read"].id == ids["read"]
    counts = {box.address: (box.total, box.unread) for box in index.mailboxes()}
    assert counts == {"bo@example.test": (3, 2), "empty@example.test": (0, 0)}
    # Nothing changed: a second sync does nothing.
    again = index.sync()
    assert (again.added, again.removed, again.updated) == (0, 0, 0)


def test_reparse_reads_again_and_keeps_ids(index: MailIndex, mail_root: Path) -> None:
    path = deliver(mail_root, "cy@example.test", "1700000000.C_0.mx", "before")
    original = index.add(as_stored(path))
    assert original is not None
    path.write_bytes(b"Subject: after\r\n\r\nnew words\r\n")
    report = index.sync(reparse=True)
    assert report.updated == 1
    (row,) = index.page(None, compile_query("new words"), limit=10, offset=0).rows
    assert row.id == original.id and row.subject == "after"
    assert index.page(None, compile_query("before"), limit=10, offset=0).total == 0


def test_locate_follows_a_rename_and_forgets_a_deletion(index: MailIndex, mail_root: Path) -> None:
    path = deliver(mail_root, "di@example.test", "1700000000.D_0.mx", "moving")
    row = index.add(as_stored(path))
    assert row is not None
    moved = path.parent.parent / "cur" / (path.name + ":2,RS")
    os.rename(path, moved)
    found = index.locate(row)
    assert found is not None and found.location == f"cur/{moved.name}" and found.seen
    stored = index.get(row.id)
    assert stored is not None and stored.location == f"cur/{moved.name}" and stored.seen
    moved.unlink()
    assert index.locate(stored) is None
    assert index.get(row.id) is None
    assert index.mailboxes()[0].total == 0


def test_ids_are_never_reused(index: MailIndex, mail_root: Path) -> None:
    first = index.add(as_stored(deliver(mail_root, "ed@example.test", "1700000000.E_0.mx", "one")))
    assert first is not None
    index.remove(first.id)
    second = index.add(as_stored(deliver(mail_root, "ed@example.test", "1700000001.E_1.mx", "two")))
    assert second is not None and second.id > first.id


def test_rows_another_process_adds_are_followed_in_order(
    tmp_path: Path, mail_root: Path, index: MailIndex
) -> None:
    """Two MailIndex objects on one file stand for two worker processes sharing the index."""
    other = MailIndex(tmp_path / "index.sqlite3", MaildirStore(mail_root, "mx.test"))
    try:
        assert index.last_id() == 0
        index.add(as_stored(deliver(mail_root, "ann@example.test", "1700000000.A_0.mx", "mine")))
        start = index.last_id()
        for number in range(5):
            other.add(
                as_stored(
                    deliver(mail_root, "bob@example.test", f"1700000001.B_{number}.mx", f"theirs {number}")
                )
            )
        first = index.rows_after(start, 3)
        rest = index.rows_after(first[-1].id, 3)
        assert [row.subject for row in first + rest] == [f"theirs {number}" for number in range(5)]
        assert [row.id for row in first + rest] == sorted(row.id for row in first + rest)
        assert index.rows_after(rest[-1].id, 3) == [] and index.last_id() == rest[-1].id
    finally:
        other.close()


def test_a_damaged_index_is_set_aside_and_rebuilt(tmp_path: Path, mail_root: Path) -> None:
    deliver(mail_root, "fi@example.test", "1700000000.F_0.mx", "survivor")
    path = tmp_path / "index.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    index = MailIndex(path, MaildirStore(mail_root, "mx.test"))
    try:
        index.sync()
        assert subjects(index) == ["survivor"]
        assert (tmp_path / "index.sqlite3.damaged").read_bytes().startswith(b"this is not")
    finally:
        index.close()


def test_an_index_of_another_version_is_rebuilt(tmp_path: Path, mail_root: Path) -> None:
    deliver(mail_root, "gi@example.test", "1700000000.G_0.mx", "fresh")
    path = tmp_path / "index.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE messages (junk)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    index = MailIndex(path, MaildirStore(mail_root, "mx.test"))
    try:
        index.sync()
        assert subjects(index) == ["fresh"]
    finally:
        index.close()


def test_an_index_of_version_3_gains_snippets_and_keeps_its_ids(tmp_path: Path, mail_root: Path) -> None:
    for number in range(3):
        deliver(mail_root, "mi@example.test", f"170000000{number}.M_{number}.mx", f"kept {number}")
    path = tmp_path / "index.sqlite3"
    index = MailIndex(path, MaildirStore(mail_root, "mx.test"))
    index.sync()
    ids = [row.id for row in index.page(None, EVERYTHING, limit=10, offset=0).rows]
    index.close()
    # Made into the index of version 3 exactly: the same tables, without the snippet column.
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE messages DROP COLUMN snippet")
        db.execute("PRAGMA user_version = 3")
    db.close()
    index = MailIndex(path, MaildirStore(mail_root, "mx.test"))
    try:
        rows = index.page(None, EVERYTHING, limit=10, offset=0).rows
        assert [row.id for row in rows] == ids  # not rebuilt: links to messages still work
        assert [row.snippet for row in rows] == ["body of kept 2", "body of kept 1", "body of kept 0"]
        assert index.sync().added == 0
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.close()
        # A second process opening it afterwards finds nothing to do.
        MailIndex(path, MaildirStore(mail_root, "mx.test")).close()
    finally:
        index.close()


OUR_FIELD = "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=b.example; dmarc=fail header.from=b.example\r\n"


def deliver_checked(mail_root: Path, address: str, name: str, subject: str) -> Path:
    """A message as the SMTP side stores one it checked: our Authentication-Results on top."""
    path = deliver(mail_root, address, name, subject)
    path.write_bytes(OUR_FIELD.encode() + path.read_bytes())
    return path


def test_results_are_read_for_our_host_name_only(tmp_path: Path, mail_root: Path) -> None:
    path = deliver_checked(mail_root, "au@example.test", "1700000000.A_0.mx", "checked")
    ours = MailIndex(
        tmp_path / "ours.sqlite3", MaildirStore(mail_root, "mx.test"), authserv_id="mx.example.test"
    )
    other = MailIndex(
        tmp_path / "other.sqlite3", MaildirStore(mail_root, "mx.test"), authserv_id="mx.elsewhere.test"
    )
    unnamed = MailIndex(tmp_path / "unnamed.sqlite3", MaildirStore(mail_root, "mx.test"))
    try:
        row = ours.add(as_stored(path))
        assert row is not None and row.auth is not None and row.auth.verdict == "fail"
        assert ours.get(row.id) == row
        for index in (other, unnamed):
            added = index.add(as_stored(path))
            assert added is not None and added.subject == "checked" and added.auth is None
    finally:
        for index in (ours, other, unnamed):
            index.close()


def test_an_index_of_version_5_gains_empty_results_and_keeps_its_ids(tmp_path: Path, mail_root: Path) -> None:
    for number in range(3):
        deliver_checked(mail_root, "mu@example.test", f"170000000{number}.M_{number}.mx", f"kept {number}")
    path = tmp_path / "index.sqlite3"
    index = MailIndex(path, MaildirStore(mail_root, "mx.test"), authserv_id="mx.example.test")
    index.sync()
    ids = [row.id for row in index.page(None, EVERYTHING, limit=10, offset=0).rows]
    assert len(ids) == 3 and index.page(None, compile_query("auth:fail"), limit=10, offset=0).total == 3
    index.close()
    with sqlite3.connect(path) as db:
        fresh = db.execute("PRAGMA table_info(messages)").fetchall()
        fresh_indexes = db.execute("PRAGMA index_list(messages)").fetchall()
    db.close()
    # Made into the index of version 5 exactly: without the authentication columns and their index.
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX messages_by_auth")
        for column in ("auth", "auth_verdict", "auth_spf", "auth_dkim", "auth_dmarc", "auth_arc"):
            db.execute(f"ALTER TABLE messages DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 5")
    db.close()
    index = MailIndex(path, MaildirStore(mail_root, "mx.test"), authserv_id="mx.example.test")
    try:
        rows = index.page(None, EVERYTHING, limit=10, offset=0).rows
        assert [row.id for row in rows] == ids  # not rebuilt: links to messages still work
        # Nothing read again at start: the results stay empty until a full reindex.
        assert [row.auth for row in rows] == [None] * 3
        assert index.page(None, compile_query("auth:none"), limit=10, offset=0).total == 3
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert db.execute("PRAGMA table_info(messages)").fetchall() == fresh
            assert sorted(db.execute("PRAGMA index_list(messages)").fetchall()) == sorted(fresh_indexes)
        db.close()
        MailIndex(path, MaildirStore(mail_root, "mx.test")).close()  # a second process finds nothing to do
        assert index.sync(reparse=True).updated == 3
        rows = index.page(None, compile_query("auth:fail"), limit=10, offset=0).rows
        assert [row.id for row in rows] == ids
    finally:
        index.close()


def test_reindex_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    deliver(data_dir / "mail", "hu@example.test", "1700000000.H_0.mx", "one")
    deliver(data_dir / "mail", "hu@example.test", "1700000001.H_1.mx", "two")
    assert cli.main(["reindex", "--data-dir", str(data_dir)]) == 0
    assert "indexed 1 mailboxes: 2 added, 0 removed, 0 updated" in capsys.readouterr().out
    assert cli.main(["reindex", "--full", "--data-dir", str(data_dir)]) == 0
    assert "0 added, 0 removed, 2 updated" in capsys.readouterr().out
    assert cli.main(["reindex", "--data-dir", str(tmp_path / "typo")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("postoffice: ") and "no mail directory" in error and error.count("\n") == 1
    assert not (tmp_path / "typo").exists()


def test_reindex_reads_results_for_the_configured_host_name(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    deliver_checked(data_dir / "mail", "hu@example.test", "1700000000.H_0.mx", "checked")
    config = tmp_path / "postoffice.toml"
    config.write_text('hostname = "mx.example.test"\n')
    assert cli.main(["reindex", "--config", str(config), "--data-dir", str(data_dir)]) == 0
    index = MailIndex(data_dir / "index.sqlite3", MaildirStore(data_dir / "mail", "mx.test"))
    try:
        (row,) = index.page(None, compile_query("dmarc:fail"), limit=10, offset=0).rows
        assert row.auth is not None and row.auth.spf is not None and row.auth.spf.domain == "b.example"
    finally:
        index.close()


@pytest.mark.parametrize(
    "address", ["alice@example.com", "a b@x.test", ".x%y@ex.test", "é@bücher.example", "x/y@ex.test"]
)
def test_mailbox_address_inverts_mailbox_path(tmp_path: Path, address: str) -> None:
    path = mailbox_path(tmp_path, address)
    decoded = mailbox_address(path.parent.name, path.name)
    assert mailbox_path(tmp_path, decoded) == path


@pytest.mark.parametrize(
    ("domain", "local"),
    [
        ("ex.test", "%zz"),
        ("ex.test", "A"),
        ("ex.test", "%FF"),
        ("EX.test", "a"),
        ("ex.test", ".hidden"),
        ("", ""),
        ("ex.test", ""),
        ("", "a"),
    ],
)
def test_mailbox_address_refuses_names_we_never_make(domain: str, local: str) -> None:
    with pytest.raises(ValueError):
        mailbox_address(domain, local)


def test_mail_received_without_the_web_side_is_indexed_at_next_start(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared"
    plain = server_factory(data_dir=data_dir, http_listeners=())
    assert plain.app.web is None
    with smtplib.SMTP(plain.host, plain.port) as smtp:
        smtp.send_message(make_message("iris@example.test", "sent while the web was off"))
    plain.wait_idle()
    plain.stop()
    web = server_factory(data_dir=data_dir)
    web.index_idle()
    with client(web) as http:
        assert [m["subject"] for m in messages(http)["messages"]] == ["sent while the web was off"]
    send(web, make_message("iris@example.test", "and one more"))
    with client(web) as http:
        assert messages(http)["total"] == 2


def _junk_path(mail_root: Path, address: str, name: str, subject: str, subdir: str = "new") -> Path:
    """A message another program (or the DMARC quarantine) put in the mailbox's Junk folder."""
    inbox = mailbox_path(mail_root, address)
    for part in ("tmp", "new", "cur"):
        (inbox / part).mkdir(parents=True, exist_ok=True)
        (inbox / ".Junk" / part).mkdir(parents=True, exist_ok=True)
    path = inbox / ".Junk" / subdir / name
    path.write_bytes(f"From: a@example.org\r\nTo: {address}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode())
    return path


def test_the_junk_folder_is_listed_and_left_out_of_the_unread_count(
    index: MailIndex, mail_root: Path
) -> None:
    deliver(mail_root, "jo@example.test", "1700000000.A_0.mx", "inbox")
    _junk_path(mail_root, "jo@example.test", "1700000001.B_0.mx", "junk new")
    _junk_path(mail_root, "jo@example.test", "1700000002.C_0.mx:2,S", "junk read", subdir="cur")
    # Other folders (a mail client's Trash) are listed too, and counted as unread.
    trash = mailbox_path(mail_root, "jo@example.test") / ".Trash" / "new"
    trash.mkdir(parents=True)
    (trash.parent / "cur").mkdir()  # a Maildir++ folder has its cur/
    (trash / "1700000003.D_0.mx").write_bytes(b"Subject: trash\r\n\r\nx\r\n")
    index.sync()
    rows = {row.subject: row for row in index.page(None, EVERYTHING, limit=10, offset=0).rows}
    assert {subject: row.folder for subject, row in rows.items()} == {
        "inbox": "INBOX",
        "junk new": "Junk",
        "junk read": "Junk",
        "trash": "Trash",
    }
    assert rows["junk read"].seen and rows["junk read"].location.startswith(".Junk/cur/")
    [box] = index.mailboxes()
    assert (box.total, box.unread) == (4, 2)  # the inbox's and the Trash's unread, not Junk's
    assert sorted(
        row.subject for row in index.page(None, compile_query("in:junk"), limit=10, offset=0).rows
    ) == [
        "junk new",
        "junk read",
    ]
    # A junk message read elsewhere (moved to .Junk/cur with S) stays out of the count.
    new = mailbox_path(mail_root, "jo@example.test") / ".Junk" / "new" / "1700000001.B_0.mx"
    new.rename(new.parent.parent / "cur" / "1700000001.B_0.mx:2,S")
    index.sync()
    [box] = index.mailboxes()
    assert (box.total, box.unread) == (4, 2)


def test_an_index_of_version_6_counts_unread_without_junk_and_keeps_its_ids(
    tmp_path: Path, mail_root: Path
) -> None:
    deliver(mail_root, "jo@example.test", "1700000000.A_0.mx", "inbox")
    _junk_path(mail_root, "jo@example.test", "1700000001.B_0.mx", "junk")
    path = tmp_path / "index.sqlite3"
    index = MailIndex(path, MaildirStore(mail_root, "mx.test"))
    index.sync()
    ids = sorted(row.id for row in index.page(None, EVERYTHING, limit=10, offset=0).rows)
    index.close()
    # Made into an index of version 6: its triggers counted every unread message.
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER messages_added")
        db.execute(
            "CREATE TRIGGER messages_added AFTER INSERT ON messages BEGIN"
            " INSERT INTO mailboxes (address, total, unread) VALUES (new.mailbox, 1, new.seen = 0)"
            " ON CONFLICT (address) DO UPDATE SET total = total + 1, unread = unread + (new.seen = 0); END"
        )
        db.execute("UPDATE mailboxes SET unread = 2")
        db.execute("PRAGMA user_version = 6")
    db.close()
    index = MailIndex(path, MaildirStore(mail_root, "mx.test"))
    try:
        assert sorted(row.id for row in index.page(None, EVERYTHING, limit=10, offset=0).rows) == ids
        [box] = index.mailboxes()
        assert (box.total, box.unread) == (2, 1)
        _junk_path(mail_root, "jo@example.test", "1700000005.E_0.mx", "more junk")
        index.sync()
        [box] = index.mailboxes()
        assert (box.total, box.unread) == (3, 1)  # the new trigger leaves junk out too
    finally:
        index.close()


def test_looking_up_keys_in_batches_of_every_size_makes_few_distinct_statements(
    index: MailIndex, mail_root: Path
) -> None:
    # Each connection keeps up to 128 prepared statements by SQL text; an IN list of every
    # length kept 10 MB of them after 20,000 deliveries. The lists are padded to a power of two.
    paths = [deliver(mail_root, "ann@mx.test", f"m{n}.host", f"subject {n}") for n in range(40)]
    stored = [as_stored(path) for path in paths]
    seen: set[str] = set()
    index._db.set_trace_callback(seen.add)
    for size in range(1, 41):
        assert [row.subject for row in index.add_many(stored[size - 1 : size])] == [f"subject {size - 1}"]
        assert index.add_many(stored[:size]) == []  # known already: nothing parsed or added again
        found = index.rows_by_key("ann@mx.test", [s.key for s in stored[:size]] + ["not-there"])
        assert sorted(found) == sorted(s.key for s in stored[:size])
    index._db.set_trace_callback(None)
    lookups = {sql for sql in seen if sql.startswith("SELECT") and " IN (" in sql}
    assert lookups, seen
    lengths = {sql.count("?") if "?" in sql else sql.count(",") for sql in lookups}
    assert len(lengths) <= 2 * 7, sorted(lengths)


def _sqlite_memory_used() -> int:
    """Bytes the SQLite library this interpreter uses holds now, for every connection."""
    library = ctypes.util.find_library("sqlite3")
    if library is None:
        pytest.skip("the SQLite library is linked into the interpreter: no sqlite3_memory_used to call")
    used = ctypes.CDLL(library).sqlite3_memory_used
    used.restype = ctypes.c_int64
    return int(used())


def test_indexing_large_messages_keeps_sqlite_memory_small(index: MailIndex, mail_root: Path) -> None:
    # Under 4,000 deliveries of 100 KB SQLite held 3.4 MB: the writer's page cache (2 MB by
    # default) filled with the FTS5 content's pages, which nothing reads again.
    body = ("searchable words " * 6000 + "\r\n").encode()  # 100 KB
    paths = []
    for n in range(61):
        path = deliver(mail_root, "ann@mx.test", f"big{n}.host", f"big {n}")
        path.write_bytes(path.read_bytes() + body)
        paths.append(path)
    index.keep_cache_small()  # as the thread that indexes deliveries does
    index.add_many([as_stored(paths[0])])  # the schema and the statements, before measuring
    before = _sqlite_memory_used()
    for start in range(1, 61, 10):
        assert len(index.add_many([as_stored(path) for path in paths[start : start + 10]])) == 10
    grown = _sqlite_memory_used() - before
    assert grown < 1024 * 1024, f"SQLite grew by {grown / 1e6:.2f} MB"
    assert index.page(None, compile_query("searchable"), limit=1, offset=0).total == 61


def test_indexing_a_small_message_reads_only_what_it_holds(index: MailIndex, mail_root: Path) -> None:
    # Asked for the whole prefix, read() allocated 512 KiB for every message (glibc mapped it,
    # shrank the mapping, unmapped it: three system calls and fresh pages each time).
    first, second = (deliver(mail_root, "ann@mx.test", f"small{n}.host", f"small {n}") for n in range(2))
    index.add(as_stored(first))  # statements prepared, modules imported
    tracemalloc.start()
    try:
        assert index.add(as_stored(second)) is not None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < message.INDEX_PREFIX // 4, peak
