"""Forwarding end to end: mail from outside to an alias whose target is in another domain.

carol@sender.test signs her message with DKIM (a key made here, published with her SPF and
DMARC records by a dnslib server on loopback) and sends it to our MX, to the alias
fwd@local.test (which forwards to bob@remote.test) and to alice@local.test. remote.test's MX is
an aiosmtpd capture server on 127.0.0.2; it is sender.test's MX too, so the bounce that comes
back to the SRS address is seen arriving at carol's server.

What is checked at the capture server: the copy's MAIL FROM is an SRS0 address in local.test,
SPF for it passes against local.test's published record (``v=spf1 mx -all``, as ``postoffice
dns`` prints it) from the address the copy came from, its ARC chain verifies with dkimpy's
``arc_verify`` and with ours, and carol's DKIM signature still verifies. alice's copy keeps
carol's envelope sender and has no ARC set.
"""

from __future__ import annotations

import asyncio
import email
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope as PeerEnvelope

from conftest import RunningServer, wait_until
from dkim_support import dkimpy_sign
from dns_zone import DnsZone, ZoneServer, dns_zone_server
from mail_peers import free_port
from postoffice.accounts import Accounts
from postoffice.config import AuthenticationSettings, DeliverySettings
from postoffice.mailauth import arc, dkim_keys, results
from postoffice.mailauth.arc import SealingKey
from postoffice.mailauth.dkim_keys import DkimKey, txt_strings
from postoffice.mailauth.spf import check_mail_from
from postoffice.mailauth.srs import Srs
from postoffice.smtp import replies

pytestmark = pytest.mark.timeout(90)

MX = "127.0.0.2"
ID = "mx.local.test"
CAROL = "carol@sender.test"
ALICE = "alice@local.test"
ALIAS = "fwd@local.test"
BOB = "bob@remote.test"


@dataclass
class Copy:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    client: str  # the address the copy came from


@dataclass
class Capture:
    """An MX that keeps what it is given, and from which address."""

    copies: list[Copy] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: PeerEnvelope) -> str:
        with self.lock:
            self.copies.append(
                Copy(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    envelope.original_content or b"",
                    session.peer[0],
                )
            )
        return "250 2.0.0 Ok: captured"

    def wait(self, count: int) -> list[Copy]:
        wait_until(lambda: len(self.copies) >= count, what=f"{count} copies at the MX")
        with self.lock:
            return list(self.copies)


@dataclass
class World:
    server: RunningServer
    dns: ZoneServer
    mx: Capture
    carol_key: DkimKey
    our_key: DkimKey

    def send(self, mail_from: str, to: list[str], content: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.server.port, local_hostname="mail.sender.test", timeout=20) as c:
            c.sendmail(mail_from, to, content)
        self.server.wait_idle()

    def dkimpy_dns(self) -> Callable[..., bytes | None]:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.dns.port

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            try:
                answer = resolver.resolve(name.decode(), "TXT")
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                return None
            return b"".join(answer.rrset[0].strings)  # type: ignore[index]

        return dnsfunc

    def secret_file(self) -> Path:
        return self.server.config.data_dir / "srs.secret"


def signed_message(key: DkimKey, subject: str = "hello", extra: bytes = b"") -> bytes:
    message = (
        f"From: Carol <{CAROL}>\r\nTo: {ALIAS}\r\nSubject: {subject}\r\n"
        f"Date: Sun, 06 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@sender.test>\r\n"
        f"\r\nHello,\r\n\r\nthis is {subject}.\r\n"
    ).encode()
    return extra + dkimpy_sign(message, key) + message


def publish(zone: DnsZone, key: DkimKey) -> None:
    zone.txt(key.record_name, *txt_strings(key.record()))


@pytest.fixture
def world(server_factory: Callable[..., RunningServer], tmp_path: Path) -> Iterator[World]:
    port = free_port("127.0.0.1", MX)
    capture = Capture()
    controller = Controller(capture, hostname=MX, port=port)
    controller.start()
    zone = DnsZone()
    with dns_zone_server(zone) as dns_server:
        carol_key = dkim_keys.generate(tmp_path / "carol", "sender.test", "s1", "rsa")
        publish(zone, carol_key)
        zone.txt("sender.test", "v=spf1 ip4:127.0.0.0/8 -all")
        zone.txt("_dmarc.sender.test", "v=DMARC1; p=none")
        for domain in ("sender.test", "remote.test"):
            zone.mx(domain, 10, "mx.remote.test")
        zone.a("mx.remote.test", MX)
        zone.mx("local.test", 10, "mx.local.test")
        zone.a("mx.local.test", "127.0.0.1")
        zone.txt("local.test", "v=spf1 mx -all")
        server = server_factory(
            hostname=ID,
            domains=("local.test",),
            delivery=DeliverySettings(dns=dns_server.address, mx_port=port, connect_timeout=5),
            authentication=AuthenticationSettings(verify=True, dns_timeout=1.0),
        )
        our_key = dkim_keys.generate(server.config.data_dir, "local.test", "fwd", "rsa")
        publish(zone, our_key)
        accounts = Accounts(server.config.accounts_file)
        accounts.add_user(ALICE, "alice password")
        accounts.add_alias(ALIAS, [BOB])
        try:
            yield World(server, dns_server, capture, carol_key, our_key)
        finally:
            controller.stop()


def arc_fields(content: bytes) -> dict[str, list[str]]:
    parsed = email.message_from_bytes(content)
    names = ("ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results")
    return {name: [str(value) for value in parsed.get_all(name, [])] for name in names}


