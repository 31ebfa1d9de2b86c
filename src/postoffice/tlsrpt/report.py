"""The RFC 8460 §4 report: one policy domain's TLS results of one UTC day, as JSON, gzipped.

Untrusted input seen here: the stored counts, whose host names and policy strings came from
DNS and MTA-STS policies; they become JSON strings (``json.dumps`` escapes them).
"""

from __future__ import annotations

import calendar
import gzip
import json
import time
from collections.abc import Sequence
from typing import Any

from postoffice.delivery.tlsrpt import Count, TlsPolicy

DAY = 86400


def day_start(day: str) -> int:
    """The first second of a UTC day (YYYY-MM-DD), in seconds since the epoch."""
    return calendar.timegm(time.strptime(day, "%Y-%m-%d"))


def _datetime(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))  # RFC 3339, UTC


def _policy(policy: TlsPolicy, domain: str) -> dict[str, Any]:
    """§4.4 "policy": the type, and for sts/tlsa the policy text and the MX patterns."""
    described: dict[str, Any] = {"policy-type": policy.type, "policy-domain": domain}
    if policy.strings:
        described["policy-string"] = list(policy.strings)
    if policy.mx_hosts:
        described["mx-host"] = list(policy.mx_hosts)
    return described


def _failure(count: Count) -> dict[str, Any]:
    """§4.4 "failure-details": one result type between one pair of hosts."""
    detail: dict[str, Any] = {"result-type": count.result_type}
    if count.sending_ip:
        detail["sending-mta-ip"] = count.sending_ip
    if count.receiving_mx:
        detail["receiving-mx-hostname"] = count.receiving_mx
    if count.receiving_ip:
        detail["receiving-ip"] = count.receiving_ip
    detail["failed-session-count"] = count.count
    return detail


def build_report(
    day: str, domain: str, counts: Sequence[Count], *, organization: str, contact: str, report_id: str
) -> dict[str, Any]:
    """The report (RFC 8460 §4.4) of ``domain``'s results on ``day``, one entry per policy."""
    start = day_start(day)
    by_policy: dict[TlsPolicy, list[Count]] = {}
    for count in counts:
        by_policy.setdefault(count.policy, []).append(count)
    policies = []
    for policy, rows in by_policy.items():
        failures = [row for row in rows if row.result_type]
        policies.append(
            {
                "policy": _policy(policy, domain),
                "summary": {
                    "total-successful-session-count": sum(row.count for row in rows if not row.result_type),
                    "total-failure-session-count": sum(row.count for row in failures),
                },
                "failure-details": [_failure(row) for row in failures],
            }
        )
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": _datetime(start), "end-datetime": _datetime(start + DAY - 1)},
        "contact-info": contact,
        "report-id": report_id,
        "policies": policies,
    }


def compress(report: dict[str, Any]) -> bytes:
    """The report as gzip-compressed UTF-8 JSON (RFC 8460 §5.1: "MUST be compressed")."""
    return gzip.compress(json.dumps(report, indent=1).encode("utf-8"), mtime=0)


def file_name(submitter: str, domain: str, day: str, unique: str) -> str:
    """§5.1: ``sender!policy-domain!begin-timestamp!end-timestamp!unique-id.json.gz``."""
    start = day_start(day)
    return f"{submitter}!{domain}!{start}!{start + DAY - 1}!{unique}.json.gz"
