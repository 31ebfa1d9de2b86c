"""The arguments of IMAP commands: strings, sequence sets, flags, dates and FETCH items.

Untrusted input seen here: command arguments as :mod:`.tokens` split them. Every function
returns a typed value or raises :class:`~postoffice.imap.ImapParseError`; numbers are bounded
(RFC 9051 §9 ``nz-number`` is a 32-bit value), names are checked against the grammar.
SEARCH keys are :mod:`.search`'s.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass

from postoffice.imap import ImapParseError
from postoffice.imap.tokens import Token

MAX_NUMBER = 2**32 - 1
# Sequence sets longer than this many ranges are refused: a client listing every UID one by
# one is answered BAD rather than making every lookup slow.
MAX_RANGES = 10_000

# IMAP system flags and the Maildir info letters that hold them (cr.yp.to/proto/maildir.html).
FLAG_LETTERS = {"\\SEEN": "S", "\\ANSWERED": "R", "\\FLAGGED": "F", "\\DELETED": "T", "\\DRAFT": "D"}
LETTER_FLAGS = {"S": "\\Seen", "R": "\\Answered", "F": "\\Flagged", "T": "\\Deleted", "D": "\\Draft"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_RE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_DATE_TIME_RE = re.compile(
    r" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z"
)


def astring(token: Token, what: str = "argument") -> bytes:
    """An atom or a string (RFC 9051 ``astring``), as octets."""
    if isinstance(token, bytes):
        return token
    if isinstance(token, str):
        return token.encode("utf-8")
    raise ImapParseError(f"{what}: a string, not a list")


def text(token: Token, what: str = "argument") -> str:
    """An ``astring`` as text (UTF-8; IMAP4rev2 allows it in strings, RFC 9051 §4.3)."""
    try:
        return astring(token, what).decode("utf-8")
    except UnicodeDecodeError:
        raise ImapParseError(f"{what}: not UTF-8") from None


def atom(token: Token, what: str = "argument") -> str:
    if not isinstance(token, str):
        raise ImapParseError(f"{what}: an atom expected")
    return token


def number(token: Token, what: str = "number") -> int:
    value = atom(token, what)
    if not value.isdigit() or not value.isascii() or len(value) > 10 or int(value) > MAX_NUMBER:
        raise ImapParseError(f"{what}: not a number")
    return int(value)


def arguments(args: list[Token], low: int, high: int | None = None) -> list[Token]:
    """``args`` if there are ``low`` to ``high`` (default: exactly ``low``) of them."""
    top = low if high is None else high
    if not low <= len(args) <= top:
        raise ImapParseError("wrong number of arguments")
    return args


# --- sequence sets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges ``(low, high)``, either end 0 for ``*`` (RFC 9051 §9 ``sequence-set``)."""

    ranges: tuple[tuple[int, int], ...]

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """The ranges with ``*`` as ``largest``, each ordered low to high."""
        out = []
        for low, high in self.ranges:
            low, high = low or largest, high or largest
            out.append((min(low, high), max(low, high)))
        return out

    def contains(self, value: int, largest: int) -> bool:
        return any(low <= value <= high for low, high in self.resolve(largest))


def sequence_set(token: Token) -> SequenceSet:
    value = atom(token, "sequence set")
    parts = value.split(",")
    if len(parts) > MAX_RANGES:
        raise ImapParseError("sequence set too long")
    ranges = []
    for part in parts:
        low, colon, high = part.partition(":")
        first = _seq_number(low)
        ranges.append((first, _seq_number(high) if colon else first))
    return SequenceSet(tuple(ranges))


def _seq_number(text: str) -> int:
    if text == "*":
        return 0
    if not text.isdigit() or not text.isascii() or len(text) > 10 or not 0 < int(text) <= MAX_NUMBER:
        raise ImapParseError(f"not a sequence number: {text[:20]!r}")
    return int(text)


# --- flags and dates ------------------------------------------------------------------------------


