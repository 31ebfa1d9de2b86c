"""Where mail for a domain goes: MX lookup (RFC 5321 §5.1) with dnspython's async resolver.

Untrusted input seen here: recipient domains (from SMTP clients, already valid domain names
or address literals) and DNS answers, which anyone controlling a domain's zone writes. Answers
only ever become host names to look up and IP addresses to connect to; an MX host may name
anything, including this server, which :mod:`postoffice.delivery.remote` checks.

The order RFC 5321 §5.1 asks for:

* the MX records, lowest preference first; records of equal preference in random order
  ("the sender-SMTP MUST randomize them to spread the load");
* no MX record at all: the domain itself, as an implicit MX of preference 0;
* a null MX (RFC 7505: a single record "0 .") means the domain accepts no mail: a permanent
  failure (556 5.1.10), without a connection attempt;
* a name that does not exist (NXDOMAIN) is a permanent failure; a lookup that fails (SERVFAIL,
  timeout, no server reachable) is temporary, and the message waits for the next retry.

Each host's addresses are its A then AAAA records (IPv4 first: a site without working IPv6
still delivers at the first attempt, and connection failures move on quickly).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver

from postoffice.dns_resolver import make_resolver
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply

# dnspython's default lifetime is 5 s per query; slow authoritative servers need a bit more,
# and a delivery that waits on it has nothing better to do.
DEFAULT_TIMEOUT = 10.0
# Postfix smtp_mx_address_limit = 5: at most this many addresses are tried per delivery.
MX_ADDRESS_LIMIT = 5


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address to try: the host name it belongs to (for logs, TLS and Remote-MTA)."""

    host: str
    address: str
    port: int

    def __str__(self) -> str:
        address = f"[{self.address}]" if ":" not in self.address else f"[IPv6:{self.address}]"
        return f"{self.host}{address}:{self.port}"


