"""Operations of a real server process: /metrics, health, status, JSON logs, SIGHUP reload.

Each test runs ``python -m postoffice serve --http 127.0.0.1:0`` and talks to it over loopback
with real clients (smtplib, urllib, the ``postoffice status`` command).
"""

from __future__ import annotations

import base64
import json
import re
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import RawSmtp, ServerProcess
from postoffice.accounts import Accounts

pytestmark = pytest.mark.timeout(60)

_HTTP = re.compile(r"^listening http 127\.0\.0\.1:(\d+)$")


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def http_port(process: ServerProcess) -> int:
    found: list[int] = []

    def seen() -> bool:
        for line in list(process.output):
            match = _HTTP.match(line.strip())
            if match:
                found.append(int(match.group(1)))
                return True
        return False

    wait_for(seen)
    return found[0]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def send_one(port: int, recipient: str = "someone@capture.test") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("sender@client.test", [recipient], b"Subject: ops\r\n\r\nhello\r\n")


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_metrics_health_and_status(server_process: Callable[..., ServerProcess]) -> None:
    process = server_process("--http", "127.0.0.1:0")
    port = http_port(process)
    assert get(port, "/livez") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    send_one(process.port)
    junk = RawSmtp(process.port)
    junk.ehlo()
    assert junk.command("RCPT TO:<x@y.test>").startswith(b"503")
    assert junk.command("DATA").startswith(b"503")
    junk.command("QUIT")
    junk.close()

    def settled() -> bool:
        # With several workers, another worker's counts reach /metrics within its report
        # interval (about a second): wait for both sessions and the delivery.
        text = get(port, "/metrics")[1]
        return (
            metric(text, 'postoffice_messages_total{outcome="delivered"}') == 1
            and metric(text, 'postoffice_sessions_total{outcome="quit"}') == 2
        )

    wait_for(settled)
    status, text = get(port, "/metrics")
    assert status == 200
    assert metric(text, 'postoffice_messages_total{outcome="accepted"}') == 1
    assert metric(text, 'postoffice_connections_total{listener="smtp"}') == 2
    assert metric(text, 'postoffice_sessions_total{outcome="quit"}') == 2
    assert metric(text, "postoffice_received_bytes_total") > 20
    assert metric(text, 'postoffice_delivery_latency_seconds_count{route="local"}') == 1
    assert metric(text, 'postoffice_queue_messages{state="corrupt"}') == 0
    for name in ("postoffice_tls_handshakes_total", "postoffice_auth_attempts", "postoffice_sessions_active"):
        assert name in text

    status, body = get(port, "/api/v1/status")
    summary = json.loads(body)
    assert status == 200 and summary["ready"] is True
    assert summary["listeners"] == [f"smtp 127.0.0.1:{process.port}", f"http 127.0.0.1:{port}"]
    assert summary["queue"] == {"active": 0, "deferred": 0, "receiving": 0, "corrupt": 0}

    shown = subprocess.run(
        [sys.executable, "-m", "postoffice", "status", "--http", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"listening smtp 127.0.0.1:{process.port}" in shown.stdout
    assert "queue: active 0, deferred 0" in shown.stdout
    assert process.terminate() == 0


def test_status_of_a_server_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    shown = subprocess.run(
        [sys.executable, "-m", "postoffice", "status", "--http", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 1
    assert shown.stderr.startswith("postoffice: cannot reach")
    assert len(shown.stderr.splitlines()) == 1


SECRET = "Correct-Horse-Battery-Staple-42"


def test_json_logs_one_event_per_line_with_ids_and_no_secrets(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    Accounts(data_dir / "accounts.json").add_user("alice@capture.test", SECRET)
    process = server_process("--log-format", "json", data_dir=data_dir)
    client = RawSmtp(process.port)
    client.ehlo()
    plain = base64.b64encode(f"\0alice@capture.test\0{SECRET}".encode()).decode()
    client.command(f"AUTH PLAIN {plain}")
    client.command("AUTH LOGIN")
    client.command(base64.b64encode(SECRET.encode()).decode())
    client.command("QUIT")
    client.close()
    send_one(process.port)
    assert process.terminate() == 0
    log = "".join(process.output)
    for secret in (SECRET, plain, base64.b64encode(SECRET.encode()).decode()):
        assert secret not in log
    events = [json.loads(line) for line in process.output if line.startswith("{")]
    assert events, log
    for event in events:
        assert {"ts", "level", "logger", "msg"} <= event.keys()
        if event.get("event") in ("connect", "disconnect", "mail", "queued"):
            # With workers (the default on several cores) the ID names its worker: w1-00002A.
            assert re.fullmatch(r"(w[0-9]+-)?[0-9A-F]{6}", event["session"])
    (queued,) = [event for event in events if event.get("event") == "queued"]
    assert re.fullmatch(r"[0-9A-Z]{16}", queued["queue_id"])
    assert any(
        event.get("status") == "delivered" and event["queue_id"] == queued["queue_id"] for event in events
    )
    assert events[-1]["event"] == "stopped"


def test_sighup_reloads_configuration_without_dropping_connections(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text('domains = ["one.test"]\n')
    process = server_process("--config", str(config))
    before = RawSmtp(process.port)
    before.ehlo()
    assert before.command("MAIL FROM:<a@client.test>").startswith(b"250")
    assert before.command("RCPT TO:<postmaster@one.test>").startswith(b"250")
    assert before.command("RCPT TO:<postmaster@two.test>").startswith(b"554")

    config.write_text('domains = ["two.test"]\n[limits]\njunk_commands = 2\n')
    process.process.send_signal(signal.SIGHUP)
    wait_for(lambda: any("event=reloaded" in line for line in process.output))

    # The open session keeps going (its own settings), and can finish its message.
    assert before.command("DATA").startswith(b"354")
    assert before.command(b"Subject: x\r\n\r\nbefore reload\r\n.").startswith(b"250")
    # New sessions see the new domains and limits.
    after = RawSmtp(process.port)
    after.ehlo()
    assert after.command("MAIL FROM:<a@client.test>").startswith(b"250")
    assert after.command("RCPT TO:<postmaster@two.test>").startswith(b"250")
    assert after.command("RCPT TO:<postmaster@one.test>").startswith(b"554")
    assert after.command("NOOP").startswith(b"250")
    # The second junk command reaches junk_commands = 2: answered, then 421 and close.
    assert after.command("NOOP").startswith(b"250")
    assert after.read_reply().startswith(b"421 4.7.0")
    assert after.read_rest() == b""
    assert before.command("QUIT").startswith(b"221")

    # A broken file keeps the running configuration and says why, on one line.
    config.write_text("domains = 7\n")
    process.process.send_signal(signal.SIGHUP)
    wait_for(lambda: any("event=reload-failed" in line for line in process.output))
    again = RawSmtp(process.port)
    again.ehlo()
    assert again.command("MAIL FROM:<a@client.test>").startswith(b"250")
    assert again.command("RCPT TO:<postmaster@two.test>").startswith(b"250")
    for client in (before, after, again):
        client.close()
    assert process.terminate() == 0


def test_sighup_reopens_the_log_file(server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    log_file = tmp_path / "postoffice.log"
    config = tmp_path / "postoffice.toml"
    config.write_text(f'log_file = "{log_file}"\n')
    process = server_process("--config", str(config))
    send_one(process.port)
    wait_for(lambda: "event=queued" in log_file.read_text())
    rotated = tmp_path / "postoffice.log.1"
    log_file.rename(rotated)  # what logrotate does, before it signals the server
    process.process.send_signal(signal.SIGHUP)
    wait_for(log_file.exists)
    send_one(process.port)
    wait_for(lambda: "event=queued" in log_file.read_text())
    assert "event=sighup" in rotated.read_text() or "event=sighup" in log_file.read_text()
    assert process.terminate() == 0


def test_readyz_turns_503_when_shutting_down(server_process: Callable[..., ServerProcess]) -> None:
    # One process: with several, the session may be another worker's, and worker 0, which
    # serves HTTP, then has no grace period to wait out and closes its listener at once.
    process = server_process("--http", "127.0.0.1:0", "--workers", "1")
    port = http_port(process)
    client = RawSmtp(process.port)
    client.ehlo()
    assert client.command("MAIL FROM:<a@client.test>").startswith(b"250")
    assert client.command("RCPT TO:<b@capture.test>").startswith(b"250")
    assert client.command("DATA").startswith(b"354")  # holds the shutdown in its grace period
    process.process.send_signal(signal.SIGTERM)
    wait_for(lambda: get(port, "/readyz")[0] == 503)
    assert get(port, "/livez") == (200, "ok\n")
    assert client.command(b"Subject: late\r\n\r\nstill accepted\r\n.").startswith(b"250")
    client.close()
    assert process.process.wait(20) == 0
