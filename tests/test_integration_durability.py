"""Durability and process life: ``250`` survives SIGKILL, SIGTERM is graceful, bad starts fail cleanly.

These run ``python -m postoffice serve`` as a real process (``conftest.server_process``) and kill
it with real signals; every check afterwards reads the data directory a restarted server left.
"""

from __future__ import annotations

import email
import itertools
import mailbox
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import NOWHERE, RawSmtp, RunningServer, ServerProcess
from postoffice.smtp import replies

pytestmark = pytest.mark.timeout(30)

QUEUED = re.compile(rb"(?:2\.0\.0 )?Ok: queued as (?P<id>[0-9A-Z]{16})")
DOMAIN = "durable.test"


def queue_id_of(text: bytes) -> str:
    match = QUEUED.fullmatch(text.strip())
    assert match, f"not a queued reply: {text!r}"
    return match["id"].decode()


def wait_until(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        time.sleep(0.02)


def queue_dir(data_dir: Path) -> Path:
    return data_dir / "spool" / "queue"


def queue_is_empty(data_dir: Path) -> bool:
    return not any(queue_dir(data_dir).iterdir())


def logged(process: ServerProcess, text: str) -> bool:
    return any(text in line for line in list(process.output))


def message_for(seq: int) -> bytes:
    """A message of a few KiB whose last line proves it arrived whole."""
    lines = [f"Line {n} of message {seq}: the quick brown fox jumps over the lazy dog." for n in range(40)]
    return (
        f"From: load@example.org\r\nTo: box{seq % 5}@{DOMAIN}\r\nSubject: load {seq}\r\n"
        f"Message-ID: <seq-{seq}@example.org>\r\nX-Test-Seq: {seq}\r\n\r\n"
        + "\r\n".join(lines)
        + f"\r\nEND-OF-MESSAGE {seq}\r\n"
    ).encode()


def delivered_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "mail").glob("*/*/new/*"))


def check_whole(path: Path) -> tuple[int, email.message.Message]:
    """The X-Test-Seq of a delivered file, after checking that every byte of it is there."""
    data = path.read_bytes()
    # The Maildir name carries the size (",S=" as Dovecot reads it): compare it with the file.
    assert path.name.endswith(f",S={len(data)}"), path.name
    message = email.message_from_bytes(data)
    seq = int(message["X-Test-Seq"])
    assert data.endswith(f"\r\nEND-OF-MESSAGE {seq}\r\n".encode()), path
    assert data == data[: data.index(b"From: load@")] + message_for(seq)
    return seq, message


def received_id(message: email.message.Message) -> str:
    match = re.search(r"\bid ([0-9A-Z]{16})\b", " ".join(str(message["Received"]).split()))
    assert match
    return match[1]


# --- SIGKILL under load ---------------------------------------------------------------------


