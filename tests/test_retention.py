"""``[retention]``: captured mail beyond the limits is pruned in the background, oldest first,
from the Maildirs and the index, and announced as deletions."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import RunningServer, ServerProcess, wait_until
from postoffice.config import RetentionSettings
from postoffice.web.retention import Retention
from web_helpers import client, make_message, messages, send

pytestmark = pytest.mark.timeout(60)


def _subjects(server: RunningServer) -> list[str]:
    with client(server) as http:
        return [m["subject"] for m in messages(http)["messages"]]


def test_limits_per_mailbox_and_in_all_keep_the_newest(server_factory: Callable[..., RunningServer]) -> None:
    limits = RetentionSettings(max_messages=3, max_messages_per_mailbox=2, check_interval=0.2)
    server = server_factory(retention=limits)
    for number in range(3):
        send(server, make_message("a@example.org", f"a{number}"))
    for number in range(2):
        send(server, make_message("b@example.org", f"b{number}"))
    wait_until(lambda: _subjects(server) == ["b1", "b0", "a2"], what="pruned to the newest")
    assert len(server.messages("a@example.org")) == 1  # the Maildir files went too
    with client(server) as http:
        boxes = {box["address"]: box["total"] for box in http.get("/api/v1/mailboxes").json()}
    assert boxes == {"a@example.org": 1, "b@example.org": 2}


def test_max_age_and_deletions_are_announced(server: RunningServer) -> None:
    send(server, make_message("c@example.org", "old"))
    send(server, make_message("c@example.org", "new"))
    index = server.app.web.index if server.app.web is not None else None
    assert index is not None
    heard: list[tuple[str, int]] = []
    newest = max(row.id for row in index.rows_after(0, 10))
    oldest = min(row.id for row in index.rows_after(0, 10))
    # A clock an hour on, a message's age is then about an hour; "new" is re-dated as just in.
    index._db.execute("UPDATE messages SET received = ? WHERE id = ?", (time.time() + 3600, newest))
    retention = Retention(
        index,
        RetentionSettings(max_age=1800.0),
        announce=lambda changes: heard.extend((c.kind, c.id) for c in changes),
        clock=lambda: time.time() + 3600,
    )
    assert retention.prune() == 1
    assert heard == [("deleted", oldest)]
    assert _subjects(server) == ["new"]
    assert retention.prune() == 0


def test_the_parent_of_workers_prunes(server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text('[retention]\nmax_messages = 1\ncheck_interval = "0.2s"\n')
    running = server_process("--workers", "2", "--config", str(config), data_dir=tmp_path / "data")
    base = f"http://127.0.0.1:{running.http_port()}"
    for number in range(3):
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as smtp:
            smtp.sendmail("a@x.example", ["d@example.org"], f"Subject: d{number}\r\n\r\nbody\r\n".encode())
            time.sleep(0.05)  # in order: ids follow arrival

    def listed() -> list[str]:
        try:
            answer = httpx.get(f"{base}/api/v1/messages", timeout=10)
        except httpx.HTTPError:  # worker 0 not serving yet
            return []
        return [m["subject"] for m in answer.json()["messages"]]

    wait_until(lambda: listed() == ["d2"], what="pruned to the newest message")
