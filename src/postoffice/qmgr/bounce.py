"""Delivery status notifications (RFC 3464): telling the sender what became of a message.

Untrusted input seen here: the envelope of the original message (addresses, ENVID and ORCPT
from an SMTP client), reply texts from remote servers, and the original message's header
section. Values that go into header fields are reduced to printable text on one line, so
nothing a client or a remote server wrote can add a field or a MIME part to the report; the
original headers go into their own MIME part (text/rfc822-headers), as opaque bytes.

A report is a new message from the null reverse-path ``<>`` (RFC 5321 §4.5.5: "notification
messages ... MUST be sent with a null return path") to the original envelope sender, queued
like any other mail. A message from ``<>`` never gets a report, which is what keeps two
servers from bouncing bounces at each other forever.

Structure (RFC 3462 multipart/report, RFC 3464 message/delivery-status)::

    multipart/report; report-type=delivery-status
      text/plain                  what happened, for a person
      message/delivery-status     per-message fields, then per-recipient fields
      text/rfc822-headers         the original header section (RET=HDRS, the default here)
      or message/rfc822           the whole original (RET=FULL), when it is not too large

For an internationalised message (SMTPUTF8) the RFC 6533 "global" types are used instead,
which allow UTF-8 in addresses and header fields.
"""

from __future__ import annotations

import asyncio
import logging
import quopri
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, localtime
from typing import BinaryIO, Protocol

from postoffice.smtp.replies import Reply, printable
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient
from postoffice.storage import MessageStore, MessageWriter

# Still the queue's log channel, as before qmgr/ split off from spool/: every log line names
# its logger, and operators filter on this one (the README's delivery log examples).
log = logging.getLogger("postoffice.spool")

# RET=FULL returns the whole message only up to this size; a larger one gets its headers
# back, as Postfix does beyond bounce_size_limit, so a report is never refused for its size.
RETURN_FULL_LIMIT = 1024 * 1024
# The header section is returned up to this size (a longer one is cut at a line boundary):
# enough for any real header section, bounded for a hostile one.
RETURN_HEADERS_LIMIT = 256 * 1024
BLOCK_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class ReportItem:
    """One recipient in a report. ``action`` is RFC 3464 §2.3.3's: failed, delayed,
    delivered or relayed."""

    recipient: Recipient
    action: str
    reply: Reply
    at: float
    remote_mta: str | None = None


class Notifier(Protocol):
    async def notify(
        self, message: QueuedMessage, items: Sequence[ReportItem], *, will_retry_until: float | None = None
    ) -> QueuedMessage | None:
        """Queue a report about ``items`` to the sender of ``message``.

        Returns the report, committed to the spool, for the caller to schedule; None when
        nobody gets one (the null sender, or a sender no mailbox can be found for).
        """
        ...


RecipientsFor = Callable[[str], Sequence[Recipient]]


def wants_report(recipient: Recipient, action: str) -> bool:
    """RFC 3461 §4.1 NOTIFY: which results the sender asked to hear about.

    Without NOTIFY, failures are reported (the behaviour every MTA had before DSN) and so
    are delays when warnings are switched on; NEVER silences everything.
    """
    notify = set(recipient.notify)
    if "NEVER" in notify:
        return False
    if action == "failed":
        return not notify or "FAILURE" in notify
    if action == "delayed":
        return not notify or "DELAY" in notify
    return "SUCCESS" in notify  # delivered, relayed


# What signs a report (the composition root injects DKIM signing; qmgr knows no keys): the
# report's content and queue id in, the fields to prepend out (each prepended above the last).
ReportSigner = Callable[[BinaryIO, str], Sequence[bytes]]


