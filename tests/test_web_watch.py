"""The index follows what other programs do to the Maildirs (maildir/watch.py, web/watch.py,
web/follow.py).

A real server (SMTP and HTTP on ephemeral loopback ports) receives mail over SMTP; then the
test acts as Dovecot or a person with a shell would, renaming, removing and dropping files in
the Maildirs, and reads the JSON API and the live event stream with httpx: each change is
listed and announced within two seconds, without opening the message or running reindex.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RunningServer, ServerProcess
from postoffice.maildir.names import mailbox_path
from postoffice.maildir.store import MaildirStore
from postoffice.web import index as index_module
from postoffice.web.index import MailIndex
from postoffice.web.index_db import PAGE_CACHE_KIB
from postoffice.web.watch import GRACE, MaildirWatcher
from web_helpers import client, make_message, messages, send, wait_for

pytestmark = pytest.mark.timeout(60)

# The promise: a change another program makes is visible this soon.
WITHIN = 2.0
ADDRESS = "dove@example.test"


class EventLog:
    """The live event stream, read in a thread: every (kind, data) it announced so far."""

    def __init__(self, url: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        assert self._connected.wait(10), "the event stream did not open"

    def _read(self, url: str) -> None:
        try:
            with httpx.Client(timeout=60.0) as http, http.stream("GET", url) as stream:
                kind = ""
                for line in stream.iter_lines():
                    if line.startswith(": connected"):
                        self._connected.set()
                    elif line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind:
                        self.events.append((kind, json.loads(line[6:])))
        except httpx.HTTPError:
            pass  # the server stopped

    def wait(
        self, kind: str, match: Callable[[dict[str, Any]], bool], timeout: float = WITHIN
    ) -> dict[str, Any]:
        return wait_for(
            lambda: next((data for k, data in list(self.events) if k == kind and match(data)), None),
            timeout,
            f"a {kind!r} event",
        )


def message_file(mail_dir: Path, address: str) -> Path:
    box = mailbox_path(mail_dir, address)
    return wait_for(
        lambda: next(iter([*box.joinpath("new").iterdir(), *box.joinpath("cur").iterdir()]), None)
    )


def raw_message(subject: str, to: str = ADDRESS) -> bytes:
    return f"From: someone@example.org\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def drop(box: Path, relative: str, subject: str) -> Path:
    """Write a message into ``box`` the Maildir way (tmp/, then a rename), as another MDA does."""
    temporary = box / "tmp" / relative.split("/", 1)[1].split(":", 1)[0]
    temporary.write_bytes(raw_message(subject))
    target = box / relative
    os.rename(temporary, target)
    return target


def listed(http: httpx.Client, **params: Any) -> dict[str, Any]:
    return {item["subject"]: item for item in messages(http, limit=100, **params)["messages"]}


def unread(http: httpx.Client, address: str = ADDRESS) -> int | None:
    boxes = {box["address"]: box for box in http.get("/api/v1/mailboxes").json()}
    return boxes[address]["unread"] if address in boxes else None


def follow_changes(
    server_url: str, http: httpx.Client, mail_dir: Path, send_one: Callable[[str], None]
) -> None:
    """Mark seen, delete, drop into new/ and cur/: each is listed and announced in time."""
    events = EventLog(f"{server_url}/api/v1/events")
    send_one("delivered")
    wait_for(lambda: "delivered" in listed(http) or None, WITHIN, "the delivery listed")
    first = listed(http)["delivered"]
    assert first["read"] is False and unread(http) == 1
    path = message_file(mail_dir, ADDRESS)

    # Dovecot marks it \Seen: it moves to cur/ with the S flag.
    os.rename(path, path.parent.parent / "cur" / f"{path.name}:2,S")
    wait_for(lambda: listed(http)["delivered"]["read"] or None, WITHIN, "the message shown read")
    assert unread(http) == 0
    events.wait("updated", lambda data: data == {"id": first["id"], "mailbox": ADDRESS, "read": True})
    assert http.get(f"/api/v1/messages/{first['id']}").status_code == 200  # same id, found at once

    # Dovecot expunges it.
    os.unlink(path.parent.parent / "cur" / f"{path.name}:2,S")
    wait_for(lambda: "delivered" not in listed(http), WITHIN, "the message gone from the list")
    events.wait("deleted", lambda data: data == {"id": first["id"], "mailbox": ADDRESS})

    # Another program delivers, into new/ and (already seen) into cur/.
    box = mailbox_path(mail_dir, ADDRESS)
    drop(box, "new/1700000000.M1P1.elsewhere", "dropped new")
    drop(box, "cur/1700000001.M2P2.elsewhere:2,S", "dropped seen")
    wait_for(lambda: {"dropped new", "dropped seen"} <= listed(http).keys() or None, WITHIN, "both listed")
    now = listed(http)
    assert now["dropped new"]["read"] is False and now["dropped seen"]["read"] is True
    assert unread(http) == 1
    for subject in ("dropped new", "dropped seen"):
        events.wait("new", lambda data, subject=subject: data["subject"] == subject)


def smtp_sender(server: RunningServer) -> Callable[[str], None]:
    return lambda subject: send(server, make_message(ADDRESS, subject))


def test_flags_deletions_and_new_files_from_other_programs_are_followed(server: RunningServer) -> None:
    assert server.app.web is not None and server.app.web.watcher is not None
    assert server.app.web.watcher.polling is False
    with client(server) as http:
        follow_changes(server.base_url, http, server.config.mail_dir, smtp_sender(server))


def test_the_polling_fallback_follows_them_too(
    server_factory: Callable[..., RunningServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where inotify is missing (or forced off with watchfiles' own variable) the tree is polled."""
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    caplog.set_level(logging.INFO, logger="postoffice.maildir.watch")
    server = server_factory()
    assert server.app.web is not None and server.app.web.watcher is not None
    assert server.app.web.watcher.polling is True
    with client(server) as http:
        follow_changes(server.base_url, http, server.config.mail_dir, smtp_sender(server))
    assert "event=maildir-watch status=started mode=polling" in caplog.text


