"""The evaluation behind check_host() (RFC 7208 §4-§6): records, mechanisms, modifiers, %{p}.

Untrusted input seen here: SPF records and the DNS answers for every name they choose, and the
sender and HELO name the macros expand. Every failure leaves as SpfPermError or SpfTempError,
which :mod:`postoffice.mailauth.spf` turns into a result; the DNS budget (:class:`SpfLookups`)
is shared by the whole evaluation, include and redirect steps included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
from dataclasses import dataclass

import dns.name

from postoffice.mailauth.spf_dns import MAX_MX_RECORDS, MAX_PTR_NAMES, SpfLookups, SpfTempError
from postoffice.mailauth.spf_macro import IPAddress, MacroValues, dns_name, expand, expand_domain, name_text
from postoffice.mailauth.spf_record import (
    MacroString,
    Mechanism,
    Qualifier,
    Record,
    SpfPermError,
    is_spf_record,
    parse_macro_string,
    parse_record,
    uses_letter,
)
from postoffice.mailauth.spf_result import SpfResultCode

RESULTS: dict[Qualifier, SpfResultCode] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one record (after any redirect) decided."""

    result: SpfResultCode
    mechanism: str | None  # the matching term; None when nothing matched or no record
    domain: str  # the domain whose record decided: %{d} of its explanation
    explanation: MacroString | None  # that record's exp= (§6.2: only it may explain a fail)


