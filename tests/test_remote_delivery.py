"""The remote agent against real, independent peers on loopback: aiosmtpd MTAs found through a
dnslib DNS server. Each test queues a message in a real spool and checks both sides: the
per-recipient results, and what the peer received."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from mail_peers import (
    Dns,
    Peer,
    RecordingPeer,
    RecordingScript,
    dns_server,
    peers,
    recording_peers,
    start_peer,
    until,
)
from postoffice.delivery.agent import Delivered, DeliveryResult, PermFail, TempFail
from postoffice.delivery.content import BLOCK_SIZE
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.smtp import replies
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool

MX1, MX2 = "127.0.0.2", "127.0.0.3"
T = TypeVar("T")
BODY = b"Subject: outbound\r\nFrom: a@sender.test\r\n\r\nhello\r\n.starts with a dot\r\n..two\r\n"


@pytest.fixture
def dns() -> Iterator[Dns]:
    with dns_server() as server:
        server.zone.mx("remote.test", (10, "mx1.remote.test"), (20, "mx2.remote.test"))
        server.zone.a("mx1.remote.test", MX1)
        server.zone.a("mx2.remote.test", MX2)
        yield server


@pytest.fixture
def spool(tmp_path: Path) -> FileSpool:
    return FileSpool(tmp_path / "spool")


@pytest.fixture(params=[True, False], ids=["pipelining", "one-at-a-time"])
def mx(request: pytest.FixtureRequest) -> Iterator[list[Peer]]:
    """Both MX hosts; every test runs once with PIPELINING offered (RFC 2920) and once without."""
    with peers(MX1, MX2) as started:
        for peer in started:
            peer.behaviour.pipelining = request.param
        yield started


def make_agent(spool: FileSpool, dns: Dns, port: int, **settings: object) -> RemoteAgent:
    options: dict[str, object] = {"connect_timeout": 5.0, "command_timeout": 10.0, **settings}
    return RemoteAgent(
        RemoteSettings(hostname="mx.sender.test", mx_port=port, **options),  # type: ignore[arg-type]
        MxResolver(dns.address, timeout=2.0, rng=random.Random(0)),
        spool,
    )


@pytest.fixture
async def agent(spool: FileSpool, dns: Dns, mx: list[Peer]) -> AsyncIterator[RemoteAgent]:
    remote = make_agent(spool, dns, mx[0].port)
    yield remote
    await remote.close()


def rcpt(address: str, **options: object) -> Recipient:
    return Recipient(address, address, Route.REMOTE, **options)  # type: ignore[arg-type]


async def queue(
    spool: FileSpool, *recipients: Recipient, content: bytes = BODY, **envelope: object
) -> QueuedMessage:
    writer = spool.put(
        Envelope("a@sender.test", recipients, received_at=time.time(), **envelope)  # type: ignore[arg-type]
    )
    writer.write(content)
    return await writer.commit()


def summary(results: list[DeliveryResult]) -> list[tuple[str, str, int | None]]:
    out: list[tuple[str, str, int | None]] = []
    for result in results:
        code = None if isinstance(result, Delivered) else result.reply.code
        out.append((type(result).__name__, result.recipient.address, code))
    return out


async def test_delivers_to_the_preferred_mx_with_content_intact(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    message = await queue(spool, rcpt("bob@remote.test"), rcpt("carol@remote.test"))
    results = await agent.deliver(message, message.envelope.recipients)

    assert summary(results) == [
        ("Delivered", "bob@remote.test", None),
        ("Delivered", "carol@remote.test", None),
    ]
    assert all(isinstance(r, Delivered) and r.remote_mta == "mx1.remote.test" for r in results)
    [received] = mx[0].received
    assert received.mail_from == "a@sender.test"
    assert received.rcpt_tos == ["bob@remote.test", "carol@remote.test"]
    # The peer un-stuffs what we stuffed (RFC 5321 §4.5.2): the bytes arrive as spooled.
    assert received.content == BODY
    assert f"SIZE={message.size}" in received.mail_options
    assert mx[1].received == []


async def test_a_small_message_is_read_in_one_call_and_a_large_one_in_blocks(
    spool: FileSpool, dns: Dns, mx: list[Peer]
) -> None:
    reads: list[str] = []

    async def blocking(call: Callable[[], T]) -> T:
        reads.append(getattr(call, "__name__", ""))
        return await asyncio.to_thread(call)

    agent = RemoteAgent(
        RemoteSettings(hostname="mx.sender.test", mx_port=mx[0].port, connect_timeout=5.0),
        MxResolver(dns.address, timeout=2.0, rng=random.Random(0)),
        spool,
        blocking=blocking,
    )
    small = await queue(spool, rcpt("bob@remote.test"))
    # Exactly two blocks (of 64 KiB), the second starting with a line that starts with a dot.
    lines = (b"." + b"a" * 97 + b"\r\n") * 1310
    large_body = b"Subject: big\r\n\r\n" + b"f" * 18 + b"\r\n" + lines + b"." + b"b" * 33 + b"\r\n"
    assert len(large_body) == 2 * BLOCK_SIZE and large_body[BLOCK_SIZE : BLOCK_SIZE + 1] == b"."
    large = await queue(spool, rcpt("carol@remote.test"), content=large_body)
    try:
        assert isinstance((await agent.deliver(small, small.envelope.recipients))[0], Delivered)
        assert reads == ["_first_block"]  # open, read and close in one hand-off
        reads.clear()
        assert isinstance((await agent.deliver(large, large.envelope.recipients))[0], Delivered)
        assert reads == ["_first_block", "_next_block", "_next_block"]
    finally:
        await agent.close()
    assert [message.content for message in mx[0].received] == [BODY, large_body]


async def test_content_without_a_final_line_ending_gets_one(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    message = await queue(spool, rcpt("bob@remote.test"), content=b"Subject: x\r\n\r\n.no newline")
    assert summary(await agent.deliver(message, message.envelope.recipients))[0][0] == "Delivered"
    assert mx[0].received[0].content == b"Subject: x\r\n\r\n.no newline\r\n"


async def test_each_recipient_gets_its_own_rcpt_result(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    mx[0].behaviour.rcpt = lambda address: {
        "gone@remote.test": "550 5.1.1 No such user here",
        "full@remote.test": "452 4.2.2 Mailbox full",
    }.get(address)
    recipients = [rcpt("gone@remote.test"), rcpt("bob@remote.test"), rcpt("full@remote.test")]
    message = await queue(spool, *recipients)

    results = await agent.deliver(message, recipients)

    assert summary(results) == [
        ("PermFail", "gone@remote.test", 550),
        ("Delivered", "bob@remote.test", None),
        ("TempFail", "full@remote.test", 452),
    ]
    failed = results[0]
    assert isinstance(failed, PermFail)
    assert (failed.reply.enhanced, failed.reply.text, failed.remote_mta) == (
        "5.1.1",
        "No such user here",
        "mx1.remote.test",
    )
    assert mx[0].recipients() == ["bob@remote.test"]


async def test_the_reply_to_the_data_applies_to_every_accepted_recipient(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    recipients = [rcpt("bob@remote.test"), rcpt("carol@remote.test")]
    message = await queue(spool, *recipients)
    mx[0].behaviour.data_reply = "554 5.7.1 Message refused as spam"
    assert [r[0:3:2] for r in summary(await agent.deliver(message, recipients))] == [("PermFail", 554)] * 2
    mx[0].behaviour.data_reply = "451 4.3.0 Try later"
    assert [r[0:3:2] for r in summary(await agent.deliver(message, recipients))] == [("TempFail", 451)] * 2
    assert mx[0].received == []


async def test_a_4xx_to_mail_moves_on_to_the_next_mx(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    mx[0].behaviour.mail_reply = "451 4.3.2 System not accepting network messages"
    message = await queue(spool, rcpt("bob@remote.test"))
    results = await agent.deliver(message, message.envelope.recipients)
    assert isinstance(results[0], Delivered) and results[0].remote_mta == "mx2.remote.test"
    assert mx[0].received == [] and mx[1].recipients() == ["bob@remote.test"]


async def test_a_5xx_to_mail_fails_every_recipient(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    mx[0].behaviour.mail_reply = "553 5.7.1 Sender rejected"
    message = await queue(spool, rcpt("bob@remote.test"), rcpt("carol@remote.test"))
    results = await agent.deliver(message, message.envelope.recipients)
    assert [r[0:3:2] for r in summary(results)] == [("PermFail", 553)] * 2
    assert mx[1].received == []  # a permanent answer is not a reason to ask another MX


async def test_an_mx_that_refuses_connections_is_skipped(spool: FileSpool, dns: Dns, mx: list[Peer]) -> None:
    mx[0].stop()  # nothing listens on MX1 any more
    agent = make_agent(spool, dns, mx[0].port)
    message = await queue(spool, rcpt("bob@remote.test"))
    results = await agent.deliver(message, message.envelope.recipients)
    await agent.close()
    assert isinstance(results[0], Delivered) and mx[1].recipients() == ["bob@remote.test"]


async def test_when_no_mx_answers_the_failure_is_temporary(
    spool: FileSpool, dns: Dns, mx: list[Peer]
) -> None:
    for peer in mx:
        peer.stop()
    agent = make_agent(spool, dns, mx[0].port)
    message = await queue(spool, rcpt("bob@remote.test"))
    [result] = await agent.deliver(message, message.envelope.recipients)
    await agent.close()
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.4.1"
    assert "mx2.remote.test[127.0.0.3]" in result.reply.text  # the last one tried


async def test_a_connection_dropped_during_data_is_a_temporary_failure_for_the_accepted(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    mx[0].behaviour.drop_in_data = True
    mx[0].behaviour.rcpt = lambda address: "550 5.1.1 Unknown" if address.startswith("gone") else None
    recipients = [rcpt("bob@remote.test"), rcpt("gone@remote.test")]
    message = await queue(spool, *recipients, content=b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 2000)

    results = await agent.deliver(message, recipients)

    assert summary(results) == [("TempFail", "bob@remote.test", 451), ("PermFail", "gone@remote.test", 550)]
    assert results[0].reply.enhanced == "4.4.2" and "Lost connection" in results[0].reply.text
    assert mx[0].received == [] and agent.idle_connections() == 0

    mx[0].behaviour.drop_in_data = False  # the retry goes through, once
    results = await agent.deliver(message, recipients[:1])
    assert summary(results) == [("Delivered", "bob@remote.test", None)]
    assert mx[0].recipients() == ["bob@remote.test"]


async def test_null_mx_fails_at_once_without_connecting(
    agent: RemoteAgent, spool: FileSpool, dns: Dns
) -> None:
    dns.zone.mx("nomail.test", (0, "."))
    message = await queue(spool, rcpt("x@nomail.test"))
    [result] = await agent.deliver(message, message.envelope.recipients)
    assert isinstance(result, PermFail) and (result.reply.code, result.reply.enhanced) == (556, "5.1.10")
    assert agent.connections_opened == 0


async def test_an_mx_naming_this_server_is_a_loop(spool: FileSpool, dns: Dns, mx: list[Peer]) -> None:
    dns.zone.mx("loop.test", (10, "mx.sender.test"))
    dns.zone.a("mx.sender.test", MX1)
    agent = make_agent(spool, dns, mx[0].port)
    message = await queue(spool, rcpt("x@loop.test"))
    [result] = await agent.deliver(message, message.envelope.recipients)
    await agent.close()
    assert isinstance(result, PermFail) and result.reply.enhanced == "5.4.6"


async def test_helo_is_used_when_ehlo_is_refused(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    mx[0].behaviour.refuse_ehlo = True
    message = await queue(spool, rcpt("bob@remote.test"))
    [result] = await agent.deliver(message, message.envelope.recipients)
    assert isinstance(result, Delivered)
    # No ESMTP, so no parameters (RFC 5321 §4.1.1.11): no SIZE on MAIL.
    assert mx[0].received[0].mail_options == []


async def test_smtputf8_mail_to_a_server_without_smtputf8_fails_clearly(spool: FileSpool, dns: Dns) -> None:
    with peers(MX1, enable_SMTPUTF8=False) as [plain]:
        agent = make_agent(spool, dns, plain.port)
        message = await queue(spool, rcpt("bob@remote.test"), smtputf8=True, body="8BITMIME")
        [result] = await agent.deliver(message, message.envelope.recipients)
        await agent.close()
    assert isinstance(result, PermFail)
    assert (result.reply.code, result.reply.enhanced) == (553, "5.6.7")
    assert "SMTPUTF8" in result.reply.text and plain.received == []


async def test_smtputf8_and_8bitmime_are_used_when_offered(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    content = "Subject: héllo\r\n\r\nnaïve\r\n".encode()
    message = await queue(spool, rcpt("bob@remote.test"), content=content, smtputf8=True, body="8BITMIME")
    [result] = await agent.deliver(message, message.envelope.recipients)
    assert isinstance(result, Delivered)
    [received] = mx[0].received
    assert "SMTPUTF8" in received.mail_options and "BODY=8BITMIME" in received.mail_options
    assert received.content == content


async def test_a_message_larger_than_the_peer_accepts_is_not_sent(spool: FileSpool, dns: Dns) -> None:
    with peers(MX1, data_size_limit=100_000) as [small]:
        agent = make_agent(spool, dns, small.port)
        message = await queue(
            spool, rcpt("bob@remote.test"), content=b"Subject: big\r\n\r\n" + b"y" * 200_000
        )
        [result] = await agent.deliver(message, message.envelope.recipients)
        await agent.close()
    assert isinstance(result, PermFail) and (result.reply.code, result.reply.enhanced) == (552, "5.3.4")
    assert small.received == []


async def test_one_connection_carries_several_messages(
    agent: RemoteAgent, spool: FileSpool, mx: list[Peer]
) -> None:
    for n in range(5):
        message = await queue(spool, rcpt(f"u{n}@remote.test"))
        [result] = await agent.deliver(message, message.envelope.recipients)
        assert isinstance(result, Delivered)
    assert len(mx[0].received) == 5
    assert mx[0].handler.hellos == 1 and agent.connections_opened == 1
    assert agent.idle_connections() == 1


async def test_a_cached_connection_the_peer_closed_is_replaced(
    spool: FileSpool, dns: Dns, mx: list[Peer]
) -> None:
    agent = make_agent(spool, dns, mx[0].port, idle_timeout=30.0)
    message = await queue(spool, rcpt("bob@remote.test"))
    assert isinstance((await agent.deliver(message, message.envelope.recipients))[0], Delivered)
    assert agent.idle_connections() == 1
    # The peer restarts: the cached connection is dead, and MAIL finds out (a connection used
    # a moment ago is not probed with RSET first); a new one carries the message.
    mx[0].stop()
    restarted = start_peer(MX1, mx[0].port)
    try:
        [result] = await agent.deliver(message, message.envelope.recipients)
    finally:
        restarted.stop()
        await agent.close()
    assert isinstance(result, Delivered) and restarted.recipients() == ["bob@remote.test"]
    assert agent.connections_opened == 2


async def test_a_connection_used_again_at_once_goes_straight_to_mail(spool: FileSpool, dns: Dns) -> None:
    async with recording_peers((MX1, RecordingScript())) as [peer]:
        agent = make_agent(spool, dns, peer.port)
        try:
            for name in ("bob", "carol"):
                message = await queue(spool, rcpt(f"{name}@remote.test"))
                [result] = await agent.deliver(message, message.envelope.recipients)
                assert isinstance(result, Delivered)
        finally:
            await agent.close()
    assert peer.verbs()[:3] == [["EHLO"], ["MAIL", "RCPT", "DATA"], ["MAIL", "RCPT", "DATA"]]


async def test_a_connection_idle_for_a_while_is_probed_with_rset_first(spool: FileSpool, dns: Dns) -> None:
    async with recording_peers((MX1, RecordingScript())) as [peer]:
        agent = make_agent(spool, dns, peer.port, probe_after_idle=0.05)
        try:
            for name in ("bob", "carol"):
                message = await queue(spool, rcpt(f"{name}@remote.test"))
                [result] = await agent.deliver(message, message.envelope.recipients)
                assert isinstance(result, Delivered)
                await asyncio.sleep(0.1)
        finally:
            await agent.close()
    assert peer.verbs()[:4] == [["EHLO"], ["MAIL", "RCPT", "DATA"], ["RSET"], ["MAIL", "RCPT", "DATA"]]
    assert agent.connections_opened == 1


async def test_idle_connections_are_closed(spool: FileSpool, dns: Dns, mx: list[Peer]) -> None:
    agent = make_agent(spool, dns, mx[0].port, idle_timeout=0.05)
    message = await queue(spool, rcpt("bob@remote.test"))
    await agent.deliver(message, message.envelope.recipients)
    await until(lambda: agent.idle_connections() == 0)
    await agent.close()


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


async def test_starttls_is_used_when_offered(spool: FileSpool, dns: Dns, ca: trustme.CA) -> None:
    # A certificate for another name: opportunistic TLS encrypts without checking it.
    with peers(MX1, tls_context=server_context(ca, "elsewhere.test")) as [secure]:
        agent = make_agent(spool, dns, secure.port)
        message = await queue(spool, rcpt("bob@remote.test"))
        [result] = await agent.deliver(message, message.envelope.recipients)
        await agent.close()
    assert isinstance(result, Delivered)
    assert secure.received[0].tls and secure.handler.hellos == 2  # EHLO again after STARTTLS


async def test_required_tls_is_not_given_up_for_a_server_without_it(
    agent: RemoteAgent, spool: FileSpool, dns: Dns, mx: list[Peer]
) -> None:
    strict = make_agent(spool, dns, mx[0].port, tls_policy={"remote.test": "require"})
    message = await queue(spool, rcpt("bob@remote.test"))
    [result] = await strict.deliver(message, message.envelope.recipients)
    await strict.close()
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.4"
    assert mx[0].received == [] and mx[1].received == []


async def test_verified_tls_checks_the_certificate_against_the_mx_name(
    spool: FileSpool, dns: Dns, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    dns.zone.mx("secure.test", (10, "mx1.remote.test"))  # one MX, so its failure is the answer
    policy = {"secure.test": "verify"}
    with peers(MX1, tls_context=server_context(ca, "mx1.remote.test")) as [good]:
        agent = make_agent(spool, dns, good.port, tls_policy=policy, ca_file=ca_file)
        message = await queue(spool, rcpt("bob@secure.test"))
        [result] = await agent.deliver(message, message.envelope.recipients)
        await agent.close()
    assert isinstance(result, Delivered) and good.received[0].tls

    with peers(MX1, tls_context=server_context(ca, "impostor.test")) as [bad]:
        agent = make_agent(spool, dns, bad.port, tls_policy=policy, ca_file=ca_file)
        [result] = await agent.deliver(message, message.envelope.recipients)
        await agent.close()
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5"
    assert bad.received == []


# --- the relay host -----------------------------------------------------------------------------


def authenticator(
    server: object, session: object, envelope: object, mechanism: str, auth_data: object
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"sender",
        b"s3cret",
    )
    # handled=False: aiosmtpd then answers a failure with 535 itself.
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


async def test_a_relay_host_takes_everything_with_starttls_and_auth(
    spool: FileSpool, dns: Dns, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    options = {
        "tls_context": server_context(ca, "relay.test", "127.0.0.4"),
        "require_starttls": True,
        "authenticator": authenticator,
        "auth_required": True,
    }
    with peers("127.0.0.4", **options) as [relay]:
        settings = {
            "relay": ("127.0.0.4", relay.port),
            "relay_tls": "starttls",
            "relay_user": "sender",
            "ca_file": ca_file,
        }
        agent = make_agent(spool, dns, 25, relay_password="s3cret", **settings)
        # Two domains, neither looked up: everything goes to the relay.
        message = await queue(spool, rcpt("bob@remote.test"), rcpt("x@other.test"))
        results = await agent.deliver(message, message.envelope.recipients)
        await agent.close()

        wrong = make_agent(spool, dns, 25, relay_password="wrong", **settings)
        [refused] = await wrong.deliver(message, message.envelope.recipients[:1])
        await wrong.close()

    assert [type(r).__name__ for r in results] == ["Delivered", "Delivered"]
    assert sorted(relay.recipients()) == ["bob@remote.test", "x@other.test"]
    assert relay.received[0].tls and relay.received[0].login == b"sender"
    assert dns.zone.queries == []
    # Bad credentials are the operator's to fix: the mail waits rather than bounces.
    assert isinstance(refused, TempFail) and refused.reply.enhanced == "4.7.0"


async def test_a_relay_with_implicit_tls(spool: FileSpool, dns: Dns, ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # aiosmtpd's Controller speaks TLS from the first byte with ssl_context (RFC 8314 §3.3).
    with peers("127.0.0.4", ssl_context=server_context(ca, "relay.test")) as [relay]:
        agent = make_agent(spool, dns, 25, relay=("relay.test", relay.port), relay_tls="tls", ca_file=ca_file)
        dns.zone.a("relay.test", "127.0.0.4")  # a relay named, looked up for its address only
        message = await queue(spool, rcpt("bob@remote.test"))
        [result] = await agent.deliver(message, message.envelope.recipients)
        await agent.close()
    assert isinstance(result, Delivered) and relay.received[0].tls
    assert ("relay.test.", "MX") not in dns.zone.queries and ("remote.test.", "MX") not in dns.zone.queries


async def test_a_peer_that_never_answers_the_data_is_a_temporary_failure(
    spool: FileSpool, dns: Dns, mx: list[Peer]
) -> None:
    mx[0].behaviour.data_delay = 1.0
    agent = make_agent(spool, dns, mx[0].port, data_timeout=0.2)
    message = await queue(spool, rcpt("bob@remote.test"))
    [result] = await agent.deliver(message, message.envelope.recipients)
    await agent.close()
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.4.2"
    assert "Timed out" in result.reply.text and agent.idle_connections() == 0


# --- PIPELINING on the wire (RFC 2920) -----------------------------------------------------------

THREE = ("bob@remote.test", "carol@remote.test", "dave@remote.test")


async def deliver_to(
    port: int, spool: FileSpool, dns: Dns, *addresses: str
) -> tuple[list[DeliveryResult], int]:
    """One message through a fresh agent: its results, and how many connections it kept."""
    agent = make_agent(spool, dns, port)
    try:
        message = await queue(spool, *(rcpt(address) for address in addresses))
        return await agent.deliver(message, message.envelope.recipients), agent.idle_connections()
    finally:
        await agent.close()


async def deliver_with_backup(
    spool: FileSpool, dns: Dns, first: RecordingScript, *addresses: str
) -> tuple[list[DeliveryResult], int, RecordingPeer, RecordingPeer]:
    """The same, with a scripted MX1 and an ordinary MX2 behind it."""
    async with recording_peers((MX1, first), (MX2, RecordingScript())) as [mx1, mx2]:
        results, kept = await deliver_to(mx1.port, spool, dns, *addresses)
    return results, kept, mx1, mx2


async def test_mail_every_rcpt_and_data_go_in_one_group_when_pipelining_is_offered(
    spool: FileSpool, dns: Dns
) -> None:
    async with recording_peers((MX1, RecordingScript(pipelining=True))) as [peer]:
        results, _ = await deliver_to(peer.port, spool, dns, *THREE)
    # The peer held every reply until the client stopped sending: MAIL, the three RCPTs and
    # DATA all arrived before the first reply (RFC 2920 §3.1: DATA last in the group).
    assert peer.verbs()[:2] == [["EHLO"], ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]]
    assert [type(result) for result in results] == [Delivered] * 3
    assert peer.messages == [(list(THREE), BODY)]


async def test_one_command_at_a_time_without_pipelining(spool: FileSpool, dns: Dns) -> None:
    async with recording_peers((MX1, RecordingScript(pipelining=False))) as [peer]:
        results, _ = await deliver_to(peer.port, spool, dns, *THREE)
    assert peer.verbs()[:6] == [["EHLO"], ["MAIL"], ["RCPT"], ["RCPT"], ["RCPT"], ["DATA"]]
    assert [type(result) for result in results] == [Delivered] * 3
    assert peer.messages == [(list(THREE), BODY)]


async def test_recipients_refused_inside_a_pipelined_group_get_their_own_results(
    spool: FileSpool, dns: Dns
) -> None:
    refuse = {"bob@remote.test": replies.USER_UNKNOWN, "dave@remote.test": replies.TOO_MANY_RECIPIENTS}
    async with recording_peers((MX1, RecordingScript(refuse=refuse))) as [peer]:
        results, _ = await deliver_to(peer.port, spool, dns, *THREE)
    assert peer.verbs()[1] == ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]
    assert summary(results) == [
        ("PermFail", "bob@remote.test", 550),
        ("Delivered", "carol@remote.test", None),
        ("TempFail", "dave@remote.test", 452),
    ]
    assert peer.messages == [(["carol@remote.test"], BODY)]


async def test_a_recipient_no_command_can_carry_fails_alone(spool: FileSpool, dns: Dns) -> None:
    # An ORCPT (RFC 3461 §4.2) too long for any RCPT line (RFC 5321 §4.5.3.1): never sent.
    huge = rcpt("carol@remote.test", orcpt="rfc822;" + "c" * 2000 + "@remote.test")
    async with recording_peers((MX1, RecordingScript())) as [peer]:
        agent = make_agent(spool, dns, peer.port)
        message = await queue(spool, rcpt("bob@remote.test", notify=("FAILURE",)), huge)
        results = await agent.deliver(message, message.envelope.recipients)
        await agent.close()
    assert summary(results) == [
        ("Delivered", "bob@remote.test", None),
        ("PermFail", "carol@remote.test", 553),
    ]
    assert results[1].reply.enhanced == "5.1.3" and results[1].remote_mta is None
    assert peer.groups[1][1:] == ["RCPT TO:<bob@remote.test> NOTIFY=FAILURE", "DATA"]


@pytest.mark.parametrize("data_anyway", [False, True], ids=["data-refused", "data-accepted-anyway"])
async def test_every_recipient_refused_in_a_pipelined_group_sends_no_message(
    spool: FileSpool, dns: Dns, data_anyway: bool
) -> None:
    refuse = dict.fromkeys(THREE[:2], replies.USER_UNKNOWN)
    script = RecordingScript(refuse=refuse, data_anyway=data_anyway)
    async with recording_peers((MX1, script)) as [peer]:
        results, reused = await deliver_to(peer.port, spool, dns, *THREE[:2])
    assert summary(results) == [
        ("PermFail", "bob@remote.test", 550),
        ("PermFail", "carol@remote.test", 550),
    ]
    # A server that said 354 anyway gets a lone "." (RFC 2920 §3.1), never the message.
    assert peer.messages == ([([], b"")] if data_anyway else [])
    # RSET ends the refused transaction and the connection is kept for the next message.
    assert peer.verbs()[2] == ["RSET"] and reused == 1


async def test_a_peer_that_hangs_up_in_the_middle_of_a_pipelined_group(spool: FileSpool, dns: Dns) -> None:
    # MAIL and the first RCPT are answered, then the connection drops.
    results, kept, mx1, mx2 = await deliver_with_backup(spool, dns, RecordingScript(hang_up_after=2), *THREE)
    assert [(r.reply.code, r.reply.enhanced) for r in results if not isinstance(r, Delivered)] == [
        (451, "4.4.2")
    ] * 3
    text = results[0].reply.text
    assert "Lost connection" in text and "RCPT TO:<carol@remote.test>" in text
    assert mx1.messages == [] and mx2.groups == []  # MAIL was accepted: not a reason for the next MX
    assert kept == 0


async def test_a_hang_up_before_the_reply_to_mail_moves_on_to_the_next_mx(spool: FileSpool, dns: Dns) -> None:
    results, _, mx1, mx2 = await deliver_with_backup(spool, dns, RecordingScript(hang_up_after=0), *THREE)
    assert all(isinstance(r, Delivered) and r.remote_mta == "mx2.remote.test" for r in results)
    assert mx1.messages == [] and mx2.messages == [(list(THREE), BODY)]


READY_FOR_TLS = replies.READY_TO_START_TLS.render(enhanced=True)


async def test_a_reply_injected_before_the_tls_handshake_is_never_acted_on(
    spool: FileSpool, dns: Dns
) -> None:
    # RFC 3207 §4.2 / CVE-2011-0411: a "250" sent in plaintext right after "220 Ready to start
    # TLS" would be read as the answer to the first command inside TLS. The client refuses the
    # connection instead of going on, and the next MX gets the mail.
    injected = RecordingScript(starttls_answer=READY_FOR_TLS + replies.SENDER_OK.render(enhanced=True))
    results, _, mx1, mx2 = await deliver_with_backup(spool, dns, injected, *THREE[:1])
    assert mx1.verbs() == [["EHLO"], ["STARTTLS"]] and mx1.messages == []
    assert isinstance(results[0], Delivered) and results[0].remote_mta == "mx2.remote.test"
    assert mx2.messages == [([THREE[0]], BODY)]


async def test_a_broken_opportunistic_handshake_falls_back_to_plaintext(spool: FileSpool, dns: Dns) -> None:
    broken = RecordingScript(starttls_answer=READY_FOR_TLS + b"this is not TLS\r\n")
    async with recording_peers((MX1, broken)) as [peer]:
        results, _ = await deliver_to(peer.port, spool, dns, *THREE[:1])
    assert peer.verbs()[:4] == [["EHLO"], ["STARTTLS"], ["EHLO"], ["MAIL", "RCPT", "DATA"]]
    assert isinstance(results[0], Delivered) and peer.messages == [([THREE[0]], BODY)]


def test_delivery_over_starttls_under_uvloop(spool: FileSpool, dns: Dns, ca: trustme.CA) -> None:
    # uvloop's transports do not subclass asyncio's; the client and the spool reader must not care.
    uvloop = pytest.importorskip("uvloop")
    content = b"Subject: big\r\n\r\n" + b".dot-stuffed line of the message\r\n" * 20_000

    async def run() -> list[DeliveryResult]:
        agent = make_agent(spool, dns, secure.port)
        message = await queue(spool, rcpt("bob@remote.test"), rcpt("carol@remote.test"), content=content)
        try:
            return await agent.deliver(message, message.envelope.recipients)
        finally:
            await agent.close()

    with peers(MX1, tls_context=server_context(ca, "elsewhere.test")) as [secure]:
        secure.behaviour.pipelining = True
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(run())
    assert [type(result) for result in results] == [Delivered] * 2
    assert secure.received[0].tls and secure.received[0].content == content