def test_a_forwarded_copy_has_an_srs_sender_and_an_arc_set_that_verify(world: World) -> None:
    world.send(CAROL, [ALIAS, ALICE], signed_message(world.carol_key))
    [copy] = world.mx.wait(1)
    assert copy.rcpt_tos == [BOB]
    assert copy.mail_from.startswith("SRS0=") and copy.mail_from.endswith("=sender.test=carol@local.test")

    # SPF at the next hop: local.test's record names our MX, the address the copy came from.
    spf = asyncio.run(check_mail_from(copy.client, copy.mail_from, ID, resolver=world.dns.resolver()))
    assert (spf.result, spf.domain) == ("pass", "local.test")

    # The ARC set: one, sealed by local.test with cv=none, verified by dkimpy and by us.
    found = arc_fields(copy.content)
    assert [len(values) for values in found.values()] == [1, 1, 1]
    assert "cv=none" in found["ARC-Seal"][0] and "d=local.test" in found["ARC-Seal"][0]
    aar = found["ARC-Authentication-Results"][0]
    assert aar.startswith(f"i=1; {ID};") and "spf=pass" in aar and "dkim=pass" in aar
    status, _, reason = dkim.arc_verify(copy.content, dnsfunc=world.dkimpy_dns())
    assert status == b"pass", reason
    ours = asyncio.run(arc.verify(copy.content, world.dns.resolver()))
    assert (ours.result, ours.instances) == ("pass", 1)
    # Carol's own signature came through untouched.
    assert dkim.verify(copy.content, dnsfunc=world.dkimpy_dns())

    # alice's copy: carol's envelope sender, no ARC set.
    [local] = world.server.messages(ALICE)
    assert local["Return-Path"] == f"<{CAROL}>"
    assert local.get_all("ARC-Seal") is None
    assert world.server.app.spool.pending() == []
    assert world.secret_file().stat().st_mode & 0o777 == 0o600


def test_an_incoming_arc_chain_is_continued_with_cv_pass(world: World, tmp_path: Path) -> None:
    relay_key = dkim_keys.generate(tmp_path / "relay", "relay.test", "r1", "rsa")
    publish(world.dns.zone, relay_key)
    signed = signed_message(world.carol_key, "relayed")
    sealed = _dkimpy_seal(signed, relay_key, "mx.relay.test")
    world.send(CAROL, [ALIAS], sealed)
    [copy] = world.mx.wait(1)
    seals = arc_fields(copy.content)["ARC-Seal"]
    assert len(seals) == 2 and any("i=2" in seal and "cv=pass" in seal for seal in seals)
    status, sets, reason = dkim.arc_verify(copy.content, dnsfunc=world.dkimpy_dns())
    assert status == b"pass" and len(sets) == 2, reason
    assert asyncio.run(arc.verify(copy.content, world.dns.resolver())).result == "pass"


def _dkimpy_seal(message: bytes, key: DkimKey, authserv_id: str) -> bytes:
    """An earlier forwarder, sealing with dkimpy: its Authentication-Results, then its set."""
    from cryptography.hazmat.primitives import serialization

    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    sealing = SealingKey(key.selector, key.domain, pem)
    field_ = results.header_field(authserv_id, [results.arc_result("none", 0, None)])
    with_results = field_ + message
    return arc.seal(with_results, sealing, authserv_id) + with_results


def test_a_bounce_to_the_srs_address_reaches_the_original_sender(world: World) -> None:
    world.send(CAROL, [ALIAS], signed_message(world.carol_key))
    [copy] = world.mx.wait(1)
    bounce = b"From: MAILER-DAEMON@mx.remote.test\r\nSubject: Undelivered Mail\r\n\r\nbob is gone\r\n"
    world.send("", [copy.mail_from], bounce)
    [_, returned] = world.mx.wait(2)
    assert returned.rcpt_tos == [CAROL] and returned.mail_from in ("", "<>")
    assert b"bob is gone" in returned.content


def test_an_srs_address_our_secret_did_not_make_or_too_old_is_unknown(world: World) -> None:
    world.send(CAROL, [ALIAS], signed_message(world.carol_key))  # makes the secret
    secret = world.secret_file().read_bytes().strip()
    expired = Srs([secret], "local.test", clock=lambda: time.time() - 30 * 86400).forward(CAROL)
    forged = Srs([b"not our secret"], "local.test").forward(CAROL)
    garbled = "SRS0=x@local.test"
    with smtplib.SMTP("127.0.0.1", world.server.port, timeout=20) as client:
        client.ehlo("mx.remote.test")
        client.mail("")
        for address in (expired, forged, garbled):
            code, text = client.rcpt(address)
            assert f"{code} {text.decode()}" == str(replies.USER_UNKNOWN).rstrip("\r\n"), address
        fresh = Srs([secret], "local.test").forward(CAROL)
        assert client.rcpt(fresh)[0] == replies.RECIPIENT_OK.code


def test_null_and_local_senders_are_forwarded_as_they_are(world: World) -> None:
    plain = b"From: someone@local.test\r\nSubject: note\r\n\r\nhi\r\n"
    world.send("", [ALIAS], plain)
    world.send(ALICE, [ALIAS], plain)
    first, second = world.mx.wait(2)
    assert {first.mail_from, second.mail_from} <= {"", "<>", ALICE}
    assert sorted([first.mail_from, second.mail_from])[-1] == ALICE
