"""TLS reporting (RFC 8460) of MTA-STS and DANE: each session counted under the policy it was held
to (``sts`` with the policy's lines and MX patterns, ``tlsa`` with the records), and the failures
that come before a session or instead of one (an MX host an enforced policy does not list, a
certificate no TLSA record matches, a policy that cannot be fetched) counted with their §4.3
result types. Real peers on loopback: a dnslib DNS server, an HTTPS policy host, aiosmtpd MTAs;
end to end, a running server's deferral shows in the next day's report."""

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

import pytest
import trustme

from conftest import RunningServer
from mail_peers import Dns, dns_server, free_port, peers
from postoffice.accounts import Accounts
from postoffice.config import DeliverySettings
from postoffice.delivery.agent import Delivered, DeliveryResult, TempFail
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.mtasts import StsPolicies
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.delivery.tls_policy import TransportSecurity
from postoffice.delivery.tlsrpt import Count, TlsPolicy, TlsReportStore, day_of
from postoffice.spool.envelope import Envelope, Recipient, Route
from postoffice.spool.files import FileSpool
from sts_support import Answer, policy, policy_host
from test_dane import leaf, mx_at, spki_sha256, tlsa_name

pytestmark = pytest.mark.timeout(60)

MX1, WEB = "127.0.0.2", "127.0.0.5"
STS, DANE = "sts.test", "dane.test"
STS_LINES = ("version: STSv1", "mode: enforce", "mx: *.elsewhere.test", "max_age: 86400")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def dns() -> Iterator[Dns]:
    with dns_server() as server:
        server.zone.mx(STS, (10, f"mx1.{STS}"))
        server.zone.a(f"mx1.{STS}", MX1)
        server.zone.a(f"mta-sts.{STS}", WEB)
        server.zone.txt(f"_mta-sts.{STS}", "v=STSv1; id=first;")
        server.zone.mx(DANE, (10, f"mx1.{DANE}"))
        server.zone.a(f"mx1.{DANE}", MX1)
        server.zone.authenticated.add(DANE)
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TlsReportStore]:
    opened = TlsReportStore(tmp_path / "data")
    yield opened
    opened.close()


def make_agent(
    tmp_path: Path, dns: Dns, store: TlsReportStore, mx_port: int, ca: trustme.CA, web_port: int = 443
) -> RemoteAgent:
    resolver = MxResolver(dns.address, timeout=2.0, rng=random.Random(0))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sts = StsPolicies(resolver, None, context, port=web_port, timeout=5.0)
    security = TransportSecurity(resolver, sts, dane=True, reports=store)
    settings = RemoteSettings(
        hostname="mx.sender.test", mx_port=mx_port, ca_file=ca_file, connect_timeout=5.0, command_timeout=10.0
    )
    return RemoteAgent(settings, resolver, FileSpool(tmp_path / "spool"), security, tls_reports=store)


async def deliver(agent: RemoteAgent, address: str) -> DeliveryResult:
    spool = agent._spool
    recipient = Recipient(address, address, Route.REMOTE)
    writer = spool.put(Envelope("a@sender.test", (recipient,), received_at=time.time()))
    writer.write(b"Subject: tlsrpt\r\n\r\nhello\r\n")
    message = await writer.commit()
    try:
        [result] = await agent.deliver(message, message.envelope.recipients)
    finally:
        await agent.close()
    return result


def today(store: TlsReportStore, domain: str) -> list[Count]:
    return store.counts(day_of(time.time()), domain)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    return leaf(ca, *names)[0]


# --- MTA-STS ------------------------------------------------------------------------------------


