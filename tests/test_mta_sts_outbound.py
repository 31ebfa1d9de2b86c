"""Outbound MTA-STS (RFC 8461) against real peers on loopback: the policy host is an HTTPS server
whose certificate a trustme CA signs, found through a dnslib DNS server (``mta-sts.DOMAIN`` ->
127.0.0.5), the MX hosts are aiosmtpd MTAs. Each test checks what was delivered, what was not,
and the one log line a policy problem gets."""

from __future__ import annotations

import json
import logging
import random
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from conftest import RunningServer
from mail_peers import Dns, dns_server, peers
from postoffice.accounts import Accounts
from postoffice.config import DeliverySettings
from postoffice.delivery.agent import Delivered, DeliveryResult, TempFail
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.mtasts import StsPolicies
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.delivery.tls_policy import TransportSecurity
from postoffice.qmgr.admin import list_queue
from postoffice.spool.envelope import Envelope, Recipient, Route
from postoffice.spool.files import FileSpool
from sts_support import Answer, PolicyHost, policy, policy_host

pytestmark = pytest.mark.timeout(60)

MX1, MX2, WEB = "127.0.0.2", "127.0.0.3", "127.0.0.5"
DOMAIN = "sts.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def dns() -> Iterator[Dns]:
    with dns_server() as server:
        server.zone.mx(DOMAIN, (10, "mx1.sts.test"))
        server.zone.a("mx1.sts.test", MX1)
        server.zone.a(f"mta-sts.{DOMAIN}", WEB)
        server.zone.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=first;")
        yield server


@pytest.fixture
def web(ca: trustme.CA) -> Iterator[PolicyHost]:
    with policy_host(WEB, ca, f"mta-sts.{DOMAIN}", answer=Answer(policy("enforce", "mx1.sts.test"))) as host:
        yield host


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def make_agent(
    tmp_path: Path, dns: Dns, mx_port: int, web_port: int, ca_file: Path, *, fetch_timeout: float = 5.0
) -> RemoteAgent:
    resolver = MxResolver(dns.address, timeout=2.0, rng=random.Random(0))
    context = ssl.create_default_context(cafile=str(ca_file))
    sts = StsPolicies(resolver, tmp_path / "mta-sts", context, port=web_port, timeout=fetch_timeout)
    settings = RemoteSettings(
        hostname="mx.sender.test", mx_port=mx_port, ca_file=ca_file, connect_timeout=5.0, command_timeout=10.0
    )
    return RemoteAgent(
        settings, resolver, FileSpool(tmp_path / "spool"), TransportSecurity(resolver, sts, dane=False)
    )


async def deliver(agent: RemoteAgent, address: str = f"bob@{DOMAIN}") -> DeliveryResult:
    spool = agent._spool
    recipient = Recipient(address, address, Route.REMOTE)
    writer = spool.put(Envelope("a@sender.test", (recipient,), received_at=time.time()))
    writer.write(b"Subject: sts\r\n\r\nhello\r\n")
    message = await writer.commit()
    try:
        [result] = await agent.deliver(message, message.envelope.recipients)
    finally:
        await agent.close()
    return result


def policy_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "mta-sts" in r.getMessage() or "tls_result" in r.getMessage()
    ]


async def test_a_listed_mx_with_a_valid_certificate_gets_the_mail(
    tmp_path: Path, dns: Dns, web: PolicyHost, ca: trustme.CA, ca_file: Path
) -> None:
    with peers(MX1, tls_context=server_context(ca, "mx1.sts.test")) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
    assert isinstance(result, Delivered) and mx.received[0].tls
    assert web.requests == [(f"mta-sts.{DOMAIN}:{web.port}", "/.well-known/mta-sts.txt")]


