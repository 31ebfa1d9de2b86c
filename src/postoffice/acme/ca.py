"""What an order is for, and how one fails: kept apart from :mod:`postoffice.acme.order`, so a
server that never orders a certificate never imports the ACME library (``acme``, ``josepy``,
``requests``: several megabytes and tens of milliseconds at every start).

Untrusted input seen here: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CaSettings:
    """Which CA, for which names, as whom."""

    directory: str
    domains: tuple[str, ...]
    email: str | None = None
    ca_file: Path | None = None


class OrderError(Exception):
    """An order that did not end with a certificate; the message is one line."""
