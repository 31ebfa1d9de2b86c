"""Sending the TLS reports (RFC 8460 §5): once a day, every finished day, every domain.

Untrusted input seen here: the ``_smtp._tls`` TXT records of the domains we delivered to (their
``rua`` decides where a report goes), and the answers of https: report endpoints, of which only
the status is read.

For each (day, domain) with counts and no report yet, before the current UTC day:

1. claim it in the count database (one process of several wins; a claim is given back when
   the report could not be queued, so the next round tries again);
2. look up ``_smtp._tls.<domain>`` TXT through the one resolver setting; no record (or more
   than one, §3) means the domain asks for no report, and the day is done for it;
3. build the JSON report, gzip it, and send it: to the mailto: addresses as one message through
   our own queue, DKIM-signed like the bounces we write (§5.3 requires the signature); to each
   https: address with a POST of the gzip (§5.4), whose failure is a log line.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import dns.asyncresolver

from postoffice.delivery.tlsrpt import TlsReportStore, day_of
from postoffice.errors import SpoolError
from postoffice.mailauth.dnstxt import TxtTemporaryError, lookup_txt
from postoffice.mailauth.tlsrpt_record import TlsRptRecord, TlsRptRecordError, choose_record, record_name
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.storage import MessageStore, MessageWriter
from postoffice.tlsrpt.message import ReportMail, compose
from postoffice.tlsrpt.report import build_report, compress, file_name

log = logging.getLogger("postoffice.tlsrpt")

# An https: endpoint gets this long to take a report (RFC 8460 §5.4 sets no limit).
POST_TIMEOUT = 30.0

# The DKIM-Signature fields for a report, given its content and queue id (as for bounces).
ReportSigner = Callable[[BinaryIO, str], Sequence[bytes]]
RecipientsFor = Callable[[str], Sequence[Recipient]]


@dataclass(frozen=True, slots=True)
class Reporter:
    """Who we are in the reports (RFC 8460 §4.4 organization-name, contact-info; §5.3 the
    submitter, our host name)."""

    hostname: str
    organization: str
    contact: str


@dataclass(frozen=True, slots=True)
class Sent:
    """One report that went out (for the caller's log and tests)."""

    day: str
    domain: str
    queued: QueuedMessage | None
    posted: tuple[str, ...]


def remote_recipients(address: str) -> Sequence[Recipient]:
    return (Recipient(address, address, Route.REMOTE),)


class ReportSender:
    """Builds and sends the reports of finished days; see the module docstring."""

    def __init__(
        self,
        store: TlsReportStore,
        spool: MessageStore,
        resolver: dns.asyncresolver.Resolver,
        reporter: Reporter,
        *,
        sign: ReportSigner | None = None,
        recipients_for: RecipientsFor = remote_recipients,
        submit: Callable[[QueuedMessage], None] | None = None,
        ca_file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._spool = spool
        self._resolver = resolver
        self._reporter = reporter
        self._sign = sign
        self._recipients_for = recipients_for
        self._submit = submit
        self._ca_file = ca_file
        self._clock = clock

    async def send_due(self) -> list[Sent]:
        """Send every report of a day before today that nobody has sent; never raises for one
        domain's trouble (each is one log line)."""
        today = day_of(self._clock())
        sent: list[Sent] = []
        for day, domain in await asyncio.to_thread(self._store.pending, today):
            if not await asyncio.to_thread(self._store.claim, day, domain):
                continue  # another process has it
            try:
                result = await self._send(day, domain)
            except (SpoolError, OSError) as exc:
                log.warning("event=tlsrpt-not-queued day=%s domain=%s reason=%r", day, domain, str(exc))
                await asyncio.to_thread(self._store.release, day, domain)
                continue
            if result is not None:
                sent.append(result)
        return sent

    async def _record(self, day: str, domain: str) -> TlsRptRecord | None:
        try:
            answer = await lookup_txt(self._resolver, record_name(domain))
            record = choose_record(answer.records)
        except TlsRptRecordError as exc:
            log.info("event=tlsrpt-bad-record day=%s domain=%s reason=%r", day, domain, str(exc))
            return None
        if record is None:
            log.info("event=tlsrpt-no-record day=%s domain=%s", day, domain)
        return record

    async def _send(self, day: str, stored: str) -> Sent | None:
        try:
            domain = stored.encode("idna").decode("ascii")  # the report names the A-label
        except UnicodeError:
            log.info("event=tlsrpt-bad-record day=%s domain=%r reason=not-a-dns-name", day, stored)
            return None
        try:
            record = await self._record(day, domain)
        except TxtTemporaryError as exc:
            raise OSError(str(exc)) from None  # try again next round
        if record is None:
            return None
        reporter = self._reporter
        unique = secrets.token_hex(8)
        report_id = f"{day}.{domain}.{unique}@{reporter.hostname}"
        counts = await asyncio.to_thread(self._store.counts, day, stored)
        report = build_report(
            day,
            domain,
            counts,
            organization=reporter.organization,
            contact=reporter.contact,
            report_id=report_id,
        )
        gz = compress(report)
        name = file_name(reporter.hostname, domain, day, unique)
        sender = f"noreply-tlsrpt@{reporter.hostname}"
        mail = ReportMail(domain, reporter.hostname, report_id, name, gz, sender, record.mailto, day)
        queued = await self._queue(mail) if record.mailto else None
        posted = tuple([url for url in record.https if await asyncio.to_thread(self._post, url, gz, domain)])
        log.info(
            "event=tlsrpt-sent day=%s domain=%s report_id=%s queue_id=%s mailto=%d https=%d",
            day,
            domain,
            report_id,
            queued.queue_id if queued else "-",
            len(record.mailto),
            len(posted),
        )
        return Sent(day, domain, queued, posted)

    async def _queue(self, mail: ReportMail) -> QueuedMessage | None:
        recipients = tuple(r for address in mail.recipients for r in self._recipients_for(address))
        if not recipients:
            return None
        envelope = Envelope(
            mail_from="",  # like a DSN: a report about a report never comes back (RFC 5321 §4.5.5)
            recipients=recipients,
            received_at=self._clock(),
            helo=self._reporter.hostname,
        )
        writer = self._spool.put(envelope)
        try:
            await asyncio.to_thread(self._write, writer, compose(mail, now=self._clock()))
            queued = await writer.commit()
        except BaseException:
            writer.discard()
            raise
        if self._submit is not None:
            self._submit(queued)
        return queued

    def _write(self, writer: MessageWriter, content: bytes) -> None:
        writer.write(content)
        if self._sign is None:
            return
        with writer.read_content() as report:
            fields = self._sign(report, writer.queue_id)
        for field in fields:
            writer.prepend(field)

    def _post(self, url: str, gz: bytes, domain: str) -> bool:
        """RFC 8460 §5.4: POST the gzip with its media type; any 2xx is success."""
        context = ssl.create_default_context(cafile=str(self._ca_file) if self._ca_file else None)
        request = urllib.request.Request(
            url, data=gz, method="POST", headers={"Content-Type": "application/tlsrpt+gzip"}
        )
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT, context=context) as answer:
                status = int(answer.status)
                ok = 200 <= status < 300
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("event=tlsrpt-post-failed domain=%s url=%r reason=%r", domain, url, str(exc))
            return False
        if not ok:
            log.warning("event=tlsrpt-post-failed domain=%s url=%r status=%d", domain, url, status)
        return ok
