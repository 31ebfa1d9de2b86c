"""The Sender Rewriting Scheme: the envelope sender of forwarded mail, rewritten into our domain
so SPF at the next hop checks us, and read back when a bounce comes to that address.

Untrusted input seen here: the envelope sender of the mail being forwarded (anyone's) and the
recipient address of a bounce (anyone can send to an SRS address; only one whose hash our
secret made and whose timestamp is recent reverses). :meth:`Srs.reverse` raises only SrsError.

The format is libsrs2's (Shevek's scheme, as postsrsd and Mail::SRS write it), so an address
rewritten here reverses there and the other way round:

* ``SRS0=HHHH=TT=orig-domain=orig-local@our-domain``: HHHH the first characters of the base64
  HMAC-SHA1, under the secret, of TT, the domain and the local part (ASCII lower-cased, so a
  relay that lower-cases addresses does not break it); TT the day number modulo 1024 in two
  base32 characters. A bounce older than ``max_age_days`` (libsrs2: 21) no longer reverses.
* ``SRS1=HHHH=first-forwarder==HHHH=TT=...@our-domain``: an SRS0 address of another forwarder
  is wrapped, not rewritten again, so a bounce goes back through that forwarder (the "guarded"
  scheme); the hash covers the first forwarder's domain and the SRS0 remainder.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from postoffice.errors import PostofficeError

# libsrs2's defaults (srs2.c): a hash of 4 characters, 21 days, one day per timestamp step.
HASH_LENGTH = 4
MAX_AGE_DAYS = 21
_DAY = 24 * 60 * 60
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_SLOTS = 1024  # two base32 characters
_SEPARATORS = "=+-"  # libsrs2 reads any of these after the SRS0/SRS1 tag; "=" is written


class SrsError(PostofficeError, ValueError):
    """An address that is not ours to reverse (not SRS, bad hash, expired, malformed)."""


@dataclass(frozen=True, slots=True)
class Srs:
    """Rewrites for ``domain`` (where bounces to the rewritten addresses arrive). The first of
    ``secrets`` signs; every one of them verifies, so a secret can be replaced gradually."""

    secrets: Sequence[bytes]
    domain: str
    max_age_days: int = MAX_AGE_DAYS
    hash_length: int = HASH_LENGTH
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.secrets or not all(self.secrets):
            raise ValueError("SRS needs a non-empty secret")

    def forward(self, sender: str) -> str:
        """The envelope sender to use when forwarding mail from ``sender``. The null sender
        and our own domain's addresses stay as they are."""
        if not sender:
            return sender  # a bounce: RFC 5321 §4.5.5, nothing to send back to
        local, at, domain = sender.rpartition("@")
        if not at or not local or not domain:
            raise SrsError(f"{sender[:80]!r} is not an address with a domain")
        if domain.lower() == self.domain.lower():
            return sender
        if _tagged(local, "SRS1"):
            first, rest = _split(local[5:], 2, "SRS1")[1:]  # drop the old hash
            return self._srs1(first, rest)
        if _tagged(local, "SRS0"):
            return self._srs1(domain, local[4:])
        stamp = _timestamp(self.clock())
        return f"SRS0={self._hash(stamp, domain, local)}={stamp}={domain}={local}@{self.domain}"

    def _srs1(self, first: str, rest: str) -> str:
        return f"SRS1={self._hash(first, rest)}={first}={rest}@{self.domain}"

    def reverse(self, address: str) -> str:
        """The address a bounce to ``address`` goes to: the original sender for SRS0, the first
        forwarder's SRS0 address for SRS1. Raises SrsError when it is not a valid one of ours."""
        local = address.rpartition("@")[0] if "@" in address else address
        if _tagged(local, "SRS1"):
            given, first, rest = _split(local[5:], 2, "SRS1")
            self._check(given, first, rest)
            return f"SRS0{rest}@{first}"
        if _tagged(local, "SRS0"):
            given, stamp, domain, user = _split(local[5:], 3, "SRS0")
            self._check_time(stamp)
            self._check(given, stamp, domain, user)
            return f"{user}@{domain}"
        raise SrsError(f"{address[:80]!r} is not an SRS address")

    def _hash(self, *parts: str, secret: bytes | None = None) -> str:
        data = "".join(parts).encode("utf-8", "surrogateescape").lower()  # ASCII only, as libsrs2
        digest = hmac.new(secret or self.secrets[0], data, hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[: self.hash_length]

    def _check(self, given: str, *parts: str) -> None:
        if len(given) < self.hash_length:
            raise SrsError("SRS hash too short")
        for secret in self.secrets:
            # libsrs2 compares without case: relays may have lower-cased the address.
            if hmac.compare_digest(
                given[: self.hash_length].lower(), self._hash(*parts, secret=secret).lower()
            ):
                return
        raise SrsError("SRS hash does not match")

    def _check_time(self, stamp: str) -> None:
        if len(stamp) != 2 or any(ch not in _BASE32 for ch in stamp.upper()):
            raise SrsError(f"SRS timestamp {stamp[:10]!r} is malformed")
        then = _BASE32.index(stamp[0].upper()) * 32 + _BASE32.index(stamp[1].upper())
        today = int(self.clock() // _DAY) % _SLOTS
        while today < then:
            today += _SLOTS
        if today > then + self.max_age_days:
            raise SrsError("SRS address has expired")


def _tagged(local: str, tag: str) -> bool:
    return len(local) > 4 and local[:4].upper() == tag and local[4] in _SEPARATORS


def _split(text: str, cuts: int, tag: str) -> list[str]:
    """``text`` cut at its first ``cuts`` "=" signs; each part but the last non-empty."""
    parts = text.split("=", cuts)
    if len(parts) != cuts + 1 or not all(parts[:-1]) or not parts[-1]:
        raise SrsError(f"malformed {tag} address")
    return parts


def _timestamp(now: float) -> str:
    day = int(now // _DAY) % _SLOTS
    return _BASE32[day >> 5] + _BASE32[day & 31]