@dataclass
class Evaluation:
    """One check_host() evaluation: what the macros see, and the shared DNS budget."""

    ip: IPAddress
    sender: str
    local_part: str
    sender_domain: str
    helo: str
    receiver: str
    default_explanation: str
    lookups: SpfLookups
    _validated: list[str] | None = None  # the client's validated PTR names, once looked up

    async def check(self, domain: str) -> Outcome:
        """check_host() for ``domain`` (§4.4-§4.7); raises SpfPermError / SpfTempError."""
        record = await self._record(domain)
        if record is None:
            return Outcome("none", None, domain, None)
        for mechanism in record.mechanisms:
            if await self._matches(mechanism, domain):
                return Outcome(RESULTS[mechanism.qualifier], mechanism.text, domain, record.explanation)
        if record.redirect is None:
            return Outcome("neutral", None, domain, record.explanation)  # §4.7: the default
        # §6.1: redirect is used only when no mechanism matched; its result is the result.
        self.lookups.count_term("redirect")
        target = await self._target(record.redirect, domain)
        outcome = await self.check(target)
        if outcome.result == "none":
            raise SpfPermError(f"redirect={target}: no SPF record there")
        return outcome

    async def _record(self, domain: str) -> Record | None:
        """The one SPF record of ``domain`` (§4.4, §4.5), or None when it has none."""
        name = dns_name(domain)
        if name is None:
            return None
        records = [text for text in await self.lookups.txt(name) if is_spf_record(text)]
        if not records:
            return None
        if len(records) > 1:
            raise SpfPermError(f"{domain} has {len(records)} SPF records")  # §4.5: exactly one
        try:
            return parse_record(records[0].decode("ascii"))
        except UnicodeDecodeError:
            raise SpfPermError(f"the SPF record of {domain} is not ASCII") from None  # §3.1

    async def _matches(self, mechanism: Mechanism, domain: str) -> bool:
        """Whether ``mechanism`` of ``domain``'s record matches the client (§5)."""
        name = mechanism.name
        if name == "all":
            return True  # §5.1
        if name in ("ip4", "ip6"):  # §5.6: IPv4 clients match ip4 only, IPv6 clients ip6 only
            return mechanism.network is not None and self.ip in mechanism.network
        self.lookups.count_term(mechanism.text)  # §4.6.4
        target = domain if mechanism.domain is None else await self._target(mechanism.domain, domain)
        if name == "include":
            return await self._include(target)
        if name == "ptr":
            return bool(await self._validated_names(mechanism.text, within=target))
        query_name = dns_name(target)
        if query_name is None:
            return False  # a target that cannot be a DNS name matches nothing (see spf_macro)
        if name == "exists":
            return await self._exists(mechanism, query_name)
        if name == "a":
            addresses = await self.lookups.addresses(query_name, self.ip.version)
            if not addresses:
                self.lookups.count_void(mechanism.text)
            return self._in_any(addresses, mechanism)
        return await self._mx(mechanism, query_name)

    async def _include(self, target: str) -> bool:
        """§5.2: a pass matches; fail, softfail, neutral do not; "none" is a permerror."""
        outcome = await self.check(target)
        if outcome.result == "none":
            raise SpfPermError(f"include:{target}: no SPF record there")
        return outcome.result == "pass"

    async def _exists(self, mechanism: Mechanism, name: dns.name.Name) -> bool:
        """§5.7: any A record matches, whatever the client's address family."""
        found = await self.lookups.addresses(name, 4)
        if not found:
            self.lookups.count_void(mechanism.text)
        return bool(found)

    async def _mx(self, mechanism: Mechanism, name: dns.name.Name) -> bool:
        """§5.4: the addresses of every MX host; no implicit MX (§5.4: "MUST NOT" use the A)."""
        hosts = await self.lookups.mail_exchangers(name)
        if not hosts:
            self.lookups.count_void(mechanism.text)
        if len(hosts) > MAX_MX_RECORDS:
            raise SpfPermError(f"{mechanism.text}: more than {MAX_MX_RECORDS} MX records")  # §4.6.4
        for host in hosts:
            if host != dns.name.root and self._in_any(
                await self.lookups.addresses(host, self.ip.version), mechanism
            ):
                return True
        return False

    def _in_any(self, addresses: list[IPAddress], mechanism: Mechanism) -> bool:
        """Whether the client is in the network of any address, at the mechanism's prefix length."""
        prefix = mechanism.cidr4 if self.ip.version == 4 else mechanism.cidr6
        network = ipaddress.ip_network((self.ip, prefix), strict=False)
        return any(address in network for address in addresses)

    async def _validated_names(self, term: str | None, within: str | None = None) -> list[str]:
        """The client's PTR names whose addresses include it (§5.5), optionally only those at or
        under ``within``. ``term`` names the ptr mechanism whose void lookup this counts."""
        try:
            pointers = await self.lookups.pointers(self.ip)
        except SpfTempError:
            return []  # §5.5: a DNS error on the PTR lookup: the mechanism does not match
        if not pointers and term is not None:
            self.lookups.count_void(term)
        validated = []
        for pointer in pointers[:MAX_PTR_NAMES]:  # §4.6.4: the rest "MUST be ignored"
            text = name_text(pointer).lower()
            if within is not None and not is_within(text, within):
                continue
            try:
                addresses = await self.lookups.addresses(pointer, self.ip.version)
            except SpfTempError:
                continue  # §5.5: "that domain name is skipped and the search continues"
            if self.ip in addresses:
                validated.append(text)
        return validated

    async def _validated_name(self, domain: str) -> str:
        """%{p} (§7.3): the validated name equal to ``domain``, else one under it, else any."""
        if self._validated is None:
            self._validated = await self._validated_names(None)
        for candidates in (
            [name for name in self._validated if name == domain.lower()],
            [name for name in self._validated if is_within(name, domain)],
            self._validated,
        ):
            if candidates:
                return candidates[0]
        return "unknown"

    async def _values(self, macro_string: MacroString, domain: str) -> MacroValues:
        values = MacroValues(
            self.sender,
            self.local_part,
            self.sender_domain,
            domain,
            self.ip,
            self.helo,
            self.receiver,
        )
        if uses_letter(macro_string, "p"):
            values = dataclasses.replace(values, validated_name=await self._validated_name(domain))
        return values

    async def _target(self, domain_spec: MacroString, domain: str) -> str:
        return expand_domain(domain_spec, await self._values(domain_spec, domain))

    async def explain(self, outcome: Outcome, time_limit: float) -> str:
        """The explanation of a fail (§6.2): the deciding record's exp= text when it has one
        that works, else the receiver's default; unexpanded if time runs out."""
        try:
            async with asyncio.timeout(time_limit):
                return UNPRINTABLE.sub("?", await self._explanation(outcome))
        except TimeoutError:
            return self.default_explanation

    async def _explanation(self, outcome: Outcome) -> str:
        if outcome.explanation is not None:
            try:
                text = await self._exp_text(outcome.explanation, outcome.domain)
            except (SpfPermError, SpfTempError):
                text = None  # §6.2: any problem: "proceed as if no exp modifier was given"
            if text is not None:
                return text
        default = parse_macro_string(self.default_explanation, explanation=True)
        try:
            return expand(default, await self._values(default, outcome.domain))
        except SpfPermError:  # longer than MAX_EXPANSION with this sender: say it unexpanded
            return self.default_explanation

    async def _exp_text(self, exp: MacroString, domain: str) -> str | None:
        name = dns_name(await self._target(exp, domain))
        if name is None:
            return None
        records = await self.lookups.txt(name)  # not a term: no count, no void (§4.6.4, §6.2)
        if len(records) != 1 or not records[0].isascii():
            return None  # §6.2: exactly one record; the text is 7-bit ASCII
        text = parse_macro_string(records[0].decode("ascii"), explanation=True)
        return expand(text, await self._values(text, domain))


def is_within(name: str, domain: str) -> bool:
    """Whether ``name`` is ``domain`` or a name under it, ignoring case and a trailing dot."""
    name, domain = name.lower().rstrip("."), domain.lower().rstrip(".")
    return name == domain or name.endswith("." + domain)