def test_ack_means_durable_across_sigkill(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = server_process(data_dir=data_dir)
    total, workers = 300, 6
    acked: dict[int, str] = {}
    lock = threading.Lock()
    numbers = itertools.count()
    deadline = time.monotonic() + 15

    def send_many() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", first.port, timeout=10) as client:
                client.ehlo("load.test")
                while time.monotonic() < deadline:
                    with lock:
                        seq = next(numbers)
                    if seq >= total:
                        return
                    client.mail("load@example.org")
                    client.rcpt(f"box{seq % 5}@{DOMAIN}")
                    code, text = client.data(message_for(seq))
                    assert code == 250
                    with lock:
                        acked[seq] = queue_id_of(text)
        except (OSError, smtplib.SMTPException):
            return  # the server was killed under us: whatever got its 250 is recorded

    threads = [threading.Thread(target=send_many, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acked) >= total // 2, what="half the messages acknowledged")
    assert first.crash() == -signal.SIGKILL
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert total // 2 <= len(acked) < total, "the kill did not land in the middle of the load"

    second = server_process(data_dir=data_dir)
    wait_until(lambda: queue_is_empty(data_dir), what="the queue drained after restart")
    second.terminate()
    assert second.process.returncode == 0

    seen: Counter[int] = Counter()
    for path in delivered_files(data_dir):
        seq, message = check_whole(path)
        seen[seq] += 1
        assert path.parent.parent.name == f"box{seq % 5}"
        if seq in acked:
            assert received_id(message) == acked[seq]
    missing = sorted(set(acked) - set(seen))
    assert missing == [], f"acknowledged but lost: {missing}"
    duplicated = sorted(seq for seq, count in seen.items() if count > 1)
    assert duplicated == [], f"delivered twice: {duplicated}"
    for box in (data_dir / "mail" / DOMAIN).iterdir():
        assert len(list(mailbox.Maildir(box, factory=None, create=False))) == len(
            list((box / "new").iterdir())
        )
    assert list((data_dir / "spool" / "tmp").iterdir()) == []
    assert list((data_dir / "spool" / "corrupt").iterdir()) == []


def _send_one(client: RawSmtp, recipient: str, seq: int) -> str:
    client.ehlo()
    assert client.command("MAIL FROM:<load@example.org>") == replies.SENDER_OK.render(enhanced=True)
    assert client.command(f"RCPT TO:<{recipient}>") == replies.RECIPIENT_OK.render(enhanced=True)
    assert client.command("DATA") == replies.START_MAIL_INPUT.render(enhanced=True)
    reply = client.command(message_for(seq) + b".")
    queue_id = queue_id_of(reply[4:])
    assert reply == replies.queued(queue_id).render(enhanced=True)
    return queue_id


def test_sigkill_right_after_250_is_delivered_on_next_start(
    server_process: Callable[..., ServerProcess], smtp_client: Callable[..., RawSmtp], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = server_process(data_dir=data_dir)
    queue_id = _send_one(smtp_client(first.port), f"box0@{DOMAIN}", 0)
    first.crash()

    second = server_process(data_dir=data_dir)
    wait_until(lambda: queue_is_empty(data_dir), what="the queue drained after restart")
    [path] = delivered_files(data_dir)
    seq, message = check_whole(path)
    assert (seq, received_id(message)) == (0, queue_id)
    assert second.terminate() == 0


def test_accepted_but_undeliverable_message_survives_sigkill(
    server_process: Callable[..., ServerProcess], smtp_client: Callable[..., RawSmtp], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # A plain file where the mailbox directory should be: delivery fails (even as root) and the
    # message must wait in the queue.
    blocker = data_dir / "mail" / DOMAIN / "box1"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")
    first = server_process(data_dir=data_dir)
    queue_id = _send_one(smtp_client(first.port), f"box1@{DOMAIN}", 1)
    wait_until(
        lambda: logged(first, f"queue_id={queue_id} status=deferred"), what="a failed delivery attempt"
    )
    first.crash()
    assert [p.name for p in queue_dir(data_dir).iterdir()] == [queue_id]
    assert delivered_files(data_dir) == []

    blocker.unlink()
    second = server_process(data_dir=data_dir)
    # The restarted server keeps the recorded retry time (minutes away); flushing the queue,
    # as an operator would, retries it now.
    flush = subprocess.run(
        [sys.executable, "-m", "postoffice", "queue", "flush", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert flush.returncode == 0, flush.stderr
    wait_until(lambda: queue_is_empty(data_dir), what="the queue drained after restart")
    [path] = delivered_files(data_dir)
    seq, message = check_whole(path)
    assert (seq, received_id(message)) == (1, queue_id)
    assert second.terminate() == 0


# --- SIGTERM --------------------------------------------------------------------------------


def test_sigterm_closes_idle_sessions_with_421_and_exits_0(
    server_process: Callable[..., ServerProcess], smtp_client: Callable[..., RawSmtp]
) -> None:
    running = server_process()
    client = smtp_client(running.port)
    client.ehlo()
    running.process.send_signal(signal.SIGTERM)
    assert client.read_rest() == replies.shutting_down("mx.test").render(enhanced=True)
    assert running.process.wait(20) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", running.port), timeout=5).close()


def test_sigterm_as_soon_as_it_listens_is_graceful(server_process: Callable[..., ServerProcess]) -> None:
    # A supervisor may stop the server the moment it reports itself ready; the signal handler
    # must already be in place then (exit 0, not death by SIGTERM's default action).
    for _ in range(3):
        running = server_process()
        assert running.terminate() == 0


def test_sigterm_lets_a_transaction_in_data_finish(
    server_process: Callable[..., ServerProcess], smtp_client: Callable[..., RawSmtp], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    running = server_process(data_dir=data_dir)
    client = smtp_client(running.port)
    client.ehlo()
    assert client.command("MAIL FROM:<load@example.org>") == replies.SENDER_OK.render(enhanced=True)
    assert client.command(f"RCPT TO:<box2@{DOMAIN}>") == replies.RECIPIENT_OK.render(enhanced=True)
    assert client.command("DATA") == replies.START_MAIL_INPUT.render(enhanced=True)
    content = message_for(2)
    half = len(content) // 2
    client.send(content[:half])
    running.process.send_signal(signal.SIGTERM)
    wait_until(lambda: logged(running, "event=shutdown"), what="the server saw SIGTERM")
    # New connections are no longer accepted while the transaction goes on.
    wait_until(lambda: _refused(running.port), what="the listener closed")
    client.send(content[half:] + b".\r\n")
    reply = client.read_reply()
    queue_id = queue_id_of(reply[4:])
    assert reply == replies.queued(queue_id).render(enhanced=True)
    # Now idle, the session is closed like any other.
    assert client.read_rest() == replies.shutting_down("mx.test").render(enhanced=True)
    assert running.process.wait(20) == 0

    # Delivered before the exit, or kept in the queue for the next start: never lost.
    again = server_process(data_dir=data_dir)
    wait_until(lambda: queue_is_empty(data_dir), what="the queue drained after restart")
    [path] = delivered_files(data_dir)
    seq, message = check_whole(path)
    assert (seq, received_id(message)) == (2, queue_id)
    assert again.terminate() == 0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


# --- starts that cannot succeed -------------------------------------------------------------


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postoffice", "serve", "--hostname", "mx.test", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[limits]\nrecipients = 10\n", "limits.recipients"),
        ('[limits]\nmessage_sise = "10MB"\n', "limits.message_sise"),
        ('[limits]\ncommand_timeout = "soon"\n', "limits.command_timeout"),
        ('domains = "example.com"\n', "domains"),
        ("hostname = 5\n", "hostname"),
        ('[listen]\nsmtp = ["127.0.0.1:99999"]\n', "listen.smtp"),
        ("hostname = \n", None),  # not TOML at all: the file is named, there is no key
    ],
)
def test_broken_config_file_is_one_line_and_exit_1(tmp_path: Path, toml: str, key: str | None) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    data_dir = tmp_path / "data"
    result = _serve("--config", str(config), "--data-dir", str(data_dir), "--smtp", "127.0.0.1:0")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"postoffice: {config}: ")
    if key is not None:
        assert f": {key}: " in lines[0]
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()


def test_occupied_port_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        port = occupier.getsockname()[1]
        result = _serve("--data-dir", str(tmp_path / "data"), "--smtp", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "listening" not in result.stdout
    # The one line and nothing else: the listener opens before anything starts (or logs).
    assert result.stderr == (
        f"postoffice: cannot listen on smtp 127.0.0.1:{port}: Address already in use;"
        " choose another address with --smtp HOST:PORT\n"
    )


def test_second_server_on_the_same_port_fails_cleanly(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    running = server_process()
    result = _serve("--data-dir", str(tmp_path / "other"), "--smtp", f"127.0.0.1:{running.port}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert running.process.poll() is None
    os.kill(running.process.pid, signal.SIGTERM)
    assert running.process.wait(20) == 0


# --- a spool that cannot store --------------------------------------------------------------


def test_no_250_while_the_spool_cannot_store(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    # Every message through the spool: one for a single mailbox would otherwise go straight
    # into it (delivery/direct.py), and the spool would not be met.
    server = server_factory(delivery=replace(NOWHERE, local_before_reply=False))
    spool_tmp = server.data_dir / "spool" / "tmp"
    client = smtp_client(server.port)
    client.ehlo()

    def begin() -> None:
        assert client.command("MAIL FROM:<a@example.org>") == replies.SENDER_OK.render(enhanced=True)
        assert client.command(f"RCPT TO:<box3@{DOMAIN}>") == replies.RECIPIENT_OK.render(enhanced=True)

    def break_spool() -> None:
        # A file where the spool's tmp/ directory should be: nothing can be stored, even as root.
        spool_tmp.rmdir()
        spool_tmp.write_text("in the way")

    def mend_spool() -> None:
        spool_tmp.unlink()
        spool_tmp.mkdir()

    begin()
    break_spool()
    # A small message is kept in memory until its end (see spool/files.py), so the broken
    # spool is met at the end of data: a 4xx, never a 250.
    assert client.command("DATA") == replies.START_MAIL_INPUT.render(enhanced=True)
    assert client.command(b"Subject: lost\r\n\r\nnot stored\r\n.") == replies.LOCAL_ERROR.render(
        enhanced=True
    )
    mend_spool()
    # The session goes on: the next transaction, by BDAT, is stored.
    # (RawSmtp.command() adds CRLF: "hello" and it are the chunk's 7 octets.)
    begin()
    first = client.command(b"BDAT 7 LAST\r\nhello")
    assert first.startswith(b"250 2.0.0 Ok: queued as "), first

    begin()
    break_spool()
    assert client.command(b"BDAT 7 LAST\r\nhello") == replies.LOCAL_ERROR.render(enhanced=True)
    mend_spool()
    begin()
    assert client.command("DATA") == replies.START_MAIL_INPUT.render(enhanced=True)
    second = client.command(b"Subject: second\r\n\r\nhello again\r\n.")
    assert second.startswith(b"250 2.0.0 Ok: queued as "), second

    server.wait_idle()
    delivered = sorted(path.read_bytes() for path in delivered_files(server.data_dir))
    assert len(delivered) == 2
    by_data = [data for data in delivered if data.endswith(b"\r\n\r\nhello again\r\n")]
    by_bdat = [data for data in delivered if data not in by_data]
    assert len(by_data) == len(by_bdat) == 1
    assert by_bdat[0].endswith(b"\r\nhello\r\n")
    assert list(queue_dir(server.data_dir).iterdir()) == []
