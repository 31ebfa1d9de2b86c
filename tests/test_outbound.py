"""Outbound mail end to end: a real postoffice server takes mail for a remote domain (an alias
with an external target, the path authenticated submission also feeds), finds the MX through a
DNS server on loopback and delivers to an independent MTA (aiosmtpd) or to a second postoffice.

The server's scheduler runs on an injected clock: tests move it forward and ask for due retries,
so backoff and expiry are checked to the second without waiting for them.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from conftest import RunningServer, maildir_messages
from mail_peers import Dns, Peer, dns_server, free_port, start_peer
from postoffice.accounts import Accounts
from postoffice.config import DeliverySettings, Listener, QueueSettings
from postoffice.smtp.replies import Reply

pytestmark = pytest.mark.timeout(60)

MX = "127.0.0.2"
DAY = 86400.0


class Clock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    dns: Dns
    port: int  # every MX listens on this port
    server: RunningServer
    clock: Clock
    peers: list[Peer] = field(default_factory=list)

    @property
    def mx(self) -> Peer:
        return self.peers[0]

    def send(
        self,
        to: tuple[str, ...] = ("fwd@local.test",),
        *,
        sender: str = "alice@local.test",
        subject: str = "hello",
        mail_options: tuple[str, ...] = (),
        rcpt_options: tuple[str, ...] = (),
    ) -> None:
        with smtplib.SMTP(self.server.host, self.server.port, timeout=10) as client:
            client.sendmail(
                sender,
                list(to),
                f"Subject: {subject}\r\nFrom: {sender}\r\n\r\nbody of {subject}\r\n",
                mail_options=list(mail_options),
                rcpt_options=list(rcpt_options),
            )

    def settle(self) -> None:
        self.server.wait_idle()

    def advance(self, seconds: float) -> None:
        """Move the clock on and run the retries that are due by then."""
        self.clock.now += seconds
        scheduler = self.server.app.scheduler

        async def run_due() -> None:
            scheduler.run_due()
            await scheduler.wait_idle()

        self.server.call(run_due())

    def deferred(self) -> dict[str, float]:
        return self.server.app.scheduler.deferred()

    def queue(self) -> list[str]:
        return self.server.app.spool.pending()

    def mailbox(self, address: str) -> list[EmailMessage]:
        self.settle()
        found = []
        for message in maildir_messages(self.server.config.mail_dir, address):
            parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            found.append(parsed)
        return found


def recipient_fields(report: EmailMessage) -> list[Any]:
    """The per-recipient field groups of a DSN's message/delivery-status part."""
    status = report.get_payload()[1]
    return list(status.get_payload()[1:])


@pytest.fixture
def world_factory(server_factory: Callable[..., RunningServer]) -> Iterator[Callable[..., World]]:
    worlds: list[World] = []
    with dns_server() as dns:

        def make(queue: QueueSettings | None = None, **delivery: Any) -> World:
            port = free_port("127.0.0.1", MX, "127.0.0.3")
            dns.zone.mx("remote.test", (10, "mx.remote.test"))
            dns.zone.a("mx.remote.test", MX)
            clock = Clock()
            server = server_factory(
                hostname="mx.local.test",
                domains=("local.test",),
                delivery=DeliverySettings(dns=dns.address, mx_port=port, connect_timeout=5, **delivery),
                queue=queue or QueueSettings(),
                app_options={"clock": clock},
            )
            accounts = Accounts(server.config.accounts_file)
            accounts.add_user("alice@local.test", "alice password")
            accounts.add_alias("fwd@local.test", ["bob@remote.test"])
            world = World(dns, port, server, clock)
            world.peers.append(start_peer(MX, port))
            worlds.append(world)
            return world

        yield make
        for world in worlds:
            for peer in world.peers:
                peer.stop()


@pytest.fixture
def world(world_factory: Callable[..., World]) -> World:
    return world_factory()


def test_mail_to_a_remote_domain_reaches_its_mx(world: World) -> None:
    world.send(subject="first")
    world.settle()
    [received] = world.mx.received
    assert received.mail_from == "alice@local.test" and received.rcpt_tos == ["bob@remote.test"]
    assert b"by mx.local.test (postoffice)" in received.content and b"body of first" in received.content
    assert world.queue() == []


def test_local_and_remote_recipients_of_one_message(world: World) -> None:
    world.send(to=("alice@local.test", "fwd@local.test"))
    assert len(world.mailbox("alice@local.test")) == 1
    assert world.mx.recipients() == ["bob@remote.test"]


