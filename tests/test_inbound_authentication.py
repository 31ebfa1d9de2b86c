"""Inbound mail authentication end to end: a real server, real SMTP clients, DNS from a dnslib
server on loopback, DKIM signatures made by dkimpy with keys made here."""

from __future__ import annotations

import asyncio
import base64
import email
import smtplib
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.message import Message
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import dmarc_support
from conftest import NOWHERE, RunningServer, wait_until
from dmarc_support import CASES, Case
from dns_zone import DnsZone, ZoneServer, dns_zone_server
from mail_peers import free_port
from postoffice.config import AuthenticationSettings, load_config
from postoffice.dns_resolver import make_resolver
from postoffice.errors import ConfigError
from postoffice.mailauth import results
from postoffice.mailauth.dkim_dns import DnsTxtResolver
from postoffice.mailauth.inbound import Verifier
from postoffice.smtp import replies
from postoffice.smtpd import Stages
from postoffice.smtpd.checks.authentication import InboundAuthentication
from smtpd_pair import SmtpdSession, services
from submission_support import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    make_certs,
    ports,
    smtp_over_starttls,
    start_submission_server,
)
from web_helpers import client, csrf, messages

RECIPIENT = "someone@capture.test"
ID = "mx.test"  # the test servers' hostname: our authserv-id


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ZoneServer]:
    with dns_zone_server() as server:
        yield server


