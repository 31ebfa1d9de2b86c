"""The guided client in a real pseudo-terminal: a person typing the classroom example.

pexpect runs ``postoffice send --interactive`` on a pty, waits for each question and types the
answer, as someone at a terminal would; the message then has to be in the server's Maildir.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import pexpect
import pytest

from conftest import RunningServer

pytestmark = pytest.mark.timeout(60)

SENDER = "sender@fci-cu.edu.eg.com"
RECIPIENT = "recipient@fci-cu.edu.eg.com"


def guided(port: int, *, preexec_fn: Callable[[], None] | None = None) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "postoffice",
            "send",
            "--interactive",
            "--server",
            f"127.0.0.1:{port}",
            "--ehlo",
            "client.test",
        ],
        env={**os.environ, "TERM": "dumb"},
        encoding="utf-8",
        timeout=20,
        dimensions=(50, 200),
        preexec_fn=preexec_fn,
    )
    return child


def answer(child: pexpect.spawn, prompt: str, text: str) -> None:
    child.expect_exact(prompt)
    child.sendline(text)


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert "Traceback" not in (child.before or "")
    status: int = child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus
    return status


def test_the_classroom_example(server: RunningServer) -> None:
    child = guided(server.port)
    answer(child, f"SMTP server [127.0.0.1:{server.port}]: ", "")
    answer(child, "Log in as (user name, Enter for no login): ", "")
    answer(child, "From: ", SENDER)
    answer(child, "To: ", RECIPIENT)
    answer(child, "Another recipient (Enter when done): ", "")
    answer(child, "Subject: ", "This is the subject of the email")
    child.expect_exact('End it with a line that says "end of email"')
    child.sendline("This is the body of the email")
    child.sendline("end of email")
    child.expect_exact("----- the message -----")
    answer(child, "Send it? [Y/n] ", "")
    # The conversation as the classroom showed it, on real SMTP.
    for line in (
        "S: 220 mx.test ESMTP postoffice ready",
        "C: EHLO client.test",
        f"C: MAIL FROM:<{SENDER}>",
        f"C: RCPT TO:<{RECIPIENT}>",
        "C: DATA",
        "S: 354 Enter message",
        "C: Subject: This is the subject of the email",
        "C: This is the body of the email",
        "C: .",
        "S: 250 2.0.0 Ok: queued as ",
        "Sent: 250 2.0.0 Ok: queued as ",
    ):
        child.expect_exact(line)
    answer(child, "Send another message? [y/N] ", "n")
    assert finish(child) == 0
    (message,) = server.messages(RECIPIENT)
    assert message["Subject"] == "This is the subject of the email"
    assert message["From"] == SENDER and message["To"] == RECIPIENT
    assert message.get_payload() == "This is the body of the email\n"


def test_another_message_a_wrong_address_and_the_dot(server: RunningServer) -> None:
    child = guided(server.port)
    answer(child, "SMTP server", "")
    answer(child, "Log in as", "")
    answer(child, "From: ", "not an address")
    child.expect_exact("not an address")
    answer(child, "From: ", SENDER)
    answer(child, "To: ", "first@example.test")
    answer(child, "Another recipient (Enter when done): ", "second@example.test")
    answer(child, "Another recipient (Enter when done): ", "")
    answer(child, "Subject: ", "one")
    child.expect_exact("end of email")
    child.sendline("first message")
    child.sendline(".")
    answer(child, "Send it? [Y/n] ", "y")
    child.expect_exact("Sent: 250")
    answer(child, "Send another message? [y/N] ", "y")
    answer(child, f"From [{SENDER}]: ", "")  # the last sender is offered again
    answer(child, "To: ", "first@example.test")
    answer(child, "Another recipient (Enter when done): ", "")
    answer(child, "Subject: ", "two")
    child.expect_exact("end of email")
    child.sendline("second message")
    child.sendline("end of email")
    answer(child, "Send it? [Y/n] ", "n")  # not sent
    answer(child, "Send another message? [y/N] ", "")
    assert finish(child) == 0
    assert [m["Subject"] for m in server.messages("first@example.test")] == ["one"]
    assert [m["Subject"] for m in server.messages("second@example.test")] == ["one"]


def test_ctrl_d_leaves_quietly(server: RunningServer) -> None:
    child = guided(server.port)
    answer(child, "SMTP server", "")
    answer(child, "Log in as", "")
    child.expect_exact("From: ")
    child.sendeof()
    assert finish(child) == 0


def test_ctrl_c_leaves_without_a_traceback(server: RunningServer) -> None:
    child = guided(server.port)
    answer(child, "SMTP server", "")
    answer(child, "Log in as", "")
    answer(child, "From: ", SENDER)
    child.expect_exact("To: ")
    child.sendintr()
    assert finish(child) == 130


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_ctrl_c_works_when_started_with_sigint_ignored(server: RunningServer) -> None:
    # A non-interactive shell starts background jobs with SIGINT ignored, and a child keeps
    # that; a person at the guided client must still be able to leave with Ctrl-C.
    child = guided(server.port, preexec_fn=_ignore_sigint)
    answer(child, "SMTP server", "")
    answer(child, "Log in as", "")
    child.expect_exact("From: ")
    child.sendintr()
    assert finish(child) == 130


def test_a_refused_message_is_reported_and_the_session_goes_on(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory(domains=("example.test",))
    child = guided(server.port)
    answer(child, "SMTP server", "")
    answer(child, "Log in as", "")
    answer(child, "From: ", SENDER)
    answer(child, "To: ", "nobody@example.test")
    answer(child, "Another recipient (Enter when done): ", "")
    answer(child, "Subject: ", "lost")
    child.expect_exact("end of email")
    child.sendline("end of email")
    answer(child, "Send it? [Y/n] ", "")
    child.expect_exact("Not sent: recipient <nobody@example.test> refused: 550 5.1.1")
    answer(child, "Send another message? [y/N] ", "")
    assert finish(child) == 0
