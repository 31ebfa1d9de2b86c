"""Following one mailbox's changes into the index (web/follow.py) and the change journal.

A real MailIndex on disk and real Maildirs, changed the way Dovecot or a person would; the
watcher that calls this is tested against a running server in test_web_watch.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from postoffice.maildir.names import mailbox_path
from postoffice.maildir.store import MaildirStore
from postoffice.web import index as index_module
from postoffice.web.follow import follow_mailbox
from postoffice.web.index import Change, MailIndex
from test_web_index import as_stored, deliver

ADDRESS = "fo@example.test"


@pytest.fixture
def mail_root(tmp_path: Path) -> Path:
    root = tmp_path / "mail"
    root.mkdir()
    return root


@pytest.fixture
def index(tmp_path: Path, mail_root: Path) -> Any:
    idx = MailIndex(tmp_path / "index.sqlite3", MaildirStore(mail_root, "mx.test"))
    yield idx
    idx.close()


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the index parses, in order (the parser itself runs as ever)."""
    names: list[str] = []
    original = index_module.message.summarise_stream

    def counting(stream: Any, size: int | None = None) -> Any:
        names.append(os.path.basename(stream.name))
        return original(stream, size)

    monkeypatch.setattr(index_module.message, "summarise_stream", counting)
    return names


def test_a_message_indexed_already_is_not_parsed_again(
    index: MailIndex, mail_root: Path, parsed: list[str]
) -> None:
    """The watcher may index a delivery before the server's own indexing reaches it."""
    path = deliver(mail_root, ADDRESS, "1700000000.A_0.mx", "once")
    assert index.add(as_stored(path)) is not None
    assert index.add_many([as_stored(path)]) == []
    assert parsed == [path.name]


def test_known_names_cost_no_parse_and_change_nothing(
    index: MailIndex, mail_root: Path, parsed: list[str]
) -> None:
    path = deliver(mail_root, ADDRESS, "1700000000.B_0.mx", "known")
    row = index.add(as_stored(path))
    assert row is not None
    followed = follow_mailbox(index, ADDRESS, {row.key: {row.location}}, add_new=True)
    assert followed.changes == [] and followed.unknown == {}
    assert parsed == [path.name] and index.last_change() == 0


def test_renames_and_deletions_are_applied_and_journalled(
    index: MailIndex, mail_root: Path, tmp_path: Path
) -> None:
    seen = deliver(mail_root, ADDRESS, "1700000000.C_0.mx", "seen")
    flagged = deliver(mail_root, ADDRESS, "1700000001.C_1.mx", "flagged")
    gone = deliver(mail_root, ADDRESS, "1700000002.C_2.mx", "gone")
    rows = {row.subject: row for row in index.add_many([as_stored(p) for p in (seen, flagged, gone)])}
    cur = seen.parent.parent / "cur"
    os.rename(seen, cur / f"{seen.name}:2,S")
    # Flagged but not seen: it moves, and a reader sees no change to announce.
    os.rename(flagged, cur / f"{flagged.name}:2,F")
    gone.unlink()
    # The events named only the old names of two of them: the Maildir is listed to find them.
    touched = {
        rows["seen"].key: {f"new/{seen.name}"},
        rows["flagged"].key: {f"new/{flagged.name}", f"cur/{flagged.name}:2,F"},
        rows["gone"].key: {f"new/{gone.name}"},
    }
    followed = follow_mailbox(index, ADDRESS, touched, add_new=False)
    assert sorted(followed.changes, key=lambda change: change.id) == [
        Change("updated", rows["seen"].id, ADDRESS, True),
        Change("deleted", rows["gone"].id, ADDRESS, False),
    ]
    now = index.get(rows["flagged"].id)
    assert now is not None and now.location == f"cur/{flagged.name}:2,F" and not now.seen
    assert [(box.total, box.unread) for box in index.mailboxes()] == [(2, 1)]
    # Another process (worker 0, serving HTTP) reads the same changes from the journal.
    other = MailIndex(tmp_path / "index.sqlite3", MaildirStore(mail_root, "mx.test"))
    try:
        journal = other.changes_after(0, 10)
        assert [change for _, change in journal] == followed.changes
        assert other.changes_after(journal[-1][0], 10) == [] and other.last_change() == journal[-1][0]
    finally:
        other.close()


def test_unknown_files_wait_unless_asked_then_are_indexed(
    index: MailIndex, mail_root: Path, parsed: list[str]
) -> None:
    dropped = deliver(mail_root, ADDRESS, "1700000000.D_0.elsewhere:2,S", "dropped", subdir="cur")
    names = {f"cur/{dropped.name}"}
    followed = follow_mailbox(index, ADDRESS, {"1700000000.D_0.elsewhere": names}, add_new=False)
    assert followed.changes == [] and followed.unknown == {"1700000000.D_0.elsewhere": names}
    assert parsed == []
    followed = follow_mailbox(index, ADDRESS, followed.unknown, add_new=True)
    (change,) = followed.changes
    assert change.kind == "new" and change.row is not None
    assert change.row.subject == "dropped" and change.row.seen


def test_a_whole_mailbox_is_reconciled(index: MailIndex, mail_root: Path) -> None:
    old = index.add(as_stored(deliver(mail_root, ADDRESS, "1700000000.E_0.mx", "old")))
    assert old is not None
    (mailbox_path(mail_root, ADDRESS) / old.location).unlink()
    deliver(mail_root, ADDRESS, "1700000002.E_2.mx", "later")
    deliver(mail_root, ADDRESS, "1700000001.E_1.mx", "earlier")
    followed = follow_mailbox(index, ADDRESS, None, add_new=True)
    kinds = [(change.kind, change.row.subject if change.row else change.id) for change in followed.changes]
    # New rows oldest first (by the delivery time in their names), so ids follow arrival.
    assert kinds == [("deleted", old.id), ("new", "earlier"), ("new", "later")]


def test_a_symlink_among_the_names_is_not_a_message(
    index: MailIndex, mail_root: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"Subject: secret\r\n\r\nnot for the web\r\n")
    box = mailbox_path(mail_root, ADDRESS)
    for part in ("tmp", "new", "cur"):
        (box / part).mkdir(parents=True, exist_ok=True)
    (box / "new" / "1700000000.F_0.mx").symlink_to(secret)
    followed = follow_mailbox(index, ADDRESS, {"1700000000.F_0.mx": {"new/1700000000.F_0.mx"}}, add_new=True)
    assert followed.changes == [] and index.last_id() == 0


def test_the_journal_keeps_only_its_newest_entries(
    index: MailIndex, mail_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "JOURNAL_KEEP", 2)
    paths = [deliver(mail_root, ADDRESS, f"1700000000.G_{n}.mx", f"g{n}") for n in range(3)]
    rows = index.add_many([as_stored(p) for p in paths])
    for row, path in zip(rows, paths, strict=True):
        path.unlink()
        follow_mailbox(index, ADDRESS, {row.key: {row.location}}, add_new=False)
    journal = index.changes_after(0, 10)
    assert [change.id for _, change in journal] == [row.id for row in rows[1:]]
    assert index.last_change() == journal[-1][0] == 3
