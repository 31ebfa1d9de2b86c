"""Real clients against the real server over loopback: smtplib, aiosmtplib, swaks and raw sockets.

Every test starts a server on an ephemeral 127.0.0.1 port (``conftest.server_factory``), talks
SMTP to it with a real client and then reads what landed in the Maildirs with :mod:`mailbox`.
"""

from __future__ import annotations

import asyncio
import email.policy
import mailbox
import os
import re
import smtplib
import socket
import subprocess
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from conftest import RawSmtp, RunningServer, maildir_messages, require_tool
from postoffice.accounts import Accounts
from postoffice.delivery.local import delivery_headers
from postoffice.smtp import replies

pytestmark = pytest.mark.timeout(20)

QUEUED = re.compile(r"(?:2\.0\.0 )?Ok: queued as (?P<id>[0-9A-Z]{16})")


def queue_id_of(reply_text: str | bytes) -> str:
    text = reply_text.decode() if isinstance(reply_text, bytes) else reply_text
    match = QUEUED.fullmatch(text.strip())
    assert match, f"not a queued reply: {text!r}"
    return match["id"]


def expect(reply: tuple[int, bytes], expected: replies.Reply, *, enhanced: bool) -> None:
    """``reply`` as smtplib returns it is exactly ``expected`` as the server renders it."""
    code, text = reply
    rendered = expected.render(enhanced=enhanced).decode()
    lines = [line[4:] for line in rendered.split("\r\n") if line]
    assert (code, text.decode()) == (expected.code, "\n".join(lines))


def new_files(mail_dir: Path, address: str) -> list[Path]:
    local, _, domain = address.rpartition("@")
    directory = mail_dir / domain.lower() / local.lower() / "new"
    return sorted(directory.iterdir()) if directory.is_dir() else []


def unfold(value: str) -> str:
    return " ".join(value.split())


# --- smtplib, the classroom conversation ----------------------------------------------------


def test_classroom_conversation_with_smtplib(server: RunningServer) -> None:
    client = smtplib.SMTP(server.host, server.port, timeout=10)
    try:
        expect(
            client.helo("client.fci-cu.edu.eg.com"),
            replies.helo_ok("mx.test", "client.fci-cu.edu.eg.com"),
            enhanced=False,
        )
        expect(client.docmd("MAIL FROM:<sender@fci-cu.edu.eg.com>"), replies.SENDER_OK, enhanced=False)
        expect(client.docmd("RCPT TO:<recipient@fci-cu.edu.eg.com>"), replies.RECIPIENT_OK, enhanced=False)
        expect(client.docmd("DATA"), replies.START_MAIL_INPUT, enhanced=False)
        client.send(
            b"From: sender@fci-cu.edu.eg.com\r\n"
            b"To: recipient@fci-cu.edu.eg.com\r\n"
            b"Subject: Computer Networks lab\r\n"
            b"\r\n"
            b"Hello from the lab.\r\n"
            b"..A line that starts with a dot.\r\n"
            b".\r\n"
        )
        code, text = client.getreply()
        assert code == 250
        queue_id = queue_id_of(text)
        expect((code, text), replies.queued(queue_id), enhanced=False)
        expect(client.docmd("QUIT"), replies.CLOSING, enhanced=False)
    finally:
        client.close()

    server.wait_idle()
    box = server.config.mail_dir / "fci-cu.edu.eg.com" / "recipient"
    files = list((box / "new").iterdir())
    assert len(files) == 1
    [message] = list(mailbox.Maildir(box, factory=None, create=False))
    assert message["Return-Path"] == "<sender@fci-cu.edu.eg.com>"
    assert message["Delivered-To"] == "recipient@fci-cu.edu.eg.com"
    received = unfold(message["Received"])
    assert received.startswith(
        f"from client.fci-cu.edu.eg.com ([127.0.0.1]) by mx.test (postoffice) with SMTP id {queue_id}"
        " for <recipient@fci-cu.edu.eg.com>; "
    )
    assert message["Subject"] == "Computer Networks lab"
    # mailbox reads CRLF as LF; the file itself keeps the bytes as received, unstuffed.
    assert message.get_payload() == "Hello from the lab.\n.A line that starts with a dot.\n"
    assert (
        files[0].read_bytes().endswith(b"\r\n\r\nHello from the lab.\r\n.A line that starts with a dot.\r\n")
    )
    # Our trace fields come first, in the order a reader expects (newest on top).
    assert message.keys()[:3] == ["Return-Path", "Delivered-To", "Received"]


