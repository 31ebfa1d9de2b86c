"""The inputs DMARC (RFC 7489) and Authentication-Results (RFC 8601) take from SPF and DKIM.

Untrusted input seen here: none; these are plain values the SPF and DKIM checks fill in (the
domains in them came from the SMTP envelope and from DKIM-Signature fields, so anyone sending
mail chose them, but they are only compared and printed, never looked up from here).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpfVerdict:
    """An SPF check's result (RFC 7208 §2.6: none, neutral, pass, fail, softfail, temperror,
    permerror) for ``domain``: the MAIL FROM domain, or the HELO name when MAIL FROM was empty
    (RFC 7208 §2.4) — ``identity`` says which ("mailfrom" or "helo")."""

    result: str
    domain: str
    identity: str = "mailfrom"


@dataclass(frozen=True, slots=True)
class DkimVerdict:
    """One DKIM-Signature's result (RFC 8601 §2.7.1: none, pass, fail, policy, neutral,
    temperror, permerror) with its signing domain (d=), selector (s=) and signature (b=)."""

    result: str
    domain: str
    selector: str
    header_b: str
