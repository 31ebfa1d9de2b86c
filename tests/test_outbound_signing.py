"""DKIM signing of mail that leaves, end to end: a real server, real clients, independent verifiers.

alice logs in on the submission listener (STARTTLS, AUTH PLAIN) and sends to bob@remote.test;
the server finds remote.test's MX through a dnslib server on loopback and delivers to an
aiosmtpd peer on 127.0.0.2. What the peer received is verified with dkimpy and with OpenDKIM
(``opendkim-testmsg`` in a namespace of its own whose DNS serves our keys), and its DMARC
verdict comes from OpenDMARC (``miltertest``), given dkimpy's DKIM results and the SPF result
for local.test's published record in an Authentication-Results field it trusts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import pytest

import dmarc_support
from conftest import RunningServer, maildir_messages, require_tool
from dkim_support import TxtDns, opendkim_testmsg, txt_dns
from dns_zone import DnsZone, dns_zone_server
from mail_peers import Dns, Peer, dns_server, free_port, start_peer
from postoffice.accounts import Accounts
from postoffice.config import AuthConfig, AuthenticationSettings, DeliverySettings, Listener, TLSConfig
from postoffice.mailauth import dkim_keys
from postoffice.mailauth.dkim_keys import DkimKey
from postoffice.mailauth.spf import check_mail_from
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict
from submission_support import Certs, make_certs, ports, smtp_over_starttls

pytestmark = pytest.mark.timeout(90)

MX = "127.0.0.2"
ALICE = "alice@local.test"
PASSWORD = "alice password"
BOB = "bob@remote.test"


@dataclass
class World:
    server: RunningServer
    peer: Peer
    certs: Certs
    dns: Dns

    @property
    def data_dir(self) -> Path:
        return self.server.config.data_dir

    def generate(self, domain: str = "local.test", *algorithms: str) -> list[DkimKey]:
        return [
            dkim_keys.generate(self.data_dir, domain, f"sel-{algorithm}", algorithm)
            for algorithm in algorithms or ("rsa",)
        ]

    def submit(self, author: str = ALICE, *, login: bool = True, subject: str = "hello") -> None:
        """Send one message From ``author`` to bob, from alice's envelope address, through the
        submission listener (logged in or not)."""
        text = (
            f"From: Alice <{author}>\r\nTo: {BOB}\r\nSubject: {subject}\r\n"
            f"Date: Sun, 06 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@client.test>\r\n"
            f"\r\nHello Bob,\r\n\r\nthis is {subject}.\r\n"
        )
        if login:
            with smtp_over_starttls(ports(self.server)["submission"], self.certs.client_context()) as client:
                client.login(ALICE, PASSWORD)
                client.sendmail(ALICE, [BOB], text)
        else:
            # Unauthenticated, on the MX port: the server relays nothing, so the recipient is
            # local (an alias for bob@remote.test) and the message still leaves.
            with smtplib.SMTP("127.0.0.1", ports(self.server)["smtp"], timeout=10) as client:
                client.sendmail(ALICE, ["fwd@local.test"], text)
        self.server.wait_idle()

    def received(self) -> bytes:
        [message] = self.peer.received
        return message.content


@pytest.fixture
def world_factory(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> Iterator[Callable[..., World]]:
    peers: list[Peer] = []
    certs = make_certs(tmp_path / "certs")
    with dns_server() as dns:

        def make(**overrides: Any) -> World:
            port = free_port("127.0.0.1", MX)
            dns.zone.mx("remote.test", (10, "mx.remote.test"))
            dns.zone.a("mx.remote.test", MX)
            server = server_factory(
                hostname="mx.local.test",
                domains=("local.test",),
                listeners=(Listener("smtp", "127.0.0.1", 0), Listener("submission", "127.0.0.1", 0)),
                tls=TLSConfig(cert=certs.cert, key=certs.key),
                auth=AuthConfig(failure_delay=0.0),
                delivery=DeliverySettings(dns=dns.address, mx_port=port, connect_timeout=5),
                **overrides,
            )
            accounts = Accounts(server.config.accounts_file)
            accounts.add_user(ALICE, PASSWORD)
            accounts.add_alias("fwd@local.test", [BOB])
            peer = start_peer(MX, port)
            peers.append(peer)
            return World(server, peer, certs, dns)

        yield make
        for peer in peers:
            peer.stop()


@pytest.fixture
def world(world_factory: Callable[..., World]) -> World:
    return world_factory()


def records(*keys: DkimKey) -> dict[str, list[str]]:
    return {key.record_name: [key.record()] for key in keys}


def dkimpy_results(message: bytes, keys_dns: TxtDns) -> list[tuple[bytes, bool]]:
    """(d=, verified) for each DKIM-Signature of ``message``, by dkimpy."""
    checker = dkim.DKIM(message)
    count = len(signature_fields(message))
    found = []
    for index in range(count):
        try:
            verified = checker.verify(idx=index, dnsfunc=keys_dns.dkimpy_dnsfunc())
        except dkim.ValidationError:
            verified = False
        found.append((checker.domain, bool(verified)))
    return found


def signature_fields(message: bytes) -> list[bytes]:
    head = message.split(b"\r\n\r\n", 1)[0]
    return [line for line in head.split(b"\r\n") if line.lower().startswith(b"dkim-signature:")]


def test_submitted_mail_is_signed_and_dkimpy_verifies_it(world: World) -> None:
    [key] = world.generate()
    world.submit()
    content = world.received()
    [field] = signature_fields(content)
    assert b"d=local.test" in field and b"s=sel-rsa" in field
    unfolded = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    assert b"c=relaxed/relaxed" in unfolded and b" t=" in unfolded
    tags = dict(
        tag.strip().split(b"=", 1)
        for tag in unfolded.split(b"\r\n")[0].split(b":", 1)[1].split(b";")
        if tag.strip()
    )
    signed = tags[b"h"].replace(b" ", b"").lower().split(b":")
    assert signed.count(b"from") == 2  # From over-signed: one more than the message has
    with txt_dns(records(key)) as keys_dns:
        assert dkimpy_results(content, keys_dns) == [(b"local.test", True)]
        tampered = content.replace(b"this is hello", b"this is bye")
        assert dkimpy_results(tampered, keys_dns) == [(b"local.test", False)]


def test_dual_signing_gives_two_signatures_that_verify(world: World) -> None:
    keys = world.generate("local.test", "rsa", "ed25519")
    world.submit()
    content = world.received()
    assert len(signature_fields(content)) == 2
    with txt_dns(records(*keys)) as keys_dns:
        assert dkimpy_results(content, keys_dns) == [(b"local.test", True), (b"local.test", True)]


def test_opendkim_verifies_submitted_mail(world: World, tmp_path: Path) -> None:
    require_tool("opendkim-testmsg")
    require_tool("unshare")
    keys = world.generate("local.test", "rsa", "ed25519")
    world.submit()
    content = world.received().replace(b"\r\n", b"\n")  # opendkim-testmsg reads local line ends
    good = opendkim_testmsg(content, tmp_path, records(*keys))
    assert (good.returncode, good.stderr) == (0, b"")
    bad = opendkim_testmsg(content.replace(b"this is hello", b"this is bye"), tmp_path, records(*keys))
    assert bad.returncode != 0 and b"Bad signature" in bad.stderr


def test_mail_from_a_domain_not_ours_is_not_signed(world: World) -> None:
    world.generate()
    world.submit("alice@elsewhere.test")
    assert signature_fields(world.received()) == []


def test_unauthenticated_mail_is_not_signed(world: World) -> None:
    world.generate()
    world.submit(login=False)
    content = world.received()
    assert b"this is hello" in content and signature_fields(content) == []


def test_sign_false_turns_signing_off(world_factory: Callable[..., World]) -> None:
    world = world_factory(authentication=AuthenticationSettings(sign=False))
    world.generate()
    world.submit()
    assert signature_fields(world.received()) == []


def test_a_local_domain_without_a_key_is_sent_unsigned_and_said_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.submit(subject="first")
    world.submit(subject="second")
    assert all(signature_fields(message.content) == [] for message in world.peer.received)
    warnings = [record.getMessage() for record in caplog.records if "dkim-no-key" in record.getMessage()]
    assert len(warnings) == 1 and "postoffice dkim generate local.test" in warnings[0]


def test_a_key_made_while_running_signs_the_next_message(world: World) -> None:
    world.submit(subject="before")
    [key] = world.generate()
    world.submit(subject="after")
    # The two deliveries run side by side: tell them apart by subject, not by arrival.
    by_subject = {
        subject: message.content
        for message in world.peer.received
        for subject in ("before", "after")
        if f"Subject: {subject}\r\n".encode() in message.content
    }
    before, after = by_subject["before"], by_subject["after"]
    assert signature_fields(before) == [] and len(signature_fields(after)) == 1
    with txt_dns(records(key)) as keys_dns:
        assert dkimpy_results(after, keys_dns) == [(b"local.test", True)]


def test_a_bounce_is_signed_and_verifies(world: World) -> None:
    keys = world.generate("local.test", "rsa", "ed25519")
    world.peer.behaviour.rcpt = lambda address: "550 5.1.1 No such user"
    world.submit()
    assert len(maildir_messages(world.server.config.mail_dir, ALICE)) == 1
    [path] = (
        path
        for path in (world.server.config.mail_dir / "local.test" / "alice").rglob("*")
        if path.is_file() and path.parent.name in ("new", "cur")
    )
    content = path.read_bytes()
    assert b"MAILER-DAEMON@mx.local.test" in content
    with txt_dns(records(*keys)) as keys_dns:
        assert dkimpy_results(content, keys_dns) == [(b"local.test", True), (b"local.test", True)]


def _dkim_verdicts(content: bytes, keys: list[DkimKey]) -> tuple[DkimVerdict, ...]:
    """dkimpy's result for each signature of ``content``, as an Authentication-Results hands it on."""
    with txt_dns(records(*keys)) as keys_dns:
        return tuple(
            DkimVerdict("pass" if verified else "fail", domain.decode(), key.selector, "")
            for (domain, verified), key in zip(dkimpy_results(content, keys_dns), keys, strict=True)
        )