# --- smtplib with EHLO ----------------------------------------------------------------------


def test_ehlo_advertises_extensions_and_enhanced_codes(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        for keyword in ("pipelining", "size", "enhancedstatuscodes", "8bitmime", "smtputf8", "chunking"):
            assert client.has_extn(keyword), keyword
        assert client.esmtp_features["size"] == str(server.config.limits.message_size)
        expect(client.docmd("MAIL FROM:<a@example.org>"), replies.SENDER_OK, enhanced=True)
        expect(client.docmd("RCPT TO:<b@example.org>"), replies.RECIPIENT_OK, enhanced=True)
        expect(client.docmd("FROB"), replies.UNRECOGNIZED_COMMAND, enhanced=True)
        expect(client.docmd("RSET"), replies.RESET_OK, enhanced=True)


def test_sendmail_several_recipients_and_messages_on_one_connection(server: RunningServer) -> None:
    recipients = ["one@example.org", "Two@Example.ORG", "three@other.example"]
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("client.test")
        for number in range(3):
            message = f"Subject: message {number}\r\nX-Number: {number}\r\n\r\nbody {number}\r\n"
            refused = client.sendmail("sender@example.org", recipients, message)
            assert refused == {}
        expect(client.noop(), replies.OK, enhanced=True)

    for address in ("one@example.org", "two@example.org", "three@other.example"):
        messages = server.messages(address)
        assert sorted(m["X-Number"] for m in messages) == ["0", "1", "2"]
        for message in messages:
            assert message["Delivered-To"] == address
            # Several recipients: no "for <...>" in Received, so Bcc recipients stay private.
            assert " for <" not in unfold(message["Received"])


def test_eight_bit_body_with_body_8bitmime(server: RunningServer) -> None:
    body = "Grüße aus Kairo – القاهرة\r\n".encode()
    content = (
        b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("client.test")
        refused = client.sendmail(
            "a@example.org", ["utf8@example.org"], content + body, mail_options=["BODY=8BITMIME"]
        )
        assert refused == {}
    server.wait_idle()
    [path] = new_files(server.config.mail_dir, "utf8@example.org")
    assert path.read_bytes().endswith(content + body)
    [message] = server.messages("utf8@example.org")
    assert "ESMTP" in unfold(message["Received"])


def test_smtputf8_address_lands_in_unicode_mailbox(server: RunningServer) -> None:
    content = "From: jörg@bücher.example\r\nSubject: Ünïcode\r\n\r\nHallo.\r\n".encode()
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("client.test")
        refused = client.sendmail(
            "jörg@bücher.example", ["Zoë@Bücher.example"], content, mail_options=["SMTPUTF8"]
        )
        assert refused == {}
    server.wait_idle()
    box = server.config.mail_dir / "bücher.example" / "zoë"
    [path] = list((box / "new").iterdir())
    data = path.read_bytes()
    assert data.endswith(content)
    assert data.startswith(delivery_headers("jörg@bücher.example", "zoë@bücher.example"))
    # RFC 6531 §3.7.3: the WITH keyword says the message came in with SMTPUTF8.
    assert b"\r\n\tby mx.test (postoffice) with UTF8SMTP id " in data
    assert b"\r\n\tfor <Zo\xc3\xab@b\xc3\xbccher.example>; " in data
    [message] = maildir_messages(server.config.mail_dir, "zoë@bücher.example")
    assert message["Subject"] is not None


def test_non_ascii_address_without_smtputf8_is_refused(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("client.test")
        client.command_encoding = "utf-8"
        expect(
            client.docmd("MAIL FROM:<jörg@bücher.example>"), replies.NON_ASCII_NEEDS_SMTPUTF8, enhanced=True
        )


# --- aiosmtplib -----------------------------------------------------------------------------


async def test_aiosmtplib_send_message(server: RunningServer) -> None:
    message = EmailMessage()
    message["From"] = "Sender <sender@example.org>"
    message["To"] = "Reader <reader@example.org>"
    message["Subject"] = "sent with aiosmtplib"
    message["Message-ID"] = "<aiosmtplib-1@example.org>"
    message.set_content("Some text.\n.\nA lone dot above.\n")
    errors, response = await aiosmtplib.send(
        message, hostname=server.host, port=server.port, timeout=10, start_tls=False
    )
    assert errors == {}
    queue_id = queue_id_of(response)
    await asyncio.to_thread(server.wait_idle)
    [stored] = maildir_messages(server.config.mail_dir, "reader@example.org")
    assert stored["Message-ID"] == "<aiosmtplib-1@example.org>"
    assert f"id {queue_id}" in unfold(stored["Received"])
    parsed = email.message_from_bytes(stored.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body()
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "Some text.\n.\nA lone dot above.\n"


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


async def test_bdat_chunking_by_hand(server: RunningServer) -> None:
    # BDAT content is taken verbatim (RFC 3030 §2): no dot-stuffing, a lone dot is just a line.
    chunks = [
        b"Subject: chunked\r\nMessage-ID: <bdat@example.org>\r\n\r\n",
        b".leading dot kept\r\n.\r\nline after a lone dot\r\n",
        b"8-bit: \xc3\xa9t\xc3\xa9\r\n" + b"x" * 5000 + b"\r\n",
    ]
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        assert (await _read_reply(reader)).startswith(b"220 ")
        writer.write(b"EHLO client.test\r\n")
        assert b"250 CHUNKING\r\n" in await _read_reply(reader)
        writer.write(b"MAIL FROM:<chunker@example.org> BODY=8BITMIME\r\nRCPT TO:<bdat@example.org>\r\n")
        assert await _read_reply(reader) == replies.SENDER_OK.render(enhanced=True)
        assert await _read_reply(reader) == replies.RECIPIENT_OK.render(enhanced=True)
        total = 0
        for chunk in chunks:
            writer.write(b"BDAT %d\r\n" % len(chunk) + chunk)
            total += len(chunk)
            assert await _read_reply(reader) == replies.chunk_received(total).render(enhanced=True)
        writer.write(b"BDAT 0 LAST\r\n")
        final = await _read_reply(reader)
        queue_id = queue_id_of(final[4:])
        assert final == replies.queued(queue_id).render(enhanced=True)
        writer.write(b"QUIT\r\n")
        assert await _read_reply(reader) == replies.CLOSING.render(enhanced=True)
    finally:
        writer.close()
        await writer.wait_closed()

    await asyncio.to_thread(server.wait_idle)
    [path] = new_files(server.config.mail_dir, "bdat@example.org")
    data = path.read_bytes()
    content = b"".join(chunks)
    assert data.endswith(content)
    headers = data[: -len(content)]
    assert headers.startswith(delivery_headers("chunker@example.org", "bdat@example.org"))
    received = headers[len(delivery_headers("chunker@example.org", "bdat@example.org")) :]
    assert received.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert f"with ESMTP id {queue_id}".encode() in received


async def test_bdat_last_with_data_in_one_chunk(server: RunningServer) -> None:
    content = b"Subject: one chunk\r\n\r\nall at once\r\n"
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        await _read_reply(reader)
        # The whole transaction pipelined, with BDAT LAST carrying the whole message.
        writer.write(
            b"EHLO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<once@example.org>\r\n"
            + b"BDAT %d LAST\r\n" % len(content)
            + content
            + b"QUIT\r\n"
        )
        assert (await _read_reply(reader)).startswith(b"250-mx.test Hello client.test\r\n")
        assert await _read_reply(reader) == replies.SENDER_OK.render(enhanced=True)
        assert await _read_reply(reader) == replies.RECIPIENT_OK.render(enhanced=True)
        queued = await _read_reply(reader)
        assert queued == replies.queued(queue_id_of(queued[4:])).render(enhanced=True)
        assert await _read_reply(reader) == replies.CLOSING.render(enhanced=True)
    finally:
        writer.close()
        await writer.wait_closed()
    await asyncio.to_thread(server.wait_idle)
    [path] = new_files(server.config.mail_dir, "once@example.org")
    assert path.read_bytes().startswith(delivery_headers("", "once@example.org"))
    assert path.read_bytes().endswith(content)


# --- swaks ----------------------------------------------------------------------------------


def _swaks(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    swaks = require_tool("swaks")
    result = subprocess.run(
        [swaks, "--server", f"{server.host}:{server.port}", "--timeout", "10", "--helo", "swaks.test", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_swaks_plain(server: RunningServer) -> None:
    result = _swaks(server, "--to", "alice@localhost", "--from", "x@y", "--body", "hello from swaks")
    assert "<-  250 2.0.0 Ok: queued as " in result.stdout
    server.wait_idle()
    [message] = maildir_messages(server.config.mail_dir, "alice@localhost")
    assert message["Return-Path"] == "<x@y>"
    assert message["Delivered-To"] == "alice@localhost"
    assert message.get_payload().strip() == "hello from swaks"
    assert len(new_files(server.config.mail_dir, "alice@localhost")) == 1


def test_swaks_pipelining(server: RunningServer) -> None:
    result = _swaks(
        server,
        "--pipeline",
        "--to",
        "alice@localhost,bob@localhost",
        "--from",
        "x@y",
        "--body",
        "pipelined",
    )
    assert "queued as" in result.stdout
    server.wait_idle()
    for address in ("alice@localhost", "bob@localhost"):
        [message] = maildir_messages(server.config.mail_dir, address)
        assert message.get_payload().strip() == "pipelined"


def test_swaks_data_with_dot_lines(server: RunningServer, tmp_path: Path) -> None:
    data_file = tmp_path / "message.eml"
    lines = ["Subject: dots", "", "before", ".", "..two dots", ".one dot", "after", ""]
    data_file.write_text("\n".join(lines))
    _swaks(server, "--to", "dots@localhost", "--from", "x@y", "--data", str(data_file))
    server.wait_idle()
    [path] = new_files(server.config.mail_dir, "dots@localhost")
    assert b"\r\n\r\nbefore\r\n.\r\n..two dots\r\n.one dot\r\nafter\r\n" in path.read_bytes()


# --- pipelining over a raw socket -----------------------------------------------------------


def test_pipelining_two_transactions_in_one_write(
    server: RunningServer, smtp_client: Callable[..., RawSmtp]
) -> None:
    client = smtp_client(server.port)
    client.ehlo()
    client.send(
        b"MAIL FROM:<pipe@example.org>\r\n"
        b"RCPT TO:<first@example.org>\r\n"
        b"RCPT TO:<not an address>\r\n"
        b"DATA\r\n"
        b"Subject: one\r\n\r\nfirst message\r\n.\r\n"
        b"MAIL FROM:<pipe@example.org>\r\n"
        b"RCPT TO:<second@example.org>\r\n"
        b"RCPT TO:<first@example.org>\r\n"
        b"DATA\r\n"
        b"Subject: two\r\n\r\nsecond message\r\n..\r\n.\r\n"
        b"NOOP\r\n"
        b"QUIT\r\n"
    )
    got = [client.read_reply() for _ in range(12)]
    bad_rcpt = got[2]
    assert bad_rcpt.startswith(b"501 5.1.3 ")
    first_id = queue_id_of(got[4][4:])
    second_id = queue_id_of(got[9][4:])
    assert first_id != second_id
    assert got == [
        replies.SENDER_OK.render(enhanced=True),
        replies.RECIPIENT_OK.render(enhanced=True),
        bad_rcpt,
        replies.START_MAIL_INPUT.render(enhanced=True),
        replies.queued(first_id).render(enhanced=True),
        replies.SENDER_OK.render(enhanced=True),
        replies.RECIPIENT_OK.render(enhanced=True),
        replies.RECIPIENT_OK.render(enhanced=True),
        replies.START_MAIL_INPUT.render(enhanced=True),
        replies.queued(second_id).render(enhanced=True),
        replies.OK.render(enhanced=True),
        replies.CLOSING.render(enhanced=True),
    ]
    assert client.read_rest() == b""

    first = server.messages("first@example.org")
    assert sorted(m["Subject"] for m in first) == ["one", "two"]
    [second] = server.messages("second@example.org")
    assert second.get_payload() == "second message\n.\n"


# --- a real MTA: local domains, users, aliases ----------------------------------------------


def _transaction(client: RawSmtp, sender: str, recipients: list[str], body: bytes) -> list[bytes]:
    got = [client.command(f"MAIL FROM:<{sender}>")]
    got += [client.command(f"RCPT TO:{rcpt}") for rcpt in recipients]
    got.append(client.command("DATA"))
    if got[-1].startswith(b"354"):
        got.append(client.command(body + b"\r\n."))
    return got


def test_mta_mode_users_postmaster_aliases_and_no_relay(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(domains=("example.test",))
    accounts = Accounts(server.config.accounts_file)
    accounts.add_user("alice@example.test", "correct horse battery staple")
    accounts.add_alias("info@example.test", ["alice@example.test"])
    client = smtp_client(server.port)
    client.ehlo()

    ok = replies.RECIPIENT_OK.render(enhanced=True)
    assert client.command("MAIL FROM:<outside@example.org>") == replies.SENDER_OK.render(enhanced=True)
    assert client.command("RCPT TO:<Alice@Example.TEST>") == ok
    assert client.command("RCPT TO:<nobody@example.test>") == replies.USER_UNKNOWN.render(enhanced=True)
    assert client.command("RCPT TO:<victim@elsewhere.example>") == replies.RELAY_DENIED.render(enhanced=True)
    assert client.command("RCPT TO:<info@example.test>") == ok
    assert client.command("RCPT TO:<postmaster>") == ok
    assert client.command("RCPT TO:<Postmaster@example.test>") == ok
    assert client.command("DATA") == replies.START_MAIL_INPUT.render(enhanced=True)
    queued = client.command(b"Subject: to the MTA\r\n\r\nhi\r\n.")
    assert queued == replies.queued(queue_id_of(queued[4:])).render(enhanced=True)

    # Relay attempt alone: refused, and with no valid recipient there is no transaction to finish.
    assert client.command("MAIL FROM:<spammer@example.org>") == replies.SENDER_OK.render(enhanced=True)
    assert client.command("RCPT TO:<victim@elsewhere.example>") == replies.RELAY_DENIED.render(enhanced=True)
    assert client.command("DATA") == replies.NO_VALID_RECIPIENTS.render(enhanced=True)
    assert client.command("QUIT") == replies.CLOSING.render(enhanced=True)

    server.wait_idle()
    mail_dir = server.config.mail_dir
    # The user named directly and through the alias: one copy (RFC 5321 §3.3).
    [alice] = maildir_messages(mail_dir, "alice@example.test")
    assert alice["Delivered-To"] == "alice@example.test"
    # <postmaster> and postmaster@example.test are the same mailbox: one copy too.
    [postmaster] = maildir_messages(mail_dir, "postmaster@example.test")
    assert postmaster["Subject"] == "to the MTA"
    delivered = {path.relative_to(mail_dir).parts[:2] for path in mail_dir.rglob("new/*")}
    assert delivered == {("example.test", "alice"), ("example.test", "postmaster")}
    assert list((server.data_dir / "spool" / "queue").iterdir()) == []
    assert not (mail_dir / "elsewhere.example").exists()


def test_mta_mode_alias_to_other_user(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(domains=("example.test",))
    accounts = Accounts(server.config.accounts_file)
    accounts.add_user("bob@example.test", "another password")
    accounts.add_alias("sales@example.test", ["bob@example.test"])
    client = smtp_client(server.port)
    client.ehlo()
    got = _transaction(client, "buyer@example.org", ["<sales@example.test>"], b"Subject: quote\r\n\r\nprice?")
    assert got[-1].startswith(b"250 2.0.0 Ok: queued as ")
    [message] = server.messages("bob@example.test")
    assert message["Delivered-To"] == "bob@example.test"
    assert message["Subject"] == "quote"
    assert not (server.config.mail_dir / "example.test" / "sales").exists()


def test_mta_mode_relay_only_transaction_queues_nothing(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(domains=("example.test",))
    client = smtp_client(server.port)
    client.ehlo()
    got = _transaction(client, "a@example.org", ["<b@elsewhere.example>", "<c@elsewhere.example>"], b"x")
    assert got[1:] == [
        replies.RELAY_DENIED.render(enhanced=True),
        replies.RELAY_DENIED.render(enhanced=True),
        replies.NO_VALID_RECIPIENTS.render(enhanced=True),
    ]
    # BDAT cannot sneak a message past the refusal either.
    assert client.command(b"BDAT 3 LAST\r\nabc").startswith(b"503 5.5.1 ")
    server.wait_idle()
    spool = server.data_dir / "spool"
    assert [p for p in spool.rglob("*") if p.is_file()] == []
    assert [p for p in server.config.mail_dir.rglob("*") if p.is_file()] == []


# --- hostile mailbox names ------------------------------------------------------------------


HOSTILE_RECIPIENTS = [
    '"../../etc"@x',
    '".."@x',
    '"."@x',
    '".hidden"@x',
    '"a/b"@x',
    '"/abs/path"@x',
    '"..\\/..\\/root"@x',
    '"..%2F..%2Fetc"@x',
    '"con\\\\sole"@x',
    '"with space"@x',
    '"~root"@x',
    '"..@x"@x',
    '"@"@x',
    "..hidden@x",
    "..@x",
    ".@x",
]


def _all_files(root: Path) -> set[Path]:
    """Every file and directory under ``root``."""
    found: set[Path] = set()
    for directory, subdirectories, files in os.walk(root):
        # The spool keeps a delivered message's file in spool/free/ to reuse it: not a copy
        # the address chose a place for.
        if Path(directory).name == "free" and Path(directory).parent.name == "spool":
            continue
        found.update(Path(directory) / name for name in (*subdirectories, *files))
    return found


@pytest.mark.parametrize("recipient", HOSTILE_RECIPIENTS)
def test_hostile_mailbox_names_stay_inside_the_mail_root(
    recipient: str,
    server: RunningServer,
    smtp_client: Callable[..., RawSmtp],
    tmp_path: Path,
) -> None:
    before = _all_files(tmp_path)
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<attacker@example.org>") == replies.SENDER_OK.render(enhanced=True)
    rcpt = client.command(f"RCPT TO:<{recipient}>")
    if not rcpt.startswith(b"250"):
        # Refused by the grammar: nothing to store, and nothing may have been.
        assert rcpt.startswith(b"501 5.1.3 "), rcpt
        assert client.command("QUIT") == replies.CLOSING.render(enhanced=True)
        server.wait_idle()
        assert _all_files(tmp_path) == before
        return
    assert client.command("DATA") == replies.START_MAIL_INPUT.render(enhanced=True)
    assert client.command(b"Subject: escape\r\n\r\nmarker-8d1f\r\n.").startswith(b"250 2.0.0 Ok: queued as ")
    assert client.command("QUIT") == replies.CLOSING.render(enhanced=True)
    server.wait_idle()

    mail_root = server.config.mail_dir.resolve()
    added = _all_files(tmp_path) - before
    # Whatever was created anywhere under the test's directory is inside the mail root, and
    # the only new file is the message.
    for path in added:
        assert path.resolve().is_relative_to(mail_root), path
    added_files = [path for path in added if path.is_file()]
    assert len(added_files) == 1, sorted(map(str, added))
    [path] = added_files
    relative = path.resolve().relative_to(mail_root)
    domain, local, subdir, _ = relative.parts
    assert (domain, subdir) == ("x", "new")
    assert local not in (".", "..") and not local.startswith(".") and "/" not in local
    assert path.read_bytes().endswith(b"marker-8d1f\r\n")
    # And the mailbox directory really is the one for this address, by its own reader.
    local_part = recipient.rpartition("@")[0]
    if local_part.startswith('"'):
        local_part = re.sub(r"\\(.)", r"\1", local_part[1:-1])
    [message] = list(mailbox.Maildir(mail_root / domain / local, factory=None, create=False))
    assert message["Delivered-To"] == f"{local_part.lower()}@x"


@pytest.mark.parametrize("recipient", ["x@[x:/etc]", "x@[tag:../..]", "x@[a:b/../../..]"])
def test_recipient_that_cannot_name_a_mailbox_is_refused_at_rcpt(
    recipient: str, server: RunningServer, smtp_client: Callable[..., RawSmtp], tmp_path: Path
) -> None:
    # RFC 5321 §4.1.3 General-address-literal allows "/": the grammar must accept it, but no
    # mailbox directory can be named so. Refused before any 250, never accepted and then lost.
    before = _all_files(tmp_path)
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<attacker@example.org>") == replies.SENDER_OK.render(enhanced=True)
    assert client.command(f"RCPT TO:<{recipient}>") == replies.BAD_DESTINATION_MAILBOX.render(enhanced=True)
    assert client.command("DATA") == replies.NO_VALID_RECIPIENTS.render(enhanced=True)
    assert client.command("QUIT") == replies.CLOSING.render(enhanced=True)
    server.wait_idle()
    assert _all_files(tmp_path) == before


def test_address_literal_mailbox_is_delivered(
    server: RunningServer, smtp_client: Callable[..., RawSmtp]
) -> None:
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<a@example.org>") == replies.SENDER_OK.render(enhanced=True)
    assert client.command("RCPT TO:<Who@[127.0.0.1]>") == replies.RECIPIENT_OK.render(enhanced=True)
    assert client.command("RCPT TO:<who@[IPv6:::1]>") == replies.RECIPIENT_OK.render(enhanced=True)
    assert client.command("DATA") == replies.START_MAIL_INPUT.render(enhanced=True)
    assert client.command(b"Subject: literal\r\n\r\nhi\r\n.").startswith(b"250 2.0.0 Ok: queued as ")
    server.wait_idle()
    mail_dir = server.config.mail_dir
    assert [m["Subject"] for m in maildir_messages(mail_dir, "who@[127.0.0.1]")] == ["literal"]
    assert [m["Subject"] for m in maildir_messages(mail_dir, "who@[ipv6:::1]")] == ["literal"]


def test_damaged_accounts_file_is_a_temporary_failure(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(domains=("example.test",))
    accounts_file = server.config.accounts_file
    Accounts(accounts_file).add_user("carol@example.test", "a password")
    good = accounts_file.read_bytes()
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<a@example.org>") == replies.SENDER_OK.render(enhanced=True)
    accounts_file.write_text("{ half-written")
    # 451: the client keeps the message and tries again later (RFC 5321 §4.2.5).
    assert client.command("RCPT TO:<carol@example.test>") == replies.LOCAL_ERROR.render(enhanced=True)
    assert client.command("NOOP") == replies.OK.render(enhanced=True)
    accounts_file.write_bytes(good + b"\n")
    assert client.command("RCPT TO:<carol@example.test>") == replies.RECIPIENT_OK.render(enhanced=True)


def test_pipelined_transaction_then_half_close(
    server: RunningServer, smtp_client: Callable[..., RawSmtp]
) -> None:
    client = smtp_client(server.port)
    client.send(
        b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<half@example.org>\r\n"
        b"DATA\r\nSubject: then EOF\r\n\r\nbye\r\n.\r\nQUIT\r\n"
    )
    client.sock.shutdown(socket.SHUT_WR)
    rest = client.read_rest()
    assert rest.endswith(replies.CLOSING.render(enhanced=True))
    assert b"\r\n250 2.0.0 Ok: queued as " in rest
    [message] = server.messages("half@example.org")
    assert message["Subject"] == "then EOF"