class Bouncer:
    """The :class:`Notifier` that writes reports into the spool."""

    def __init__(
        self,
        spool: MessageStore,
        hostname: str,
        recipients_for: RecipientsFor,
        *,
        clock: Callable[[], float] = time.time,
        sign: ReportSigner | None = None,
    ) -> None:
        """``sign``: the header fields (DKIM-Signature) to put above a composed report, given
        the report as written; called on a worker thread, before the report is queued."""
        self._spool = spool
        self._sign = sign
        self._hostname = hostname
        self._recipients_for = recipients_for
        self._clock = clock

    async def notify(
        self, message: QueuedMessage, items: Sequence[ReportItem], *, will_retry_until: float | None = None
    ) -> QueuedMessage | None:
        original = message.envelope
        if not original.mail_from:
            log.info("queue_id=%s status=no-report reason=null-sender", message.queue_id)
            return None
        if not items:
            return None
        recipients = tuple(self._recipients_for(original.mail_from))
        if not recipients:
            log.warning(
                "queue_id=%s status=no-report reason=sender-has-no-mailbox from=<%s>",
                message.queue_id,
                original.mail_from,
            )
            return None
        international = original.smtputf8 or not original.mail_from.isascii()
        envelope = Envelope(
            mail_from="",
            recipients=recipients,
            received_at=self._clock(),
            helo=self._hostname,
            body="8BITMIME" if international or original.body == "8BITMIME" else "7BIT",
            smtputf8=international,
        )
        writer = self._spool.put(envelope)
        try:
            await asyncio.to_thread(self._write, writer, message, items, will_retry_until, international)
            report = await writer.commit()
        except BaseException:
            writer.discard()
            raise
        log.info(
            "queue_id=%s status=report-queued report=%s kind=%s recipients=%d",
            message.queue_id,
            report.queue_id,
            _kind(items),
            len(items),
        )
        return report

    # --- composing --------------------------------------------------------------------------

    def _write(
        self,
        writer: MessageWriter,
        message: QueuedMessage,
        items: Sequence[ReportItem],
        will_retry_until: float | None,
        international: bool,
    ) -> None:
        original = message.envelope
        boundary = f"{message.queue_id}/{secrets.token_hex(12)}/{self._hostname}"
        now = self._clock()
        with self._spool.open(message.queue_id) as content:
            start = content.tell()
            headers = _header_section(content)
            content.seek(start)
            # A REQUIRETLS message's report may travel over plain SMTP: only its header
            # section goes back (RFC 8689 §5 keeps the content off unprotected paths).
            full = original.ret == "FULL" and not original.requiretls and message.size <= RETURN_FULL_LIMIT
            put = writer.write
            put(self._top(original.mail_from, _kind(items), boundary, writer.queue_id, now))
            put(f"--{boundary}\r\n".encode())
            put(self._explanation(items, will_retry_until, full))
            put(f"\r\n--{boundary}\r\n".encode())
            put(self._status(message, items, will_retry_until, international))
            put(f"\r\n--{boundary}\r\n".encode())
            if full:
                kind = "message/global" if international else "message/rfc822"
                put(f"Content-Type: {kind}\r\nContent-Description: Undelivered message\r\n\r\n".encode())
                if not _copy(content, writer, message.size).endswith(b"\n"):
                    put(b"\r\n")
            else:
                kind = "message/global-headers" if international else "text/rfc822-headers"
                put(f"Content-Type: {kind}\r\nContent-Description: Message headers\r\n\r\n".encode())
                put(headers)
            put(f"\r\n--{boundary}--\r\n".encode())
        if self._sign is not None:
            with writer.read_content() as report:
                fields = self._sign(report, writer.queue_id)
            for field in fields:
                writer.prepend(field)

    def _top(self, sender: str, kind: str, boundary: str, report_id: str, now: float) -> bytes:
        subject = {
            "failed": "Delivery Status Notification (Failure)",
            "delayed": "Delivery Status Notification (Delay)",
            "delivered": "Delivery Status Notification (Success)",
        }[kind]
        lines = [
            f"From: Mail Delivery System <MAILER-DAEMON@{self._hostname}>",
            f"To: <{_field(sender)}>",
            f"Subject: {subject}",
            f"Date: {_date(now)}",
            f"Message-ID: <{report_id}@{self._hostname}>",
            # RFC 3834 §5: automatic responses say so, and auto-responders leave them alone.
            "Auto-Submitted: auto-replied",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
            "",
            "This is a MIME-formatted delivery status notification (RFC 3464).",
            "",
        ]
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def _explanation(self, items: Sequence[ReportItem], will_retry_until: float | None, full: bool) -> bytes:
        kind = _kind(items)
        attached = "Your message is attached." if full else "The headers of your message are attached."
        if kind == "failed":
            intro = [
                f"This is the mail system at {self._hostname}.",
                "",
                "Your message could not be delivered to one or more recipients,",
                "and will not be tried again. " + attached,
            ]
        elif kind == "delayed":
            until = _date(will_retry_until) if will_retry_until is not None else "it gives up"
            intro = [
                f"This is the mail system at {self._hostname}.",
                "",
                "Your message has not been delivered yet to the recipients below.",
                f"It will keep trying until {until}; you do not need to send it again.",
                attached,
            ]
        else:
            intro = [
                f"This is the mail system at {self._hostname}.",
                "",
                "Your message was delivered to the recipients below, as you asked.",
            ]
        lines = [*intro, ""]
        for item in items:
            where = f" (from {_field(item.remote_mta)})" if item.remote_mta else ""
            lines.append(
                f"<{_field(item.recipient.address)}>: {item.action}: {_reply_text(item.reply)}{where}"
            )
        text = "\r\n".join(lines) + "\r\n"
        if text.isascii():
            return b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text.encode("ascii")
        body = quopri.encodestring(text.encode("utf-8")).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return (
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + body
        )

    def _status(
        self,
        message: QueuedMessage,
        items: Sequence[ReportItem],
        will_retry_until: float | None,
        international: bool,
    ) -> bytes:
        def clean(text: str) -> str:
            # RFC 3464 fields are ASCII; RFC 6533 allows UTF-8 in the global variant only.
            text = _field(text)
            return text if international else text.encode("ascii", "replace").decode("ascii")

        original = message.envelope
        kind = "message/global-delivery-status" if international else "message/delivery-status"
        lines = [f"Content-Type: {kind}", "", f"Reporting-MTA: dns; {self._hostname}"]
        lines.append(f"X-Postoffice-Queue-ID: {message.queue_id}")
        if original.envid:
            lines.append(f"Original-Envelope-Id: {clean(original.envid)}")
        lines.append(f"Arrival-Date: {_date(original.received_at)}")
        for item in items:
            recipient = item.recipient
            address_type = "rfc822" if recipient.address.isascii() else "utf-8"
            lines.append("")
            if recipient.orcpt:
                lines.append(f"Original-Recipient: {clean(recipient.orcpt)}")
            elif recipient.original and recipient.original != recipient.address:
                original_type = "rfc822" if recipient.original.isascii() else "utf-8"
                lines.append(f"Original-Recipient: {original_type}; {clean(recipient.original)}")
            lines.append(f"Final-Recipient: {address_type}; {clean(recipient.address)}")
            lines.append(f"Action: {item.action}")
            lines.append(f"Status: {status_code(item.reply)}")
            if item.remote_mta:
                lines.append(f"Remote-MTA: dns; {clean(item.remote_mta)}")
            lines.append(f"Diagnostic-Code: smtp; {clean(_reply_text(item.reply))}")
            lines.append(f"Last-Attempt-Date: {_date(item.at)}")
            if item.action == "delayed" and will_retry_until is not None:
                lines.append(f"Will-Retry-Until: {_date(will_retry_until)}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def status_code(reply: Reply) -> str:
    """RFC 3464 §2.3.4 Status: the reply's enhanced code, or its class (RFC 3463 §3.1)."""
    if reply.enhanced and reply.enhanced[:1] == str(reply.code // 100):
        return reply.enhanced
    return f"{reply.code // 100}.0.0"


def _kind(items: Sequence[ReportItem]) -> str:
    actions = {item.action for item in items}
    if "failed" in actions:
        return "failed"
    if "delayed" in actions:
        return "delayed"
    return "delivered"


def _reply_text(reply: Reply) -> str:
    return " ".join(str(reply).split())


def _field(text: str) -> str:
    """One line of printable text: what a client or remote server wrote can add no field."""
    return printable(text, 998)


def _date(when: float) -> str:
    return format_datetime(localtime(datetime.fromtimestamp(when, UTC)))


def _header_section(content: BinaryIO) -> bytes:
    """The original header section, up to (not including) the empty line that ends it."""
    lines: list[bytes] = []
    total = 0
    while total < RETURN_HEADERS_LIMIT:
        line = content.readline(RETURN_HEADERS_LIMIT - total)
        if not line or line in (b"\r\n", b"\n"):
            break
        lines.append(line)
        total += len(line)
    section = b"".join(lines)
    # Cut inside a line (the limit was reached, or a message without a body ends without a
    # line ending): keep whole lines only, each ending in CRLF.
    if section and not section.endswith(b"\n"):
        section = section[: section.rfind(b"\n") + 1]
    return section


def _copy(content: BinaryIO, writer: MessageWriter, size: int) -> bytes:
    """Copy ``size`` octets in blocks; return the last block (to see how it ends)."""
    remaining = size
    last = b""
    while remaining:
        block = content.read(min(BLOCK_SIZE, remaining))
        if not block:
            break
        writer.write(block)
        remaining -= len(block)
        last = block
    return last
