"""RFC 5321 §4.1.2 paths and ESMTP parameters, with the RFC 6531 (SMTPUTF8) extensions.

Untrusted input seen here: the argument text of MAIL and RCPT commands, straight from the
client. Everything is matched against anchored regular expressions built from the ABNF below;
anything that does not match is rejected, never "repaired".

The ABNF, quoted from RFC 5321 §4.1.2 and §4.1.3 (RFC 6531 §3.3 additions marked ``=/``)::

    Reverse-path   = Path / "<>"
    Forward-path   = Path
    Path           = "<" [ A-d-l ":" ] Mailbox ">"
    A-d-l          = At-domain *( "," At-domain )   ; source route: accepted and ignored (§4.1.2)
    At-domain      = "@" Domain
    Mailbox        = Local-part "@" ( Domain / address-literal )
    Local-part     = Dot-string / Quoted-string
    Dot-string     = Atom *("."  Atom)
    Atom           = 1*atext                         ; atext =/ UTF8-non-ascii
    Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
    QcontentSMTP   = qtextSMTP / quoted-pairSMTP
    quoted-pairSMTP = %d92 %d32-126
    qtextSMTP      = %d32-33 / %d35-91 / %d93-126    ; =/ UTF8-non-ascii
    Domain         = sub-domain *("." sub-domain)
    sub-domain     = Let-dig [Ldh-str]               ; =/ U-label
    address-literal = "[" ( IPv4-address-literal / IPv6-address-literal
                          / General-address-literal ) "]"
    Mail-parameters = esmtp-param *(SP esmtp-param)
    esmtp-param    = esmtp-keyword ["=" esmtp-value]
    esmtp-keyword  = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    esmtp-value    = 1*(%d33-60 / %d62-126)          ; =/ UTF8-non-ascii
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# §4.5.3.1.1-3 size limits, in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_NON_ASCII = r"\u0080-\U0010FFFF"
_ATOM_ASCII = f"[{_ATEXT}]+"
_ATOM_UTF8 = f"[{_ATEXT}{_NON_ASCII}]+"
_QUOTED_ASCII = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_QUOTED_UTF8 = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e' + _NON_ASCII + r"]|\\[\x20-\x7e])*\""
_SUBDOMAIN_ASCII = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# RFC 6531 §3.3: sub-domain =/ U-label; the precise IDNA rules are enforced by the DNS layer,
# here a U-label is letters/digits/hyphens in any script.
_SUBDOMAIN_UTF8 = (
    r"[A-Za-z0-9" + _NON_ASCII + r"](?:[A-Za-z0-9\-" + _NON_ASCII + r"]*[A-Za-z0-9" + _NON_ASCII + r"])?"
)
_LITERAL = r"\[[^\[\]\\\s]+\]"


def _mailbox_re(atom: str, quoted: str, subdomain: str) -> re.Pattern[str]:
    local = f"(?P<local>{atom}(?:\\.{atom})*|{quoted})"
    domain = f"(?P<domain>{subdomain}(?:\\.{subdomain})*|{_LITERAL})"
    return re.compile(f"{local}@{domain}")


_MAILBOX_ASCII = _mailbox_re(_ATOM_ASCII, _QUOTED_ASCII, _SUBDOMAIN_ASCII)
_MAILBOX_UTF8 = _mailbox_re(_ATOM_UTF8, _QUOTED_UTF8, _SUBDOMAIN_UTF8)
_ADL = re.compile(
    f"@{_SUBDOMAIN_UTF8}(?:\\.{_SUBDOMAIN_UTF8})*(?:,@{_SUBDOMAIN_UTF8}(?:\\.{_SUBDOMAIN_UTF8})*)*:"
)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE_ASCII = re.compile(r"[\x21-\x3c\x3e-\x7e]+")
_VALUE_UTF8 = re.compile(r"[\x21-\x3c\x3e-\x7e" + _NON_ASCII + r"]+")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")


class GrammarError(ValueError):
    """The text does not match the RFC 5321 grammar; the message says which part."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An address from a path. ``local_part`` is as sent (quotes kept); ``domain`` lower-cased."""

    local_part: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}"

    @property
    def is_ascii(self) -> bool:
        return self.local_part.isascii() and self.domain.isascii()

    @property
    def unquoted_local_part(self) -> str:
        """The local part with RFC 5321 quoting removed (``"a\\"b"`` → ``a"b``)."""
        text = self.local_part
        if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        return text


@dataclass(frozen=True, slots=True)
class Path:
    """A reverse- or forward-path. ``mailbox`` is None for the null path ``<>`` and
    ``postmaster`` is True for the domainless ``<Postmaster>`` (§4.1.1.3)."""

    mailbox: Mailbox | None
    postmaster: bool = False

    @property
    def is_null(self) -> bool:
        return self.mailbox is None and not self.postmaster

    def __str__(self) -> str:
        if self.postmaster:
            return "postmaster"
        return "" if self.mailbox is None else str(self.mailbox)


NULL_PATH = Path(None)


def _check_address_literal(literal: str) -> None:
    inner = literal[1:-1]
    if inner[:5].lower() == "ipv6:":
        # §4.1.3 IPv6-addr is hex digits, colons and dots only; ipaddress also accepts a
        # "%zone" suffix (RFC 4007), which names an interface of the sender's host.
        if not re.fullmatch(r"[0-9A-Fa-f:.]+", inner[5:]):
            raise GrammarError("invalid IPv6 address literal")
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError as exc:
            raise GrammarError("invalid IPv6 address literal") from exc
    elif re.fullmatch(r"[0-9.]+", inner):
        try:
            ipaddress.IPv4Address(inner)
        except ValueError as exc:
            raise GrammarError("invalid IPv4 address literal") from exc
    elif not _GENERAL_LITERAL.fullmatch(inner):
        raise GrammarError("invalid address literal")