@pytest.fixture
def zone(dns_server: ZoneServer) -> DnsZone:
    zone = DnsZone()
    zone.txt("good.test", "v=spf1 ip4:127.0.0.0/8 -all")
    zone.txt("bad.test", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("bank.test", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("_dmarc.bank.test", "v=DMARC1; p=reject")
    zone.txt("shop.test", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("_dmarc.shop.test", "v=DMARC1; p=quarantine")
    dns_server.serve(zone)
    return zone


def _verifying(
    server_factory: Callable[..., RunningServer], dns: tuple[str, int], **settings: Any
) -> RunningServer:
    """A capture-mode server with verification turned on, asking ``dns``."""
    authentication = AuthenticationSettings(**{"verify": True, "dns_timeout": 1.0, **settings})
    return server_factory(delivery=replace(NOWHERE, dns=dns), authentication=authentication)


@pytest.fixture
def verifying(
    server_factory: Callable[..., RunningServer], dns_server: ZoneServer, zone: DnsZone
) -> RunningServer:
    return _verifying(server_factory, dns_server.address)


def _message(sender: str, subject: str = "hello", extra: str = "") -> bytes:
    return (
        f"{extra}From: {sender}\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@client.test>\r\n\r\nHello.\r\n"
    ).encode()


def _send(server: RunningServer, mail_from: str, content: bytes, to: str = RECIPIENT) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=20) as client:
        client.sendmail(mail_from, [to], content)


def _stored(server: RunningServer, address: str = RECIPIENT) -> list[Message]:
    return [email.message_from_bytes(bytes(item)) for item in server.messages(address)]


def _ours(message: Message) -> results.AuthenticationResults:
    [field] = [
        value
        for name, value in message.items()
        if name.lower() == "authentication-results" and value.startswith(ID)
    ]
    names = [name.lower() for name, _ in message.items()]
    # At the top, as we received it: above our Received: (delivery adds Return-Path and
    # Delivered-To above both).
    assert names.index("authentication-results") < names.index("received")
    return results.parse(str(field))


def _result(parsed: results.AuthenticationResults, method: str) -> results.MethodResult:
    [found] = [item for item in parsed.results if item.method == method]
    return found


def test_spf_pass_and_fail_are_in_the_authentication_results(verifying: RunningServer) -> None:
    _send(verifying, "a@good.test", _message("a@good.test", "good"))
    _send(verifying, "a@bad.test", _message("a@bad.test", "bad"))
    by_subject = {message["Subject"]: _ours(message) for message in _stored(verifying)}
    assert _result(by_subject["good"], "spf").result == "pass"
    spf_fail = _result(by_subject["bad"], "spf")
    assert spf_fail.result == "fail"
    assert ("smtp", "mailfrom", "bad.test") in [(p.ptype, p.name, p.value) for p in spf_fail.properties]
    assert _result(by_subject["good"], "dkim").result == "none"
    assert _result(by_subject["good"], "arc").result == "none"
    assert _result(by_subject["good"], "dmarc").result == "none"


def test_received_spf_field_is_added_beside_the_authentication_results(verifying: RunningServer) -> None:
    """RFC 7208 §9.1: result, comment, then client-ip, envelope-from, helo, receiver, identity
    and the mechanism that matched, one pair a line; above our Received:, below
    Authentication-Results."""
    _send(verifying, "a@good.test", _message("a@good.test", "traced"))
    verifying.wait_idle()
    [path] = (verifying.config.mail_dir / "capture.test" / "someone" / "new").iterdir()
    raw = path.read_bytes()  # as stored: the mailbox module's messages fold long lines again
    assert (
        b"Received-SPF: pass (mx.test: domain of a@good.test designates 127.0.0.1 as permitted sender)\r\n"
        b"\tclient-ip=127.0.0.1;\r\n"
        b'\tenvelope-from="a@good.test";\r\n'
        b"\thelo=client.test;\r\n"
        b"\treceiver=mx.test;\r\n"
        b"\tidentity=mailfrom;\r\n"
        b'\tmechanism="ip4:127.0.0.0/8"\r\n'
        b"Received: from client.test"
    ) in raw
    assert raw.index(b"Authentication-Results: mx.test;") < raw.index(b"Received-SPF:")


def test_a_transactions_spf_lookup_ends_with_it(dns_server: ZoneServer) -> None:
    """SPF runs beside the conversation through Context.start: a transaction reset while its
    lookup waits on a silent DNS server leaves no task behind."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        nameserver = ("127.0.0.1", silent.getsockname()[1])
        verifier = Verifier(
            make_resolver(nameserver, timeout=30.0), DnsTxtResolver(nameserver, timeout=30.0), hostname=ID
        )
        check = InboundAuthentication(verifier, AuthenticationSettings(verify=True), ID)
        with SmtpdSession(services(Stages(mail=(check,)))) as session:
            session.command("EHLO client.test")
            assert session.command("MAIL FROM:<a@silent.test>").is_(replies.SENDER_OK)
            loop = session.loop
            loop.run_until_complete(asyncio.sleep(0.05))  # the lookup is waiting for an answer
            assert [task for task in asyncio.all_tasks(loop) if not task.done()] != []
            assert session.command("RSET").is_(replies.RESET_OK)
            loop.run_until_complete(asyncio.sleep(0.05))
            assert [task for task in asyncio.all_tasks(loop) if not task.done()] == []


def test_dkim_signed_message_passes_with_its_domain_and_selector(
    verifying: RunningServer, zone: DnsZone
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
    zone.txt("sel._domainkey.signer.test", *[record[i : i + 200] for i in range(0, len(record), 200)])
    zone.txt("_dmarc.signer.test", "v=DMARC1; p=reject")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    content = _message("a@signer.test", "signed")
    signature = dkim.sign(
        content, b"sel", b"signer.test", private, include_headers=[b"from", b"to", b"subject"]
    )
    # SPF of the bounce domain fails; DKIM alone aligns with From and DMARC passes (RFC 7489 §4.2).
    _send(verifying, "bounce@bad.test", signature + content)
    [stored] = _stored(verifying)
    parsed = _ours(stored)
    dkim_result = _result(parsed, "dkim")
    assert dkim_result.result == "pass"
    properties = {(p.ptype, p.name): p.value for p in dkim_result.properties}
    assert properties[("header", "d")] == "signer.test"
    assert properties[("header", "s")] == "sel"
    assert _result(parsed, "dmarc").result == "pass"


def test_forged_mail_from_a_reject_domain_is_refused_at_end_of_data(verifying: RunningServer) -> None:
    with (
        smtplib.SMTP("127.0.0.1", verifying.port, local_hostname="client.test", timeout=20) as client,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        client.sendmail("a@bank.test", [RECIPIENT], _message("ceo@bank.test", "forged"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1")
    assert b"DMARC" in refused.value.smtp_error and b"bank.test" in refused.value.smtp_error
    assert _stored(verifying) == []


def test_reject_policy_is_only_recorded_when_not_enforcing(
    server_factory: Callable[..., RunningServer], dns_server: ZoneServer, zone: DnsZone
) -> None:
    server = _verifying(server_factory, dns_server.address, enforce=False)
    _send(server, "a@bank.test", _message("ceo@bank.test", "forged"))
    [stored] = _stored(server)
    assert _result(_ours(stored), "dmarc").result == "fail"


def test_dns_down_is_accepted_with_temperror(server_factory: Callable[..., RunningServer]) -> None:
    server = _verifying(server_factory, ("127.0.0.1", free_port("127.0.0.1")), dns_timeout=0.3)
    _send(server, "a@bank.test", _message("ceo@bank.test", "no dns"))
    [stored] = _stored(server)
    parsed = _ours(stored)
    assert _result(parsed, "spf").result == "temperror"
    assert _result(parsed, "dmarc").result == "temperror"


@pytest.mark.parametrize("body_size", [0, 300_000], ids=["in-buffer", "on-disk"])
def test_forged_results_in_our_name_are_neutralised_and_others_kept(
    verifying: RunningServer, body_size: int
) -> None:
    """Renamed in place, whether the message is still in the writer's buffer or on disk."""
    forged = (
        f"Authentication-Results: {ID}; spf=pass smtp.mailfrom=bank.test; dmarc=pass\r\n"
        "Authentication-Results: other.test; dkim=pass header.d=other.test\r\n"
    )
    content = _message("a@good.test", "forged results", extra=forged) + (b"y" * 76 + b"\r\n") * (
        body_size // 78
    )
    _send(verifying, "a@good.test", content)
    [stored] = _stored(verifying)
    spf = _result(_ours(stored), "spf")  # exactly one of ours: the forged one was renamed
    assert (spf.result, spf.properties[0].value) == ("pass", "good.test")
    assert stored["X-Removed-Auth-Results"].startswith(f"{ID}; spf=pass smtp.mailfrom=bank.test")
    assert any(
        v.startswith("other.test;") for n, v in stored.items() if n.lower() == "authentication-results"
    )


def test_skip_networks_are_not_checked(
    server_factory: Callable[..., RunningServer], dns_server: ZoneServer, zone: DnsZone
) -> None:
    server = _verifying(server_factory, dns_server.address, skip_networks=("127.0.0.0/8",))
    _send(server, "a@bank.test", _message("ceo@bank.test", "trusted"))
    [stored] = _stored(server)
    assert "Authentication-Results" not in stored


def test_skip_domains_are_not_checked(
    server_factory: Callable[..., RunningServer], dns_server: ZoneServer, zone: DnsZone
) -> None:
    server = _verifying(server_factory, dns_server.address, skip_domains=("bank.test",))
    _send(server, "a@bank.test", _message("ceo@bank.test", "trusted"))
    [stored] = _stored(server)
    assert "Authentication-Results" not in stored


def test_capture_mode_does_not_verify_by_default(
    server_factory: Callable[..., RunningServer], dns_server: ZoneServer, zone: DnsZone
) -> None:
    server = server_factory(delivery=replace(NOWHERE, dns=dns_server.address))
    _send(server, "a@bank.test", _message("ceo@bank.test", "captured"))
    [stored] = _stored(server)
    assert "Authentication-Results" not in stored
    assert zone.queries == []


def test_a_real_server_verifies_mx_mail_but_not_submission(
    server_factory: Callable[..., RunningServer], dns_server: ZoneServer, zone: DnsZone, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path / "certs")
    server = start_submission_server(
        server_factory,
        certs,
        delivery=replace(NOWHERE, dns=dns_server.address),
        authentication=AuthenticationSettings(),  # verify's default: on, as domains are configured
    )
    with smtp_over_starttls(ports(server)["submission"], certs.client_context()) as client:
        client.login(ALICE, ALICE_PASSWORD)
        client.sendmail(ALICE, [BOB], _message(ALICE, "submitted"))
    _send(server, "a@good.test", _message("a@good.test", "from outside"), to=BOB)
    by_subject = {message["Subject"]: message for message in _stored(server, BOB)}
    assert "Authentication-Results" not in by_subject["submitted"]
    assert _result(_ours(by_subject["from outside"]), "spf").result == "pass"


def test_results_are_counted_in_the_metrics(verifying: RunningServer) -> None:
    _send(verifying, "a@good.test", _message("a@good.test", "counted"))
    with (
        smtplib.SMTP("127.0.0.1", verifying.port, local_hostname="client.test", timeout=20) as client,
        pytest.raises(smtplib.SMTPDataError),
    ):
        client.sendmail("a@bank.test", [RECIPIENT], _message("ceo@bank.test", "refused"))
    wait_until(lambda: "dmarc" in verifying.app.metrics.exposition().decode(), what="metrics")
    exposition = verifying.app.metrics.exposition().decode()
    assert 'postoffice_authentication_results_total{method="spf",result="pass"} 1.0' in exposition
    assert 'postoffice_authentication_results_total{method="spf",result="fail"} 1.0' in exposition
    assert 'postoffice_authentication_results_total{method="dmarc",result="fail"} 1.0' in exposition
    assert 'postoffice_authentication_results_total{method="dkim",result="none"} 2.0' in exposition


def _junk(server: RunningServer, address: str = RECIPIENT) -> list[Path]:
    server.wait_idle()
    local, _, domain = address.rpartition("@")
    return sorted((server.config.mail_dir / domain / local / ".Junk" / "new").glob("*"))


@pytest.mark.parametrize("body_size", [0, 300_000], ids=["small", "large"])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "queued"])
def test_quarantine_files_into_junk(
    server_factory: Callable[..., RunningServer],
    dns_server: ZoneServer,
    zone: DnsZone,
    direct: bool,
    body_size: int,
) -> None:
    """p=quarantine: the message goes to <maildir>/.Junk/new/, whether delivered before the
    250 or from the queue, and whether still in the writer's buffer or already on disk."""
    delivery = replace(NOWHERE, dns=dns_server.address, local_before_reply=direct)
    server = server_factory(
        delivery=delivery, authentication=AuthenticationSettings(verify=True, dns_timeout=1.0)
    )
    content = _message("news@shop.test", "offer") + (b"x" * 76 + b"\r\n") * (body_size // 78)
    _send(server, "news@shop.test", content)
    _send(server, "a@good.test", _message("a@good.test", "fine"))
    [junk] = _junk(server)
    stored = email.message_from_bytes(junk.read_bytes())
    assert stored["Subject"] == "offer"
    assert _result(_ours(stored), "dmarc").result == "fail"
    assert [message["Subject"] for message in _stored(server)] == ["fine"]


# --- the DMARC case table, end to end --------------------------------------------------------------

# Rows of tests/dmarc_support.py's table whose SPF input an SMTP client can produce (its DKIM
# input is none) and where OpenDMARC agrees with our expected verdict (no ``opendmarc``
# override): the server's Authentication-Results must say what the table says.
TABLE_ROWS = [
    case
    for case in CASES
    if not case.dkim and case.opendmarc is None and case.name not in ("no-record", "dns-timeout")
]


@pytest.fixture
def table_zone(dns_server: ZoneServer) -> DnsZone:
    zone = DnsZone()
    dmarc_support.publish(zone)
    for domain in ("bounce.example.com", "elsewhere.com", "example.net"):
        zone.txt(domain, "v=spf1 ip4:127.0.0.0/8 -all")
    for domain in ("example.com", "shop.example.com"):
        zone.txt(domain, "v=spf1 -all")
    dns_server.serve(zone)
    return zone


@pytest.mark.parametrize("case", TABLE_ROWS, ids=[case.name for case in TABLE_ROWS])
def test_results_match_the_dmarc_table(
    case: Case, server_factory: Callable[..., RunningServer], dns_server: ZoneServer, table_zone: DnsZone
) -> None:
    # No SPF verdict in the row: a MAIL FROM domain without any SPF record (spf=none).
    mail_from = f"bounce@{case.spf.domain}" if case.spf is not None else "bounce@unrelated.test"
    from_lines = "".join(f"From: {value}\r\n" for value in case.from_fields)
    content = f"{from_lines}To: {RECIPIENT}\r\nSubject: {case.name}\r\n\r\nHello.\r\n".encode()
    server = _verifying(server_factory, dns_server.address)
    expected = case.expected
    if expected.result == "fail" and expected.disposition == "reject":
        with (
            smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=20) as client,
            pytest.raises(smtplib.SMTPDataError) as refused,
        ):
            client.sendmail(mail_from, [RECIPIENT], content)
        assert refused.value.smtp_code == 550
        return
    _send(server, mail_from, content)
    junk = [email.message_from_bytes(path.read_bytes()) for path in _junk(server)]
    [stored] = junk or _stored(server)
    assert bool(junk) == (expected.disposition == "quarantine")
    dmarc_result = _result(_ours(stored), "dmarc")
    assert dmarc_result.result == expected.result
    if expected.policy is not None:
        assert dmarc_result.comment == f"p={expected.policy} dis={expected.disposition}"


