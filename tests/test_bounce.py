"""Delivery status notifications (RFC 3464) as the sender receives them, parsed with the stdlib
email package: structure, fields, returned content, and who never gets one."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from postoffice.qmgr.bounce import Bouncer, ReportItem, status_code, wants_report
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool

ORIGINAL = (
    b"Received: from client.test by mx.test\r\n"
    b"Subject: quarterly report\r\n"
    b"From: alice@sender.test\r\n"
    b"\r\n"
    b"The numbers are in.\r\n"
)
NOW = 1_750_000_000.0


@pytest.fixture
def spool(tmp_path: Path) -> FileSpool:
    return FileSpool(tmp_path / "spool")


def bouncer(spool: FileSpool, sender_mailbox: str | None = "alice@sender.test") -> Bouncer:
    def recipients_for(address: str) -> list[Recipient]:
        if sender_mailbox is None:
            return []
        return [Recipient(sender_mailbox, address, Route.LOCAL)]

    return Bouncer(spool, "mx.test", recipients_for, clock=lambda: NOW)


async def original(
    spool: FileSpool, *recipients: Recipient, content: bytes = ORIGINAL, **envelope: object
) -> QueuedMessage:
    fields: dict[str, object] = {"mail_from": "alice@sender.test", "received_at": NOW - 60, **envelope}
    writer = spool.put(Envelope(recipients=recipients, **fields))  # type: ignore[arg-type]
    writer.write(content)
    return await writer.commit()


def parsed(spool: FileSpool, report: QueuedMessage) -> EmailMessage:
    with spool.open(report.queue_id) as content:
        message = email.message_from_bytes(content.read(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


BOB = Recipient("bob@remote.test", "bob@remote.test", Route.REMOTE)
CAROL = Recipient("carol@remote.test", "team@sender.test", Route.REMOTE, orcpt="rfc822;team@sender.test")
REFUSED = replies.remote_reply(550, "5.1.1", "No such user here")


async def test_a_failure_report_has_the_rfc_3464_structure(spool: FileSpool) -> None:
    message = await original(spool, BOB, CAROL, envid="ENV-42")
    items = [
        ReportItem(BOB, "failed", REFUSED, NOW - 5, "mx1.remote.test"),
        ReportItem(CAROL, "failed", replies.null_mx("remote.test"), NOW - 5),
    ]
    report = await bouncer(spool).notify(message, items)
    assert report is not None

    envelope = report.envelope
    assert envelope.mail_from == "" and [r.address for r in envelope.recipients] == ["alice@sender.test"]
    dsn = parsed(spool, report)
    assert dsn["To"].addresses[0].addr_spec == "alice@sender.test" and dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["From"].addresses[0].username == "MAILER-DAEMON"
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    human, status, returned = dsn.get_payload()
    assert isinstance(human, Message) and isinstance(status, Message) and isinstance(returned, Message)
    assert human.get_content_type() == "text/plain"
    assert "bob@remote.test" in human.get_payload() and "No such user here" in human.get_payload()
    assert status.get_content_type() == "message/delivery-status"

    per_message, bob, carol = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.test"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert per_message["Arrival-Date"] is not None
    assert bob["Final-Recipient"] == "rfc822; bob@remote.test"
    assert (bob["Action"], bob["Status"]) == ("failed", "5.1.1")
    assert bob["Remote-MTA"] == "dns; mx1.remote.test"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user here"
    assert carol["Original-Recipient"] == "rfc822;team@sender.test"
    assert (carol["Status"], carol["Remote-MTA"]) == ("5.1.10", None)

    assert returned.get_content_type() == "text/rfc822-headers"
    text = returned.get_payload()
    assert "Subject: quarterly report" in text and "The numbers are in" not in text


async def test_ret_full_returns_the_whole_message(spool: FileSpool) -> None:
    message = await original(spool, BOB, ret="FULL")
    report = await bouncer(spool).notify(message, [ReportItem(BOB, "failed", REFUSED, NOW)])
    assert report is not None
    returned = parsed(spool, report).get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    [inner] = returned.get_payload()
    assert inner["Subject"] == "quarterly report" and "The numbers are in." in inner.get_payload()


async def test_ret_full_of_a_large_message_returns_its_headers(spool: FileSpool) -> None:
    big = ORIGINAL + b"x" * 70 * 20_000
    message = await original(spool, BOB, ret="FULL", content=big)
    report = await bouncer(spool).notify(message, [ReportItem(BOB, "failed", REFUSED, NOW)])
    assert report is not None and report.size < 10_000
    assert parsed(spool, report).get_payload()[2].get_content_type() == "text/rfc822-headers"


async def test_the_null_sender_never_gets_a_report(spool: FileSpool) -> None:
    message = await original(spool, BOB, mail_from="")
    assert await bouncer(spool).notify(message, [ReportItem(BOB, "failed", REFUSED, NOW)]) is None
    assert spool.pending() == [message.queue_id]  # nothing new queued


async def test_a_sender_without_a_mailbox_gets_no_report(spool: FileSpool) -> None:
    message = await original(spool, BOB)
    assert (
        await bouncer(spool, sender_mailbox=None).notify(message, [ReportItem(BOB, "failed", REFUSED, NOW)])
        is None
    )


async def test_delay_and_success_reports(spool: FileSpool) -> None:
    message = await original(spool, BOB, CAROL)
    delayed = await bouncer(spool).notify(
        message, [ReportItem(BOB, "delayed", replies.LOCAL_ERROR, NOW)], will_retry_until=NOW + 86400
    )
    assert delayed is not None
    dsn = parsed(spool, delayed)
    assert "(Delay)" in dsn["Subject"]
    recipient = dsn.get_payload()[1].get_payload()[1]
    assert (recipient["Action"], recipient["Status"]) == ("delayed", "4.3.0")
    assert recipient["Will-Retry-Until"] is not None

    ok = await bouncer(spool).notify(
        message, [ReportItem(CAROL, "relayed", replies.OK, NOW, "mx1.remote.test")]
    )
    assert ok is not None
    assert "(Success)" in parsed(spool, ok)["Subject"]


async def test_internationalised_mail_gets_the_global_types(spool: FileSpool) -> None:
    josé = Recipient("josé@remote.test", "josé@remote.test", Route.REMOTE)
    message = await original(spool, josé, smtputf8=True, content="Subject: olá\r\n\r\nx\r\n".encode())
    report = await bouncer(spool).notify(message, [ReportItem(josé, "failed", REFUSED, NOW)])
    assert report is not None and report.envelope.smtputf8
    status, returned = parsed(spool, report).get_payload()[1:]
    assert status.get_content_type() == "message/global-delivery-status"
    assert returned.get_content_type() == "message/global-headers"


async def test_remote_text_cannot_add_fields_or_parts(spool: FileSpool) -> None:
    message = await original(spool, BOB, envid="x\r\nBcc: victim@evil.test")
    hostile = Reply(550, "5.7.1", ("refused\r\nX-Injected: yes", "--boundary--"))
    report = await bouncer(spool).notify(message, [ReportItem(BOB, "failed", hostile, NOW, "mx\r\nEvil: 1")])
    assert report is not None
    dsn = parsed(spool, report)
    assert len(dsn.get_payload()) == 3
    per_message, bob = dsn.get_payload()[1].get_payload()
    assert per_message["Bcc"] is None and bob["X-Injected"] is None and bob["Evil"] is None


def test_status_codes() -> None:
    assert status_code(REFUSED) == "5.1.1"
    assert status_code(replies.remote_reply(451, None, "try later")) == "4.0.0"
    assert status_code(replies.remote_reply(550, "4.1.1", "inconsistent")) == "5.0.0"


@pytest.mark.parametrize(
    ("notify", "failed", "delayed", "delivered"),
    [
        ((), True, True, False),
        (("NEVER",), False, False, False),
        (("SUCCESS",), False, False, True),
        (("FAILURE", "DELAY"), True, True, False),
        (("SUCCESS", "FAILURE"), True, False, True),
    ],
)
def test_notify_decides_which_reports_are_wanted(
    notify: tuple[str, ...], failed: bool, delayed: bool, delivered: bool
) -> None:
    recipient = Recipient("bob@remote.test", "bob@remote.test", Route.REMOTE, notify=notify)
    assert (
        wants_report(recipient, "failed"),
        wants_report(recipient, "delayed"),
        wants_report(recipient, "delivered"),
    ) == (failed, delayed, delivered)
