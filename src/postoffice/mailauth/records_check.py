"""Looking up the records of :mod:`~postoffice.mailauth.records` and comparing what is published.

Untrusted input seen here: the DNS answers, which whoever controls the zone (or spoofs its
answers) writes. They are only compared and shown: text is shown escaped and shortened, so an
answer can neither run on the operator's terminal nor flood it.

All records are looked up at once, each query within the resolver's lifetime, so a check takes
about one timeout however many records there are and however unresponsive the server is.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
from cryptography.hazmat.primitives import serialization

from postoffice.mailauth import mta_sts, tlsrpt_record
from postoffice.mailauth.dkim_record import KeyRecordError, PublicKey, parse_key_record
from postoffice.mailauth.dkim_tags import TagListError, parse_tag_list
from postoffice.mailauth.mta_sts import StsSyntaxError
from postoffice.mailauth.records import Match, Record
from postoffice.mailauth.tlsrpt_record import TlsRptRecordError, is_tlsrpt

SHOWN_TEXT = 120  # characters of a found record shown in a line
DMARC_POLICIES = ("none", "quarantine", "reject")  # RFC 7489 §6.3 p=
# RFC 7489 §6.4: dmarc-record = dmarc-version dmarc-sep ..., dmarc-version = "v" *WSP "=" *WSP
# %x44 %x4d %x41 %x52 %x43 %x31 ("DMARC1", case-sensitive), and it comes first.
_DMARC_VERSION = re.compile(r"v[ \t]*=[ \t]*DMARC1[ \t]*(;|$)")


class Status(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    DIFFERENT = "different"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Finding:
    record: Record
    status: Status
    detail: str = ""
    looked_up: bool = True  # False: decided without DNS (no DKIM key to look for)

    def line(self) -> str:
        """``STATUS  PURPOSE (NAME TYPE): detail``, one line."""
        where = f"{self.record.purpose} ({self.record.name} {self.record.rdtype})"
        return f"{self.status.value:<9} {where}" + (f": {self.detail}" if self.detail else "")


class LookupFailed(Exception):
    """No answer came; ``reason`` says why without naming the query (the line does), so that
    the same failure for every record reads the same."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def check_records(records: Sequence[Record], resolver: dns.asyncresolver.Resolver) -> list[Finding]:
    """A finding for each record, in order."""
    return list(await asyncio.gather(*(check_record(record, resolver) for record in records)))


async def check_record(record: Record, resolver: dns.asyncresolver.Resolver) -> Finding:
    queries: list[tuple[str, str]] = []

    async def lookup(name: str, rdtype: str) -> list[Any]:
        queries.append((name, rdtype))
        return await _query(resolver, name, rdtype)

    try:
        status, detail = await _CHECKS[record.match](record, lookup)
    except LookupFailed as failure:
        return Finding(record, Status.ERROR, failure.reason)
    return Finding(record, status, detail, looked_up=bool(queries))


async def _query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[Any]:
    """The records of ``rdtype`` at ``name``; empty when the name or the type does not exist."""
    server = f"{resolver.nameservers[0]}:{resolver.port}" if resolver.nameservers else "the DNS server"
    try:
        answer = await resolver.resolve(
            dns.name.from_text(name), rdtype, raise_on_no_answer=False, search=False
        )
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.Timeout:
        raise LookupFailed(f"no answer from {server} within {resolver.lifetime:g} s") from None
    except dns.resolver.NoNameservers as exc:
        errors = exc.kwargs.get("errors") or []
        said = f" answered {errors[0][3]}" if errors else " failed"
        raise LookupFailed(f"{server}{said}") from None
    except dns.exception.DNSException as exc:
        raise LookupFailed(f"lookup failed: {type(exc).__name__}") from None
    return list(answer.rrset) if answer.rrset is not None else []


Lookup = Callable[[str, str], Awaitable[list[Any]]]
Outcome = tuple[Status, str]