# --- configuration -------------------------------------------------------------------------------


def test_verify_defaults_on_with_domains_and_off_in_capture_mode(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text('domains = ["example.test"]\n', encoding="utf-8")
    assert load_config(path).verify_authentication
    path.write_text("[authentication]\nskip_networks = []\n", encoding="utf-8")
    assert not load_config(path).verify_authentication
    path.write_text('[authentication]\nverify = true\nskip_networks = ["192.0.2.0/24"]\n', encoding="utf-8")
    config = load_config(path)
    assert config.verify_authentication
    assert config.authentication.skips_network("192.0.2.7")
    assert not config.authentication.skips_network("127.0.0.1")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('verify = "yes"', "authentication.verify"),
        ('skip_networks = ["not a network"]', "authentication.skip_networks"),
        ('dns_timeout = "soon"', "authentication.dns_timeout"),
        ("sign_everything = true", "authentication.sign_everything"),
    ],
)
def test_bad_authentication_settings_name_the_key_and_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text(f"[authentication]\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert problem in str(error.value) and str(path) in str(error.value)


def test_quarantined_mail_is_listed_as_junk_and_not_counted_unread(
    server_factory: Callable[..., RunningServer], dns_server: ZoneServer, zone: DnsZone
) -> None:
    """The web side lists the Junk copy with folder "Junk", finds it with in:junk, keeps it out
    of the unread count, and keeps it in Junk when it is read."""
    server = _verifying(server_factory, dns_server.address)
    _send(server, "news@shop.test", _message("news@shop.test", "offer"))
    _send(server, "a@good.test", _message("a@good.test", "fine"))
    server.index_idle()
    with client(server) as http:
        listed = {item["subject"]: item for item in messages(http)["messages"]}
        assert {subject: item["folder"] for subject, item in listed.items()} == {
            "offer": "Junk",
            "fine": "INBOX",
        }
        assert [item["subject"] for item in messages(http, q="in:junk")["messages"]] == ["offer"]
        assert [item["subject"] for item in messages(http, q="in:inbox")["messages"]] == ["fine"]
        assert [item["subject"] for item in messages(http, q="-in:junk")["messages"]] == ["fine"]
        assert http.get("/api/v1/mailboxes").json() == [{"address": RECIPIENT, "total": 2, "unread": 1}]
        junk = listed["offer"]
        assert http.get(f"/api/v1/messages/{junk['id']}").json()["folder"] == "Junk"
        marked = http.patch(f"/api/v1/messages/{junk['id']}", json={"read": True}, headers=csrf(http))
        assert marked.status_code == 200 and marked.json()["folder"] == "Junk"
        [read] = _junk_read(server)
        assert read.name.endswith(":2,S")  # the flag is set in .Junk/cur, not in the inbox
        assert http.get("/api/v1/mailboxes").json()[0]["unread"] == 1
        bad = http.get("/api/v1/messages", params={"q": "in:../x"})
        assert (bad.status_code, bad.json()) == (400, {"error": "in:../x: not a folder name"})


def _junk_read(server: RunningServer) -> list[Path]:
    local, _, domain = RECIPIENT.rpartition("@")
    return sorted((server.config.mail_dir / domain / local / ".Junk" / "cur").glob("*"))