async def test_an_mx_the_enforced_policy_does_not_list_is_not_delivered_to(
    tmp_path: Path, dns: Dns, ca: trustme.CA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answer = Answer(policy("enforce", "*.elsewhere.test"))
    mx_tls = server_context(ca, "mx1.sts.test")
    with (
        policy_host(WEB, ca, f"mta-sts.{DOMAIN}", answer=answer) as web,
        peers(MX1, tls_context=mx_tls) as [mx],
    ):
        result = await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
    assert isinstance(result, TempFail) and result.reply.code == 451 and result.reply.enhanced == "4.7.5"
    assert "does not allow the MX host mx1.sts.test" in result.reply.text
    assert mx.received == [] and mx.handler.hellos == 0  # not even connected to
    assert any("tls_result=validation-failure" in line for line in policy_lines(caplog))


async def test_an_enforced_policy_needs_a_certificate_valid_for_the_mx_name(
    tmp_path: Path, dns: Dns, web: PolicyHost, ca: trustme.CA, ca_file: Path
) -> None:
    with peers(MX1, tls_context=server_context(ca, "impostor.test")) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5"
    assert "MTA-STS policy of sts.test requires authenticated TLS" in result.reply.text
    assert mx.received == []


async def test_an_enforced_policy_never_falls_back_to_plaintext(
    tmp_path: Path, dns: Dns, web: PolicyHost, ca_file: Path
) -> None:
    with peers(MX1) as [mx]:  # no STARTTLS at all
        result = await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5"
    assert mx.received == []


async def test_testing_mode_delivers_and_logs(
    tmp_path: Path, dns: Dns, ca: trustme.CA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answer = Answer(policy("testing", "mx.elsewhere.test"))
    with policy_host(WEB, ca, f"mta-sts.{DOMAIN}", answer=answer) as web, peers(MX1) as [mx]:
        caplog.set_level(logging.INFO, "postoffice.delivery")
        result = await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
    assert isinstance(result, Delivered) and len(mx.received) == 1
    assert any(
        "policy=mta-sts-testing tls_result=validation-failure" in line for line in policy_lines(caplog)
    )


async def test_the_policy_is_cached_durably_and_refetched_when_the_id_changes(
    tmp_path: Path, dns: Dns, web: PolicyHost, ca: trustme.CA, ca_file: Path
) -> None:
    with peers(MX1, tls_context=server_context(ca, "mx1.sts.test")) as [mx]:
        await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
        # A new agent (a restart) reads the cache: no second fetch for the same id.
        await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
        assert len(web.requests) == 1
        cached = json.loads((tmp_path / "mta-sts" / f"{DOMAIN}.json").read_text())
        assert cached["id"] == "first" and "mode: enforce" in cached["policy"]

        dns.zone.records[f"_mta-sts.{DOMAIN}."].clear()
        dns.zone.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=second")
        web.answer = Answer(policy("enforce", "mx9.sts.test"))
        result = await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
    assert len(web.requests) == 2
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5"  # the new policy applies
    assert len(mx.received) == 2


async def test_a_cached_policy_outlives_its_txt_record_and_its_host(
    tmp_path: Path, dns: Dns, ca: trustme.CA, ca_file: Path
) -> None:
    # An attacker who strips the TXT record and blocks the policy host gains nothing (§5.1).
    answer = Answer(policy("enforce", "mx9.sts.test"))
    mx_tls = server_context(ca, "mx1.sts.test")
    with (
        policy_host(WEB, ca, f"mta-sts.{DOMAIN}", answer=answer) as web,
        peers(MX1, tls_context=mx_tls) as [mx],
    ):
        await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
    dns.zone.records[f"_mta-sts.{DOMAIN}."].clear()
    with peers(MX1) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
    assert isinstance(result, TempFail) and result.reply.enhanced == "4.7.5" and mx.received == []


# --- bad policy hosts: each is one log line, and delivery as if there were no policy ------------


BAD_ANSWERS = {
    "huge": (Answer(policy("enforce", "mx9.sts.test") + b"x" * 70_000), "larger than 65536 bytes"),
    "malformed": (Answer(b"version: STSv1\r\nmode: enforce\r\nmx: mx9.sts.test\r\n"), "max_age is missing"),
    "redirect": (
        Answer(status=301, headers={"Location": "https://elsewhere.test/"}),
        "a redirect, not followed",
    ),
    "html": (Answer(policy("enforce", "mx9.sts.test"), content_type="text/html"), "not text/plain"),
    "slow": (Answer(policy("enforce", "mx9.sts.test"), delay=3.0), "no complete answer within 1s"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
async def test_a_bad_policy_is_one_log_line_and_no_policy(
    case: str, tmp_path: Path, dns: Dns, ca: trustme.CA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answer, reason = BAD_ANSWERS[case]
    with policy_host(WEB, ca, f"mta-sts.{DOMAIN}", answer=answer) as web, peers(MX1) as [mx]:
        agent = make_agent(tmp_path, dns, mx.port, web.port, ca_file, fetch_timeout=1.0)
        result = await deliver(agent)
    assert isinstance(result, Delivered) and len(mx.received) == 1
    [line] = [line for line in policy_lines(caplog) if "mta-sts-unusable" in line]
    assert reason in line and "policy=none" in line
    assert not (tmp_path / "mta-sts" / f"{DOMAIN}.json").exists()


async def test_a_failed_fetch_is_not_repeated_for_every_message(
    tmp_path: Path, dns: Dns, ca: trustme.CA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answer = Answer(b"not a policy\r\n")
    with policy_host(WEB, ca, f"mta-sts.{DOMAIN}", answer=answer) as web, peers(MX1) as [mx]:
        agent = make_agent(tmp_path, dns, mx.port, web.port, ca_file)
        for _ in range(3):
            assert isinstance(await deliver(agent), Delivered)
        assert len(web.requests) == 1 and len(mx.received) == 3
        # A new id is a new policy: fetched at once.
        dns.zone.records[f"_mta-sts.{DOMAIN}."].clear()
        dns.zone.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=second")
        await deliver(agent)
        assert len(web.requests) == 2
    assert len([line for line in policy_lines(caplog) if "mta-sts-unusable" in line]) == 2


@pytest.mark.parametrize("tls", ["plain-http", "wrong-name", "unknown-ca"])
async def test_a_policy_host_without_a_valid_certificate_is_no_policy(
    tls: str, tmp_path: Path, dns: Dns, ca: trustme.CA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = {"plain-http": None, "wrong-name": ca, "unknown-ca": trustme.CA()}[tls]
    name = "mta-sts.elsewhere.test" if tls == "wrong-name" else f"mta-sts.{DOMAIN}"
    answer = Answer(policy("enforce", "mx9.sts.test"))
    with policy_host(WEB, issuer, name, answer=answer) as web, peers(MX1) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file, fetch_timeout=2.0))
    assert isinstance(result, Delivered)
    [line] = [line for line in policy_lines(caplog) if "mta-sts-unusable" in line]
    assert "mta-sts.sts.test" in line
    if tls != "plain-http":
        assert "certificate not accepted" in line


async def test_a_damaged_cache_file_is_only_a_miss(
    tmp_path: Path, dns: Dns, web: PolicyHost, ca: trustme.CA, ca_file: Path
) -> None:
    (tmp_path / "mta-sts").mkdir()
    (tmp_path / "mta-sts" / f"{DOMAIN}.json").write_bytes(
        b'{"id": "first", "fetched": 1e20, "policy": "junk"}'
    )
    with peers(MX1, tls_context=server_context(ca, "mx1.sts.test")) as [mx]:
        result = await deliver(make_agent(tmp_path, dns, mx.port, web.port, ca_file))
    assert isinstance(result, Delivered) and len(web.requests) == 1


# --- end to end: a running server, its queue --------------------------------------------------


def test_the_queue_shows_the_deferral_and_the_listed_mx_gets_the_mail(
    server_factory: Callable[..., RunningServer], dns: Dns, ca: trustme.CA, ca_file: Path
) -> None:
    mx_tls = server_context(ca, "mx1.sts.test", "mx2.sts.test")
    answer = Answer(policy("enforce", "mx2.sts.test"))
    with (
        policy_host(WEB, ca, f"mta-sts.{DOMAIN}", answer=answer) as web,
        peers(MX1, tls_context=mx_tls) as [mx],
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
        Accounts(server.config.accounts_file).add_alias("fwd@local.test", [f"bob@{DOMAIN}"])
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.sendmail("alice@local.test", ["fwd@local.test"], b"Subject: sts\r\n\r\nhello\r\n")
        server.wait_idle()
        [entry] = list_queue(server.app.spool)
        [status] = entry.recipients()
        assert status.status == "deferred" and status.reply is not None
        assert (status.reply.code, status.reply.enhanced) == (451, "4.7.5") and mx.received == []

        # The domain lists the MX after all (a new id): the retry delivers over verified TLS.
        dns.zone.records[f"_mta-sts.{DOMAIN}."].clear()
        dns.zone.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=second")
        web.answer = Answer(policy("enforce", "*.sts.test"))
        scheduler = server.app.scheduler

        async def retry() -> None:
            clock[0] += 3600  # past the first retry
            scheduler.run_due()
            await scheduler.wait_idle()

        server.call(retry())
        assert len(mx.received) == 1 and mx.received[0].tls and list_queue(server.app.spool) == []
