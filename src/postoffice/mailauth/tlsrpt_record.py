"""The TLS reporting record (RFC 8460 §3): ``_smtp._tls.<domain> TXT "v=TLSRPTv1; rua=..."``.

Untrusted input seen here: the TXT records of any domain we deliver to (written by whoever
controls its zone). A record is parsed into report URIs or refused with one line saying why;
nothing in it is acted on here.

RFC 8460 §3: the record starts with ``v=TLSRPTv1``; fields are separated by ``;`` with optional
white space; ``rua`` is a comma-separated list of ``mailto:`` or ``https:`` URIs; other fields
are extensions and are ignored. Records not starting with the version are not TLS-RPT records,
and a name with more than one is treated as having none (§3: "If the number of resulting
records is not one, senders MUST assume the recipient domain does not implement TLSRPT").
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = "v=TLSRPTv1"
# At most this many URIs of each scheme are used: a record is written by a stranger, and each
# mailto: is a recipient of our report (DMARC implementations cap rua alike).
MAX_URIS = 10
_VERSION = re.compile(r"v=TLSRPTv1[ \t]*(;|$)")  # %s: case-sensitive (RFC 8460 §3)


class TlsRptRecordError(ValueError):
    """The record is not a usable TLS-RPT record; the text says why."""


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    """A parsed record: the ``mailto:`` addresses and the ``https:`` URLs of its ``rua``."""

    mailto: tuple[str, ...]
    https: tuple[str, ...]


def is_tlsrpt(text: str) -> bool:
    return _VERSION.match(text) is not None


def record_name(domain: str) -> str:
    return f"_smtp._tls.{domain.rstrip('.')}"


def parse_record(text: str) -> TlsRptRecord:
    """The rua URIs of one record; raises TlsRptRecordError for a record that has none usable."""
    if not is_tlsrpt(text):
        raise TlsRptRecordError("does not start with v=TLSRPTv1")
    rua: str | None = None
    for field in text.split(";")[1:]:
        name, sep, value = field.strip(" \t").partition("=")
        if sep and name == "rua":
            rua = value
    if rua is None:
        raise TlsRptRecordError("no rua= field")
    mailto: list[str] = []
    https: list[str] = []
    for uri in (part.strip(" \t") for part in rua.split(",")):
        scheme, _, rest = uri.partition(":")
        address = urllib.parse.unquote(rest.split("?", 1)[0]).strip()  # RFC 6068: before ?header
        if scheme.lower() == "mailto" and "@" in address and address.isascii():
            mailto.append(address)
        elif scheme.lower() == "https" and rest.startswith("//"):
            https.append(uri)
    if not mailto and not https:
        raise TlsRptRecordError(f"rua={rua!r} names no mailto: or https: URI")
    return TlsRptRecord(tuple(mailto[:MAX_URIS]), tuple(https[:MAX_URIS]))


def choose_record(texts: Sequence[str]) -> TlsRptRecord | None:
    """The domain's record from all its TXT records at the name: None unless exactly one is a
    TLS-RPT record (RFC 8460 §3); raises TlsRptRecordError when that one is unusable."""
    found = [text for text in texts if is_tlsrpt(text)]
    if len(found) != 1:
        return None
    return parse_record(found[0])
