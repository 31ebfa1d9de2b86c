"""Outbound DANE for SMTP (RFC 7672) against aiosmtpd MX peers on loopback, with TLSA records from
a dnslib server that sets the AD bit for some zones (as a validating resolver would) and not for
others. The agent believes the bit only when told its resolver validates (``dane=True``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mail_peers import Dns, Peer, dns_server, free_port, start_peer
from postoffice.delivery.agent import Delivered, DeliveryResult, TempFail
from postoffice.delivery.dane import DanePolicy, Tlsa, check_certificate, dane_policy
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.mtasts import StsPolicies
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.delivery.tls_policy import TransportSecurity
from postoffice.spool.envelope import Envelope, Recipient, Route
from postoffice.spool.files import FileSpool
from sts_support import Answer, policy, policy_host

pytestmark = pytest.mark.timeout(60)

MX1, WEB = "127.0.0.2", "127.0.0.5"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def port() -> int:
    return free_port(MX1)


@pytest.fixture
def dns(port: int) -> Iterator[Dns]:
    with dns_server() as server:
        for domain in ("dane.test", "plain.test"):
            server.zone.mx(domain, (10, f"mx1.{domain}"))
            server.zone.a(f"mx1.{domain}", MX1)
        server.zone.authenticated.add("dane.test")  # signed and validated; plain.test is not
        yield server


@contextlib.contextmanager
def mx_at(port: int, **options: Any) -> Iterator[list[Peer]]:
    peer = start_peer(MX1, port, **options)
    try:
        yield [peer]
    finally:
        peer.stop()


def tlsa_name(host: str, port: int) -> str:
    return f"_{port}._tcp.{host}"


def leaf(ca: trustme.CA, *names: str) -> tuple[ssl.SSLContext, x509.Certificate]:
    issued = ca.issue_cert(*names)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issued.configure_cert(context)
    return context, x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())


def spki_sha256(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(
        certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).digest()


def make_agent(
    tmp_path: Path,
    dns: Dns,
    port: int,
    *,
    dane: bool = True,
    sts_port: int = 443,
    sts_ca: trustme.CA | None = None,
) -> RemoteAgent:
    resolver = MxResolver(dns.address, timeout=2.0, rng=random.Random(0))
    context = ssl.create_default_context()
    if sts_ca is not None:
        sts_ca.configure_trust(context)
    sts = StsPolicies(resolver, None, context, port=sts_port, timeout=2.0)
    settings = RemoteSettings(
        hostname="mx.sender.test", mx_port=port, connect_timeout=5.0, command_timeout=10.0
    )
    return RemoteAgent(
        settings, resolver, FileSpool(tmp_path / "spool"), TransportSecurity(resolver, sts, dane=dane)
    )


async def deliver(agent: RemoteAgent, address: str) -> DeliveryResult:
    spool = agent._spool
    recipient = Recipient(address, address, Route.REMOTE)
    writer = spool.put(Envelope("a@sender.test", (recipient,), received_at=time.time()))
    writer.write(b"Subject: dane\r\n\r\nhello\r\n")
    message = await writer.commit()
    try:
        [result] = await agent.deliver(message, message.envelope.recipients)
    finally:
        await agent.close()
    return result


async def test_a_matching_dane_ee_record_gets_the_mail_whatever_the_name(
    tmp_path: Path, dns: Dns, port: int, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    # DANE-EE: no name check and no CA (RFC 7672 §3.1.1): a certificate for another name will do.
    context, certificate = leaf(ca, "whatever.test")
    dns.zone.tlsa(tlsa_name("mx1.dane.test", port), 3, 1, 1, spki_sha256(certificate))
    caplog.set_level(logging.INFO, "postoffice.delivery")
    with mx_at(port, tls_context=context) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port), "bob@dane.test")
    assert isinstance(result, Delivered) and mx.received[0].tls
    assert any("policy=dane tls_result=success" in r.getMessage() for r in caplog.records)


async def test_a_certificate_matching_no_record_is_not_delivered_to(
    tmp_path: Path, dns: Dns, port: int, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    context, _ = leaf(ca, "mx1.dane.test")
    _, other = leaf(ca, "mx1.dane.test")
    dns.zone.tlsa(tlsa_name("mx1.dane.test", port), 3, 1, 1, spki_sha256(other))
    with mx_at(port, tls_context=context) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port), "bob@dane.test")
    assert isinstance(result, TempFail) and result.reply.code == 451 and result.reply.enhanced == "4.7.5"
    assert "DANE requires authenticated TLS" in result.reply.text and mx.received == []
    [line] = [r.getMessage() for r in caplog.records if "tls_result=" in r.getMessage()]
    assert "policy=dane tls_result=tlsa-invalid" in line


async def test_dane_makes_tls_mandatory(tmp_path: Path, dns: Dns, port: int, ca: trustme.CA) -> None:
    _, certificate = leaf(ca, "mx1.dane.test")
    dns.zone.tlsa(tlsa_name("mx1.dane.test", port), 3, 1, 1, spki_sha256(certificate))
    with mx_at(port) as [mx]:  # no STARTTLS: never plaintext
        result = await deliver(make_agent(tmp_path, dns, port), "bob@dane.test")
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5" and mx.received == []


async def test_a_dane_ta_record_with_the_anchor_certificate(
    tmp_path: Path, dns: Dns, port: int, ca: trustme.CA
) -> None:
    context, _ = leaf(ca, "mx1.dane.test")
    anchor = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).public_bytes(Encoding.DER)
    dns.zone.tlsa(tlsa_name("mx1.dane.test", port), 2, 0, 0, anchor)
    with mx_at(port, tls_context=context) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port), "bob@dane.test")
    assert isinstance(result, Delivered)
    # DANE-TA checks the name (RFC 7672 §3.1.2): the same anchor, a certificate for another name.
    wrong, _ = leaf(ca, "elsewhere.test")
    with mx_at(port, tls_context=wrong) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port), "bob@dane.test")
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5" and mx.received == []


async def test_unauthenticated_tlsa_records_are_ignored(
    tmp_path: Path, dns: Dns, port: int, ca: trustme.CA
) -> None:
    context, _ = leaf(ca, "mx1.plain.test")
    dns.zone.tlsa(tlsa_name("mx1.plain.test", port), 3, 1, 1, b"\x00" * 32)  # would not match
    with mx_at(port, tls_context=context) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port), "bob@plain.test")
    assert isinstance(result, Delivered) and mx.received[0].tls


async def test_the_ad_bit_means_nothing_unless_the_resolver_is_trusted(
    tmp_path: Path, dns: Dns, port: int, ca: trustme.CA
) -> None:
    context, _ = leaf(ca, "mx1.dane.test")
    dns.zone.tlsa(tlsa_name("mx1.dane.test", port), 3, 1, 1, b"\x00" * 32)
    with mx_at(port, tls_context=context) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port, dane=False), "bob@dane.test")
    assert isinstance(result, Delivered) and mx.received[0].tls


async def test_junk_tlsa_records_are_unusable_but_tls_stays_mandatory(
    tmp_path: Path, dns: Dns, port: int, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    name = tlsa_name("mx1.dane.test", port)
    dns.zone.tlsa(name, 1, 1, 1, b"\x00" * 32)  # PKIX-EE: not for SMTP (§3.1.3)
    dns.zone.tlsa(name, 3, 1, 0, b"")  # an empty public key
    dns.zone.tlsa(name, 7, 9, 9, b"junk")  # nothing defined
    context, _ = leaf(ca, "whatever.test")
    with mx_at(port, tls_context=context) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port), "bob@dane.test")
    assert isinstance(result, Delivered) and mx.received[0].tls  # encrypted, unauthenticated (§2.2)
    [line] = [r.getMessage() for r in caplog.records if "dane-unusable-records" in r.getMessage()]
    assert "unusable=3 usable=0" in line
    with mx_at(port) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port), "bob@dane.test")
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5" and mx.received == []


async def test_a_digest_of_the_wrong_length_is_refused_with_the_answer(
    tmp_path: Path, dns: Dns, port: int, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    # dnspython refuses a whole answer holding "3 1 1" with 9 bytes (FormError): the lookup
    # fails, so the host is not used, which is the safe side of §2.2.
    dns.zone.tlsa(tlsa_name("mx1.dane.test", port), 3, 1, 1, b"too short")
    context, _ = leaf(ca, "whatever.test")
    with mx_at(port, tls_context=context) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port), "bob@dane.test")
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5" and mx.received == []
    [line] = [r.getMessage() for r in caplog.records if "tls_result=" in r.getMessage()]
    assert "tls_result=dnssec-invalid" in line and "TLSA" in line


async def test_a_failed_tlsa_lookup_makes_the_host_unusable(tmp_path: Path, dns: Dns, port: int) -> None:
    # A validating resolver answers SERVFAIL for bogus records: never a reason to skip DANE.
    dns.zone.servfail.add(dns.zone._name(tlsa_name("mx1.dane.test", port)))
    with mx_at(port) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, port), "bob@dane.test")
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5" and mx.received == []


async def test_dane_takes_precedence_over_mta_sts(
    tmp_path: Path, dns: Dns, port: int, ca: trustme.CA
) -> None:
    # The MTA-STS policy lists another MX; the DANE record matches: DANE decides (RFC 8461 §2).
    context, certificate = leaf(ca, "mx1.dane.test")
    dns.zone.tlsa(tlsa_name("mx1.dane.test", port), 3, 1, 1, spki_sha256(certificate))
    dns.zone.a("mta-sts.dane.test", WEB)
    dns.zone.txt("_mta-sts.dane.test", "v=STSv1; id=1")
    answer = Answer(policy("enforce", "mx9.dane.test"))
    with (
        policy_host(WEB, ca, "mta-sts.dane.test", answer=answer) as web,
        mx_at(port, tls_context=context) as [mx],
    ):
        result = await deliver(make_agent(tmp_path, dns, port, sts_port=web.port, sts_ca=ca), "bob@dane.test")
        assert isinstance(result, Delivered) and len(mx.received) == 1 and len(web.requests) == 1
        # The same policy without DANE (the resolver not trusted): the MX is refused.
        result = await deliver(
            make_agent(tmp_path, dns, port, sts_port=web.port, sts_ca=ca, dane=False), "bob@dane.test"
        )
    assert isinstance(result, TempFail) and "does not allow the MX host" in result.reply.text


# --- matching, without sockets ------------------------------------------------------------------


def test_every_selector_and_matching_type_of_dane_ee(ca: trustme.CA) -> None:
    _, certificate = leaf(ca, "mx.test")
    der = certificate.public_bytes(Encoding.DER)
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    for selector, selected in ((0, der), (1, spki)):
        for matching, data in (
            (0, selected),
            (1, hashlib.sha256(selected).digest()),
            (2, hashlib.sha512(selected).digest()),
        ):
            policy = dane_policy("_25._tcp.mx.test", "mx.test", [Tlsa(3, selector, matching, data)])
            assert policy.records and check_certificate(policy, der) is None, (selector, matching)
            wrong = DanePolicy(
                "_25._tcp.mx.test", "mx.test", (Tlsa(3, selector, matching, data[:-1] + b"?"),), 0
            )
            assert check_certificate(wrong, der) is not None
    assert (
        check_certificate(dane_policy("n", "mx.test", [Tlsa(3, 1, 1, b"\x00" * 32)]), b"not DER") is not None
    )


def test_dane_under_uvloop(tmp_path: Path, dns: Dns, port: int, ca: trustme.CA) -> None:
    # uvloop's TLS transport must show the peer's certificate as asyncio's does.
    uvloop = pytest.importorskip("uvloop")
    context, certificate = leaf(ca, "mx1.dane.test")
    dns.zone.tlsa(tlsa_name("mx1.dane.test", port), 3, 1, 1, spki_sha256(certificate))
    with (
        mx_at(port, tls_context=context) as [mx],
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        result = runner.run(deliver(make_agent(tmp_path, dns, port), "bob@dane.test"))
    assert isinstance(result, Delivered) and mx.received[0].tls
