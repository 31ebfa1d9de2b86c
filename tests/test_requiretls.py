"""REQUIRETLS and ``TLS-Required: No`` (RFC 8689), with real sockets: smtplib against the
server (advertised only inside TLS, the MAIL parameter refused outside it), and the remote
agent against a second postoffice (which offers REQUIRETLS) and aiosmtpd peers (which do not),
found through a DNS server on loopback and checked with certificates from a trustme CA."""

from __future__ import annotations

import random
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from conftest import RunningServer, wait_until
from mail_peers import Dns, dns_server, free_port, peers
from postoffice.accounts import Accounts
from postoffice.config import DeliverySettings, Listener, TLSConfig
from postoffice.delivery.agent import Delivered, DeliveryResult, PermFail, TempFail
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.smtp import replies
from postoffice.smtp.events import HelloReceived
from postoffice.smtp.server import ServerConnection, ServerSettings
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool
from submission_support import ALICE, ALICE_PASSWORD, Certs, make_certs, ports, start_submission_server

pytestmark = pytest.mark.timeout(60)

MX1 = "127.0.0.2"
BODY = b"Subject: secret\r\nFrom: a@sender.test\r\n\r\nfor your eyes only\r\n"


# --- receiving: the SMTP core and a real server -----------------------------------------------


def ehlo_keywords(tls: bool) -> list[str]:
    connection = ServerConnection(ServerSettings(hostname="mx.test", implicit_tls=tls))
    connection.receive_data(b"EHLO client.test\r\n")
    event = connection.next_event()
    assert isinstance(event, HelloReceived)
    return list(connection.hello_reply(event).lines[1:])


def test_the_core_offers_requiretls_only_inside_tls() -> None:
    assert "REQUIRETLS" in ehlo_keywords(tls=True)
    assert "REQUIRETLS" not in ehlo_keywords(tls=False)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def test_requiretls_is_advertised_and_taken_inside_tls_and_refused_outside(
    server_factory: Callable[..., RunningServer],
    certs: Certs,
) -> None:
    server = start_submission_server(server_factory, certs)
    with smtplib.SMTP("127.0.0.1", ports(server)["smtp"], timeout=10) as client:
        client.ehlo()
        assert not client.has_extn("requiretls")
        code, text = client.mail("someone@client.test", ["REQUIRETLS"])
        assert (code, text.decode()) == (530, "5.7.10 " + replies.REQUIRETLS_NEEDS_TLS.text)
        client.starttls(context=certs.client_context())
        client.ehlo()
        assert client.has_extn("requiretls")
        assert client.mail("someone@client.test", ["REQUIRETLS=yes"])[0] == 501  # §2: no value
        assert client.mail("someone@client.test", ["REQUIRETLS"])[0] == 250
        assert client.rcpt("bob@example.test")[0] == 250
        assert client.data(b"Subject: s\r\n\r\nsecret\r\n")[0] == 250


def test_a_requiretls_message_is_bounced_when_it_cannot_leave_over_verified_tls(
    server_factory: Callable[..., RunningServer],
    certs: Certs,
) -> None:
    """The default test relay is plaintext: the flag, kept in the spool, fails the delivery for
    good (5.7.10) and the sender gets a report, instead of the message going out in clear."""
    server = start_submission_server(server_factory, certs)
    with smtplib.SMTP("127.0.0.1", ports(server)["submission"], timeout=10) as client:
        client.starttls(context=certs.client_context())
        client.login(ALICE, ALICE_PASSWORD)
        client.sendmail(
            ALICE,
            ["carol@elsewhere.test"],
            b"Subject: s\r\n\r\nsecret\r\n",
            mail_options=["REQUIRETLS", "RET=FULL"],
        )
    wait_until(lambda: len(server.messages(ALICE)) == 1, what="the bounce")
    report = server.messages(ALICE)[0].as_bytes()
    assert b"Status: 5.7.10" in report and b"REQUIRETLS" in report
    assert b"secret" not in report  # the headers only, whatever RET says


def test_old_spool_envelopes_read_without_the_flag() -> None:
    envelope = Envelope("a@b.test", (Recipient("c@d.test", "c@d.test", Route.REMOTE),), 0.0, requiretls=True)
    data = envelope.to_json_dict()
    assert Envelope.from_json_dict(data).requiretls
    del data["requiretls"]  # as written before REQUIRETLS existed
    assert not Envelope.from_json_dict(data).requiretls


# --- relaying: the remote agent ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
def dns() -> Iterator[Dns]:
    with dns_server() as server:
        server.zone.mx("remote.test", (10, "mx1.remote.test"))
        server.zone.a("mx1.remote.test", MX1)
        yield server


@pytest.fixture
def spool(tmp_path: Path) -> FileSpool:
    return FileSpool(tmp_path / "spool")