def test_a_temporary_failure_is_retried_on_the_postfix_schedule(world: World) -> None:
    world.mx.behaviour.rcpt = lambda address: "451 4.3.0 Try again later"
    world.send()
    world.settle()
    [queue_id] = world.queue()
    assert world.deferred() == {queue_id: world.clock.now + 300}  # minimal_backoff_time

    delays = []
    for _ in range(6):
        due = world.deferred()[queue_id]
        delays.append(round(due - world.clock.now))
        world.advance(due - world.clock.now - 1)
        assert world.deferred()[queue_id] == due  # not a second early
        world.advance(1)
    assert delays == [300, 600, 1200, 2400, 4000, 4000]  # doubling up to maximal_backoff_time

    world.mx.behaviour.rcpt = lambda address: None
    world.advance(world.deferred()[queue_id] - world.clock.now)
    assert world.mx.recipients() == ["bob@remote.test"] and world.queue() == []
    # Every failed attempt was one connection; the one that worked delivered once.
    assert len(world.mx.received) == 1


def test_a_permanent_failure_bounces_to_the_sender(world: World) -> None:
    world.mx.behaviour.rcpt = lambda address: "550 5.1.1 <bob@remote.test>: no such user"
    world.send(subject="lost")
    [report] = world.mailbox("alice@local.test")
    assert world.queue() == []

    assert report["Return-Path"] == "<>"  # from the null sender: nobody bounces a bounce
    assert report.get_content_type() == "multipart/report"
    [bob] = recipient_fields(report)
    assert bob["Final-Recipient"] == "rfc822; bob@remote.test"
    assert bob["Original-Recipient"] == "rfc822; fwd@local.test"  # the alias it was sent to
    assert (bob["Action"], bob["Status"], bob["Remote-MTA"]) == ("failed", "5.1.1", "dns; mx.remote.test")
    assert "no such user" in bob["Diagnostic-Code"]
    assert "Subject: lost" in report.get_payload()[2].get_payload()


def test_a_domain_with_a_null_mx_bounces_at_once(world: World) -> None:
    world.dns.zone.mx("nomail.test", (0, "."))
    Accounts(world.server.config.accounts_file).add_alias("gone@local.test", ["x@nomail.test"])
    world.send(to=("gone@local.test",))
    [report] = world.mailbox("alice@local.test")
    [x] = recipient_fields(report)
    assert (x["Action"], x["Status"]) == ("failed", "5.1.10")
    assert world.mx.received == []


def test_after_the_queue_lifetime_the_sender_is_told(world: World) -> None:
    world.mx.behaviour.rcpt = lambda address: "451 4.3.0 Try again later"
    world.send(subject="never")
    world.settle()
    [queue_id] = world.queue()
    received_at = world.server.app.spool.load(queue_id).envelope.received_at
    while world.queue():
        world.advance(world.deferred()[queue_id] - world.clock.now)
    # The last attempt came exactly at the end of the 5 days (maximal_queue_lifetime).
    assert world.clock.now == pytest.approx(received_at + 5 * DAY, abs=1)
    [report] = world.mailbox("alice@local.test")
    [bob] = recipient_fields(report)
    assert (bob["Action"], bob["Status"]) == ("failed", "4.3.0")  # the last reply's status
    assert "Try again later" in bob["Diagnostic-Code"]


def test_notify_never_suppresses_the_bounce(world: World) -> None:
    world.mx.behaviour.rcpt = lambda address: "550 5.1.1 no such user"
    world.send(rcpt_options=("NOTIFY=NEVER",))
    world.settle()
    assert world.queue() == [] and world.mailbox("alice@local.test") == []


def test_notify_success_gets_a_relayed_report_from_a_server_without_dsn(world: World) -> None:
    world.send(rcpt_options=("NOTIFY=SUCCESS,FAILURE",), mail_options=("RET=HDRS", "ENVID=track-7"))
    [report] = world.mailbox("alice@local.test")
    assert "(Success)" in report["Subject"]
    assert report.get_payload()[1].get_payload()[0]["Original-Envelope-Id"] == "track-7"
    [bob] = recipient_fields(report)
    # aiosmtpd does not offer DSN, so the report is ours and says "relayed" (RFC 3461 §6.2.1).
    assert (bob["Action"], bob["Status"]) == ("relayed", "2.0.0")


def test_a_bounce_that_fails_is_not_bounced_again(world: World) -> None:
    world.mx.behaviour.rcpt = lambda address: "550 5.1.1 no such user"
    world.send(sender="")
    world.settle()
    assert world.queue() == [] and world.mailbox("alice@local.test") == []


def test_a_remote_sender_gets_the_bounce_at_its_own_mx(world: World) -> None:
    world.dns.zone.mx("elsewhere.test", (10, "mx.remote.test"))
    world.mx.behaviour.rcpt = lambda address: "550 5.1.1 no such user" if address.startswith("bob") else None
    world.send(sender="carol@elsewhere.test")
    world.settle()
    [report] = world.mx.received  # the bounce, back out through the same MX
    assert report.mail_from == "<>" and report.rcpt_tos == [
        "carol@elsewhere.test"
    ]  # aiosmtpd writes <> as is
    assert b"multipart/report" in report.content


