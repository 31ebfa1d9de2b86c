"""``[tls_reporting]``: TLS reports (RFC 8460) about the mail we send, and the record for ours.

Untrusted input seen here: none; this module declares. :mod:`postoffice.config.loader` reads
the file against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from postoffice.config.kinds import ADDRESS, BOOLEAN
from postoffice.config.schema import Kind, plain, setting
from postoffice.config.values import string

TEXT = Kind("text", plain(string))


@dataclass(frozen=True, slots=True)
class TlsReporting:
    """TLS reporting under ``[tls_reporting]`` (RFC 8460)."""

    send: bool = setting(
        True,
        BOOLEAN,
        "Count the TLS result of every connection to another domain's mail servers and send each"
        " domain that publishes a _smtp._tls record a daily report (RFC 8460), DKIM-signed.",
    )
    organization: str | None = setting(
        None,
        TEXT,
        "The organization-name in the reports we send.",
        default_text="the host name",
    )
    contact: str | None = setting(
        None,
        ADDRESS,
        "The contact-info in the reports we send.",
        default_text="the postmaster address",
    )
    rua: str | None = setting(
        None,
        ADDRESS,
        "Where other servers send their TLS reports about mail to our domains: the rua=mailto: of"
        " the _smtp._tls record postoffice dns prints.",
        default_text="postmaster@<the domain>",
    )
