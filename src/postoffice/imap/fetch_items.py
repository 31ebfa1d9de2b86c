"""FETCH data items (RFC 9051 §6.4.5): what a client asks of each message.

Untrusted input seen here: the FETCH arguments, as atoms like ``BODY.PEEK[1.2.MIME]<0.2048>``
or lists of them. Section parts are bounded (depth and numbers), field lists are plain header
names; anything else is :class:`~postoffice.imap.ImapParseError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postoffice.imap import ImapParseError
from postoffice.imap.grammar import MAX_NUMBER
from postoffice.imap.tokens import Token

# RFC 9051 §6.4.5 macros (IMAP4rev1's; rev2 keeps them for old clients).
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
SIMPLE = frozenset(
    {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822",
     "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"}
)  # fmt: skip
_ITEM_RE = re.compile(
    r"(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[([^\]]*)\](?:<([0-9]+)\.([0-9]+)>)?\Z"
)
_PART_RE = re.compile(r"[1-9][0-9]{0,5}")
_FIELD_RE = re.compile(r"[!-9;-~]+")
MAX_PART_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Section:
    """``BODY[1.2.HEADER.FIELDS (FROM)]``: ``part`` (1, 2), ``text`` ("HEADER.FIELDS", or
    "HEADER", "HEADER.FIELDS.NOT", "TEXT", "MIME", "" for the whole part), ``fields``."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    def label(self) -> str:
        spec = ".".join(str(number) for number in self.part)
        if self.text:
            spec = f"{spec}.{self.text}" if spec else self.text
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return spec


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One item: ``name`` is a :data:`SIMPLE` name, or "BODY", "BINARY", "BINARY.SIZE" with a
    ``section``; ``partial`` ``(origin, count)``; ``peek`` leaves \\Seen alone."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def label(self) -> str:
        """How the response names it: without PEEK, with only the partial's origin (§7.5.2)."""
        if self.section is None:
            return self.name
        origin = "" if self.partial is None else f"<{self.partial[0]}>"
        return f"{self.name}[{self.section.label()}]{origin}"

    @property
    def sets_seen(self) -> bool:
        """Whether fetching it sets \\Seen (RFC 9051 §6.4.5: BODY[...] and RFC822(.TEXT))."""
        if self.section is not None:
            return not self.peek and self.name in ("BODY", "BINARY")
        return self.name in ("RFC822", "RFC822.TEXT")


def fetch_items(token: Token) -> list[FetchItem]:
    """The items of a FETCH: a macro, one item, or a list of items."""
    if isinstance(token, str) and token.upper() in _MACROS:
        return [FetchItem(name) for name in _MACROS[token.upper()]]
    tokens = token if isinstance(token, list) else [token]
    if not tokens:
        raise ImapParseError("no FETCH items")
    return [fetch_item(item) for item in tokens]


def fetch_item(token: Token) -> FetchItem:
    if not isinstance(token, str):
        raise ImapParseError("a FETCH item is an atom")
    upper = token.upper()
    if upper in SIMPLE:
        return FetchItem(upper)
    match = _ITEM_RE.match(upper)
    if match is None:
        raise ImapParseError(f"unknown FETCH item {token[:40]!r}")
    name, spec, origin, count = match.groups()
    partial = None
    if origin is not None:
        if int(origin) > MAX_NUMBER or not 0 < int(count) <= MAX_NUMBER:
            raise ImapParseError("bad partial range")
        partial = (int(origin), int(count))
    peek = name.endswith(".PEEK")
    base = name.removesuffix(".PEEK")
    section = _section(spec)
    if base != "BODY" and (section.text or (base == "BINARY.SIZE" and partial)):
        raise ImapParseError("BINARY takes part numbers only")
    return FetchItem(base, section, partial, peek)


def _section(spec: str) -> Section:
    head, _, fields_text = spec.partition(" ")
    words = head.split(".") if head else []
    part: list[int] = []
    while words and _PART_RE.fullmatch(words[0]):
        part.append(int(words.pop(0)))
    if len(part) > MAX_PART_DEPTH:
        raise ImapParseError("section nested too deep")
    text = ".".join(words)
    if text not in ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
        raise ImapParseError(f"unknown section {spec[:40]!r}")
    if text == "MIME" and not part:
        raise ImapParseError("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        inner = fields_text.strip()
        if not (inner.startswith("(") and inner.endswith(")")):
            raise ImapParseError("HEADER.FIELDS needs a list of field names")
        fields = tuple(inner[1:-1].split())
        if not fields or not all(_FIELD_RE.fullmatch(name) for name in fields):
            raise ImapParseError("bad header field names")
    elif fields_text:
        raise ImapParseError(f"unexpected text in section {spec[:40]!r}")
    return Section(tuple(part), text, fields)
