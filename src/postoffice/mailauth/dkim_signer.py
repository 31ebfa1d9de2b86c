"""Signing mail that leaves: which key signs a message, with the key directory kept in memory.

Untrusted input seen here: the From field of a message an authenticated user submitted (its
domain chooses the key, and only a local domain's key is ever chosen) and the message itself,
which :func:`~postoffice.mailauth.dkim_sign.sign` reads.

RFC 6376 §5.4.1's header set, relaxed/relaxed, From over-signed and t= come from
:mod:`postoffice.mailauth.dkim_sign`; this module decides whether and with what. The keys of
``<data-dir>/dkim`` are read once and again when that directory or a domain's directory in it
changes (a key made by ``postoffice dkim generate`` or retired by ``dkim retire`` changes its
directory's mtime), or when :meth:`Signer.reload` is called (SIGHUP): a few stat(2) calls per
message, no key parsing. Mail relayed for others is never signed with our keys: RFC 7489 §3.1
alignment is what a DKIM signature is for, and a signature for a domain not in From gives
nothing but our name on someone else's message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from postoffice.mailauth.dkim_canon import MessageSource
from postoffice.mailauth.dkim_keys import DkimKey, KeyDirectory, KeyRing, KeyStore
from postoffice.mailauth.dkim_sign import sign
from postoffice.mailauth.dmarc import AuthorError, author_domains

log = logging.getLogger("postoffice.dkim")


@dataclass(frozen=True, slots=True)
class Signed:
    """The fields to put above a message (in this order), and what signed it."""

    domain: str
    selectors: tuple[str, ...]
    fields: tuple[bytes, ...]


def from_domain(header_section: bytes) -> str | None:
    """The one domain of the one From field (RFC 5322 §3.6.2), or None (none, several, or one
    that does not parse: such a message is not ours to vouch for)."""
    try:
        domains = author_domains(_unfold(header_section))
    except AuthorError:
        return None
    return domains[0] if len(domains) == 1 else None


def _unfold(header_section: bytes) -> list[bytes]:
    """The value of every From field, continuation lines included."""
    found: list[bytes] = []
    inside = False
    for line in header_section.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if inside:
                found[-1] += b"\r\n" + line
            continue
        name, colon, value = line.partition(b":")
        inside = bool(colon) and name.rstrip(b" \t").lower() == b"from"
        if inside:
            found.append(value)
    return found


class Signer:
    """The key directory in memory, the local domains, and whether signing is on."""

    def __init__(self, keys: Path | KeyStore, domains: Iterable[str], *, enabled: bool = True) -> None:
        """``keys``: where the keys are kept (a data directory: its ``dkim/``)."""
        self._keys = KeyDirectory(keys) if isinstance(keys, Path) else keys
        self._lock = threading.Lock()
        self._ring = KeyRing(())
        self._stamp: Hashable | None = None
        self._warned: set[str] = set()
        self.configure(domains, enabled=enabled)

    def configure(self, domains: Iterable[str], *, enabled: bool) -> None:
        """New local domains and switch (a re-read configuration)."""
        self.domains = frozenset(domain.lower().rstrip(".") for domain in domains)
        self.enabled = enabled

    def reload(self) -> None:
        """Read the keys again at the next message (SIGHUP), and warn again about missing ones."""
        with self._lock:
            self._stamp = None
            self._warned.clear()

    def keys(self, domain: str) -> list[DkimKey]:
        """The keys that sign for ``domain`` now."""
        return self._current().signing(domain)

    def for_author(self, header_section: bytes) -> str | None:
        """The local domain in the message's From field, if it is one: the d= to sign with."""
        domain = from_domain(header_section)
        return domain if domain is not None and domain in self.domains else None

    def for_host(self, hostname: str) -> str | None:
        """The d= for our own reports (From MAILER-DAEMON@hostname): the host name if it has
        keys, else the longest local domain it is under (RFC 7489 §3.1.1 relaxed alignment)."""
        name = hostname.lower().rstrip(".")
        parents = sorted((domain for domain in self.domains if name.endswith("." + domain)), key=len)
        candidates = [name, *reversed(parents)]
        for candidate in candidates:
            if self.keys(candidate):
                return candidate
        if name in self.domains:
            return name
        return candidates[1] if len(candidates) > 1 else None

    def sign(self, message: MessageSource, domain: str, *, what: str) -> Signed | None:
        """The signatures of ``domain``'s keys over ``message``, or None (signing off, no key:
        logged once per domain). ``what`` names the message in the log line. Raises DkimError
        when the message cannot be signed (no From field)."""
        if not self.enabled:
            return None
        keys = self.keys(domain)
        if not keys:
            self._missing(domain)
            return None
        fields = tuple(sign(message, keys))
        selectors = tuple(key.selector for key in keys)
        log.info("%s event=dkim-signed domain=%s selectors=%s", what, domain, ",".join(selectors))
        return Signed(domain, selectors, fields)

    def _missing(self, domain: str) -> None:
        with self._lock:
            if domain in self._warned:
                return
            self._warned.add(domain)
        log.warning(
            "event=dkim-no-key domain=%s hint=%r",
            domain,
            f"mail from {domain} leaves unsigned: postoffice dkim generate {domain}",
        )

    def _current(self) -> KeyRing:
        stamp = self._keys.stamp()
        with self._lock:
            if stamp == self._stamp:
                return self._ring
        ring = self._keys.ring()
        for problem in ring.problems:
            log.warning("event=dkim-key-skipped problem=%r", problem)
        with self._lock:
            self._ring, self._stamp = ring, stamp
            self._warned.clear()  # a key may have been made for a domain warned about
        return ring


def signature_fields(signed: Signed | None) -> Sequence[bytes]:
    """The fields to add, in the order :meth:`Message.add_header`-style prepending wants:
    reversed, so that the first signature ends up on top as sign() asks."""
    return () if signed is None else tuple(reversed(signed.fields))