async def test_an_mx_an_enforced_policy_does_not_list_is_a_validation_failure_under_sts(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    answer = Answer(policy("enforce", "*.elsewhere.test"))
    with (
        policy_host(WEB, ca, f"mta-sts.{STS}", answer=answer) as web,
        peers(MX1, tls_context=server_context(ca, f"mx1.{STS}")) as [mx],
    ):
        result = await deliver(make_agent(tmp_path, dns, store, mx.port, ca, web.port), f"bob@{STS}")
    assert isinstance(result, TempFail) and mx.received == []
    [count] = today(store, STS)
    assert count.policy == TlsPolicy("sts", STS_LINES, ("*.elsewhere.test",))
    assert (count.result_type, count.receiving_mx, count.receiving_ip) == (
        "validation-failure",
        f"mx1.{STS}",
        MX1,
    )


async def test_a_session_under_an_enforced_policy_counts_as_a_success_under_sts(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    answer = Answer(policy("enforce", f"mx1.{STS}"))
    with (
        policy_host(WEB, ca, f"mta-sts.{STS}", answer=answer) as web,
        peers(MX1, tls_context=server_context(ca, f"mx1.{STS}")) as [mx],
    ):
        result = await deliver(make_agent(tmp_path, dns, store, mx.port, ca, web.port), f"bob@{STS}")
    assert isinstance(result, Delivered)
    [count] = today(store, STS)
    assert count.result_type == "" and count.policy.type == "sts" and count.policy.mx_hosts == (f"mx1.{STS}",)
    assert "mode: enforce" in count.policy.strings


async def test_an_unlisted_mx_under_a_testing_policy_is_counted_once_as_a_failure(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    answer = Answer(policy("testing", "*.elsewhere.test"))
    with (
        policy_host(WEB, ca, f"mta-sts.{STS}", answer=answer) as web,
        peers(MX1, tls_context=server_context(ca, f"mx1.{STS}")) as [mx],
    ):
        result = await deliver(make_agent(tmp_path, dns, store, mx.port, ca, web.port), f"bob@{STS}")
    assert isinstance(result, Delivered)  # testing: delivered all the same
    assert [(c.policy.type, c.result_type, c.count) for c in today(store, STS)] == [
        ("sts", "validation-failure", 1)
    ]


@pytest.mark.parametrize(
    ("answer", "trusted", "result_type"),
    [
        (Answer(b"not found", status=404), True, "sts-policy-fetch-error"),
        (Answer(b"version: STSv1\r\nmode: sometimes\r\n"), True, "sts-policy-invalid"),
        (Answer(policy("enforce", f"mx1.{STS}")), False, "sts-webpki-invalid"),
    ],
)
async def test_a_policy_that_cannot_be_had_is_counted_with_its_result_type(
    tmp_path: Path,
    dns: Dns,
    store: TlsReportStore,
    ca: trustme.CA,
    answer: Answer,
    trusted: bool,
    result_type: str,
) -> None:
    host_ca = ca if trusted else trustme.CA()
    with (
        policy_host(WEB, host_ca, f"mta-sts.{STS}", answer=answer) as web,
        peers(MX1, tls_context=server_context(ca, f"mx1.{STS}")) as [mx],
    ):
        result = await deliver(make_agent(tmp_path, dns, store, mx.port, ca, web.port), f"bob@{STS}")
    assert isinstance(result, Delivered)  # no policy: delivered as before
    counted = {(c.policy.type, c.result_type) for c in today(store, STS)}
    assert ("sts", result_type) in counted
    assert ("no-policy-found", "") in counted  # the session itself, opportunistic


# --- DANE ---------------------------------------------------------------------------------------


async def test_a_certificate_matching_no_tlsa_record_is_tlsa_invalid_and_not_a_success(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    port = free_port(MX1)
    context, _ = leaf(ca, f"mx1.{DANE}")
    _, other = leaf(ca, f"mx1.{DANE}")
    dns.zone.tlsa(tlsa_name(f"mx1.{DANE}", port), 3, 1, 1, spki_sha256(other))
    with mx_at(port, tls_context=context) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, store, port, ca), f"bob@{DANE}")
    assert isinstance(result, TempFail) and mx.received == []
    [count] = today(store, DANE)
    assert count.result_type == "tlsa-invalid" and count.receiving_mx == f"mx1.{DANE}"
    assert count.policy == TlsPolicy("tlsa", (f"3 1 1 {spki_sha256(other).hex().upper()}",))


async def test_a_dane_session_counts_as_a_success_under_its_tlsa_records(
    tmp_path: Path, dns: Dns, store: TlsReportStore, ca: trustme.CA
) -> None:
    port = free_port(MX1)
    context, certificate = leaf(ca, f"mx1.{DANE}")
    dns.zone.tlsa(tlsa_name(f"mx1.{DANE}", port), 3, 1, 1, spki_sha256(certificate))
    with mx_at(port, tls_context=context) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, store, port, ca), f"bob@{DANE}")
    assert isinstance(result, Delivered) and mx.received[0].tls
    [count] = today(store, DANE)
    assert count.result_type == "" and count.count == 1
    assert count.policy == TlsPolicy("tlsa", (f"3 1 1 {spki_sha256(certificate).hex().upper()}",))


# --- end to end: a running server's deferral in the next day's report --------------------------


def test_a_deferral_to_an_enforced_domain_is_in_the_next_daily_report(
    server_factory: Callable[..., RunningServer], dns: Dns, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # The report goes to the domain itself, whose MX the policy refuses: it waits in the queue,
    # where the test reads it.
    dns.zone.txt(f"_smtp._tls.{STS}", f"v=TLSRPTv1; rua=mailto:tls-reports@{STS}")
    answer = Answer(policy("enforce", "*.elsewhere.test"))
    with (
        policy_host(WEB, ca, f"mta-sts.{STS}", answer=answer) as web,
        peers(MX1, tls_context=server_context(ca, f"mx1.{STS}")) as [mx],
    ):
        delivery = DeliverySettings(
            dns=dns.address, mx_port=mx.port, connect_timeout=5, tls_ca_file=ca_file, mta_sts_port=web.port
        )
        clock = [time.time()]
        server = server_factory(
            hostname="mx.local.test",
            domains=("local.test",),
            delivery=delivery,
            app_options={"clock": lambda: clock[0]},
        )
        Accounts(server.config.accounts_file).add_alias("fwd@local.test", [f"bob@{STS}"])
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.sendmail("alice@local.test", ["fwd@local.test"], b"Subject: sts\r\n\r\nhello\r\n")
        server.wait_idle()
        assert mx.received == []

        clock[0] += 86400  # the next day: today's report is due
        daily = server.app.daily_reports
        assert daily is not None
        [sent] = server.call(daily.sender.send_due())
        assert sent.domain == STS and sent.queued is not None
        with server.app.spool.open(sent.queued.queue_id) as content:
            message = email.message_from_bytes(content.read(), policy=email.policy.default)
    report = json.loads(gzip.decompress(list(message.iter_parts())[1].get_content()))
    [described] = report["policies"]
    assert described["policy"]["policy-type"] == "sts"
    assert described["policy"]["policy-string"] == list(STS_LINES)
    assert described["policy"]["mx-host"] == ["*.elsewhere.test"]
    assert described["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}
    [detail] = described["failure-details"]
    assert detail["result-type"] == "validation-failure"
    assert detail["receiving-mx-hostname"] == f"mx1.{STS}" and detail["receiving-ip"] == MX1
