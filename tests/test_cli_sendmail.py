"""``postoffice sendmail`` as cron, PHP and git run /usr/sbin/sendmail: a message on stdin.

The message is written as Unix programs write it, with bare LF line endings; our server refuses
bare LF in DATA, so every message it accepts here proves the conversion to CRLF.
"""

from __future__ import annotations

import email
import email.policy
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiosmtpd_peer import Handler, peer_factory  # noqa: F401
from conftest import RunningServer
from postoffice.cli import sendmail
from test_client_connection import closed_port

pytestmark = pytest.mark.timeout(60)

EX_USAGE, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, EX_CONFIG = 64, 65, 67, 75, 78


def run_sendmail(
    *args: str, stdin: bytes, env: dict[str, str] | None = None, program: list[str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    command = program or [sys.executable, "-m", "postoffice", "sendmail"]
    result = subprocess.run(
        [*command, *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        env={**os.environ, "POSTOFFICE_CONFIG": "", **(env or {})},
    )
    assert b"Traceback" not in result.stderr, result.stderr
    return result


def server_arg(server: Any) -> str:
    return f"--server=127.0.0.1:{server.port}"


def delivered(server: RunningServer, address: str) -> list[email.message.EmailMessage]:
    found = []
    for message in server.messages(address):
        parsed = email.message_from_bytes(bytes(message), policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        found.append(parsed)
    return found


CRON_MAIL = b"""From: cron@client.test
To: alice@example.test
Cc: Bob <bob@example.test>
Bcc: hidden@example.test,
 also-hidden@example.test
Subject: cron output

line one
line two
"""


def test_recipients_from_headers_and_bcc_removed(server: RunningServer) -> None:
    result = run_sendmail("-t", "-oi", server_arg(server), stdin=CRON_MAIL)
    assert result.returncode == 0, result.stderr
    for address in (
        "alice@example.test",
        "bob@example.test",
        "hidden@example.test",
        "also-hidden@example.test",
    ):
        (copy,) = delivered(server, address)
        assert copy["Subject"] == "cron output"
        assert "Bcc" not in copy
        if "hidden" not in address:
            assert "hidden" not in copy.as_string()
        assert copy.get_content() == "line one\nline two\n"
        assert copy["Date"] and copy["Message-ID"]  # added, as sendmail does
        assert copy["Return-Path"] == "<cron@client.test>"  # the From address is the sender


def test_a_lone_dot_ends_input_unless_i(server: RunningServer) -> None:
    message = b"Subject: dots\n\nbefore\n.\nafter\n"
    assert run_sendmail(server_arg(server), "a@example.test", stdin=message).returncode == 0
    (copy,) = delivered(server, "a@example.test")
    assert copy.get_content() == "before\n"
    for flag in ("-i", "-oi"):
        assert (
            run_sendmail(flag, server_arg(server), f"{flag[1:]}@example.test", stdin=message).returncode == 0
        )
        (copy,) = delivered(server, f"{flag[1:]}@example.test")
        assert copy.get_content() == "before\n.\nafter\n"


def test_sender_name_and_ignored_options(server: RunningServer) -> None:
    result = run_sendmail(
        "-odi", "-oem", "-F", "Build Robot", "-f", "robot@client.test", server_arg(server), "a@example.test",
        stdin=b"Subject: no From header\n\nbody\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (copy,) = delivered(server, "a@example.test")
    assert copy["From"] == "Build Robot <robot@client.test>"
    assert copy["Return-Path"] == "<robot@client.test>"


def test_header_recipients_add_to_arguments(server: RunningServer) -> None:
    message = b"To: a@example.test\nSubject: both\n\nbody\n"
    assert run_sendmail("-t", server_arg(server), "b@example.test", stdin=message).returncode == 0
    assert len(delivered(server, "a@example.test")) == 1
    assert len(delivered(server, "b@example.test")) == 1


def test_null_sender(server: RunningServer) -> None:
    result = run_sendmail("-f<>", server_arg(server), "a@example.test", stdin=b"Subject: bounce\n\nx\n")
    assert result.returncode == 0, result.stderr
    (copy,) = delivered(server, "a@example.test")
    assert copy["Return-Path"] == "<>"


def test_verbose_shows_the_conversation_on_stderr(server: RunningServer) -> None:
    result = run_sendmail("-v", server_arg(server), "a@example.test", stdin=b"Subject: v\n\nx\n")
    assert result.returncode == 0
    assert b"C: RCPT TO:<a@example.test>" in result.stderr and b"S: 250 2.0.0 Ok: queued as" in result.stderr
    assert result.stdout == b""


def test_server_from_the_configuration_file(server: RunningServer, tmp_path: Path) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text(f'[listen]\nsmtp = ["0.0.0.0:{server.port}"]\n')
    by_flag = run_sendmail(f"--config={config}", "a@example.test", stdin=b"Subject: 1\n\nx\n")
    by_env = run_sendmail(
        "b@example.test", stdin=b"Subject: 2\n\nx\n", env={"POSTOFFICE_CONFIG": str(config)}
    )
    assert (by_flag.returncode, by_env.returncode) == (0, 0), by_flag.stderr + by_env.stderr
    assert len(delivered(server, "a@example.test")) == 1
    assert len(delivered(server, "b@example.test")) == 1


def test_invoked_as_sendmail(server: RunningServer, tmp_path: Path) -> None:
    # What `ln -s $(which postoffice) /usr/sbin/sendmail` gives: argv[0] ends in "sendmail".
    program = tmp_path / "sendmail"
    program.write_text("import sys\nfrom postoffice.cli import main\nsys.exit(main())\n")
    result = run_sendmail(
        "-t",
        server_arg(server),
        stdin=b"To: a@example.test\nSubject: s\n\nx\n",
        program=[sys.executable, str(program)],
    )
    assert result.returncode == 0, result.stderr
    assert len(delivered(server, "a@example.test")) == 1


@pytest.mark.parametrize(
    ("handler", "status"),
    [
        (Handler(rcpt_replies={"a@peer.test": "550 5.1.1 No such user"}), EX_NOUSER),
        (Handler(mail_reply="553 5.7.1 Sender not allowed"), EX_DATAERR),
        (Handler(data_reply="451 4.3.0 Try again"), EX_TEMPFAIL),
    ],
)
def test_refusals(peer_factory: Any, handler: Handler, status: int) -> None:  # noqa: F811
    smtpd = peer_factory(handler)
    result = run_sendmail(server_arg(smtpd), "a@peer.test", stdin=b"Subject: x\n\nx\n")
    assert result.returncode == status
    assert result.stderr.startswith(b"postoffice: ") and result.stderr.count(b"\n") == 1


def test_connection_refused() -> None:
    result = run_sendmail(f"--server=127.0.0.1:{closed_port()}", "a@example.test", stdin=b"x\n")
    assert result.returncode == EX_TEMPFAIL and b"Connection refused" in result.stderr


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("-bp",), EX_USAGE, b"-bp is not supported"),
        (("-q",), EX_USAGE, b"-q is not supported"),
        (("-f",), EX_USAGE, b"requires argument"),
        (("not-an-address",), EX_DATAERR, b"not a valid address"),
        (("--config=/nonexistent.toml", "a@example.test"), EX_CONFIG, b"no such file"),
    ],
)
def test_usage_errors(args: tuple[str, ...], status: int, message: bytes) -> None:
    result = run_sendmail(*args, stdin=b"Subject: x\n\nx\n")
    assert result.returncode == status
    assert message in result.stderr and result.stderr.count(b"\n") == 1


@pytest.mark.parametrize(
    ("args", "stdin", "status", "line"),
    [
        (
            (),
            b"Subject: x\n\nx\n",
            EX_USAGE,
            b"postoffice: no recipients: name them as arguments, or use -t to take them from To, Cc and Bcc",
        ),
        (
            ("-t",),
            b"Subject: x\n\nx\n",
            EX_USAGE,
            b"postoffice: no recipients: the message has no To, Cc or Bcc address, and no argument names one",
        ),
        (
            ("not an address",),
            b"Subject: x\n\nx\n",
            EX_DATAERR,
            b"postoffice: 'not an address' is not a valid address (local-part@domain)",
        ),
        (
            ("-t",),
            b"To: a@example.test, not an address\nSubject: x\n\nx\n",
            EX_DATAERR,
            b"postoffice: To: 'a@example.test, not an address' has an address that is not valid"
            b" (local-part@domain)",
        ),
        (
            ("-f", "me at example.test", "a@example.test"),
            b"Subject: x\n\nx\n",
            EX_DATAERR,
            b"postoffice: -f 'me at example.test' is not a valid address (local-part@domain)",
        ),
        (
            ("a@example.test",),
            b"From: Me <me at example.test>\nSubject: x\n\nx\n",
            EX_DATAERR,
            b"postoffice: From: 'Me <me at example.test>' is not a valid address (local-part@domain)",
        ),
    ],
)
def test_recipient_mistakes_are_one_line_quoting_what_was_given(
    args: tuple[str, ...], stdin: bytes, status: int, line: bytes
) -> None:
    result = run_sendmail(f"--server=127.0.0.1:{closed_port()}", *args, stdin=stdin)
    assert (result.returncode, result.stderr) == (status, line + b"\n")


def test_help() -> None:
    result = run_sendmail("--help", stdin=b"")
    assert result.returncode == 0 and b"-t " in result.stdout


# --- the parts, without a process -------------------------------------------------------------


def test_parse_args_takes_sendmail_spellings() -> None:
    args = sendmail.parse_args(
        ["-ti", "-oem", "-odi", "-Fname", "-fme@x.test", "-B8BITMIME", "a@x.test, b@x.test"]
    )
    assert args.from_headers and args.ignore_dots
    assert (args.full_name, args.sender, args.recipients) == ("name", "me@x.test", ["a@x.test", "b@x.test"])


def test_read_message_converts_line_endings() -> None:
    assert sendmail.read_message(io.BytesIO(b"a\nb\r\nc"), ignore_dots=True) == b"a\r\nb\r\nc\r\n"


def test_prepare_keeps_the_body_bytes_and_folded_headers() -> None:
    data = b"To: a@x.test\r\nX-Long: one\r\n two\r\nBcc: b@x.test\r\n\r\n\xff body\r\n"
    prepared = sendmail.prepare(sendmail.parse_args(["-t", "-fme@x.test"]), data)
    assert prepared.recipients == ("a@x.test", "b@x.test")
    assert b"X-Long: one\r\n two\r\n" in prepared.data and b"Bcc" not in prepared.data
    assert prepared.data.endswith(b"\r\n\r\n\xff body\r\n")


def test_resent_headers_win_with_t() -> None:
    data = b"To: old@x.test\r\nResent-To: new@x.test\r\nResent-Bcc: quiet@x.test\r\n\r\nbody\r\n"
    prepared = sendmail.prepare(sendmail.parse_args(["-t"]), data)
    assert prepared.recipients == ("new@x.test", "quiet@x.test") and b"quiet" not in prepared.data
