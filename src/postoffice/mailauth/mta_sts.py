"""MTA-STS (RFC 8461) as data: the policy file and the ``_mta-sts`` TXT record, parsed strictly,
written, and an MX host matched against a policy's patterns.

Untrusted input seen here: policy files fetched from other domains' web servers and TXT
records from their zones. Both are parsed by the RFC's grammar (§3.1, §3.2); anything else is a
:class:`StsSyntaxError` naming the first problem, never an exception of another kind.

Used both ways: outbound delivery (:mod:`postoffice.delivery.mtasts`) parses other domains'
policies; the web listener serves ours and ``postoffice dns`` prints its record, both written
here so the id in the record always names the text served.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from postoffice.config import Config

# §3.2: "max_age: Max lifetime of the policy (plaintext non-negative integer seconds,
# maximum value of 31557600)".
MAX_AGE_LIMIT = 31_557_600
# §3.3: "senders SHOULD impose a limit on the response size ... 64 kilobytes".
POLICY_SIZE_LIMIT = 64 * 1024
MODES = ("enforce", "testing", "none")

# §3.1: sts-id = 1*32(ALPHA / DIGIT); sts-ext-name and -value as in §3.2's extension grammar.
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_TXT_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]+)")
# §3.2: field-delim = ":" *WSP; names of extensions as in §3.1.
_POLICY_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31}):[ \t]*(.*?)[ \t]*")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class StsSyntaxError(ValueError):
    """A policy or record that does not follow RFC 8461's grammar; the message says where."""


@dataclass(frozen=True, slots=True)
class StsRecord:
    """The ``_mta-sts`` TXT record (§3.1): its id changes whenever the policy does."""

    id: str


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """A policy file (§3.2)."""

    mode: str  # enforce | testing | none
    max_age: int  # seconds
    mx: tuple[str, ...]  # patterns, lower case, without a trailing dot

    def allows(self, host: str) -> bool:
        """Whether the MX host ``host`` matches one of the patterns (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def parse_record(text: str) -> StsRecord:
    """The TXT record ``v=STSv1; id=...;`` (§3.1), fields separated by ``;`` and spaces."""
    fields = [part.strip(" \t") for part in text.split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # the trailing delimiter is optional
    if not fields or fields[0] != "v=STSv1":
        raise StsSyntaxError("the record does not start with v=STSv1")
    found: dict[str, str] = {}
    for part in fields[1:]:
        match = _TXT_FIELD.fullmatch(part)
        if match is None:
            raise StsSyntaxError(f"malformed field {part[:40]!r}")
        found.setdefault(match[1], match[2])
    identifier = found.get("id")
    if identifier is None or _ID.fullmatch(identifier) is None:
        raise StsSyntaxError("the record has no valid id (1 to 32 letters and digits)")
    return StsRecord(identifier)


def parse_policy(text: str) -> StsPolicy:
    """A policy file (§3.2): lines ``key: value`` ended by CRLF or LF; unknown keys ignored, of
    the known ones the first counts, except ``mx`` which may repeat."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    fields: dict[str, str] = {}
    patterns: list[str] = []
    for number, line in enumerate(lines, 1):
        match = _POLICY_FIELD.fullmatch(line)
        if match is None:
            raise StsSyntaxError(f"line {number} is not 'key: value'")
        key, value = match[1], match[2]
        if key == "mx":
            patterns.append(_mx_pattern(value, number))
        elif key in ("version", "mode", "max_age"):
            fields.setdefault(key, value)
        elif _EXT_VALUE.fullmatch(value) is None:
            raise StsSyntaxError(f"line {number}: extension {key} has a malformed value")
    if fields.get("version") != "STSv1":
        raise StsSyntaxError("version is not STSv1")
    mode = fields.get("mode")
    if mode not in MODES:
        raise StsSyntaxError("mode is missing or not enforce, testing or none")
    age = fields.get("max_age", "")
    if not (age.isascii() and age.isdigit() and len(age) <= 10) or int(age) > MAX_AGE_LIMIT:
        raise StsSyntaxError(f"max_age is missing or not a number of seconds up to {MAX_AGE_LIMIT}")
    if mode != "none" and not patterns:
        raise StsSyntaxError(f"mode {mode} without any mx pattern")
    return StsPolicy(mode, int(age), tuple(patterns))


def _mx_pattern(value: str, number: int) -> str:
    """``mx: [*.]domain`` (§3.2): a host name, or a wildcard for exactly one leftmost label."""
    name = value.lower().removesuffix(".")
    rest = name[2:] if name.startswith("*.") else name
    labels = rest.split(".")
    if len(rest) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise StsSyntaxError(f"line {number}: mx {value[:60]!r} is not a host name pattern")
    return name


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: a pattern matches the MX host's name exactly, or "*.example.com" any name with
    exactly one more label on the left ("mx.example.com", not "a.mx.example.com")."""
    host = host.lower().removesuffix(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def render_policy(mode: str, max_age: int, mx: tuple[str, ...]) -> str:
    """Our own policy file, with CRLF line ends (§3.2)."""
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {host}" for host in mx), f"max_age: {max_age}"]
    return "".join(f"{line}\r\n" for line in lines)


def policy_id(text: str) -> str:
    """An id for the record that changes when the policy text does (§3.1: 1 to 32 letters and
    digits): the first 20 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def render_record(text: str) -> str:
    """The ``_mta-sts`` TXT record for a policy text."""
    return f"v=STSv1; id={policy_id(text)}"


def our_policy(config: Config) -> str | None:
    """The policy this server publishes (``[mta_sts]``), or None when ``mode`` is ``off``; the
    MX hosts default to our host name, which every local domain's MX record names."""
    settings = config.mta_sts
    if settings.mode == "off":
        return None
    hosts = settings.mx or (config.hostname.lower().removesuffix("."),)
    return render_policy(settings.mode, int(settings.max_age), hosts)