def make_agent(spool: FileSpool, dns: Dns, port: int, ca_file: Path, **settings: object) -> RemoteAgent:
    return RemoteAgent(
        RemoteSettings(  # type: ignore[arg-type]
            hostname="mx.sender.test", mx_port=port, ca_file=ca_file, connect_timeout=5.0, **settings
        ),
        MxResolver(dns.address, timeout=2.0, rng=random.Random(0)),
        spool,
    )


async def queue(spool: FileSpool, *, content: bytes = BODY, requiretls: bool = True) -> QueuedMessage:
    recipient = Recipient("bob@remote.test", "bob@remote.test", Route.REMOTE)
    writer = spool.put(Envelope("a@sender.test", (recipient,), time.time(), requiretls=requiretls))
    writer.write(content)
    return await writer.commit()


async def deliver(agent: RemoteAgent, message: QueuedMessage) -> DeliveryResult:
    try:
        [result] = await agent.deliver(message, message.envelope.recipients)
    finally:
        await agent.close()
    return result


async def test_relayed_over_verified_tls_to_a_next_hop_that_offers_it_with_the_parameter(
    server_factory: Callable[..., RunningServer],
    spool: FileSpool,
    dns: Dns,
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    leaf = ca.issue_cert("mx1.remote.test")
    cert, key = tmp_path / "next-cert.pem", tmp_path / "next-key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    port = free_port(MX1)
    transcript = tmp_path / "next-hop.log"
    next_hop = server_factory(
        hostname="mx1.remote.test",
        domains=("remote.test",),
        listeners=(Listener("smtp", MX1, port),),
        tls=TLSConfig(cert=cert, key=key),
        transcript_log=transcript,
        delivery=DeliverySettings(relay_host=("127.0.0.1", 9), relay_tls="none"),
    )
    Accounts(next_hop.config.accounts_file).add_user("bob@remote.test", "bob password")

    result = await deliver(make_agent(spool, dns, port, ca_file), await queue(spool))

    assert isinstance(result, Delivered), result
    wait_until(lambda: len(next_hop.messages("bob@remote.test")) == 1, what="the delivery")
    assert b"for your eyes only" in next_hop.messages("bob@remote.test")[0].as_bytes()
    wait_until(lambda: "REQUIRETLS" in transcript.read_text(), what="the transcript")
    [mail] = [line for line in transcript.read_text().splitlines() if "MAIL FROM:" in line]
    assert mail.endswith(" REQUIRETLS")  # RFC 8689 §4.2.1: passed on


async def test_a_next_hop_without_requiretls_is_not_given_the_message(
    spool: FileSpool, dns: Dns, ca: trustme.CA, ca_file: Path
) -> None:
    with peers(MX1, tls_context=server_context(ca, "mx1.remote.test")) as [peer]:
        result = await deliver(make_agent(spool, dns, peer.port, ca_file), await queue(spool))
    assert isinstance(result, PermFail) and result.reply.enhanced == "5.7.30"
    assert peer.received == []


async def test_a_certificate_for_another_name_bounces_the_message(
    spool: FileSpool, dns: Dns, ca: trustme.CA, ca_file: Path
) -> None:
    with peers(MX1, tls_context=server_context(ca, "impostor.test")) as [peer]:
        result = await deliver(make_agent(spool, dns, peer.port, ca_file), await queue(spool))
    assert isinstance(result, PermFail) and result.reply.enhanced == "5.7.10"
    assert "certificate" in result.reply.text and peer.received == []


async def test_a_server_without_starttls_never_gets_it_in_plaintext(
    spool: FileSpool, dns: Dns, ca_file: Path
) -> None:
    with peers(MX1) as [peer]:
        result = await deliver(make_agent(spool, dns, peer.port, ca_file), await queue(spool))
    assert isinstance(result, PermFail) and result.reply.enhanced == "5.7.10"
    assert peer.received == []


async def test_tls_required_no_lets_a_message_past_the_domains_tls_policy(
    spool: FileSpool, dns: Dns, ca: trustme.CA, ca_file: Path
) -> None:
    policy = {"remote.test": "verify"}
    relaxed = b"TLS-Required: No\r\n" + BODY
    with peers(MX1, tls_context=server_context(ca, "impostor.test")) as [peer]:
        strict = await deliver(
            make_agent(spool, dns, peer.port, ca_file, tls_policy=policy),
            await queue(spool, requiretls=False),
        )
        assert isinstance(strict, TempFail) and strict.reply.enhanced == "4.7.5"
        message = await queue(spool, content=relaxed, requiretls=False)
        result = await deliver(make_agent(spool, dns, peer.port, ca_file, tls_policy=policy), message)
        assert isinstance(result, Delivered) and peer.received[0].tls  # still encrypted
        # §4.1: with REQUIRETLS as well, the header field is ignored.
        both = await queue(spool, content=relaxed, requiretls=True)
        ignored = await deliver(make_agent(spool, dns, peer.port, ca_file, tls_policy=policy), both)
    assert isinstance(ignored, PermFail) and ignored.reply.enhanced == "5.7.10"
    assert len(peer.received) == 1
