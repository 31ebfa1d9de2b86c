"""Macro expansion (RFC 7208 §7.2-§7.4) and the domain names it produces.

Untrusted input seen here: the parsed macro strings of SPF records (from DNS) and the values
they expand (the client's HELO name and envelope sender). An expansion is bounded
(MAX_EXPANSION characters) however many macros a record holds, and a name that cannot be a DNS
name (an empty or too-long label) comes back as None rather than as an error: RFC 7208 leaves
that case open (the test suite accepts "no match" or "permerror"), and no match is the answer
that does not punish a domain for what a sender put in its address.
"""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass

import dns.exception
import dns.name

from postoffice.mailauth.spf_record import Macro, MacroString, SpfPermError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 7208 §7.3: an expanded domain name longer than 253 characters loses labels on the left.
MAX_DOMAIN_LENGTH = 253
# No real policy expands beyond a few hundred characters; this bounds a hostile one (a 64 KiB
# record of "%{s}" with a long sender would otherwise build megabytes).
MAX_EXPANSION = 8192


@dataclass(frozen=True, slots=True)
class MacroValues:
    """What the macro letters stand for in one check_host() call (RFC 7208 §7.2)."""

    sender: str  # s: <sender>, "local-part@domain"
    local_part: str  # l
    sender_domain: str  # o
    domain: str  # d: the <domain> being checked (changes with include and redirect)
    ip: IPAddress  # i, c, v
    helo: str  # h
    receiver: str  # r: this host's name (explanations only)
    validated_name: str = "unknown"  # p: filled in only when the string uses %{p}


def expand(macro_string: MacroString, values: MacroValues) -> str:
    """The macro string with every macro replaced (RFC 7208 §7.3), or SpfPermError when the
    result would exceed MAX_EXPANSION."""
    parts: list[str] = []
    length = 0
    for part in macro_string:
        text = part if isinstance(part, str) else _expand_macro(part, values)
        length += len(text)
        if length > MAX_EXPANSION:
            raise SpfPermError(f"macro expansion longer than {MAX_EXPANSION} characters")
        parts.append(text)
    return "".join(parts)


def expand_domain(macro_string: MacroString, values: MacroValues) -> str:
    """An expanded domain-spec as a name to look up: without a trailing dot, and shortened from
    the left to 253 characters (RFC 7208 §7.3)."""
    name = expand(macro_string, values)
    if name.endswith("."):
        name = name[:-1]
    while len(name) > MAX_DOMAIN_LENGTH and "." in name:
        name = name.partition(".")[2]
    return name


def _expand_macro(macro: Macro, values: MacroValues) -> str:
    value = _letter_value(macro.letter, values)
    if macro.keep is not None or macro.reverse or macro.delimiters != ".":
        # §7.3: split on the delimiters, optionally reverse, keep the right-hand parts, join with ".".
        parts = _split(value, macro.delimiters)
        if macro.reverse:
            parts.reverse()
        if macro.keep is not None:
            parts = parts[-macro.keep :]
        value = ".".join(parts)
    if macro.escape:
        # §7.3: upper-case letters are URL-escaped; unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~".
        value = urllib.parse.quote(value, safe="")
    return value


def _split(value: str, delimiters: str) -> list[str]:
    return re.split(f"[{re.escape(delimiters)}]", value)


def _letter_value(letter: str, values: MacroValues) -> str:
    ip = values.ip
    if letter == "i":
        # §7.3: "i" is the dotted-quad for IPv4; for IPv6 the dot-separated nibbles.
        return str(ip) if ip.version == 4 else ".".join(ip.packed.hex().upper())
    if letter == "c":
        return str(ip)  # §7.3: "easily readable" form: dotted quad, or RFC 5952 text for IPv6
    if letter == "v":
        return "in-addr" if ip.version == 4 else "ip6"
    if letter == "t":
        return str(int(time.time()))
    named = {
        "s": values.sender,
        "l": values.local_part,
        "o": values.sender_domain,
        "d": values.domain,
        "h": values.helo,
        "r": values.receiver,
        "p": values.validated_name,
    }
    return named[letter]


def dns_name(domain: str) -> dns.name.Name | None:
    """``domain`` as an absolute DNS name, or None when it cannot be one (an empty label, a
    label over 63 octets, over 255 octets in all). Built from its labels, so no character in
    it is taken as a DNS text escape."""
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        return None
    try:
        return dns.name.Name([label.encode("utf-8") for label in domain.split(".")] + [b""])
    except (dns.exception.DNSException, UnicodeError):
        return None


def name_text(name: dns.name.Name) -> str:
    """A DNS name from an answer (an MX exchange, a PTR target) as text, without the root dot."""
    return ".".join(label.decode("utf-8", "replace") for label in name.labels if label)
