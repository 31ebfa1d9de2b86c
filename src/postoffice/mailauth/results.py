"""The Authentication-Results header field (RFC 8601): build ours, parse any, and find the ones
a sender forged in our name.

Untrusted input seen here: every header field of an incoming message (anyone can write an
Authentication-Results field claiming any authserv-id) and the values that go into ours (SPF and
DMARC domains from the envelope and From field, DKIM d=/s=/b= from signatures). Values are
printed as RFC 2045 tokens or quoted strings with control characters removed, so none can end
the field or add one. :func:`parse` raises only :class:`AuthResultsError`.

RFC 8601 §5: a border MTA "MUST delete existing header fields" that claim its authserv-id
before adding its own, or a forger's "pass" would pass; :func:`claims_authserv_id` is that test,
on the field's raw bytes, so a caller streaming the message file drops such fields on the way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from postoffice.errors import PostofficeError
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict

FIELD_NAME = "Authentication-Results"
# RFC 6008 §4 (header.b): enough of the signature to tell several from one domain apart; 8 is
# what OpenDKIM prints.
HEADER_B_LENGTH = 8
# RFC 2045 §5.1: tspecials, which a token cannot hold (RFC 8601 §2.2 "value").
_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')
_KEYWORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# Compiled once: every incoming message's field goes through these (CTLs and DEL; what makes a
# value need quoting, RFC 2045 tspecials and SP; what a comment must escape, RFC 5322 §3.2.2).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_NOT_A_TOKEN = re.compile(r'[()<>@,;:\\"/\[\]?= ]')
_COMMENT_SPECIALS = re.compile(r"([()\\])")


class AuthResultsError(PostofficeError, ValueError):
    """An Authentication-Results value that RFC 8601 §2.2 does not allow."""


@dataclass(frozen=True, slots=True)
class Property:
    """``ptype.property=value`` (RFC 8601 §2.3), e.g. ``smtp.mailfrom=example.com``."""

    ptype: str
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One ``method=result`` with its reason, properties and (ours only) a comment."""

    method: str
    result: str
    properties: tuple[Property, ...] = ()
    reason: str | None = None
    comment: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class AuthenticationResults:
    authserv_id: str
    results: tuple[MethodResult, ...] = ()
    version: int | None = None


# --- building ------------------------------------------------------------------------------------


def spf_result(verdict: SpfVerdict) -> MethodResult:
    """RFC 8601 §2.7.2: the SPF result for the MAIL FROM domain or the HELO name."""
    name = "helo" if verdict.identity == "helo" else "mailfrom"
    return MethodResult("spf", verdict.result.lower(), (Property("smtp", name, verdict.domain),))


def dkim_result(verdict: DkimVerdict) -> MethodResult:
    """RFC 8601 §2.7.1 and RFC 6008: d=, s= and the start of b= tell which signature it was."""
    properties = [Property("header", "d", verdict.domain), Property("header", "s", verdict.selector)]
    if verdict.header_b:
        properties.append(Property("header", "b", verdict.header_b[:HEADER_B_LENGTH]))
    return MethodResult("dkim", verdict.result.lower(), tuple(properties))


def dmarc_result(
    result: str, from_domain: str, policy: str | None = None, disposition: str | None = None
) -> MethodResult:
    """RFC 7489 §11.2: ``dmarc=RESULT header.from=DOMAIN``; the policy and disposition go in a
    comment, as OpenDMARC writes them (``(p=reject dis=none)``)."""
    comment = f"p={policy} dis={disposition}" if policy and disposition else None
    properties = (Property("header", "from", from_domain),) if from_domain else ()
    return MethodResult("dmarc", result, properties, comment=comment)


def arc_result(result: str, instances: int = 0, oldest_pass: int | None = None) -> MethodResult:
    """RFC 8617 §10.1: ``arc=RESULT`` with ``header.oldest-pass`` when the chain passed."""
    properties = (Property("header", "oldest-pass", str(oldest_pass)),) if oldest_pass is not None else ()
    comment = f"i={instances}" if instances else None
    return MethodResult("arc", result, properties, comment=comment)


