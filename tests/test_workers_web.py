"""The web side of several server processes (``serve --workers N``).

Real processes on ephemeral loopback ports, real SMTP and HTTP clients: the parent indexes
what every worker delivers (and what they sent last at a stop), worker 0 serves HTTP on the
port the banner names and announces every worker's deliveries on the event stream, the
operations endpoints add up every worker; SIGHUP reaches every worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerProcess, wait_until
from postoffice.maildir.store import MaildirStore
from postoffice.web.index import MailIndex

pytestmark = pytest.mark.timeout(60)

RECIPIENT = "many@workers.test"


def _collect_new_events(url: str, subjects: list[str], connected: threading.Event) -> None:
    with httpx.Client(timeout=30.0) as http, http.stream("GET", url) as stream:
        kind = ""
        for line in stream.iter_lines():
            if line.startswith(": connected"):
                connected.set()
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "new":
                subjects.append(json.loads(line[6:])["subject"])
                if len(subjects) >= 20:
                    return


def test_every_workers_mail_is_listed_and_announced_by_the_one_web_side(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    running = server_process("--workers", "2", data_dir=tmp_path / "data")
    base = f"http://127.0.0.1:{running.http_port()}"
    announced: list[str] = []
    connected = threading.Event()
    listener = threading.Thread(
        target=_collect_new_events, args=(f"{base}/api/v1/events", announced, connected), daemon=True
    )
    listener.start()
    assert connected.wait(10), "the event stream did not open"

    sent = [f"message {index}" for index in range(20)]
    for subject in sent:  # one connection each, so the kernel spreads them over the workers
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.sendmail("sender@example.org", [RECIPIENT], f"Subject: {subject}\r\n\r\nbody\r\n")

    listener.join(20)
    assert sorted(announced) == sorted(sent)
    listed = httpx.get(f"{base}/api/v1/messages", params={"limit": 100}, timeout=10).json()
    assert listed["total"] == len(sent)
    assert sorted(item["subject"] for item in listed["messages"]) == sorted(sent)
    # Both workers took mail (sessions are named by worker), so the list holds rows that the
    # process serving HTTP did not write itself.
    takers = {
        match[1] for line in running.output if (match := re.search(r"session=(w\d)-\w+ event=mail", line))
    }
    assert takers == {"w0", "w1"}

    # The operations endpoints add up every worker's figures (the others report each second).
    def accepted() -> float:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "postoffice_messages_total" and sample.labels == {"outcome": "accepted"}:
                    return sample.value
        return 0.0

    wait_until(lambda: accepted() == len(sent), what="/metrics counts every worker's messages")
    with (
        smtplib.SMTP("127.0.0.1", running.port, timeout=10),
        smtplib.SMTP("127.0.0.1", running.port, timeout=10),
    ):
        wait_until(
            lambda: httpx.get(f"{base}/api/v1/status", timeout=10).json()["sessions"] == 2,
            what="/api/v1/status counts every worker's sessions",
        )
    status = httpx.get(f"{base}/api/v1/status", timeout=10).json()
    assert status["workers"] == 2 and status["queue"]["active"] == 0
    shown = subprocess.run(
        [sys.executable, "-m", "postoffice", "status", "--http", f"127.0.0.1:{running.http_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "  workers: 2 (the figures below are their sum)\n" in shown.stdout
    assert running.terminate(signal.SIGTERM) == 0


def test_mail_delivered_just_before_a_stop_is_in_the_index_after_it(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The parent indexes for the workers; at a stop it reads what they sent last."""
    data_dir = tmp_path / "data"
    running = server_process("--workers", "2", data_dir=data_dir)
    sent = [f"late {index}" for index in range(12)]
    for subject in sent:
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.sendmail("sender@example.org", [RECIPIENT], f"Subject: {subject}\r\n\r\nbody\r\n")
    assert running.terminate(signal.SIGTERM) == 0
    index = MailIndex(data_dir / "index.sqlite3", MaildirStore(data_dir / "mail", "mx.test"))
    try:
        assert sorted(row.subject for row in index.rows_after(0, 100)) == sorted(sent)
    finally:
        index.close()
    assert not any("index-sync reason=backlog" in line for line in running.output)


def test_the_indexing_parent_keeps_the_results_of_our_own_field(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The parent indexes with the server's host name as authserv-id (spawn_server's mx.test)."""
    data_dir = tmp_path / "data"
    running = server_process("--workers", "2", data_dir=data_dir)
    for number, authserv_id in enumerate(["mx.test"] * 3 + ["elsewhere.test"] * 3):
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.sendmail(
                "sender@example.org",
                [RECIPIENT],
                f"Authentication-Results: {authserv_id}; dmarc=fail header.from=example.org\r\n"
                f"Subject: {authserv_id} {number}\r\n\r\nbody\r\n",
            )
    assert running.terminate(signal.SIGTERM) == 0
    index = MailIndex(data_dir / "index.sqlite3", MaildirStore(data_dir / "mail", "mx.test"))
    try:
        verdicts = {row.subject: row.auth.verdict if row.auth else None for row in index.rows_after(0, 100)}
    finally:
        index.close()
    assert verdicts == {f"mx.test {n}": "fail" for n in range(3)} | {
        f"elsewhere.test {n}": None for n in range(3, 6)
    }


def test_sighup_is_passed_to_every_worker(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text("[limits]\nmessage_size = 100000\n")
    running = server_process("--workers", "2", "--config", str(config), data_dir=tmp_path / "data")
    config.write_text("[limits]\nmessage_size = 200000\n")

    running.process.send_signal(signal.SIGHUP)

    wait_until(
        lambda: sum("event=reloaded" in line for line in list(running.output)) == 2,
        what="both workers re-read the configuration",
    )
    assert running.process.poll() is None
    for _ in range(6):  # whichever worker takes the connection advertises the new limit
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "200000"
    assert running.terminate(signal.SIGTERM) == 0


def test_sighup_reopens_the_log_file_in_the_parent_and_every_worker(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """After logrotate renames the file, every process writes to a new one at the old name."""
    log_file = tmp_path / "postoffice.log"
    config = tmp_path / "postoffice.toml"
    config.write_text(f'log_file = "{log_file}"\n')
    running = server_process("--workers", "2", "--config", str(config), data_dir=tmp_path / "data")
    processes = [running.process.pid, *running.workers()]

    def writes_to(pid: int, path: Path) -> bool:
        fds = Path(f"/proc/{pid}/fd")
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir() if fd.is_symlink())

    wait_until(
        lambda: all(writes_to(pid, log_file) for pid in processes), what="every process has the log open"
    )
    log_file.rename(tmp_path / "postoffice.log.1")
    running.process.send_signal(signal.SIGHUP)
    wait_until(lambda: all(writes_to(pid, log_file) for pid in processes), what="every process reopened it")
    assert running.terminate(signal.SIGTERM) == 0
