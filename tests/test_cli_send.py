"""``postoffice send`` as a person runs it: a real process, a real server, the exit status.

Messages go to our server (and are read back from its Maildirs) or to aiosmtpd, which can be
told to refuse; every failure class has its exit status and one line on stderr, never a
traceback.
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from aiosmtpd_peer import PASSWORD, USER, Handler, Tls, auth_options, peer_factory, tls  # noqa: F401
from conftest import RunningServer
from test_client_connection import closed_port

pytestmark = pytest.mark.timeout(60)

EX_DATAERR, EX_UNAVAILABLE, EX_TEMPFAIL = 65, 69, 75


def send(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "postoffice", "send", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def to(server_port: int, *args: str) -> list[str]:
    return ["--server", f"127.0.0.1:{server_port}", "--ehlo", "client.test", *args]


def parsed(message: Any) -> EmailMessage:
    result = email.message_from_bytes(bytes(message), policy=email.policy.default)
    assert isinstance(result, EmailMessage)
    return result


def test_send_to_our_server(server: RunningServer) -> None:
    result = send(
        *to(server.port),
        "--from",
        "Alice Example <alice@client.test>",
        "--to",
        "bob@example.test",
        "--cc",
        "carol@example.test, dave@example.test",
        "--bcc",
        "eve@example.test",
        "--subject",
        "Grüße aus Köln",
        stdin="Hello Bob.\n.a line that starts with a dot\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent to 4 recipients: 250 2.0.0 Ok: queued as ")
    for address in ("bob@example.test", "carol@example.test", "dave@example.test", "eve@example.test"):
        (message,) = server.messages(address)
        copy = parsed(message)
        assert copy["Subject"] == "Grüße aus Köln"
        assert copy["From"] == "Alice Example <alice@client.test>"
        assert copy["Cc"] == "carol@example.test, dave@example.test"
        assert "Bcc" not in copy and copy["Date"] and copy["Message-ID"].endswith("@client.test>")
        assert copy.get_content() == "Hello Bob.\n.a line that starts with a dot\n"


def test_html_attachments_and_headers(server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text("<p>Hello <b>Bob</b></p>\n")
    (tmp_path / "notes.txt").write_text("plain notes\n")
    (tmp_path / "data.bin").write_bytes(bytes(range(256)))
    result = send(
        *to(server.port),
        "--from=alice@client.test",
        "--to=bob@example.test",
        "--subject=first",
        "--body=Hello Bob",
        f"--html={tmp_path / 'page.html'}",
        f"--attach={tmp_path / 'notes.txt'}",
        f"--attach={tmp_path / 'data.bin'}",
        "--header=X-Mailer-Test: yes",
        "--header=Subject: replaced",
    )
    assert result.returncode == 0, result.stderr
    (message,) = server.messages("bob@example.test")
    copy = parsed(message)
    assert copy["Subject"] == "replaced" and copy["X-Mailer-Test"] == "yes"
    assert copy.get_content_type() == "multipart/mixed"
    body = copy.get_body(("plain",))
    html = copy.get_body(("html",))
    assert body is not None and body.get_content() == "Hello Bob\n"
    assert html is not None and "<b>Bob</b>" in html.get_content()
    attachments = {part.get_filename(): part for part in copy.iter_attachments()}
    assert attachments["notes.txt"].get_content_type() == "text/plain"
    assert attachments["data.bin"].get_content_type() == "application/octet-stream"
    assert attachments["data.bin"].get_content() == bytes(range(256))


def test_non_ascii_address_is_sent_with_smtputf8(server: RunningServer) -> None:
    result = send(*to(server.port), "--from=jörg@client.test", "--to=zoë@bücher.test", "--body=hé")
    assert result.returncode == 0, result.stderr
    (message,) = server.messages("zoë@bücher.test")
    assert parsed(message)["From"] == "jörg@client.test"


def test_dry_run_prints_and_sends_nothing() -> None:
    result = send(
        *to(closed_port()),
        "--from=alice@client.test",
        "--to=bob@example.test",
        "--bcc=secret@example.test",
        "--subject=dry",
        "--body=just looking",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    copy = email.message_from_string(result.stdout, policy=email.policy.default)
    assert copy["Subject"] == "dry" and copy["To"] == "bob@example.test" and "Bcc" not in copy
    assert copy.get_payload() == "just looking\n"


def test_transcript_is_shortened_unless_full(server: RunningServer) -> None:
    body = "".join(f"line {number}\n" for number in range(1, 41))
    short = send(*to(server.port), "--from=a@client.test", "--to=b@example.test", "--transcript", stdin=body)
    assert short.returncode == 0, short.stderr
    lines = short.stdout.splitlines()
    assert lines[0].startswith("S: 220 mx.test")
    assert "C: EHLO client.test" in lines and "C: MAIL FROM:<a@client.test> SIZE=" in short.stdout
    assert "C: line 10" in lines and "C: line 11" not in lines
    assert "C: [... 30 more lines, 270 octets; --transcript-full shows them ...]" in lines
    assert lines.index("C: line 10") < lines.index("C: .") and "C: QUIT" in lines
    full = send(
        *to(server.port), "--from=a@client.test", "--to=b@example.test", "--transcript-full", stdin=body
    )
    assert "C: line 40" in full.stdout.splitlines() and "more lines" not in full.stdout


def test_body_file(server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "body.txt").write_text("from a file\n")
    result = send(
        *to(server.port),
        "--from=a@client.test",
        "--to=b@example.test",
        f"--body-file={tmp_path / 'body.txt'}",
    )
    assert result.returncode == 0, result.stderr
    (message,) = server.messages("b@example.test")
    assert parsed(message).get_content() == "from a file\n"


def test_auth_over_starttls_with_the_password_on_stdin(peer_factory: Any, tls: Tls) -> None:  # noqa: F811
    smtpd = peer_factory(**auth_options(tls))
    result = send(
        *to(smtpd.port),
        "--starttls",
        f"--cafile={tls.cafile}",
        f"--auth-user={USER}",
        "--password-stdin",
        "--from=alice@client.test",
        "--to=b@smtpd.test",
        "--transcript",
        stdin=f"{PASSWORD}\nThe body follows the password line.\n",
    )
    assert result.returncode == 0, result.stderr
    assert "C: STARTTLS" in result.stdout and "C: AUTH PLAIN ***" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    (received,) = smtpd.handler.messages
    assert (
        b"The body follows the password line." in received.content
        and PASSWORD.encode() not in received.content
    )


def test_password_from_the_environment(peer_factory: Any) -> None:  # noqa: F811
    smtpd = peer_factory(**auth_options(None))
    result = send(
        *to(smtpd.port),
        f"--auth-user={USER}",
        "--from=alice@client.test",
        "--to=b@smtpd.test",
        "--body=hi",
        env={"POSTOFFICE_PASSWORD": PASSWORD},
    )
    assert result.returncode == 0, result.stderr
    assert len(smtpd.handler.messages) == 1


def test_insecure_skips_certificate_verification(peer_factory: Any, tls: Tls) -> None:  # noqa: F811
    smtpd = peer_factory(tls_context=tls.server_context, require_starttls=True)
    common = [*to(smtpd.port), "--starttls", "--from=a@client.test", "--to=b@smtpd.test", "--body=hi"]
    refused = send(*common)
    assert refused.returncode == EX_UNAVAILABLE
    assert refused.stderr.startswith("postoffice: the server's certificate was not accepted")
    assert send(*common, "--insecure").returncode == 0
    assert len(smtpd.handler.messages) == 1


@pytest.mark.parametrize(
    ("handler", "status", "quoted"),
    [
        (Handler(data_reply="451 4.3.0 Try again later"), EX_TEMPFAIL, "451 4.3.0 Try again later"),
        (
            Handler(rcpt_replies={"b@smtpd.test": "550 5.1.1 No such user"}),
            EX_DATAERR,
            "550 5.1.1 No such user",
        ),
        (Handler(mail_reply="553 5.7.1 Sender not allowed"), EX_DATAERR, "553 5.7.1 Sender not allowed"),
        (Handler(data_reply="554 5.6.0 Content refused"), EX_DATAERR, "554 5.6.0 Content refused"),
    ],
)
def test_refusal_exit_statuses(peer_factory: Any, handler: Handler, status: int, quoted: str) -> None:  # noqa: F811
    smtpd = peer_factory(handler)
    result = send(*to(smtpd.port), "--from=a@client.test", "--to=b@smtpd.test", "--body=hi")
    assert result.returncode == status
    assert result.stderr.count("\n") == 1 and quoted in result.stderr


def test_some_recipients_refused(peer_factory: Any) -> None:  # noqa: F811
    smtpd = peer_factory(Handler(rcpt_replies={"gone@smtpd.test": "550 5.1.1 No such user"}))
    result = send(
        *to(smtpd.port), "--from=a@client.test", "--to=b@smtpd.test", "--to=gone@smtpd.test", "--body=hi"
    )
    assert result.returncode == EX_DATAERR
    assert result.stderr == "postoffice: recipient <gone@smtpd.test> refused: 550 5.1.1 No such user\n"
    assert result.stdout.startswith("sent to 1 recipient: 250")
    assert smtpd.handler.messages[0].rcpt_tos == ["b@smtpd.test"]


def test_wrong_password_is_unavailable(peer_factory: Any) -> None:  # noqa: F811
    smtpd = peer_factory(**auth_options(None))
    result = send(
        *to(smtpd.port),
        f"--auth-user={USER}",
        "--password-stdin",
        "--from=a@client.test",
        "--to=b@smtpd.test",
        "--body=hi",
        stdin="wrong\n",
    )
    assert result.returncode == EX_UNAVAILABLE
    assert result.stderr.startswith("postoffice: authentication failed: 535")


def test_starttls_not_offered_is_unavailable(peer_factory: Any) -> None:  # noqa: F811
    smtpd = peer_factory()
    result = send(*to(smtpd.port), "--starttls", "--from=a@client.test", "--to=b@smtpd.test", "--body=hi")
    assert result.returncode == EX_UNAVAILABLE and "does not offer STARTTLS" in result.stderr


def test_connection_refused_is_tempfail() -> None:
    port = closed_port()
    result = send(*to(port), "--from=a@client.test", "--to=b@example.test", "--body=hi")
    assert result.returncode == EX_TEMPFAIL
    assert result.stderr == f"postoffice: cannot connect to 127.0.0.1:{port}: Connection refused\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to=b@example.test"], "--from is required"),
        (["--from=a@client.test"], "no recipients"),
        (["--from=a@client.test", "--to=b@example.test", "--header=Bad Header"], "--header: "),
        (["--from=a@client.test", "--to=b@example.test", "--header=Bcc: x@example.test"], "--bcc"),
        (["--from=a@client.test", "--to=b@example.test", "--attach=/nonexistent/file"], "--attach: "),
        (["--from=a@client.test", "--to=b@example.test", "--auth-user=alice"], "POSTOFFICE_PASSWORD"),
        (["--server=[::1", "--from=a@client.test", "--to=b@example.test"], "--server"),
    ],
)
def test_local_mistakes_are_one_line(args: list[str], message: str) -> None:
    result = send(*args, "--body=hi")
    assert result.returncode == 1
    assert result.stderr.startswith("postoffice: ") and result.stderr.count("\n") == 1
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--from=a@client.test", "--to=not an address"],
            "postoffice: --to: 'not an address' is not a valid address (local-part@domain)",
        ),
        (
            ["--from=a@client.test", "--cc=b@example.test, not an address"],
            "postoffice: --cc: 'b@example.test, not an address' has an address that is not valid"
            " (local-part@domain, commas between several)",
        ),
        (
            ["--from=me at client.test", "--to=b@example.test"],
            "postoffice: --from: 'me at client.test' is not a valid address (local-part@domain)",
        ),
        (
            ["--from=a@client.test", "--bcc=<b@example.test> junk"],
            "postoffice: --bcc: '<b@example.test> junk' has an address that is not valid"
            " (local-part@domain, commas between several)",
        ),
    ],
)
def test_an_address_that_is_not_valid_is_quoted_whole_with_the_data_error_status(
    args: list[str], line: str
) -> None:
    # The status the server's 5xx to that address would give (README: 65, what you sent).
    result = send(*args, "--body=hi", f"--server=127.0.0.1:{closed_port()}")
    assert (result.returncode, result.stderr) == (EX_DATAERR, line + "\n")