def test_mailboxes_made_after_start_are_followed(server: RunningServer) -> None:
    mail_dir = server.config.mail_dir
    assert server.app.web is not None and server.app.web.watcher is not None
    wait_for(server.app.web.watcher.watching.is_set, 10, "the watcher watching")
    with client(server) as http:
        events = EventLog(f"{server.base_url}/api/v1/events")
        # A new domain and mailbox, made empty: it is listed, and a file dropped later is too.
        box = mailbox_path(mail_dir, "late@new.test")
        for part in ("tmp", "new", "cur"):
            (box / part).mkdir(parents=True)
        wait_for(lambda: unread(http, "late@new.test") == 0 or None, WITHIN, "the new mailbox listed")
        drop(box, "new/1700000002.M3P3.elsewhere", "into a new mailbox")
        wait_for(lambda: "into a new mailbox" in listed(http) or None, WITHIN, "its message listed")
        events.wait("new", lambda data: data["mailbox"] == "late@new.test")
        # A mailbox made with its message already inside, faster than a watch can be added.
        other = mailbox_path(mail_dir, "quick@example.test")
        for part in ("tmp", "new", "cur"):
            (other / part).mkdir(parents=True)
        drop(other, "cur/1700000003.M4P4.elsewhere:2,", "there at once")
        wait_for(lambda: "there at once" in listed(http) or None, WITHIN, "the message of a quick mailbox")
        assert unread(http, "quick@example.test") == 1
        # A mailbox removed whole: its messages and the mailbox leave the lists.
        shutil.rmtree(other)
        wait_for(lambda: unread(http, "quick@example.test") is None or None, WITHIN, "the mailbox gone")
        assert "there at once" not in listed(http)


def test_own_deliveries_are_parsed_once(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher sees every delivery the server makes; for those the index knows at the same
    name it parses nothing."""
    parsed: list[str] = []
    original = index_module.message.summarise_stream

    def counting(stream: Any, size: int | None = None) -> Any:
        parsed.append(stream.name)
        return original(stream, size)

    monkeypatch.setattr(index_module.message, "summarise_stream", counting)
    for number in range(10):
        send(server, make_message(ADDRESS, f"own {number}"))
    time.sleep(GRACE + 1.0)  # every batch of events the deliveries made has been applied
    assert len(parsed) == 10 and len(set(parsed)) == 10
    with client(server) as http:
        assert messages(http)["total"] == 10


def test_a_symlinked_mailbox_is_not_followed(server: RunningServer, tmp_path: Path) -> None:
    """A symlink under the mail root could lead anywhere: the watcher ignores it, as a sync does."""
    outside = tmp_path / "outside"
    for part in ("tmp", "new", "cur"):
        (outside / "victim" / part).mkdir(parents=True)
    (server.config.mail_dir / "evil.test").symlink_to(outside)
    drop(outside / "victim", "new/1700000004.M5P5.elsewhere", "secret")
    send(server, make_message(ADDRESS, "after"))  # the watcher has had its chance meanwhile:
    time.sleep(GRACE + 1.0)
    with client(server) as http:
        assert set(listed(http)) == {"after"}
        assert unread(http, "victim@evil.test") is None


def _watcher_threads() -> list[str]:
    """Live threads of this process, Python's and native ones (watchfiles' notify thread)."""
    names = [thread.name for thread in threading.enumerate()]
    for task in Path("/proc/self/task").glob("*/comm"):
        try:
            names.append(task.read_text().strip())
        except OSError:
            continue
    return [name for name in names if "maildir-watch" in name or "notify" in name.lower()]


def test_the_watcher_stops_with_the_server(
    server_factory: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    before = _watcher_threads()
    server = server_factory()
    assert server.app.web is not None and server.app.web.watcher is not None
    watcher = server.app.web.watcher
    wait_for(watcher.watching.is_set, 10, "the watcher watching")
    assert watcher.running and len(_watcher_threads()) > len(before)
    server.stop()
    assert not watcher.running
    wait_for(lambda: _watcher_threads() == before or None, 5, "no watching thread left")
    assert "Traceback" not in caplog.text and "status=failed" not in caplog.text


def test_a_watcher_on_a_closed_index_stops_cleanly(tmp_path: Path) -> None:
    """Stop before start, and stop twice: nothing hangs, nothing raises."""
    index = MailIndex(tmp_path / "index.sqlite3", MaildirStore(tmp_path / "mail", "mx.test"))
    watcher = MaildirWatcher(index)
    watcher.stop()
    watcher = MaildirWatcher(index)
    watcher.start()
    wait_for(watcher.watching.is_set, 10, "the watcher watching")
    watcher.stop()
    watcher.stop()
    assert not watcher.running
    index.close()


def test_a_relative_mail_root_is_watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel names changes by absolute paths; a root given relative to the working
    directory (``--data-dir data``) is followed all the same."""
    monkeypatch.chdir(tmp_path)
    index = MailIndex(tmp_path / "index.sqlite3", MaildirStore(Path("data/mail"), "mx.test"))
    watcher = MaildirWatcher(index)
    watcher.start()
    try:
        wait_for(watcher.watching.is_set, 10, "the watcher watching")
        box = mailbox_path(Path("data/mail"), ADDRESS)
        for part in ("tmp", "new", "cur"):
            (box / part).mkdir(parents=True)
        drop(box, "new/1700000005.M6P6.elsewhere", "relative")
        wait_for(
            lambda: [row.subject for row in index.rows_after(0, 10)] == ["relative"], WITHIN, "it indexed"
        )
    finally:
        watcher.stop()
        index.close()