class RouteError(Exception):
    """No endpoint: ``reply`` says why, and whether it is final (5xx) or worth a retry (4xx)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class MxResolver:
    """Finds the endpoints for a domain. ``nameserver`` (IP, port) replaces the system's."""

    def __init__(
        self,
        nameserver: tuple[str, int] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self._resolver = make_resolver(nameserver, timeout=timeout)
        # RFC 6840 §5.7: AD set in a query asks a validating resolver to say whether it
        # validated the answer (DANE believes it only with [delivery] dns_validates).
        self._resolver.flags = dns.flags.RD | dns.flags.AD
        self._rng = rng or random.Random()

    async def mail_exchangers(self, domain: str) -> list[str]:
        """The MX host names for ``domain`` in the order to try them (RFC 5321 §5.1)."""
        name = _absolute(domain)
        answer = await self._query(domain, name, "MX")
        if answer is None:
            return [domain]  # implicit MX: the domain itself
        records = [(record.preference, record.exchange) for record in answer]
        if any(exchange == dns.name.root for _, exchange in records):
            if len(records) == 1:
                raise RouteError(replies.null_mx(domain))
            # RFC 7505 §3: a null MX "MUST NOT" come with others; ignore the broken one.
            records = [(pref, exchange) for pref, exchange in records if exchange != dns.name.root]
        hosts = [(pref, exchange.to_text(omit_final_dot=True).lower()) for pref, exchange in records]
        return order_hosts(hosts, self._rng)

    async def addresses(self, host: str) -> list[str]:
        """The host's IPv4 then IPv6 addresses; empty when it has none.

        Raises RouteError (temporary) when a lookup fails rather than answers.
        """
        name = _absolute(host)
        found: list[str] = []
        temporary: RouteError | None = None
        lookups = await asyncio.gather(
            self._query(host, name, "A", missing_ok=True),
            self._query(host, name, "AAAA", missing_ok=True),
            return_exceptions=True,
        )
        for answer in lookups:
            if isinstance(answer, RouteError):
                temporary = answer
            elif isinstance(answer, BaseException):
                raise answer
            elif answer is not None:
                found += [record.address for record in answer]
        if not found and temporary is not None:
            raise temporary
        return found

    async def endpoints(self, domain: str, port: int) -> list[Endpoint]:
        """Where to connect for mail to ``domain``, best first, at most MX_ADDRESS_LIMIT."""
        literal = address_literal(domain)
        if literal is not None:
            return [Endpoint(domain, literal, port)]
        hosts = await self.mail_exchangers(domain)
        found: list[Endpoint] = []
        temporary: RouteError | None = None
        for host in hosts:
            try:
                addresses = await self.addresses(host)
            except RouteError as exc:
                temporary = exc
                continue
            found += [Endpoint(host, address, port) for address in addresses]
            if len(found) >= MX_ADDRESS_LIMIT:
                break
        if found:
            return found[:MX_ADDRESS_LIMIT]
        if temporary is not None:
            raise temporary
        raise RouteError(replies.no_route(domain))

    async def host_endpoints(self, host: str, port: int) -> list[Endpoint]:
        """A named server's addresses, without MX lookup (a relay host, as Postfix's [host])."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [Endpoint(host, str(address), port)]
        addresses = await self.addresses(host)
        if not addresses:
            raise RouteError(replies.dns_failure(host, "no address records"))
        return [Endpoint(host, address, port) for address in addresses[:MX_ADDRESS_LIMIT]]

    async def lookup(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """Records of any type at ``name`` (for MTA-STS's TXT and DANE's TLSA), None when there
        are none; RouteError when the lookup fails. ``answer.response.flags`` has the AD bit."""
        return await self._query(name, _absolute(name), rdtype, missing_ok=True)

    async def _query(
        self, domain: str, name: dns.name.Name, rdtype: str, *, missing_ok: bool = False
    ) -> dns.resolver.Answer | None:
        """The answer, or None when the name exists without records of that type.

        A name that does not exist is a permanent RouteError for MX and "no records" for
        address lookups (``missing_ok``), where a host name among several may be stale.
        """
        try:
            answer = await self._resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            if missing_ok:
                return None
            raise RouteError(replies.domain_not_found(domain)) from None
        except dns.resolver.NoNameservers:
            raise RouteError(replies.dns_failure(domain, f"no server answered the {rdtype} query")) from None
        except dns.exception.Timeout:
            raise RouteError(replies.dns_failure(domain, f"{rdtype} query timed out")) from None
        except dns.exception.DNSException as exc:
            raise RouteError(replies.dns_failure(domain, f"{rdtype} query: {type(exc).__name__}")) from None
        if answer.rrset is None:
            return None
        return answer


def _absolute(domain: str) -> dns.name.Name:
    """The domain as an absolute DNS name; U-labels become A-labels (RFC 5890)."""
    try:
        return dns.name.from_text(domain.encode("idna").decode("ascii"), origin=dns.name.root)
    except (UnicodeError, dns.exception.DNSException):
        raise RouteError(replies.domain_not_found(domain)) from None


def address_literal(domain: str) -> str | None:
    """The IP address of an RFC 5321 §4.1.3 address literal (``[192.0.2.1]``,
    ``[IPv6:2001:db8::1]``), or None for a domain name."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        raise RouteError(replies.domain_not_found(domain)) from None


def order_hosts(hosts: Sequence[tuple[int, str]], rng: random.Random) -> list[str]:
    """Host names by preference, equal preferences shuffled (RFC 5321 §5.1), each once
    (at its best preference)."""
    by_preference: dict[int, list[str]] = {}
    for preference, host in hosts:
        by_preference.setdefault(preference, []).append(host)
    ordered: list[str] = []
    for preference in sorted(by_preference):
        group = list(dict.fromkeys(by_preference[preference]))
        rng.shuffle(group)
        ordered += [host for host in group if host not in ordered]
    return ordered
