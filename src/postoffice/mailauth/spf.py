"""SPF: may this client send mail for this domain? RFC 7208's check_host(), asynchronously.

Untrusted input seen here: the client's HELO name and envelope sender (from the SMTP session)
and every SPF record, explanation and address the DNS returns for names those records choose.
Whatever they hold, a check ends in one of the seven results of RFC 7208 §2.6 within
``time_limit`` seconds, after at most 10 DNS-querying terms (§4.6.4), and never raises.

The public functions: :func:`check_mail_from` (the MAIL FROM identity, §2.4; the HELO identity
for a null sender), :func:`check_helo` (the HELO identity, §2.3), and the underlying
:func:`check_host` (§4). The SMTP session starts a check at MAIL, so the lookups run while the
client sends its recipients and data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from dataclasses import dataclass

import dns.asyncresolver

from postoffice.mailauth.spf_dns import MAX_VOID_LOOKUPS, SpfLookups, SpfTempError
from postoffice.mailauth.spf_eval import UNPRINTABLE, Evaluation
from postoffice.mailauth.spf_macro import IPAddress, dns_name
from postoffice.mailauth.spf_record import SpfPermError, parse_macro_string
from postoffice.mailauth.spf_result import Identity, SpfResult

log = logging.getLogger("postoffice.mailauth")

__all__ = ["SpfOptions", "SpfResult", "check_helo", "check_host", "check_mail_from"]

# RFC 7208 §4.6.4: "MTAs or other processors SHOULD impose a limit on the maximum amount of
# elapsed time to evaluate check_host(). Such a limit SHOULD allow at least 20 seconds."
DEFAULT_TIME_LIMIT = 20.0
# §6.2: the receiver's own text when the domain gives no exp=; a macro string like exp= text.
DEFAULT_EXPLANATION = "%{o} has not authorized %{c} to send its mail"
# A problem text quotes record terms; a hostile record's term can be 64 KiB.
MAX_PROBLEM_LENGTH = 200


@dataclass(frozen=True, slots=True)
class SpfOptions:
    """How a receiver runs its checks (one set per server, from its configuration)."""

    receiver: str = "unknown"  # %{r}: this host's name, for explanations (§7.2)
    default_explanation: str = DEFAULT_EXPLANATION  # §6.2, an explanation macro string
    time_limit: float = DEFAULT_TIME_LIMIT  # seconds for the whole evaluation (§4.6.4)
    max_void_lookups: int = MAX_VOID_LOOKUPS  # §4.6.4: "a default of two is RECOMMENDED"

    def __post_init__(self) -> None:
        try:
            parse_macro_string(self.default_explanation, explanation=True)
        except SpfPermError as exc:
            raise ValueError(f"default SPF explanation: {exc}") from None


async def check_mail_from(
    ip: str | IPAddress,
    mail_from: str,
    helo: str,
    *,
    resolver: dns.asyncresolver.Resolver,
    options: SpfOptions = SpfOptions(),
) -> SpfResult:
    """The MAIL FROM identity (RFC 7208 §2.4): ``mail_from`` is the reverse-path without angle
    brackets; when it is null ("") the identity is postmaster@<HELO name>."""
    if not mail_from:
        return await check_host(ip, helo, f"postmaster@{helo}", helo, resolver=resolver, options=options)
    domain = mail_from.rpartition("@")[2]
    return await check_host(ip, domain, mail_from, helo, resolver=resolver, options=options)


async def check_helo(
    ip: str | IPAddress,
    helo: str,
    *,
    resolver: dns.asyncresolver.Resolver,
    options: SpfOptions = SpfOptions(),
) -> SpfResult:
    """The HELO identity (RFC 7208 §2.3): the HELO/EHLO name's own policy. An address literal
    or a name without a dot gives "none" (§4.3)."""
    return await check_host(
        ip, helo, f"postmaster@{helo}", helo, resolver=resolver, identity="helo", options=options
    )


async def check_host(
    ip: str | IPAddress,
    domain: str,
    sender: str,
    helo: str,
    *,
    resolver: dns.asyncresolver.Resolver,
    identity: Identity = "mailfrom",
    options: SpfOptions = SpfOptions(),
) -> SpfResult:
    """RFC 7208 §4: may ``ip`` send mail for ``domain``, whose policy is asked on behalf of
    ``sender`` (the address checked; "postmaster" stands in for a missing local part)?"""
    local, at, sender_domain = sender.rpartition("@")
    sender = f"{local or 'postmaster'}@{sender_domain if at else domain}"
    result = SpfResult("none", domain, sender, str(ip), identity, helo)
    address = _client_address(ip)
    if address is None:
        return dataclasses.replace(
            result, result="permerror", problem=f"{str(ip)[:64]!r} is not an IP address"
        )
    result = dataclasses.replace(result, ip=str(address))
    name = _initial_domain(domain)
    if name is None:  # §4.3: a malformed or single-label domain gives "none" at once
        return dataclasses.replace(result, problem=f"{_one_line(domain)!r} is not a domain name")
    local, _, sender_domain = sender.rpartition("@")
    lookups = SpfLookups(resolver, max_void=options.max_void_lookups)
    evaluation = Evaluation(
        address, sender, local, sender_domain, helo, options.receiver, options.default_explanation, lookups
    )
    return await _run(evaluation, name, result, options)


async def _run(evaluation: Evaluation, domain: str, result: SpfResult, options: SpfOptions) -> SpfResult:
    """Evaluate within the time limit, turning every way it can end into a result."""
    deadline = time.monotonic() + options.time_limit
    try:
        async with asyncio.timeout(options.time_limit):
            outcome = await evaluation.check(domain)
    except SpfPermError as exc:
        return dataclasses.replace(result, result="permerror", problem=_one_line(str(exc)))
    except SpfTempError as exc:
        return dataclasses.replace(result, result="temperror", problem=_one_line(str(exc)))
    except TimeoutError:
        problem = f"no result within {options.time_limit:g} s"  # §4.6.4: "SHOULD be temperror"
        return dataclasses.replace(result, result="temperror", problem=problem)
    except Exception as exc:  # the boundary: a bug must not take the SMTP session down
        log.error("spf status=internal-error domain=%r error=%s", domain[:64], type(exc).__name__)
        return dataclasses.replace(result, result="temperror", problem="internal error")
    explanation = None
    if outcome.result == "fail":
        explanation = await evaluation.explain(outcome, max(deadline - time.monotonic(), 0.1))
    return dataclasses.replace(
        result,
        result=outcome.result,
        mechanism=outcome.mechanism,
        explanation=explanation,
        problem=None if outcome.result != "none" else f"{domain} publishes no SPF record",
    )


def _client_address(ip: str | IPAddress) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6:
        address = ipaddress.IPv6Address(address.packed)  # drop a zone index ("%eth0")
        # RFC 7208 §5: an IPv4-mapped IPv6 address "MUST still be considered an IPv4 address".
        return address.ipv4_mapped or address
    return address


def _initial_domain(domain: str) -> str | None:
    """The domain in ASCII (A-labels), or None when §4.3 says the result is "none": malformed
    (an empty or over-long label), an address literal, or a single label."""
    if domain.startswith("["):
        return None
    try:
        name = domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    name = name[:-1] if name.endswith(".") else name
    if "." not in name or dns_name(name) is None:
        return None
    return name


def _one_line(text: str) -> str:
    text = UNPRINTABLE.sub("?", text)
    return text if len(text) <= MAX_PROBLEM_LENGTH else text[: MAX_PROBLEM_LENGTH - 3] + "..."
