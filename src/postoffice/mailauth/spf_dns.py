"""The DNS queries of one SPF evaluation and the limits on them (RFC 7208 §4.4, §4.6.4, §5).

Untrusted input seen here: DNS answers for names that SPF records (and so anyone) choose. Every
answer is reduced to the few values SPF uses (joined TXT strings, addresses, host names), each
query has the resolver's lifetime, and the counters here stop an evaluation after 10 terms that
query DNS or 2 that find nothing, so a record cannot make one check cost more than a few dozen
queries.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from postoffice.errors import PostofficeError
from postoffice.mailauth.dnstxt import cached
from postoffice.mailauth.spf_record import SpfPermError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 7208 §4.6.4: "SPF implementations MUST limit the total number of those terms to 10".
MAX_DNS_TERMS = 10
# §4.6.4: "SPF implementations SHOULD limit "void lookups" to two."
MAX_VOID_LOOKUPS = 2
# §4.6.4: at most 10 MX records per "mx" (more is a permerror), the first 10 PTR names per "ptr".
MAX_MX_RECORDS = 10
MAX_PTR_NAMES = 10


class SpfTempError(PostofficeError):
    """A DNS query failed rather than answered: check_host() returns "temperror" (§2.6.6).

    ``str()`` is one line naming the query. It never escapes :func:`check_host`.
    """


@dataclass
class SpfLookups:
    """The DNS side of one check_host() evaluation, shared by its include and redirect steps."""

    resolver: dns.asyncresolver.Resolver
    max_void: int = MAX_VOID_LOOKUPS
    terms: int = 0
    voids: int = 0

    def count_term(self, term: str) -> None:
        """One more term that queries DNS; permerror past the 10th (§4.6.4)."""
        self.terms += 1
        if self.terms > MAX_DNS_TERMS:
            raise SpfPermError(f"more than {MAX_DNS_TERMS} DNS lookups (at {term})")

    def count_void(self, term: str) -> None:
        """The term's query found nothing (NXDOMAIN or no records); permerror past the limit."""
        self.voids += 1
        if self.voids > self.max_void:
            raise SpfPermError(f"more than {self.max_void} lookups found nothing (at {term})")

    async def query(self, name: dns.name.Name, rdtype: str) -> list[Any]:
        """The records of ``rdtype`` at ``name``: empty for NXDOMAIN or no data (§5: "as if the
        server returned ... zero answer records"); SpfTempError for any other failure."""
        answer = cached(self.resolver, name, dns.rdatatype.RdataType.make(rdtype))
        try:
            if answer is None:
                answer = await self.resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.Timeout:
            raise SpfTempError(f"{rdtype} lookup of {_text(name)} timed out") from None
        except dns.resolver.NoNameservers:
            raise SpfTempError(f"{rdtype} lookup of {_text(name)}: no server answered") from None
        except dns.exception.DNSException as exc:
            raise SpfTempError(f"{rdtype} lookup of {_text(name)} failed: {type(exc).__name__}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    async def txt(self, name: dns.name.Name) -> list[bytes]:
        """Each TXT record at ``name`` with its strings joined without spaces (§3.3)."""
        return [b"".join(record.strings) for record in await self.query(name, "TXT")]

    async def addresses(self, name: dns.name.Name, version: int) -> list[IPAddress]:
        """The A (IPv4 client) or AAAA (IPv6 client) addresses of ``name`` (§5.3)."""
        records = await self.query(name, "A" if version == 4 else "AAAA")
        return [ipaddress.ip_address(record.address) for record in records]

    async def mail_exchangers(self, name: dns.name.Name) -> list[dns.name.Name]:
        """The MX host names of ``name`` (§5.4); a null MX (RFC 7505) is the root name."""
        return [record.exchange for record in await self.query(name, "MX")]

    async def pointers(self, ip: IPAddress) -> list[dns.name.Name]:
        """The PTR names of ``ip`` (§5.5), in the order the server gave them."""
        return [record.target for record in await self.query(dns.reversename.from_address(str(ip)), "PTR")]


def _text(name: dns.name.Name) -> str:
    return str(name.to_text(omit_final_dot=True))