def show(text: str) -> str:
    """Found text for a line: quoted, control characters escaped, shortened."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:SHOWN_TEXT])
    return f'"{shown}"' + ("..." if len(text) > SHOWN_TEXT else "")


async def _texts(lookup: Lookup, name: str) -> list[str]:
    """Each TXT record at ``name``, its strings joined (RFC 7208 §3.3)."""
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in await lookup(name, "TXT")]


def _host(name: Any) -> str:
    return str(name).lower().rstrip(".")


async def _check_mx(record: Record, lookup: Lookup) -> Outcome:
    """Some MX record points at our host: mail reaches it, whatever else is listed."""
    assert record.data is not None
    wanted = _host(record.data.split()[-1])
    found = await lookup(record.name, "MX")
    if not found:
        return Status.MISSING, "no MX record"
    if any(_host(rdata.exchange) == wanted for rdata in found):
        return Status.OK, ""
    listed = ", ".join(f"{rdata.preference} {rdata.exchange}" for rdata in found)
    return Status.DIFFERENT, f"found {listed}, none is {wanted}."


async def _check_address(record: Record, lookup: Lookup) -> Outcome:
    if record.data is None:  # not known here: any published address will do
        both = await asyncio.gather(lookup(record.name, "A"), lookup(record.name, "AAAA"))
        found = [*both[0], *both[1]]
        if not found:
            return Status.MISSING, "no A or AAAA record"
        return Status.OK, ", ".join(rdata.address for rdata in found)
    wanted = ipaddress.ip_address(record.data)
    found = await lookup(record.name, record.rdtype)
    if any(ipaddress.ip_address(rdata.address) == wanted for rdata in found):
        return Status.OK, ""
    if not found:
        return Status.MISSING, f"no {record.rdtype} record"
    return Status.DIFFERENT, f"found {', '.join(rdata.address for rdata in found)}"


def _is_spf(text: str) -> bool:
    # RFC 7208 §4.5: records begin with "v=spf1" followed by a space or nothing, any case.
    version = text.split(" ", 1)[0]
    return version.lower() == "v=spf1"


async def _check_spf(record: Record, lookup: Lookup) -> Outcome:
    assert record.data is not None
    found = [text for text in await _texts(lookup, record.name) if _is_spf(text)]
    if not found:
        return Status.MISSING, "no v=spf1 record"
    if len(found) > 1:
        # RFC 7208 §4.5: "If the resultant record set includes more than one record,
        # check_host() produces the "permerror" result": SPF fails for all mail.
        shown = ", ".join(show(text) for text in found)
        return Status.ERROR, f"{len(found)} SPF records ({shown}); publish only one (RFC 7208 §3.2)"
    if found[0].lower().split() == record.data.lower().split():
        return Status.OK, ""
    return Status.DIFFERENT, f"found {show(found[0])}"


def _public_bytes(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def _check_dkim(record: Record, lookup: Lookup) -> Outcome:
    """The record holds our public key; compared as keys, so any encoding of p= matches."""
    if record.data is None:
        domain = record.name.split("._domainkey.", 1)[-1].rstrip(".")
        return Status.MISSING, f'no key signs its mail: run "postoffice dkim generate {domain}" first'
    found = await _texts(lookup, record.name)
    if not found:
        return Status.MISSING, "no TXT record"
    if len(found) > 1:
        # RFC 6376 §3.6.2.2: with several records "the results are undefined".
        return Status.DIFFERENT, f"{len(found)} TXT records; verifiers may read any: keep one"
    wanted = _public_bytes(parse_key_record(record.data).key)
    try:
        published = parse_key_record(found[0])
    except KeyRecordError as exc:
        return Status.DIFFERENT, f"found {show(found[0])}: {exc}"
    if _public_bytes(published.key) != wanted:
        return Status.DIFFERENT, "found another key (p= differs)"
    return Status.OK, ""


async def _check_dmarc(record: Record, lookup: Lookup) -> Outcome:
    """Any valid DMARC record will do: its policy is the domain owner's choice."""
    found = [text for text in await _texts(lookup, record.name) if _DMARC_VERSION.match(text)]
    if not found:
        return Status.MISSING, "no v=DMARC1 record"
    if len(found) > 1:
        # RFC 7489 §6.6.3: with more than one record, "DMARC policy processing will not be
        # performed": receivers act as if there were none.
        return Status.ERROR, f"{len(found)} DMARC records; receivers then use none: publish one"
    try:
        tags = parse_tag_list(found[0])
    except TagListError as exc:
        return Status.DIFFERENT, f"found {show(found[0])}: {exc}"
    policy = tags.get("p", "").strip().lower()
    if policy not in DMARC_POLICIES:
        return Status.DIFFERENT, f"found {show(found[0])}: no valid p= (none, quarantine or reject)"
    if policy == "none":
        return Status.OK, "p=none: receivers only report, forged mail is still delivered"
    return Status.OK, f"p={policy}"


