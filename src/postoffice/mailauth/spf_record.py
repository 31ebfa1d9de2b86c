"""The SPF record and macro-string grammar (RFC 7208 §4.5, §4.6, §5, §6, §7.1, §12).

Untrusted input seen here: SPF records and explanation strings, which anyone who controls a DNS
zone writes. :func:`parse_record` and :func:`parse_macro_string` either return a parsed value or
raise :class:`SpfPermError` naming the problem; nothing else (the invariant the fuzz tests hold).
Parsing is linear in the input and keeps only what it returns.

The whole record is checked before any of it is evaluated: RFC 7208 §4.6 lets an implementation
"parse the entire record first and return "permerror" if the record is not syntactically well
formed", and the test suite's detect-errors-anywhere case asks for it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from postoffice.errors import PostofficeError

Qualifier = Literal["+", "-", "~", "?"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 7208 §4.6.1: mechanisms and modifiers; names are case-insensitive (§12, ABNF).
MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
# §4.6.4: the terms that cause DNS queries, limited to 10 per check_host() evaluation.
DNS_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})
# §7.1: macro letters; "c", "r" and "t" only in an explanation string (exp= text).
DOMAIN_LETTERS = frozenset("slodiphv")
EXPLANATION_LETTERS = DOMAIN_LETTERS | frozenset("crt")
# §7.1: delimiter = "." / "-" / "+" / "," / "/" / "_" / "="
DELIMITERS = frozenset(".-+,/_=")

_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9._-]*)=(.*)", re.DOTALL)
_MACRO = re.compile(r"\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")
# §7.1: toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_TOPLABEL = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")
# §5.6: qnum = DIGIT / %x31-39 DIGIT / "1" 2DIGIT / "2" %x30-34 DIGIT / "25" %x30-35
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4 = re.compile(rf"{_QNUM}(?:\.{_QNUM}){{3}}")
_IP6 = re.compile(r"[0-9A-Fa-f:.]+")
# §5.6: ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT), ip6-cidr-length = "/" ("0" / %x31-39 0*2DIGIT)
_CIDR4 = re.compile(r"0|[1-9][0-9]?")
_CIDR6 = re.compile(r"0|[1-9][0-9]{0,2}")
_DIGITS = re.compile(r"[0-9]+")


class SpfPermError(PostofficeError):
    """The record (or an input) breaks RFC 7208: check_host() returns "permerror" (§2.6.7).

    ``str()`` is one line naming the problem. It never escapes :func:`check_host`.
    """


@dataclass(frozen=True, slots=True)
class Macro:
    """One ``%{...}`` macro (RFC 7208 §7.1-§7.3)."""

    letter: str  # lower case
    keep: int | None  # the DIGIT transformer: how many right-hand parts to keep; None for all
    reverse: bool
    delimiters: str  # characters to split the value on; "." when the macro names none
    escape: bool  # the letter was upper case: URL-escape the expansion (§7.3)


MacroString = tuple[str | Macro, ...]


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One mechanism of a record (RFC 7208 §5), as written in ``text``."""

    qualifier: Qualifier
    name: str  # one of MECHANISMS, lower case
    text: str
    domain: MacroString | None = None  # the domain-spec, when the mechanism has one
    cidr4: int = 32
    cidr6: int = 128
    network: IPNetwork | None = None  # ip4 / ip6 only


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed SPF record: its mechanisms in order and the two modifiers that mean something."""

    mechanisms: tuple[Mechanism, ...]
    redirect: MacroString | None = None
    explanation: MacroString | None = None


def is_spf_record(text: bytes) -> bool:
    """Whether a TXT record (its strings joined) is an SPF record (RFC 7208 §4.5): it starts with
    "v=spf1" in any case, followed by a space or nothing."""
    return text[:6].lower() == b"v=spf1" and (len(text) == 6 or text[6:7] == b" ")


# Parsed records kept by their text: a sender's record comes back for every message it sends
# (DNS answers are cached for their TTL, so the same text recurs), and a Record is immutable.
# A record that does not parse raises again each time (exceptions are not cached).
RECORD_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=RECORD_CACHE_SIZE)
def parse_record(text: str) -> Record:
    """The record, or SpfPermError naming the first problem (RFC 7208 §4.6)."""
    if not text.isascii():
        raise SpfPermError("the SPF record has non-ASCII characters")  # §3.1: 7-bit ASCII
    if not is_spf_record(text.encode("ascii")):
        raise SpfPermError("not an SPF record (it must start with v=spf1)")
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, MacroString] = {}
    # §4.6.1: terms are separated by one or more spaces (SP only, not other white space).
    for term in text[6:].split(" "):
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier is None:
            mechanisms.append(parse_mechanism(term))
            continue
        name, value = modifier.group(1).lower(), modifier.group(2)
        if name in ("redirect", "exp"):
            if name in modifiers:
                raise SpfPermError(f"{name}= appears more than once")  # §6: MUST NOT
            modifiers[name] = parse_domain_spec(value, what=term)
        else:
            # §6: unknown modifiers are ignored, but must still be well formed (A/3).
            parse_macro_string(value, letters=EXPLANATION_LETTERS, what=term)
    return Record(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"))


def parse_mechanism(term: str) -> Mechanism:
    """One mechanism term (RFC 7208 §5, §12 ABNF), or SpfPermError."""
    qualifier: Qualifier = "+"
    body = term
    if term[:1] in ("+", "-", "~", "?"):
        qualifier, body = _qualifier(term[0]), term[1:]
    cut = min((i for i in (body.find(":"), body.find("/")) if i >= 0), default=len(body))
    name, rest = body[:cut].lower(), body[cut:]
    if name not in MECHANISMS:
        raise SpfPermError(f"unknown mechanism {term!r}")
    if name == "all":
        if rest:
            raise SpfPermError(f"{term!r}: all takes no argument")  # §5.1
        return Mechanism(qualifier, name, term)
    if name in ("ip4", "ip6"):
        return _ip_mechanism(qualifier, name, term, rest)
    if name in ("a", "mx"):
        return _address_mechanism(qualifier, name, term, rest)
    if name == "ptr" and not rest:
        return Mechanism(qualifier, name, term)
    # include, exists and ptr with a target: ":" domain-spec, nothing else (§5.2, §5.5, §5.7).
    if not rest.startswith(":"):
        raise SpfPermError(f'{term!r}: {name} needs ":" and a domain')
    return Mechanism(qualifier, name, term, domain=parse_domain_spec(rest[1:], what=term))


def _qualifier(char: str) -> Qualifier:
    qualifiers: dict[str, Qualifier] = {"+": "+", "-": "-", "~": "~", "?": "?"}
    return qualifiers[char]


def _ip_mechanism(qualifier: Qualifier, name: str, term: str, rest: str) -> Mechanism:
    """ip4:<network>[/cidr] or ip6:<network>[/cidr] (RFC 7208 §5.6)."""
    if not rest.startswith(":"):
        raise SpfPermError(f'{term!r}: {name} needs ":" and an address')
    address, slash, length = rest[1:].partition("/")
    pattern, cidr, limit = (_IP4, _CIDR4, 32) if name == "ip4" else (_IP6, _CIDR6, 128)
    if slash and (cidr.fullmatch(length) is None or int(length) > limit):
        raise SpfPermError(f"{term!r}: bad prefix length")  # §5.6: invalid CIDR is a syntax error
    if pattern.fullmatch(address) is None:
        raise SpfPermError(f"{term!r}: not an {'IPv4' if name == 'ip4' else 'IPv6'} address")
    try:
        network = ipaddress.ip_network(f"{address}/{length if slash else limit}", strict=False)
    except ValueError:
        raise SpfPermError(f"{term!r}: not an {'IPv4' if name == 'ip4' else 'IPv6'} address") from None
    if network.version != (4 if name == "ip4" else 6):
        raise SpfPermError(f"{term!r}: wrong address family")
    return Mechanism(qualifier, name, term, network=network)


def _address_mechanism(qualifier: Qualifier, name: str, term: str, rest: str) -> Mechanism:
    """a / mx [":" domain-spec] [dual-cidr-length] (RFC 7208 §5.3, §5.4)."""
    if rest and rest[0] not in ":/":
        raise SpfPermError(f"unknown mechanism {term!r}")
    spec, cidr4, cidr6 = _split_dual_cidr(rest[1:] if rest.startswith(":") else rest, term)
    domain = None
    if rest.startswith(":"):
        domain = parse_domain_spec(spec, what=term)
    elif spec:
        raise SpfPermError(f"{term!r}: bad prefix length")
    return Mechanism(qualifier, name, term, domain=domain, cidr4=cidr4, cidr6=cidr6)


def _split_dual_cidr(text: str, term: str) -> tuple[str, int, int]:
    """``spec[/cidr4][//cidr6]`` split from the right: a "/" inside the domain-spec stays there
    unless digits alone follow it (RFC 7208 §5.3: dual-cidr-length ends the term)."""
    cidr4, cidr6 = 32, 128
    head, sep, tail = text.rpartition("//")
    if sep and _DIGITS.fullmatch(tail):
        cidr6 = _cidr(tail, _CIDR6, 128, term)
        text = head
    head, sep, tail = text.rpartition("/")
    if sep and _DIGITS.fullmatch(tail):
        cidr4 = _cidr(tail, _CIDR4, 32, term)
        text = head
    return text, cidr4, cidr6


def _cidr(text: str, pattern: re.Pattern[str], limit: int, term: str) -> int:
    if pattern.fullmatch(text) is None or int(text) > limit:
        raise SpfPermError(f"{term!r}: bad prefix length")
    return int(text)


def parse_domain_spec(text: str, *, what: str | None = None) -> MacroString:
    """A domain-spec (RFC 7208 §7.1): a macro-string ending in "." toplabel ["."] or a macro."""
    what = what if what is not None else text
    if not text:
        raise SpfPermError(f"{what!r}: empty domain")
    parsed, ends_with_macro = _tokens(text, DOMAIN_LETTERS, spaces=False, what=what)
    if not ends_with_macro:
        # domain-end = ( "." toplabel [ "." ] ): "example.com:8080", "abc.123", "museum" fail here.
        _, dot, toplabel = (text[:-1] if text.endswith(".") else text).rpartition(".")
        if not dot or _TOPLABEL.fullmatch(toplabel) is None:
            raise SpfPermError(f"{what!r}: not a domain name (bad top label)")
    return parsed


def parse_macro_string(
    text: str, *, explanation: bool = False, letters: frozenset[str] | None = None, what: str | None = None
) -> MacroString:
    """A macro-string, or an explanation string (spaces allowed, letters c, r, t too) when
    ``explanation`` (RFC 7208 §6.2, §7.1)."""
    allowed = letters or (EXPLANATION_LETTERS if explanation else DOMAIN_LETTERS)
    return _tokens(text, allowed, spaces=explanation, what=what if what is not None else text)[0]


def _tokens(text: str, letters: frozenset[str], *, spaces: bool, what: str) -> tuple[MacroString, bool]:
    """Literal runs and macros; and whether the string ends with a macro-expand (§7.1)."""
    parsed: list[str | Macro] = []
    literal: list[str] = []
    position, ends_with_macro = 0, False
    while position < len(text):
        char = text[position]
        if char != "%":
            # §7.1: macro-literal = %x21-24 / %x26-7E; explain-string adds SP.
            if not ("!" <= char <= "~" or (spaces and char == " ")):
                raise SpfPermError(f"{what!r}: character {char!r} not allowed")
            literal.append(char)
            position, ends_with_macro = position + 1, False
            continue
        follow = text[position + 1 : position + 2]
        if follow in ("%", "_", "-"):
            # §7.1: "%%" is "%", "%_" a space, "%-" a URL-encoded space.
            literal.append({"%": "%", "_": " ", "-": "%20"}[follow])
            position, ends_with_macro = position + 2, True
            continue
        macro = _MACRO.match(text, position + 1)
        if macro is None:
            raise SpfPermError(f"{what!r}: bad macro at {text[position : position + 8]!r}")  # §7.1/9
        if literal:
            parsed.append("".join(literal))
            literal = []
        parsed.append(_macro(macro, letters, what))
        position, ends_with_macro = macro.end(), True
    if literal:
        parsed.append("".join(literal))
    return tuple(parsed), ends_with_macro


def _macro(match: re.Match[str], letters: frozenset[str], what: str) -> Macro:
    letter, digits, reverse, delimiters = match.groups()
    if letter.lower() not in letters:
        raise SpfPermError(f"{what!r}: macro letter {letter!r} not allowed here")  # §7.1/6, /8
    keep = None
    if digits:
        significant = digits.lstrip("0")
        if not significant:
            raise SpfPermError(f"{what!r}: macro keeps zero parts")  # §7.3: "MUST be nonzero"
        # A name has at most 127 labels, so anything longer than three digits keeps them all.
        keep = int(significant) if len(significant) <= 3 else None
    return Macro(letter.lower(), keep, bool(reverse), delimiters or ".", letter.isupper())


def uses_letter(macro_string: MacroString, letter: str) -> bool:
    """Whether the string has a ``%{letter...}`` macro (the evaluator looks up %{p} only then)."""
    return any(isinstance(part, Macro) and part.letter == letter for part in macro_string)
