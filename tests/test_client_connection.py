"""The asyncio SmtpClient against real servers on loopback: ours, aiosmtpd, and scripted peers.

Our server (``conftest.server``) and aiosmtpd (``aiosmtpd_peer``) are independent
implementations; the scripted peers say exactly the odd things a test needs (no EHLO, a reply
injected after STARTTLS, a hang-up in the middle).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from aiosmtpd_peer import PASSWORD, USER, Handler, Peer, Tls, auth_options, peer, peer_factory, tls  # noqa: F401
from conftest import RunningServer
from postoffice.client.connection import SmtpClient, TlsMode, TranscriptLine
from postoffice.config import Limits
from postoffice.errors import (
    SmtpAuthError,
    SmtpConnectError,
    SmtpDataRefused,
    SmtpMessageTooBigError,
    SmtpProtocolError,
    SmtpRecipientsRefused,
    SmtpReplyError,
    SmtpSenderRefused,
    SmtpTimeoutError,
    SmtpTlsError,
    SmtpUnsupportedError,
)
from postoffice.smtp import replies

pytestmark = pytest.mark.timeout(20)

MESSAGE = b"From: a@client.test\r\nSubject: test\r\n\r\nHello.\r\n.leading dot\r\n"


class Transcript(list[TranscriptLine]):
    def __call__(self, line: TranscriptLine) -> None:
        self.append(line)

    def text(self) -> str:
        return "\n".join(str(line) for line in self)

    def commands(self) -> list[str]:
        return [line.text for line in self if line.direction == "C" and not line.content]


def client(port: int, **options: Any) -> SmtpClient:
    options.setdefault("ehlo_name", "client.test")
    options.setdefault("timeout", 10.0)
    return SmtpClient("127.0.0.1", port, **options)


# --- our server -------------------------------------------------------------------------------


async def test_message_reaches_our_server_pipelined(server: RunningServer) -> None:
    transcript = Transcript()
    async with client(server.port, transcript=transcript) as smtp:
        result = await smtp.send("a@client.test", ["bob@example.test"], MESSAGE)
    assert result.reply.code == 250 and result.reply.enhanced == "2.0.0"
    assert list(result.accepted) == ["bob@example.test"] and result.refused == {}
    # RFC 2920: MAIL, RCPT and DATA leave in one group, before any of their replies.
    directions = [(line.direction, line.text.split(" ")[0]) for line in transcript if not line.content]
    start = directions.index(("C", "MAIL"))
    assert directions[start : start + 3] == [("C", "MAIL"), ("C", "RCPT"), ("C", "DATA")]
    (delivered,) = await asyncio.to_thread(server.messages, "bob@example.test")
    assert delivered.get_payload() == "Hello.\n.leading dot\n"


async def test_bare_lf_message_is_sent_with_crlf(server: RunningServer) -> None:
    # Our server refuses bare LF in DATA (554 5.6.0); the client must have converted it.
    async with client(server.port) as smtp:
        result = await smtp.send(
            "a@client.test", ["bob@example.test"], b"Subject: lf\n\nline one\nline two\n"
        )
    assert result.reply.positive
    (delivered,) = await asyncio.to_thread(server.messages, "bob@example.test")
    assert delivered["Subject"] == "lf" and delivered.get_payload() == "line one\nline two\n"


async def test_per_recipient_results(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(domains=("example.test",))
    async with client(server.port) as smtp:
        result = await smtp.send("a@client.test", ["postmaster@example.test", "nobody@example.test"], MESSAGE)
    assert list(result.accepted) == ["postmaster@example.test"]
    assert result.refused == {"nobody@example.test": replies.USER_UNKNOWN}


async def test_every_recipient_refused_then_the_connection_carries_another(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory(domains=("example.test",))
    transcript = Transcript()
    async with client(server.port, transcript=transcript) as smtp:
        with pytest.raises(SmtpRecipientsRefused) as refused:
            await smtp.send("a@client.test", ["nobody@example.test", "ghost@example.test"], MESSAGE)
        assert refused.value.results == {
            "nobody@example.test": replies.USER_UNKNOWN,
            "ghost@example.test": replies.USER_UNKNOWN,
        }
        assert refused.value.reply == replies.USER_UNKNOWN and not refused.value.temporary
        assert "RSET" in transcript.commands()
        result = await smtp.send("a@client.test", ["postmaster@example.test"], MESSAGE)
    assert result.reply.positive


async def test_message_larger_than_size_is_not_sent(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(limits=Limits(message_size=64 * 1024))
    transcript = Transcript()
    async with client(server.port, transcript=transcript) as smtp:
        with pytest.raises(SmtpMessageTooBigError) as error:
            await smtp.send("a@client.test", ["bob@example.test"], b"x" * 70_000)
    assert error.value.limit == 64 * 1024 and not error.value.temporary
    assert not any(command.startswith("MAIL") for command in transcript.commands())


async def test_non_ascii_address_uses_smtputf8(server: RunningServer) -> None:
    transcript = Transcript()
    async with client(server.port, transcript=transcript) as smtp:
        await smtp.send("a@client.test", ["jörg@bücher.test"], "Subject: Grüße\r\n\r\nhé\r\n".encode())
    (mail,) = [command for command in transcript.commands() if command.startswith("MAIL")]
    assert "SMTPUTF8" in mail.split() and "BODY=8BITMIME" in mail.split()
    assert len(await asyncio.to_thread(server.messages, "jörg@bücher.test")) == 1


async def test_streamed_chunks(server: RunningServer) -> None:
    chunks = [b"Subject: chunks\r\n\r\n", b"first half of a li", b"ne\r\n.dot after a chunk\r", b"\n"]
    async with client(server.port) as smtp:
        await smtp.send("a@client.test", ["bob@example.test"], iter(chunks), size=sum(map(len, chunks)))
    (delivered,) = await asyncio.to_thread(server.messages, "bob@example.test")
    assert delivered.get_payload() == "first half of a line\n.dot after a chunk\n"


# --- aiosmtpd ---------------------------------------------------------------------------------


async def test_message_reaches_aiosmtpd_one_command_at_a_time(peer: Peer) -> None:  # noqa: F811
    transcript = Transcript()
    body = "Subject: 8bit\r\n\r\nGrüße\r\n".encode()
    async with client(peer.port, transcript=transcript) as smtp:
        result = await smtp.send("a@client.test", ["b@peer.test", "c@peer.test"], body)
    assert list(result.accepted) == ["b@peer.test", "c@peer.test"]
    (received,) = peer.handler.messages
    assert received.mail_from == "a@client.test" and received.rcpt_tos == ["b@peer.test", "c@peer.test"]
    assert received.content == body
    assert "BODY=8BITMIME" in received.mail_options
    # aiosmtpd offers no PIPELINING: every command waits for its reply.
    lines = [str(line) for line in transcript if not line.content]
    mail = next(index for index, line in enumerate(lines) if line.startswith("C: MAIL"))
    assert lines[mail + 1].startswith("S: 250")


async def test_starttls_with_a_verified_certificate(peer_factory: Any, tls: Tls) -> None:  # noqa: F811
    smtpd = peer_factory(tls_context=tls.server_context, require_starttls=True)
    transcript = Transcript()
    smtp = client(smtpd.port, tls=TlsMode.STARTTLS, ssl_context=tls.client_context(), transcript=transcript)
    async with smtp:
        assert smtp.tls_active
        await smtp.send("a@client.test", ["b@smtpd.test"], MESSAGE)
    assert len(smtpd.handler.messages) == 1
    # RFC 3207 §4.2: EHLO again after the handshake.
    assert transcript.commands()[:3] == ["EHLO client.test", "STARTTLS", "EHLO client.test"]


async def test_starttls_required_but_not_offered(peer: Peer, tls: Tls) -> None:  # noqa: F811
    with pytest.raises(SmtpTlsError) as error:
        await client(peer.port, tls=TlsMode.STARTTLS, ssl_context=tls.client_context()).connect()
    assert "does not offer STARTTLS" in str(error.value)
    assert peer.handler.messages == []


async def test_opportunistic_starttls_goes_on_in_plaintext(peer: Peer) -> None:  # noqa: F811
    async with client(peer.port, tls=TlsMode.STARTTLS_IF_OFFERED) as smtp:
        assert not smtp.tls_active
        await smtp.send("a@client.test", ["b@peer.test"], MESSAGE)
    assert len(peer.handler.messages) == 1


async def test_untrusted_certificate_is_refused(peer_factory: Any, tls: Tls) -> None:  # noqa: F811
    smtpd = peer_factory(tls_context=tls.server_context)
    with pytest.raises(SmtpTlsError) as error:
        await client(smtpd.port, tls=TlsMode.STARTTLS, ssl_context=ssl.create_default_context()).connect()
    assert "certificate" in str(error.value)


async def test_implicit_tls(peer_factory: Any, tls: Tls) -> None:  # noqa: F811
    smtpd = peer_factory(ssl_context=tls.server_context)
    async with client(smtpd.port, tls=TlsMode.IMPLICIT, ssl_context=tls.client_context()) as smtp:
        assert smtp.tls_active
        await smtp.send("a@client.test", ["b@smtpd.test"], MESSAGE)
    assert len(smtpd.handler.messages) == 1


def _secrets() -> list[str]:
    return [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
    ]


async def test_auth_plain_over_starttls_and_the_secret_stays_out_of_the_transcript(
    peer_factory: Any,  # noqa: F811
    tls: Tls,  # noqa: F811
) -> None:
    smtpd = peer_factory(**auth_options(tls))
    transcript = Transcript()
    smtp = client(
        smtpd.port,
        tls=TlsMode.STARTTLS,
        ssl_context=tls.client_context(),
        credentials=(USER, PASSWORD),
        transcript=transcript,
    )
    async with smtp:
        assert smtp.authenticated
        await smtp.send("a@client.test", ["b@smtpd.test"], MESSAGE)
    assert "AUTH PLAIN ***" in transcript.commands()
    assert not any(secret in transcript.text() for secret in _secrets())


async def test_auth_login_redacts_both_answers(peer_factory: Any) -> None:  # noqa: F811
    smtpd = peer_factory(auth_exclude_mechanism=["PLAIN"], **auth_options(None))
    transcript = Transcript()
    async with client(smtpd.port, credentials=(USER, PASSWORD), transcript=transcript) as smtp:
        assert smtp.authenticated
    commands = transcript.commands()
    start = commands.index("AUTH LOGIN")
    assert commands[start + 1 : start + 3] == ["***", "***"]
    assert not any(secret in transcript.text() for secret in _secrets())
    assert base64.b64encode(USER.encode()).decode() not in transcript.text()


async def test_wrong_password(peer_factory: Any) -> None:  # noqa: F811
    smtpd = peer_factory(**auth_options(None))
    with pytest.raises(SmtpAuthError) as error:
        await client(smtpd.port, credentials=(USER, "wrong")).connect()
    assert error.value.reply is not None and error.value.reply.code == 535
    assert not error.value.temporary


async def test_no_common_auth_mechanism(peer_factory: Any) -> None:  # noqa: F811
    smtpd = peer_factory(auth_exclude_mechanism=["PLAIN", "LOGIN"], **auth_options(None))
    with pytest.raises(SmtpAuthError) as error:
        await client(smtpd.port, credentials=(USER, PASSWORD)).connect()
    assert error.value.reply is None and "PLAIN or LOGIN" in str(error.value)


@pytest.mark.parametrize(
    ("handler", "error", "temporary"),
    [
        (Handler(mail_reply="550 5.7.1 Sender rejected"), SmtpSenderRefused, False),
        (Handler(rcpt_replies={"b@smtpd.test": "450 4.2.0 Mailbox busy"}), SmtpRecipientsRefused, True),
        (Handler(data_reply="451 4.3.0 Try again later"), SmtpDataRefused, True),
        (Handler(data_reply="554 5.6.0 Content rejected"), SmtpDataRefused, False),
    ],
)
async def test_refusals_carry_the_reply(
    peer_factory: Any,  # noqa: F811
    handler: Handler,
    error: type[SmtpReplyError],
    temporary: bool,
) -> None:
    smtpd = peer_factory(handler)
    async with client(smtpd.port) as smtp:
        with pytest.raises(error) as raised:
            await smtp.send("a@client.test", ["b@smtpd.test"], MESSAGE)
    assert raised.value.temporary is temporary
    assert str(raised.value.reply.code) in str(raised.value)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused() -> None:
    with pytest.raises(SmtpConnectError) as error:
        await client(closed_port()).connect()
    assert error.value.temporary and "cannot connect" in str(error.value)


# --- scripted peers ---------------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Cancelled too when the test ends first: a script only says what the peer would say.
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            await script(reader, writer)
        writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def expect(reader: asyncio.StreamReader, prefix: bytes) -> bytes:
    line = await reader.readuntil(b"\r\n")
    assert line.upper().startswith(prefix.upper()), line
    return line


async def test_ehlo_refused_falls_back_to_helo() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old.test SMTP\r\n")
        await expect(reader, b"EHLO")
        writer.write(b"502 Command not implemented\r\n")
        await expect(reader, b"HELO client.test")
        writer.write(b"250 old.test\r\n")
        seen.append(await expect(reader, b"MAIL"))
        writer.write(b"250 ok\r\n")
        await expect(reader, b"RCPT")
        writer.write(b"250 ok\r\n")
        await expect(reader, b"DATA")
        writer.write(b"354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 queued\r\n")
        await expect(reader, b"QUIT")
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port, client(port) as smtp:
        assert not smtp.esmtp
        await smtp.send("a@client.test", ["b@old.test"], "Subject: 8-bit\r\n\r\né\r\n".encode())
    assert seen == [b"MAIL FROM:<a@client.test>\r\n"]  # no ESMTP parameters after HELO


async def test_reply_injected_before_tls_is_refused(tls: Tls) -> None:  # noqa: F811
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mitm.test ESMTP\r\n")
        await expect(reader, b"EHLO")
        writer.write(b"250-mitm.test\r\n250 STARTTLS\r\n")
        await expect(reader, b"STARTTLS")
        # The plaintext "250" would be read as the answer to the first command after TLS.
        writer.write(b"220 go ahead\r\n250 2.1.0 injected\r\n")
        await reader.read()

    async with scripted(script) as port:
        with pytest.raises(SmtpProtocolError) as error:
            await client(port, tls=TlsMode.STARTTLS, ssl_context=tls.client_context()).connect()
    assert "after its STARTTLS reply" in str(error.value)


@pytest.mark.parametrize(
    ("greeting", "error"),
    [
        (b"hello there\r\n", SmtpProtocolError),
        (b"554 5.7.1 No SMTP service here\r\n", SmtpReplyError),
        (b"421 4.3.2 Busy\r\n", SmtpReplyError),
        (b"250-half a reply", SmtpProtocolError),
    ],
)
async def test_bad_greetings(greeting: bytes, error: type[Exception]) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)

    async with scripted(script) as port:
        with pytest.raises(error) as raised:
            await client(port).connect()
    if isinstance(raised.value, SmtpReplyError):
        assert raised.value.command == "greeting"
        assert raised.value.temporary is greeting.startswith(b"4")


async def test_hang_up_in_the_middle() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 flaky.test\r\n")
        await expect(reader, b"EHLO")
        writer.write(b"250 flaky.test\r\n")
        await expect(reader, b"MAIL")

    async with scripted(script) as port, client(port) as smtp:
        with pytest.raises(SmtpConnectError) as error:
            await smtp.send("a@client.test", ["b@flaky.test"], MESSAGE)
    assert error.value.temporary and "closed the connection" in str(error.value)


async def test_421_in_a_pipelined_group() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 busy.test\r\n")
        await expect(reader, b"EHLO")
        writer.write(b"250-busy.test\r\n250 PIPELINING\r\n")
        await expect(reader, b"MAIL")
        writer.write(b"421 4.7.0 Too busy, closing\r\n")  # §3.8: then the server hangs up

    async with scripted(script) as port, client(port) as smtp:
        with pytest.raises(SmtpSenderRefused) as error:
            await smtp.send("a@client.test", ["b@busy.test"], MESSAGE)
    assert error.value.reply.code == 421 and error.value.temporary


async def test_354_with_no_accepted_recipient_is_ended_at_once() -> None:
    got: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 lax.test\r\n")
        await expect(reader, b"EHLO")
        writer.write(b"250-lax.test\r\n250 PIPELINING\r\n")
        await expect(reader, b"MAIL")
        await expect(reader, b"RCPT")
        await expect(reader, b"DATA")
        writer.write(b"250 ok\r\n550 no such user\r\n354 go ahead anyway\r\n")
        got.append(await reader.readuntil(b"\r\n"))
        writer.write(b"554 no valid recipients\r\n")
        await expect(reader, b"RSET")
        writer.write(b"250 ok\r\n")
        await expect(reader, b"QUIT")

    async with scripted(script) as port, client(port) as smtp:
        with pytest.raises(SmtpRecipientsRefused):
            await smtp.send("a@client.test", ["b@lax.test"], MESSAGE)
    assert got == [b".\r\n"]  # RFC 2920 §3.1: an empty message, not ours


async def test_smtputf8_needed_but_not_offered() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ascii.test\r\n")
        await expect(reader, b"EHLO")
        writer.write(b"250-ascii.test\r\n250 8BITMIME\r\n")
        await expect(reader, b"QUIT")  # nothing was sent in between
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port, client(port) as smtp:
        with pytest.raises(SmtpUnsupportedError):
            await smtp.send("a@client.test", ["jörg@ascii.test"], MESSAGE)


async def test_utf8_headers_go_without_smtputf8_when_not_offered(peer_factory: Any) -> None:  # noqa: F811
    smtpd = peer_factory(enable_SMTPUTF8=False)
    message = "Subject: Grüße\r\n\r\nhé\r\n".encode()
    async with client(smtpd.port) as smtp:
        await smtp.send("a@client.test", ["b@peer.test"], message)
    (received,) = smtpd.handler.messages
    assert received.content == message and "SMTPUTF8" not in received.mail_options


async def test_silent_server_times_out() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with scripted(script) as port:
        with pytest.raises(SmtpTimeoutError) as error:
            await client(port, timeout=0.3).connect()
    assert "no reply" in str(error.value) and error.value.temporary
    assert isinstance(error.value, SmtpConnectError)


def test_message_parses_as_sent() -> None:
    # The fixture message itself: a sanity check that the tests above compare real content.
    assert email.message_from_bytes(MESSAGE)["Subject"] == "test"