def build(authserv_id: str, results: Sequence[MethodResult]) -> str:
    """The field's value (RFC 8601 §2.2), folded with one result a line; ``none`` when empty."""
    parts = [_value(authserv_id)]
    for item in results:
        text = f"{_keyword(item.method)}={_keyword(item.result)}"
        if item.comment:
            text += f" ({_comment(item.comment)})"
        if item.reason is not None:
            text += f" reason={_value(item.reason)}"
        for prop in item.properties:
            text += f" {_keyword(prop.ptype)}.{_keyword(prop.name)}={_value(prop.value)}"
        parts.append(text)
    if len(parts) == 1:
        parts.append("none")
    return ";\r\n\t".join(parts)


def header_field(authserv_id: str, results: Sequence[MethodResult]) -> bytes:
    """The whole field, CRLF-terminated, to put on top of the message (RFC 8601 §5)."""
    return f"{FIELD_NAME}: {build(authserv_id, results)}\r\n".encode()


def _clean(text: str) -> str:
    return _CONTROLS.sub("", text)


def _value(text: str) -> str:
    """RFC 2045 value: a token when it can be one, else a quoted-string."""
    text = _clean(text)
    if text and not _NOT_A_TOKEN.search(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _keyword(text: str) -> str:
    if not _KEYWORD.fullmatch(text):
        raise AuthResultsError(f"{text[:40]!r} is not a keyword (RFC 8601 §2.2)")
    return text


def _comment(text: str) -> str:
    return _COMMENT_SPECIALS.sub(r"\\\1", _clean(text))


# --- parsing (RFC 8601 §2.2) ---------------------------------------------------------------------


class _Scanner:
    """A cursor over a field value; every read either consumes what the grammar allows or
    raises AuthResultsError."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def cfws(self) -> str | None:
        """Skip folding white space and comments (RFC 5322 §3.2.2), comments nested; returns
        the text of the first comment skipped (quoted-pairs undone), None if there was none."""
        depth = 0
        first: str | None = None
        start = 0
        while not self.at_end():
            ch = self.text[self.pos]
            if ch in " \t\r\n":
                self.pos += 1
            elif ch == "(":
                depth += 1
                self.pos += 1
                start = self.pos if depth == 1 else start
            elif depth and ch == ")":
                depth -= 1
                if depth == 0 and first is None:
                    first = re.sub(r"\\(.)", r"\1", self.text[start : self.pos], flags=re.DOTALL)
                self.pos += 1
            elif depth and ch == "\\":
                self.pos += 2
            elif depth:
                self.pos += 1
            else:
                break
        if depth:
            raise AuthResultsError("unterminated comment")
        return first

    def expect(self, char: str) -> None:
        self.cfws()
        if self.peek() != char:
            raise AuthResultsError(f"expected {char!r} at {self.pos}")
        self.pos += 1

    def token(self) -> str:
        start = self.pos
        while not self.at_end():
            ch = self.text[self.pos]
            if ch in _TSPECIALS or ch <= " " or ch == "\x7f":
                break
            self.pos += 1
        if start == self.pos:
            raise AuthResultsError(f"expected a token at {self.pos}")
        return self.text[start : self.pos]

    def quoted(self) -> str:
        self.pos += 1  # the opening quote
        out: list[str] = []
        while not self.at_end():
            ch = self.text[self.pos]
            self.pos += 1
            if ch == '"':
                return "".join(out)
            if ch == "\\":
                if self.at_end():
                    break
                ch = self.text[self.pos]
                self.pos += 1
            out.append(ch)
        raise AuthResultsError("unterminated quoted-string")

    def value(self) -> str:
        """RFC 2045 value: token / quoted-string."""
        self.cfws()
        return self.quoted() if self.peek() == '"' else self.token()

    def keyword(self) -> str:
        """Keyword = ldh-str (RFC 8601 §2.2, RFC 5321 §4.1.2)."""
        self.cfws()
        match = _KEYWORD.match(self.text, self.pos)
        if match is None:
            raise AuthResultsError(f"expected a keyword at {self.pos}")
        self.pos = match.end()
        return match.group()

    def digits(self) -> int | None:
        self.cfws()
        start = self.pos
        while self.peek().isascii() and self.peek().isdigit():
            self.pos += 1
        return int(self.text[start : self.pos]) if self.pos > start else None


def parse(value: str) -> AuthenticationResults:
    """An Authentication-Results field value (without the name); raises AuthResultsError."""
    scanner = _Scanner(value)
    authserv_id = scanner.value()
    version = scanner.digits()
    scanner.cfws()
    if scanner.at_end():
        raise AuthResultsError("no results and no 'none'")
    results: list[MethodResult] = []
    while not scanner.at_end():
        scanner.expect(";")
        scanner.cfws()
        if not results and scanner.text[scanner.pos :].lower().rstrip(" \t\r\n") == "none":
            return AuthenticationResults(authserv_id, (), version)  # no-result
        results.append(_resinfo(scanner))
        scanner.cfws()
    return AuthenticationResults(authserv_id, tuple(results), version)


def _resinfo(scanner: _Scanner) -> MethodResult:
    """resinfo = ";" methodspec [ CFWS reasonspec ] [ CFWS 1*propspec ]"""
    method = scanner.keyword()
    method_version = None
    scanner.cfws()
    if scanner.peek() == "/":
        scanner.pos += 1
        method_version = scanner.digits()
        if method_version is None:
            raise AuthResultsError("method version is not a number")
    scanner.expect("=")
    result = scanner.keyword()
    reason = None
    properties: list[Property] = []
    # Where build() writes its comment, and where OpenDMARC and others write the DMARC policy
    # ("dmarc=fail (p=reject dis=quarantine)"): the one comment a reader of the field may want.
    comment = scanner.cfws()
    while not scanner.at_end() and scanner.peek() != ";":
        name = scanner.keyword()
        scanner.cfws()
        if name.lower() == "reason" and scanner.peek() == "=" and reason is None and not properties:
            scanner.pos += 1
            reason = scanner.value()
        else:
            scanner.expect(".")
            prop = scanner.keyword()
            scanner.expect("=")
            properties.append(Property(name, prop, _pvalue(scanner)))
        scanner.cfws()
    return MethodResult(method, result, tuple(properties), reason, comment, method_version)


def _pvalue(scanner: _Scanner) -> str:
    """pvalue = [CFWS] ( value / [ [ local-part ] "@" ] domain-name ) [CFWS]"""
    scanner.cfws()
    local = "" if scanner.peek() == "@" else scanner.value()
    if scanner.peek() != "@":
        return local
    scanner.pos += 1
    return f"{local}@{scanner.token()}"


# --- the fields a forger wrote in our name (RFC 8601 §5) -----------------------------------------


def header_fields(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Physical header lines (each with its line ending) grouped into fields: a line starting
    with SP or HTAB continues the one before (RFC 5322 §2.2.3). Stops at the empty line."""
    field = b""
    for line in lines:
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and field:
            field += line
            continue
        if field:
            yield field
        field = line
    if field:
        yield field


def field_name(field: bytes) -> bytes:
    """The field's name, as written (RFC 5322 §2.2; obsolete syntax allows space before ':')."""
    return field.partition(b":")[0].rstrip(b" \t")


def claims_authserv_id(field: bytes, authserv_id: str) -> bool:
    """True when ``field`` (a whole header field, bytes as in the message) is an
    Authentication-Results field naming ``authserv_id``: the caller removes it (RFC 8601 §5).

    Names are compared without case and without a final dot. A field whose value does not
    parse still claims ours when its text up to the first ';' does, loosely read: removing a
    field too many is harmless, leaving a forged one is not.
    """
    if field_name(field).lower() != FIELD_NAME.lower().encode():
        return False
    value = field.partition(b":")[2].decode("utf-8", "replace")
    ours = _comparable(authserv_id)
    try:
        if _comparable(_Scanner(value).value()) == ours:
            return True
    except AuthResultsError:
        pass
    loose = re.sub(r"\([^()]*\)", " ", value.partition(";")[0])
    return _comparable(loose.strip(' \t\r\n"').split(" ")[0].strip('"')) == ours


def strip_claims(fields: Iterable[bytes], authserv_id: str) -> Iterator[bytes]:
    """``fields`` without the Authentication-Results fields that claim ``authserv_id``."""
    return (field for field in fields if not claims_authserv_id(field, authserv_id))


def _comparable(name: str) -> str:
    return name.strip().rstrip(".").lower()
