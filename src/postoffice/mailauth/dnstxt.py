"""TXT lookups for mail authentication (DMARC policy records, RFC 7489 §6.6.3; DKIM keys for
ARC, RFC 6376 §3.6.2), through an injected dnspython async resolver (the server builds it with
:func:`postoffice.dns_resolver.make_resolver` from its one DNS setting).

Untrusted input seen here: the names looked up (built from domains a sender chose) and the
answers (written by whoever controls those zones). Answers come back as text, never acted on
here; a name that is not a valid DNS name is treated as one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver


class TxtTemporaryError(Exception):
    """The lookup failed rather than answered (timeout, SERVFAIL, no server reachable)."""


@dataclass(frozen=True, slots=True)
class TxtAnswer:
    """The TXT records at a name, each one's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2);
    ``exists`` is False for NXDOMAIN."""

    records: tuple[str, ...]
    exists: bool = True


def cached(
    resolver: dns.asyncresolver.Resolver, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.resolver.Answer | None:
    """The answer the resolver's cache holds for an absolute ``name`` (still within its TTL), or
    None. It is what ``resolve(name, rdtype, raise_on_no_answer=False, search=False)`` returns
    for a cached name (dnspython looks at the same cache entry first), without building a
    resolution per query: the SPF and DMARC records of a sender are asked for every message."""
    cache = resolver.cache
    return None if cache is None else cache.get((name, rdtype, dns.rdataclass.IN))


async def lookup_txt(resolver: dns.asyncresolver.Resolver, name: str) -> TxtAnswer:
    """The TXT records at ``name``; raises TxtTemporaryError when DNS does not answer."""
    try:
        absolute = dns.name.from_text(name.encode("idna").decode("ascii"), origin=dns.name.root)
    except (UnicodeError, ValueError, dns.exception.DNSException):
        return TxtAnswer((), exists=False)
    answer = cached(resolver, absolute, dns.rdatatype.TXT)
    try:
        if answer is None:
            answer = await resolver.resolve(absolute, "TXT", raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return TxtAnswer((), exists=False)
    except dns.exception.Timeout:
        raise TxtTemporaryError(f"TXT {name}: timed out") from None
    except dns.resolver.NoNameservers:
        raise TxtTemporaryError(f"TXT {name}: no server answered") from None
    except dns.exception.DNSException as exc:
        raise TxtTemporaryError(f"TXT {name}: {type(exc).__name__}") from None
    if answer.rrset is None:
        return TxtAnswer(())
    records = [b"".join(record.strings).decode("utf-8", "replace") for record in answer.rrset]
    return TxtAnswer(tuple(records))