def flag_list(token: Token) -> tuple[str, set[str]]:
    """``(letters, keywords)`` of a flag list or a single flag: Maildir letters of the system
    flags, and the keywords (``$Forwarded``), whose letters the folder's store gives."""
    items = token if isinstance(token, list) else [token]
    letters, keywords = "", set()
    for item in items:
        name = atom(item, "flag")
        letter = FLAG_LETTERS.get(name.upper())
        if letter is not None:
            letters += letter
        elif name.startswith("\\"):
            if name.upper() != "\\RECENT":
                raise ImapParseError(f"unknown system flag {name[:30]}")
        else:
            keywords.add(name)
    return "".join(sorted(set(letters))), keywords


def flag_names(letters: str, keywords: Sequence[str] = ()) -> list[str]:
    """The IMAP flags of Maildir info letters: system flags, then the keywords the lower-case
    letters stand for (``a`` is ``keywords[0]``, as in Dovecot's ``dovecot-keywords``); unknown
    letters are left out."""
    system = [LETTER_FLAGS[letter] for letter in sorted(letters) if letter in LETTER_FLAGS]
    numbers = sorted(ord(letter) - ord("a") for letter in set(letters) if "a" <= letter <= "z")
    return system + [keywords[number] for number in numbers if number < len(keywords) and keywords[number]]


def date(token: Token) -> datetime.date:
    """RFC 9051 ``date``: ``1-Feb-1994`` (quoted or not)."""
    match = _DATE_RE.match(text(token, "date"))
    if match is None:
        raise ImapParseError("not a date (d-Mon-yyyy)")
    day, month, year = match.groups()
    try:
        return datetime.date(int(year), _month(month), int(day))
    except ValueError:
        raise ImapParseError("not a date") from None


def date_time(token: Token) -> datetime.datetime:
    """RFC 9051 ``date-time``: ``"17-Jul-1996 02:44:25 -0700"`` (APPEND's internal date)."""
    match = _DATE_TIME_RE.match(text(token, "date-time"))
    if match is None:
        raise ImapParseError("not a date-time")
    day, month, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    offset = datetime.timedelta(hours=int(zone_h), minutes=int(zone_m)) * (-1 if sign == "-" else 1)
    try:
        return datetime.datetime(
            int(year), _month(month), int(day), int(hour), int(minute), int(second),
            tzinfo=datetime.timezone(offset),
        )  # fmt: skip
    except ValueError:
        raise ImapParseError("not a date-time") from None


def _month(name: str) -> int:
    try:
        return _MONTHS.index(name.capitalize()) + 1
    except ValueError:
        raise ImapParseError(f"not a month: {name!r}") from None


def format_date_time(when: float) -> str:
    """An INTERNALDATE as RFC 9051 writes it, in UTC: ``06-Dec-2026 21:10:34 +0000``."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return f"{moment.day:02d}-{_MONTHS[moment.month - 1]}-{moment.year:04d} {moment:%H:%M:%S} +0000"


# --- mailbox names --------------------------------------------------------------------------------

# The hierarchy delimiter: "Archive/2024" (Maildir++ keeps it as the directory ".Archive.2024",
# and the web UI shows the same name).
DELIMITER = "/"
MAX_MAILBOX_NAME = 200


def mailbox_name(token: Token) -> str:
    """A mailbox name: INBOX in any case is INBOX (RFC 9051 §5.1); others must be printable,
    without "\\", wildcards or empty levels, and not start with "~" (the store may refuse
    more: its folder names are plainer)."""
    name = text(token, "mailbox")
    if name.upper() == "INBOX":
        return "INBOX"
    levels = name.split(DELIMITER)
    if (
        not name
        or len(name.encode("utf-8")) > MAX_MAILBOX_NAME
        or any(not level for level in levels)
        or any(not char.isprintable() or char in '\\%*"' for char in name)
        or name.startswith("~")
    ):
        raise ImapParseError(f"not a usable mailbox name: {name[:60]!r}")
    if levels[0].upper() == "INBOX":
        raise ImapParseError("folders inside INBOX are not supported; create them beside it")
    return name
