"""TLS reporting at the source: the remote agent counts each MX session's TLS result (RFC 8460
§4.3) for the recipients' domain, against aiosmtpd peers on loopback with trustme certificates;
and a running server counts into its data directory."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import random
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
import trustme

from conftest import RunningServer, wait_until
from dkim_support import txt_dns
from dns_zone import DnsZone, dns_zone_server
from mail_peers import Dns, dns_server, free_port, peers, start_peer
from postoffice.accounts import Accounts
from postoffice.config import AuthenticationSettings, DeliverySettings
from postoffice.delivery.agent import Delivered, DeliveryResult
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.delivery.tlsrpt import NO_POLICY, Count, TlsReportStore, day_of
from postoffice.mailauth import dkim_keys
from postoffice.spool.envelope import Envelope, Recipient, Route
from postoffice.spool.files import FileSpool

pytestmark = pytest.mark.timeout(60)

MX1 = "127.0.0.2"
DOMAIN = "remote.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
def dns() -> Iterator[Dns]:
    with dns_server() as server:
        server.zone.mx(DOMAIN, (10, "mx1.remote.test"))
        server.zone.a("mx1.remote.test", MX1)
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TlsReportStore]:
    opened = TlsReportStore(tmp_path / "data")
    yield opened
    opened.close()


async def deliver_once(
    tmp_path: Path, dns: Dns, store: TlsReportStore, port: int, ca: trustme.CA, **settings: object
) -> DeliveryResult:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    spool = FileSpool(tmp_path / "spool")
    agent = RemoteAgent(
        RemoteSettings(  # type: ignore[arg-type]
            hostname="mx.sender.test", mx_port=port, ca_file=ca_file, connect_timeout=5.0, **settings
        ),
        MxResolver(dns.address, timeout=2.0, rng=random.Random(0)),
        spool,
        tls_reports=store,
    )
    recipient = Recipient(f"bob@{DOMAIN}", f"bob@{DOMAIN}", Route.REMOTE)
    writer = spool.put(Envelope("a@sender.test", (recipient,), time.time()))
    writer.write(b"Subject: x\r\n\r\nhello\r\n")
    message = await writer.commit()
    try:
        [result] = await agent.deliver(message, message.envelope.recipients)
    finally:
        await agent.close()
    return result


def today(store: TlsReportStore) -> list[Count]:
    return store.counts(day_of(time.time()), DOMAIN)


async def test_a_session_over_starttls_counts_as_a_success(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    with peers(MX1, tls_context=server_context(ca, "elsewhere.test")) as [peer]:
        assert isinstance(await deliver_once(tmp_path, dns, store, peer.port, ca), Delivered)
    [count] = today(store)
    assert (count.policy.type, count.result_type, count.count) == ("no-policy-found", "", 1)


async def test_a_server_without_starttls_is_starttls_not_supported(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    with peers(MX1) as [peer]:
        assert isinstance(await deliver_once(tmp_path, dns, store, peer.port, ca), Delivered)
    [count] = today(store)
    assert (count.result_type, count.receiving_mx, count.receiving_ip) == (
        "starttls-not-supported",
        "mx1.remote.test",
        MX1,
    )
    assert count.sending_ip.startswith("127.")


async def test_a_checked_certificate_for_another_name_is_a_host_mismatch(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    with peers(MX1, tls_context=server_context(ca, "impostor.test")) as [peer]:
        result = await deliver_once(tmp_path, dns, store, peer.port, ca, tls_policy={DOMAIN: "verify"})
    assert not isinstance(result, Delivered)
    assert [(c.result_type, c.count) for c in today(store)] == [("certificate-host-mismatch", 1)]


async def test_a_certificate_from_an_unknown_ca_is_not_trusted(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    with peers(MX1, tls_context=server_context(trustme.CA(), "mx1.remote.test")) as [peer]:
        await deliver_once(tmp_path, dns, store, peer.port, ca, tls_policy={DOMAIN: "verify"})
    assert [c.result_type for c in today(store)] == ["certificate-not-trusted"]


async def test_the_relay_is_not_reported_on(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    with peers(MX1) as [peer]:
        await deliver_once(tmp_path, dns, store, 25, ca, relay=(MX1, peer.port), relay_tls="none")
    assert today(store) == []


def test_a_running_server_counts_into_its_data_directory(
    server_factory: Callable[..., RunningServer], dns: Dns
) -> None:
    port = free_port("127.0.0.1", MX1)
    peer = start_peer(MX1, port)
    try:
        server = server_factory(
            hostname="mx.local.test",
            domains=("local.test",),
            delivery=DeliverySettings(dns=dns.address, mx_port=port, connect_timeout=5),
        )
        Accounts(server.config.accounts_file).add_alias("fwd@local.test", [f"bob@{DOMAIN}"])
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.sendmail("alice@local.test", ["fwd@local.test"], "Subject: x\r\n\r\nhello\r\n")
        wait_until(lambda: len(peer.received) == 1, what="the delivery")
        server.wait_idle()
    finally:
        peer.stop()
    store = TlsReportStore(server.config.data_dir)
    assert [c.result_type for c in today(store)] == ["starttls-not-supported"]
    store.close()


def test_a_server_sends_yesterdays_report_through_its_queue_signed(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """At start the server reports finished days: the report goes through its own queue to the
    rua domain's MX (an aiosmtpd peer), DKIM-signed with the host's domain key."""
    data = tmp_path / "reporting-server"
    key = dkim_keys.generate(data, "local.test", "s1")
    store = TlsReportStore(data)
    store.record_success(DOMAIN, at=time.time() - 86400)
    store.record_failure(
        DOMAIN, NO_POLICY, "starttls-not-supported", "127.0.0.1", "mx1.remote.test", at=time.time() - 86400
    )
    store.close()
    port = free_port("127.0.0.1", MX1)
    peer = start_peer(MX1, port)
    zone = DnsZone()
    zone.mx(DOMAIN, 10, "mx1.remote.test")
    zone.a("mx1.remote.test", MX1)
    zone.txt(f"_smtp._tls.{DOMAIN}", f"v=TLSRPTv1; rua=mailto:tls-reports@{DOMAIN}")
    try:
        with dns_zone_server(zone) as dns:
            server_factory(
                data_dir=data,
                hostname="mx.local.test",
                domains=("local.test",),
                delivery=DeliverySettings(dns=dns.address, mx_port=port, connect_timeout=5),
                authentication=AuthenticationSettings(verify=False, sign=True),
            )
            wait_until(lambda: len(peer.received) == 1, what="the report")
    finally:
        peer.stop()
    [received] = peer.received
    assert received.mail_from == "<>" and received.rcpt_tos == [f"tls-reports@{DOMAIN}"]
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    assert message["TLS-Report-Domain"] == DOMAIN and message["TLS-Report-Submitter"] == "mx.local.test"
    report = json.loads(gzip.decompress(list(message.iter_parts())[1].get_content()))
    assert report["policies"][0]["summary"] == {
        "total-successful-session-count": 1,
        "total-failure-session-count": 1,
    }
    with txt_dns({key.record_name: [key.record()]}) as keys_dns:
        assert dkim.verify(received.content, dnsfunc=keys_dns.dkimpy_dnsfunc())