async def _check_sts(record: Record, lookup: Lookup) -> Outcome:
    """RFC 8461 §3.1: exactly one v=STSv1 record, and its id is our policy's."""
    found = [text for text in await _texts(lookup, record.name) if text.startswith("v=STSv1")]
    if not found:
        return Status.MISSING, "no v=STSv1 record"
    if len(found) > 1:
        return Status.ERROR, f"{len(found)} v=STSv1 records; senders then use none: publish one"
    try:
        published = mta_sts.parse_record(found[0])
    except StsSyntaxError as exc:
        return Status.DIFFERENT, f"found {show(found[0])}: {exc}"
    assert record.data is not None
    if published.id != mta_sts.parse_record(record.data).id:
        return Status.DIFFERENT, f"id={published.id}: the policy changed since; publish the new id"
    return Status.OK, ""


async def _check_sts_host(record: Record, lookup: Lookup) -> Outcome:
    aliases = [_host(rdata.target) for rdata in await lookup(record.name, "CNAME")]
    if aliases:
        wanted = _host(record.data)
        return (Status.OK, "") if wanted in aliases else (Status.OK, f"CNAME to {aliases[0]}")
    if await lookup(record.name, "A") or await lookup(record.name, "AAAA"):
        return Status.OK, "address records"
    return Status.MISSING, "no CNAME or address records: senders cannot fetch the policy"


async def _check_tlsa(record: Record, lookup: Lookup) -> Outcome:
    """DANE is optional (it needs a DNSSEC-signed zone); a published record that does not match
    the certificate is not: DANE senders then refuse to deliver (RFC 7672 §2.2)."""
    assert record.data is not None  # records_tls prints none without a certificate
    found = [f"{r.usage} {r.selector} {r.mtype} {r.cert.hex()}" for r in await lookup(record.name, "TLSA")]
    if not found:
        return Status.OK, "not published (optional: DANE needs a DNSSEC-signed zone)"
    if record.data.lower() not in found:
        return Status.DIFFERENT, "no TLSA record matches the current certificate's key"
    return Status.OK, ""


async def _check_tlsrpt(record: Record, lookup: Lookup) -> Outcome:
    """One v=TLSRPTv1 record (RFC 8460 §3) whose rua has our mailto: address."""
    assert record.data is not None
    found = [text for text in await _texts(lookup, record.name) if is_tlsrpt(text)]
    if not found:
        return Status.MISSING, "no v=TLSRPTv1 record"
    if len(found) > 1:
        return Status.ERROR, f"{len(found)} TLS-RPT records; senders then report to none: publish one"
    try:
        published = tlsrpt_record.parse_record(found[0])
    except TlsRptRecordError as exc:
        return Status.DIFFERENT, f"found {show(found[0])}: {exc}"
    wanted = tlsrpt_record.parse_record(record.data).mailto
    if not set(address.lower() for address in wanted) <= {address.lower() for address in published.mailto}:
        return Status.DIFFERENT, f"found {show(found[0])}"
    return Status.OK, ""


_CHECKS: dict[Match, Callable[[Record, Lookup], Awaitable[Outcome]]] = {
    Match.MX: _check_mx,
    Match.ADDRESS: _check_address,
    Match.SPF: _check_spf,
    Match.DKIM: _check_dkim,
    Match.DMARC: _check_dmarc,
    Match.STS: _check_sts,
    Match.STS_HOST: _check_sts_host,
    Match.TLSA: _check_tlsa,
    Match.TLSRPT: _check_tlsrpt,
}