def _opendmarc_verdicts(cases: list[dmarc_support.Case], tmp_path: Path) -> list[dmarc_support.Verdict]:
    """OpenDMARC's verdicts on ``cases``, From local.test (p=reject, SPF for 127.0.0.0/8)."""
    zone = DnsZone()
    zone.txt("_dmarc.local.test", "v=DMARC1; p=reject; adkim=r; aspf=r")
    zone.txt("local.test", "v=spf1 ip4:127.0.0.0/8 -all")
    with dns_zone_server(zone) as server:
        # The server delivered from 127.0.0.1 (to the peer on 127.0.0.2).
        spf = asyncio.run(check_mail_from("127.0.0.1", ALICE, "mx.local.test", resolver=server.resolver()))
    assert spf.result == "pass"
    with dmarc_support.dns_on_port_53(zone) as address, dmarc_support.opendmarc(tmp_path, address) as port:
        return [dmarc_support.run_case(case, port, tmp_path) for case in cases]


def _case(name: str, spf: SpfVerdict | None, dkim_verdicts: tuple[DkimVerdict, ...]) -> dmarc_support.Case:
    expected = dmarc_support.Verdict("pass", "reject", "none")
    return dmarc_support.Case(name, ("Alice <alice@local.test>",), spf, dkim_verdicts, expected)


