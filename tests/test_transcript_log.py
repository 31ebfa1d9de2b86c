"""The server's transcript log: one line per command and reply, secrets and bodies left out.

Sessions are real (raw sockets and our own client against the running server); the log is read
back from disk once the line a test waits for has been written (the log flushes every half
second, so tests poll for it).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aiosmtpd_peer import PASSWORD, USER
from conftest import RawSmtp, RunningServer, ServerProcess, wait_until
from postoffice.client.connection import SmtpClient
from postoffice.config import load_config
from postoffice.errors import ConfigError, SmtpAuthError
from postoffice.net.transcript import TranscriptLog
from postoffice.smtp import replies

pytestmark = pytest.mark.timeout(30)

LINE = re.compile(
    r"(?P<when>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00) (?P<session>[0-9A-F]{6}) "
    r"(?P<peer>\S+) (?P<direction>[CS]) (?P<text>.*)"
)


def wait_for(path: Path, text: str, timeout: float = 10.0) -> str:
    """The log's content once it holds ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(encoding="utf-8") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never reached {path}:\n{content}")


def test_a_session_is_logged_with_secrets_and_body_left_out(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp], tmp_path: Path
) -> None:
    log = tmp_path / "logs" / "transcript.log"
    server = server_factory(transcript_log=log)
    secret = "AHVzZXIAc3VwZXItc2VjcmV0LXBhc3N3b3Jk"  # base64 of "\0user\0super-secret-password"
    client = smtp_client(server.port)
    client.ehlo()
    client.command(f"AUTH PLAIN {secret}")
    client.command(b"NOOP \x1b[31mred")
    client.command("MAIL FROM:<alice@client.test>")
    client.command("RCPT TO:<bob@example.test>")
    client.command("DATA")
    client.send(b"Subject: private\r\n\r\nthe body is never logged\r\n.\r\n")
    client.read_reply()
    client.command("QUIT")
    content = wait_for(log, "221 2.0.0 Bye")
    lines = content.splitlines()
    assert all(LINE.fullmatch(line) for line in lines), lines
    parsed = [LINE.fullmatch(line) for line in lines]
    assert {match["session"] for match in parsed if match} == {parsed[0]["session"] if parsed[0] else ""}
    assert {match["peer"] for match in parsed if match} == {"127.0.0.1"}
    texts = [(match["direction"], match["text"]) for match in parsed if match]
    assert texts[0] == ("S", "220 mx.test ESMTP postoffice ready")
    assert ("C", "EHLO client.test") in texts and ("S", "250-PIPELINING") in texts
    assert ("C", "AUTH PLAIN ***") in texts
    assert ("C", "NOOP \\x1b[31mred") in texts  # escaped: no terminal control in the log
    assert ("C", "MAIL FROM:<alice@client.test>") in texts
    assert ("S", "250 2.1.0 Ok") in texts
    assert texts[-1] == ("S", "221 2.0.0 Bye")
    assert secret not in content and "the body is never logged" not in content and "private" not in content
    assert "\x1b" not in content


