"""Trace header fields added to every message (RFC 5321 §4.4, RFC 5322 §3.6.7).

Untrusted input seen here: the client's HELO name and addresses, which end up inside header
fields. They are reduced to printable text without CR/LF so a client cannot add header lines.
"""

from __future__ import annotations

import functools
import ipaddress
from datetime import UTC, datetime
from email.utils import format_datetime, localtime

from postoffice.smtp.replies import printable


# A client connects again and again: its literal is made once (bounded, for many clients).
@functools.lru_cache(maxsize=1024)
def _address_literal(address: str) -> str:
    """RFC 5321 §4.1.3 address literal for the TCP-info part of ``from``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "[unknown]"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"[{ip.ipv4_mapped}]"
        return f"[IPv6:{ip.compressed}]"
    return f"[{ip}]"


# The RFC 5322 date of the last second a header was made in: every message received in the
# same second shares it, and formatting a local time is the dearest part of the header.
_last_stamp: tuple[int, str] = (-1, "")


def _date_stamp(when: float) -> str:
    global _last_stamp
    second = int(when)
    if _last_stamp[0] != second:
        _last_stamp = (second, format_datetime(localtime(datetime.fromtimestamp(second, UTC))))
    return _last_stamp[1]


def with_protocol(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The WITH keyword: RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 §3.7.3 (UTF8SMTP*)."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(
    *,
    helo: str,
    client_address: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipient: str | None,
    when: float,
    local: str | None = None,
) -> bytes:
    """``Received:`` per §4.4; ``for`` only with one recipient, so Bcc recipients stay private.
    ``local``: the client came through the server's local socket; the comment then names the
    process (``uid=1000 pid=4242``) instead of an address, as Postfix's "from userid" does."""
    origin = _address_literal(client_address) if local is None else f"local {printable(local, 100)}"
    lines = [
        f"Received: from {printable(helo, 100) or 'unknown'} ({origin})",
        f"\tby {hostname} (postoffice) with {protocol} id {queue_id}",
    ]
    stamp = _date_stamp(when)
    if recipient is not None:
        lines.append(f"\tfor <{printable(recipient, 300)}>; {stamp}")
    else:
        lines[-1] += f"; {stamp}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