def test_opendmarc_passes_signed_mail_aligned(world: World, tmp_path: Path) -> None:
    require_tool("opendmarc")
    require_tool("miltertest")
    require_tool("unshare")
    why_not = dmarc_support.can_run_opendmarc()
    if why_not:
        pytest.skip(why_not)
    keys = world.generate("local.test", "rsa", "ed25519")
    world.submit()
    content = world.received()
    signed = _dkim_verdicts(content, keys)
    assert [verdict.result for verdict in signed] == ["pass", "pass"]
    tampered = _dkim_verdicts(content.replace(b"this is hello", b"this is bye"), keys)
    assert [verdict.result for verdict in tampered] == ["fail", "fail"]
    spf = SpfVerdict("pass", "local.test")
    verdicts = _opendmarc_verdicts(
        [
            _case("spf-and-dkim", spf, signed),
            _case("dkim-alone", None, signed),  # aligned DKIM passes DMARC by itself
            _case("tampered", None, tampered),
        ],
        tmp_path,
    )
    passed = dmarc_support.Verdict("pass", "reject", "none")
    assert verdicts == [passed, passed, dmarc_support.Verdict("fail", "reject", "reject")]


def test_postoffice_send_with_a_login_is_signed(world: World) -> None:
    [key] = world.generate()
    cafile = world.certs.cert.parent / "ca.pem"
    world.certs.ca.cert_pem.write_to_path(str(cafile))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "postoffice",
            "send",
            f"--server=127.0.0.1:{ports(world.server)['submission']}",
            "--starttls",
            f"--cafile={cafile}",
            f"--auth-user={ALICE}",
            "--password-stdin",
            f"--from={ALICE}",
            f"--to={BOB}",
            "--subject=from the command line",
        ],
        input=f"{PASSWORD}\nsent with postoffice send\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    world.server.wait_idle()
    content = world.received()
    assert b"sent with postoffice send" in content
    with txt_dns(records(key)) as keys_dns:
        assert dkimpy_results(content, keys_dns) == [(b"local.test", True)]


def test_one_log_line_per_signed_message(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postoffice.dkim")
    world.generate("local.test", "rsa", "ed25519")
    world.submit()
    lines = [record.getMessage() for record in caplog.records if "dkim-signed" in record.getMessage()]
    assert len(lines) == 1
    assert "domain=local.test selectors=sel-ed25519,sel-rsa" in lines[0] and "queue_id=" in lines[0]


def test_a_reloaded_configuration_turns_signing_off_and_on(world: World) -> None:
    world.generate()
    server = world.server

    async def reload(sign: bool) -> None:
        server.app.reload(
            dataclasses.replace(server.config, authentication=AuthenticationSettings(sign=sign))
        )

    server.call(reload(False))
    world.submit(subject="off")
    server.call(reload(True))
    world.submit(subject="on")
    off, on = (message.content for message in world.peer.received)
    assert signature_fields(off) == [] and len(signature_fields(on)) == 1