@pytest.fixture
def workers(server_process: Callable[..., ServerProcess], tmp_path: Path) -> Iterator[ServerProcess]:
    running = server_process("--workers", "2", data_dir=tmp_path / "data")
    yield running
    assert running.terminate() == 0


def test_with_workers_the_parent_follows_and_worker_0_announces(workers: ServerProcess) -> None:
    import smtplib

    base = f"http://127.0.0.1:{workers.http_port()}"

    def send_one(subject: str) -> None:
        with smtplib.SMTP("127.0.0.1", workers.port, timeout=10) as smtp:
            smtp.sendmail("someone@example.org", [ADDRESS], raw_message(subject))

    wait_until_watching(workers)
    with httpx.Client(base_url=base, timeout=10.0) as http:
        follow_changes(base, http, workers.data_dir / "mail", send_one)
    # One watcher for the one index, in the parent.
    assert sum("event=maildir-watch status=started" in line for line in workers.output) == 1


def wait_until_watching(running: ServerProcess) -> None:
    wait_for(
        lambda: any("event=maildir-watch status=started" in line for line in running.output) or None,
        10,
        "the watcher started",
    )


def test_the_junk_folder_is_followed(server: RunningServer) -> None:
    """Another program drops a message into .Junk/new, and a mail client moves one into Junk
    (a rename into .Junk/cur): each is listed as Junk, never counted unread."""
    with client(server) as http:
        send(server, make_message(ADDRESS, "moved"))
        wait_for(lambda: "moved" in listed(http) or None, WITHIN, "the delivery listed")
        assert unread(http) == 1
        box = mailbox_path(server.config.mail_dir, ADDRESS)
        for part in ("tmp", "new", "cur"):
            (box / ".Junk" / part).mkdir(parents=True, exist_ok=True)
        time.sleep(GRACE + 0.5)  # the new folder's own events have settled: only the drop is left
        drop(box / ".Junk", "new/1700000000.M1P1.elsewhere", "dropped junk")
        wait_for(lambda: "dropped junk" in listed(http) or None, WITHIN, "the junk listed")
        assert listed(http)["dropped junk"]["folder"] == "Junk" and unread(http) == 1
        path = message_file(server.config.mail_dir, ADDRESS)
        os.rename(path, box / ".Junk" / "cur" / f"{path.name}:2,")
        wait_for(lambda: listed(http)["moved"]["folder"] == "Junk" or None, WITHIN, "the move followed")
        assert unread(http) == 0
        assert sorted(listed(http, q="in:junk")) == ["dropped junk", "moved"]


def test_the_watchers_connection_keeps_a_small_page_cache(tmp_path: Path) -> None:
    """It indexes what the server's own indexing has not reached in GRACE: under a load of
    100 KB messages, enough to fill SQLite's default 2 MB cache with their pages."""
    index = MailIndex(tmp_path / "index.sqlite3", MaildirStore(tmp_path / "mail", "mx.test"))
    watcher = MaildirWatcher(index)
    watcher.start()
    try:
        wait_for(watcher.watching.is_set, 10, "the watcher watching")
        box = mailbox_path(tmp_path / "mail", ADDRESS)
        for part in ("tmp", "new", "cur"):
            (box / part).mkdir(parents=True)
        drop(box, "new/1700000006.M7P7.elsewhere", "cached")
        wait_for(lambda: [row.subject for row in index.rows_after(0, 10)] == ["cached"], WITHIN, "it indexed")
        sizes = [int(c.execute("PRAGMA cache_size").fetchone()[0]) for c in index._connections]
        assert -PAGE_CACHE_KIB in sizes, sizes
    finally:
        watcher.stop()
        index.close()