async def test_our_client_s_password_never_reaches_the_log(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    # The server offers no AUTH in capture mode, so the client's attempt is refused; what
    # matters is that nothing of the password is on the wire in a form the log would keep.
    log = tmp_path / "transcript.log"
    server = server_factory(transcript_log=log)
    with pytest.raises(SmtpAuthError):
        await SmtpClient(
            "127.0.0.1", server.port, credentials=(USER, PASSWORD), ehlo_name="client.test"
        ).connect()
    async with SmtpClient("127.0.0.1", server.port, ehlo_name="client.test") as client:
        await client.send("a@client.test", ["b@example.test"], b"Subject: x\r\n\r\nx\r\n")
    content = await asyncio.to_thread(wait_for, log, "QUIT")
    assert PASSWORD not in content


def test_sighup_reopens_the_log(server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    log = tmp_path / "transcript.log"
    running = server_process("--transcript-log", str(log))

    def session(name: str) -> None:
        client = RawSmtp(running.port)
        try:
            client.ehlo(name)
            client.command("QUIT")
        finally:
            client.close()

    session("first.test")
    wait_for(log, "EHLO first.test")
    rotated = log.with_name("transcript.log.1")
    log.rename(rotated)
    running.process.send_signal(signal.SIGHUP)
    # The reopen happens at the next write; every session from now on goes to the new file.
    session("second.test")
    content = wait_for(log, "EHLO second.test")
    assert "first.test" not in content
    assert "second.test" not in wait_for(rotated, "first.test")
    assert running.terminate() == 0


def test_workers_append_whole_lines_to_one_log(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Every worker appends its batches to the same file (O_APPEND, one write(2) per batch of
    # whole lines): sessions on both workers, side by side, must leave no line torn or mixed.
    log = tmp_path / "transcript.log"
    running = server_process("--workers", "2", "--transcript-log", str(log))
    names = [f"client{index}.test" for index in range(40)]
    filler = "x" * 400  # long lines, so the batches written at once are large

    def session(name: str) -> None:
        client = RawSmtp(running.port)
        try:
            client.ehlo(name)
            client.command(f"NOOP {name} {filler}")
            client.command("QUIT")
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(session, names))
    wait_until(
        lambda: log.exists() and log.read_text(encoding="utf-8").count("221 2.0.0 Bye") == len(names),
        what="every session logged",
    )
    lines = log.read_text(encoding="utf-8").splitlines()
    worker_line = re.compile(LINE.pattern.replace("(?P<session>", "(?P<worker>w[01])-(?P<session>"))
    parsed = [worker_line.fullmatch(line) for line in lines]
    assert all(parsed), [line for line, match in zip(lines, parsed, strict=True) if not match]
    by_session: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for match in parsed:
        assert match is not None
        by_session.setdefault((match["worker"], match["session"]), []).append(
            (match["direction"], match["text"])
        )
    assert len(by_session) == len(names)
    assert {worker for worker, _ in by_session} == {"w0", "w1"}  # both workers wrote
    for texts in by_session.values():
        ehlo = next(text for direction, text in texts if text.startswith("EHLO "))
        name = ehlo.removeprefix("EHLO ")
        assert ("C", f"NOOP {name} {filler}") in texts
        assert texts[-1] == ("S", "221 2.0.0 Bye")
    assert running.terminate() == 0


def test_unwritable_log_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "postoffice", "serve", "--data-dir", str(tmp_path / "data")),
            *("--smtp", "127.0.0.1:0", "--transcript-log", str(blocker / "transcript.log")),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("postoffice: ")
    assert "Traceback" not in result.stderr


def test_config_key_is_relative_to_the_file(tmp_path: Path) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text('transcript_log = "logs/smtp.log"\n')
    assert load_config(config).transcript_log == tmp_path / "logs" / "smtp.log"
    assert load_config(None).transcript_log is None
    config.write_text("transcript_log = 5\n")
    with pytest.raises(ConfigError, match="transcript_log: expected a string"):
        load_config(config)


# --- the writer itself ------------------------------------------------------------------------


async def test_lines_wait_in_memory_until_flushed_and_overflow_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    log = TranscriptLog(path, max_pending=3, clock=lambda: 0.0, flush_interval=3600)
    log.open()
    await log.start()
    log.client_said("00000A", "192.0.2.1", "EHLO a.test")
    log.server_said("00000A", "192.0.2.1", replies.ehlo_ok("mx.test", "a.test", ["PIPELINING", "SIZE 1"]))
    assert path.read_text() == ""  # nothing written on the event loop's time
    await log.stop()
    assert path.read_text().splitlines() == [
        "1970-01-01T00:00:00.000+00:00 00000A 192.0.2.1 C EHLO a.test",
        "1970-01-01T00:00:00.000+00:00 00000A 192.0.2.1 S 250-mx.test Hello a.test",
        "1970-01-01T00:00:00.000+00:00 00000A 192.0.2.1 S 250-PIPELINING",
        "1970-01-01T00:00:00.000+00:00 - - - <1 lines dropped: the log could not keep up>",
    ]