def parse_mailbox(text: str, *, utf8: bool) -> Mailbox:
    """Parse ``Local-part "@" Domain``; ``utf8`` admits RFC 6531 non-ASCII forms."""
    match = (_MAILBOX_UTF8 if utf8 else _MAILBOX_ASCII).fullmatch(text)
    if match is None:
        if not utf8 and not text.isascii():
            raise GrammarError("non-ASCII address without SMTPUTF8")
        raise GrammarError("invalid mailbox")
    local, domain = match["local"], match["domain"]
    if len(local.encode()) > MAX_LOCAL_PART:
        raise GrammarError("local part longer than 64 octets (RFC 5321 §4.5.3.1.1)")
    if len(domain.encode()) > MAX_DOMAIN:
        raise GrammarError("domain longer than 255 octets (RFC 5321 §4.5.3.1.2)")
    if domain.startswith("["):
        _check_address_literal(domain)
    return Mailbox(local, domain.lower())


def parse_path(text: str, *, utf8: bool, allow_null: bool, allow_postmaster: bool) -> tuple[Path, str]:
    """Parse a path at the start of ``text``; returns the path and the rest of the text.

    The rest holds the ESMTP parameters (after a space). ``<>`` is the null reverse-path,
    allowed for MAIL only; ``<Postmaster>`` without domain is allowed for RCPT only (§4.5.1).
    """
    if not text.startswith("<"):
        raise GrammarError("path must be enclosed in <>")
    end = _find_path_end(text)
    inner, rest = text[1:end], text[end + 1 :]
    if rest and not rest.startswith(" "):
        raise GrammarError("text after the path")
    # "256 octets (including the punctuation and element separators)": the angle brackets count,
    # which leaves 254 for the mailbox (RFC 3696 erratum 1690).
    if len(text[: end + 1].encode()) > MAX_PATH:
        raise GrammarError("path longer than 256 octets (RFC 5321 §4.5.3.1.3)")
    if inner == "":
        if not allow_null:
            raise GrammarError("null path not allowed here")
        return NULL_PATH, rest
    if allow_postmaster and inner.lower() == "postmaster":
        return Path(None, postmaster=True), rest
    adl = _ADL.match(inner)
    if adl is not None:
        inner = inner[adl.end() :]  # §4.1.2: source routes are accepted and ignored
    return Path(parse_mailbox(inner, utf8=utf8)), rest


def _find_path_end(text: str) -> int:
    """Index of the ``>`` closing the path, skipping a quoted local part (which may hold ``>``)."""
    close = text.find(">", 1)
    if close != -1 and '"' not in text[1:close]:
        return close  # no quoted string before the first ">": the usual path, found in C
    in_quotes = False
    index = 1
    while index < len(text):
        char = text[index]
        if in_quotes and char == "\\":
            index += 2
            continue
        if char == '"':
            in_quotes = not in_quotes
        elif char == ">" and not in_quotes:
            return index
        index += 1
    raise GrammarError("path is missing its closing >")


def parse_parameters(text: str, *, utf8: bool) -> dict[str, str | None]:
    """Parse ``Mail-parameters``; keywords upper-cased, values as sent (None when absent)."""
    params: dict[str, str | None] = {}
    value_re = _VALUE_UTF8 if utf8 else _VALUE_ASCII
    for item in text.split(" "):
        if not item:
            continue  # tolerate repeated spaces between parameters
        keyword, sep, value = item.partition("=")
        if not _KEYWORD.fullmatch(keyword):
            raise GrammarError(f"invalid parameter keyword {keyword!r}")
        if sep and not value_re.fullmatch(value):
            raise GrammarError(f"invalid value for {keyword.upper()}")
        key = keyword.upper()
        if key in params:
            raise GrammarError(f"duplicate parameter {key}")
        params[key] = value if sep else None
    return params


_DOMAIN_UTF8 = re.compile(f"{_SUBDOMAIN_UTF8}(?:\\.{_SUBDOMAIN_UTF8})*\\.?")


def is_helo_name(text: str) -> bool:
    """§4.1.1.1: EHLO takes a Domain or an address-literal."""
    if text.startswith("[") and text.endswith("]"):
        try:
            _check_address_literal(text)
        except GrammarError:
            return False
        return True
    return bool(_DOMAIN_UTF8.fullmatch(text)) and len(text.encode()) <= MAX_DOMAIN


_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")


def decode_xtext(text: str) -> str:
    """RFC 3461 §4: xtext, where ``+XX`` encodes one octet.

    ``xtext = *( xchar / hexchar )``; ``xchar`` is ASCII ``!`` to ``~`` except ``+`` and ``=``,
    and ``hexchar`` is ``+`` and two upper-case hex digits. Anything else is rejected.
    """

    def _one(match: re.Match[str]) -> str:
        return chr(int(match[1], 16))

    if not _XTEXT.fullmatch(text):
        raise GrammarError("invalid xtext")
    return re.sub(r"\+([0-9A-F]{2})", _one, text)


def encode_xtext(text: str) -> str:
    """RFC 3461 §4: characters outside "!" to "~", and "+" and "=", as "+HH".

    The inverse of :func:`decode_xtext`, which turns each "+HH" into the character with that
    code; characters beyond one octet (never produced by decoding) are written as their UTF-8
    octets.
    """
    out = []
    for octet in b"".join(bytes([ord(char)]) if ord(char) < 256 else char.encode("utf-8") for char in text):
        if 33 <= octet <= 126 and octet not in (ord("+"), ord("=")):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)
