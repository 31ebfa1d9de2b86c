"""A TLS report as a mail message (RFC 8460 §5.3).

Untrusted input seen here: the policy domain (from our own delivery, a DNS name) and the
report addresses (from the domain's TXT record); they were checked to be a DNS name and
addresses before, and are reduced to printable one-line text here, so nothing can add a field.

Structure::

    TLS-Report-Domain: <policy domain>        (§5.3, "MUST" be present)
    TLS-Report-Submitter: <our host name>
    Content-Type: multipart/report; report-type="tlsrpt"
      text/plain                       what it is, for a person
      application/tlsrpt+gzip          the report, base64, named as §5.1 says
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from postoffice.smtp.replies import printable


@dataclass(frozen=True, slots=True)
class ReportMail:
    """What the message says: who reports on whom, and the compressed report itself."""

    domain: str
    submitter: str
    report_id: str
    file_name: str
    report_gz: bytes
    sender: str  # the From: address
    recipients: Sequence[str]
    day: str


def _one_line(text: str) -> str:
    return printable(text, 400).replace('"', "'")


def compose(mail: ReportMail, *, now: float) -> bytes:
    """The whole message, CRLF line ends, ready for the queue (and DKIM)."""
    boundary = f"tlsrpt/{secrets.token_hex(12)}"
    domain, submitter = _one_line(mail.domain), _one_line(mail.submitter)
    report_id = _one_line(mail.report_id)
    lines = [
        f"From: TLS reporting <{_one_line(mail.sender)}>",
        "To: " + ", ".join(f"<{_one_line(address)}>" for address in mail.recipients),
        f"Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>",
        f"Date: {format_datetime(datetime.fromtimestamp(now, UTC))}",
        f"Message-ID: <{report_id}>",
        f"TLS-Report-Domain: {domain}",
        f"TLS-Report-Submitter: {submitter}",
        "Auto-Submitted: auto-generated",  # RFC 3834 §5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="{boundary}"',
        "",
        "This is a MIME-formatted TLS report (RFC 8460).",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is an aggregate TLS report from {submitter} about the mail it sent to {domain}",
        f"on {mail.day} (UTC). The report is attached, as gzip-compressed JSON (RFC 8460).",
        "",
        f"--{boundary}",
        f'Content-Type: application/tlsrpt+gzip; name="{_one_line(mail.file_name)}"',
        f'Content-Disposition: attachment; filename="{_one_line(mail.file_name)}"',
        "Content-Transfer-Encoding: base64",
        "",
        *base64.encodebytes(mail.report_gz).decode("ascii").splitlines(),
        "",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")
