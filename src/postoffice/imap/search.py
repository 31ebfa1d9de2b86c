"""SEARCH criteria (RFC 9051 §6.4.4) as a tree of :class:`Key`.

Untrusted input seen here: the SEARCH arguments. Nesting is bounded (NOT, OR and lists each
count a level); an unknown key, a missing argument or a charset other than UTF-8 or US-ASCII is
:class:`~postoffice.imap.ImapParseError` (the charset one tagged ``BADCHARSET``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import cast

from postoffice.imap import ImapParseError
from postoffice.imap.grammar import FLAG_LETTERS, SequenceSet, atom, date, number, sequence_set, text
from postoffice.imap.tokens import Token

MAX_DEPTH = 32
# Keys without argument that test a flag: key -> (Maildir letter, wanted state).
_FLAG_KEYS = {
    "SEEN": ("S", True), "UNSEEN": ("S", False), "ANSWERED": ("R", True), "UNANSWERED": ("R", False),
    "FLAGGED": ("F", True), "UNFLAGGED": ("F", False), "DELETED": ("T", True), "UNDELETED": ("T", False),
    "DRAFT": ("D", True), "UNDRAFT": ("D", False),
}  # fmt: skip
# Keys that always match or never match here (no \Recent in Maildir as we keep it).
_CONSTANT = {"ALL": True, "NEW": False, "RECENT": False, "OLD": True}
_STRING_KEYS = frozenset({"FROM", "TO", "CC", "BCC", "SUBJECT", "BODY", "TEXT"})
_DATE_KEYS = frozenset({"SINCE", "BEFORE", "ON", "SENTSINCE", "SENTBEFORE", "SENTON"})


class BadCharset(ImapParseError):
    """A CHARSET other than UTF-8 or US-ASCII: answered ``NO [BADCHARSET]``."""


@dataclass(frozen=True, slots=True)
class Key:
    """One criterion: ``op`` with its ``value`` and ``children`` (AND, OR, NOT)."""

    op: str
    value: object = None
    children: tuple[Key, ...] = ()

    @property
    def sequence(self) -> SequenceSet:
        return cast(SequenceSet, self.value)

    @property
    def day(self) -> datetime.date:
        return cast(datetime.date, self.value)


@dataclass(frozen=True, slots=True)
class Search:
    """A SEARCH: its criteria, and the ESEARCH ``RETURN`` options (empty: a plain SEARCH)."""

    key: Key
    returns: tuple[str, ...] = ()
    extended: bool = False


def parse_search(args: list[Token]) -> Search:
    args = list(args)
    returns: tuple[str, ...] = ()
    extended = False
    if len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "RETURN":
        options = args[1]
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise ImapParseError("RETURN takes a list of options")
        returns = tuple(cast(str, option).upper() for option in options) or ("ALL",)
        if any(option not in ("MIN", "MAX", "ALL", "COUNT") for option in returns):
            raise ImapParseError("unknown RETURN option")
        extended = True
        del args[:2]
    if len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "CHARSET":
        charset = text(args[1], "charset").upper()
        if charset not in ("UTF-8", "US-ASCII"):
            raise BadCharset("only UTF-8 and US-ASCII are supported")
        del args[:2]
    keys = _Keys(args).all()
    return Search(keys, returns, extended)


class _Keys:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.position = 0

    def all(self) -> Key:
        keys = []
        while self.position < len(self.tokens):
            keys.append(self.key(0))
        if not keys:
            raise ImapParseError("SEARCH needs criteria")
        return keys[0] if len(keys) == 1 else Key("AND", children=tuple(keys))

    def take(self) -> Token:
        if self.position >= len(self.tokens):
            raise ImapParseError("search key needs an argument")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def key(self, depth: int) -> Key:
        if depth > MAX_DEPTH:
            raise ImapParseError("search nested too deep")
        token = self.take()
        if isinstance(token, list):
            inner = _Keys(token)
            keys = []
            while inner.position < len(token):
                keys.append(inner.key(depth + 1))
            if not keys:
                raise ImapParseError("empty search list")
            return Key("AND", children=tuple(keys))
        if isinstance(token, bytes):
            raise ImapParseError("a search key, not a string")
        name = token.upper()
        if name[:1].isdigit() or name[:1] == "*":
            return Key("SEQ", sequence_set(token))
        return self._named(name, depth)

    def _named(self, name: str, depth: int) -> Key:
        if name in _CONSTANT:
            return Key("ALL" if _CONSTANT[name] else "NONE")
        if name in _FLAG_KEYS:
            return Key("FLAG", _FLAG_KEYS[name])
        if name in ("KEYWORD", "UNKEYWORD"):
            # The folder's store knows the keyword's letter: the session puts it in as a FLAG key.
            return Key("KEYWORD", (atom(self.take(), "keyword"), name == "KEYWORD"))
        if name in _STRING_KEYS:
            return Key(name, text(self.take(), name).casefold())
        if name in _DATE_KEYS:
            return Key(name, date(self.take()))
        if name in ("LARGER", "SMALLER"):
            return Key(name, number(self.take(), name))
        if name == "UID":
            return Key("UID", sequence_set(self.take()))
        if name == "MODSEQ":  # RFC 7162 §3.1.5: [entry-name entry-type-req] mod-sequence
            token = self.take()
            if isinstance(token, bytes):
                self.take()
                token = self.take()
            return Key("MODSEQ", number(token, name))
        if name == "HEADER":
            field = text(self.take(), "header name")
            return Key("HEADER", (field.casefold(), text(self.take(), "header value").casefold()))
        if name == "NOT":
            return Key("NOT", children=(self.key(depth + 1),))
        if name == "OR":
            return Key("OR", children=(self.key(depth + 1), self.key(depth + 1)))
        raise ImapParseError(f"unknown search key {name[:30]}")


__all__ = ["FLAG_LETTERS", "BadCharset", "Key", "Search", "parse_search"]