def test_the_delay_warning_goes_out_once(world_factory: Callable[..., World]) -> None:
    world = world_factory(queue=QueueSettings(delay_warning_time=3600))
    world.mx.behaviour.rcpt = lambda address: "451 4.3.0 Try again later"
    world.send()
    world.settle()
    [queue_id] = world.queue()
    for _ in range(6):  # 300 + 600 + 1200 + 2400 + ... seconds: well past the hour
        world.advance(world.deferred()[queue_id] - world.clock.now)
    [warning] = world.mailbox("alice@local.test")
    assert "(Delay)" in warning["Subject"]
    [bob] = recipient_fields(warning)
    assert (bob["Action"], bob["Status"]) == ("delayed", "4.3.0") and bob["Will-Retry-Until"]
    assert world.queue() == [queue_id]


def test_deliveries_to_one_destination_are_limited(world_factory: Callable[..., World]) -> None:
    # The window starts at destination_concurrency and may grow to the limit; both are 2 here.
    world = world_factory(queue=QueueSettings(destination_concurrency=2, destination_concurrency_limit=2))
    world.mx.behaviour.data_delay = 0.2
    for n in range(6):
        world.send(subject=f"m{n}")
    world.settle()
    assert len(world.mx.received) == 6
    assert world.mx.handler.most_active == 2


def test_a_second_postoffice_is_the_mx(
    world_factory: Callable[..., World], server_factory: Callable[..., RunningServer]
) -> None:
    world = world_factory()
    world.peers[0].stop()  # the MX is postoffice this time, not aiosmtpd
    transcript: list[str] = []

    class Observer:
        def client_said(self, session_id: str, peer: str, line: str) -> None:
            transcript.append(line)

        def server_said(self, session_id: str, peer: str, reply: Reply) -> None:
            pass

    remote = server_factory(
        hostname="mx.remote.test",
        domains=("remote.test",),
        listeners=(Listener("smtp", MX, world.port),),
        app_options={"observer": Observer()},
    )
    Accounts(remote.config.accounts_file).add_user("bob@remote.test", "bob password")

    world.send(
        subject="between servers",
        mail_options=("RET=HDRS", "ENVID=abc+2Bdef"),
        rcpt_options=("NOTIFY=SUCCESS,FAILURE",),
    )
    world.settle()
    [delivered] = remote.messages("bob@remote.test")
    assert delivered["Subject"] == "between servers"
    assert delivered["Return-Path"] == "<alice@local.test>"
    # The DSN request travelled on (RFC 3461 §4), so reporting success is the next server's job.
    [mail] = [line for line in transcript if line.startswith("MAIL")]
    [rcpt] = [line for line in transcript if line.startswith("RCPT")]
    assert "RET=HDRS" in mail and "ENVID=abc+2Bdef" in mail
    assert "NOTIFY=SUCCESS,FAILURE" in rcpt
    assert world.mailbox("alice@local.test") == []


def test_hold_keeps_a_message_and_release_lets_it_go(world: World) -> None:
    from postoffice.qmgr import admin

    world.mx.behaviour.rcpt = lambda address: "451 4.3.0 Try again later"
    world.send()
    world.settle()
    [queue_id] = world.queue()
    spool = world.server.app.spool
    admin.hold(spool, queue_id)
    world.mx.behaviour.rcpt = lambda address: None
    world.advance(DAY)  # long past its retry time: held, so nothing happens
    assert world.mx.received == [] and world.deferred() == {} and world.queue() == [queue_id]

    admin.release(spool, queue_id)
    world.server.call(world.server.app.scheduler.rescan())
    world.settle()
    assert world.mx.recipients() == ["bob@remote.test"] and world.queue() == []


def test_a_restart_resumes_the_schedule_and_redelivers_nothing(
    world: World, server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    world.mx.behaviour.rcpt = lambda address: None if address == "bob@remote.test" else "451 4.3.0 later"
    Accounts(world.server.config.accounts_file).add_alias(
        "both@local.test", ["bob@remote.test", "dan@remote.test"]
    )
    world.send(to=("both@local.test",))
    world.settle()
    [queue_id] = world.queue()
    due = world.deferred()[queue_id]
    assert world.mx.recipients() == ["bob@remote.test"]
    world.server.stop()

    clock = Clock()
    clock.now = world.clock.now
    again = server_factory(
        data_dir=world.server.config.data_dir,
        hostname="mx.local.test",
        domains=("local.test",),
        delivery=world.server.config.delivery,
        app_options={"clock": clock},
    )
    again.wait_idle()
    assert again.app.scheduler.deferred() == {queue_id: due}  # the schedule survived
    world.mx.behaviour.rcpt = lambda address: None
    clock.now = due

    async def run_due() -> None:
        again.app.scheduler.run_due()
        await again.app.scheduler.wait_idle()

    again.call(run_due())
    # dan got it once; bob, delivered before the restart, was not sent it again.
    assert world.mx.recipients() == ["bob@remote.test", "dan@remote.test"]
    assert again.app.spool.pending() == []
