"""What an order is for, and how one fails: kept apart from :mod:`postoffice.acme.order`, so a
server that never orders a certificate never imports the ACME library (``acme``, ``josepy``,
``requests``: several megabytes and tens of milliseconds at every start).

Untrusted input seen here: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from postoffice.acme.alpn import TlsAlpnChallenges
from postoffice.acme.challenges import Challenges


@dataclass(frozen=True, slots=True)
class CaSettings:
    """Which CA, for which names, as whom."""

    directory: str
    domains: tuple[str, ...]
    email: str | None = None
    ca_file: Path | None = None
    # The challenge types answered, most preferred first: "http-01", "tls-alpn-01".
    challenges: tuple[str, ...] = ("http-01",)


class OrderError(Exception):
    """An order that did not end with a certificate; the message is one line."""


@dataclass(frozen=True, slots=True)
class Responders:
    """Where challenges are answered: HTTP-01 tokens (on ``[listen] acme_http``), TLS-ALPN-01
    validation certificates (on ``[listen] https``; None: no such listener here)."""

    http: Challenges
    alpn: TlsAlpnChallenges | None = None
