"""SEARCH evaluated over the selected folder's messages (RFC 9051 §6.4.4).

Untrusted input seen here: the parsed criteria and message bytes. Keys that need only the
listing (flags, UIDs, sequence numbers, internal date) never open a file; header keys read the
header block only; BODY and TEXT read the message in blocks, and a match across two blocks is
still found (blocks overlap by the length of the string looked for). Strings match
case-insensitively on the octets as stored (encoded words are not decoded).
"""

from __future__ import annotations

import datetime
import email.header
import email.utils
from collections.abc import Callable
from typing import BinaryIO, cast

from postoffice.imap import describe
from postoffice.imap.search import Key
from postoffice.storage import StoredMessage

_BLOCK = 256 * 1024
_ADDRESS_FIELDS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}


class Candidate:
    """One message as a SEARCH looks at it: its place, and its file opened when needed."""

    def __init__(
        self,
        seq: int,
        uid: int,
        message: StoredMessage,
        opener: Callable[[], BinaryIO],
        largest: tuple[int, int],
        modseq: int = 1,
    ) -> None:
        self.seq, self.uid, self.message, self.modseq = seq, uid, message, modseq
        self._opener = opener
        self.largest = largest  # (largest sequence number, largest UID): what "*" means
        self._stream: BinaryIO | None = None
        self._header: bytes | None = None

    @property
    def stream(self) -> BinaryIO:
        if self._stream is None:
            self._stream = self._opener()
        return self._stream

    @property
    def header(self) -> bytes:
        if self._header is None:
            stream = self.stream
            stream.seek(0)
            lines: list[bytes] = []
            for line in stream:
                if line in (b"\r\n", b"\n") or len(lines) > 5000:
                    break
                lines.append(line)
            self._header = b"".join(lines)
        return self._header

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def matches(key: Key, candidate: Candidate) -> bool:
    op = key.op
    if op == "AND":
        return all(matches(child, candidate) for child in key.children)
    if op == "OR":
        return any(matches(child, candidate) for child in key.children)
    if op == "NOT":
        return not matches(key.children[0], candidate)
    if op in ("ALL", "NONE"):
        return op == "ALL"
    if op == "SEQ":
        return key.sequence.contains(candidate.seq, candidate.largest[0])
    if op == "UID":
        return key.sequence.contains(candidate.uid, candidate.largest[1])
    if op == "MODSEQ":
        return candidate.modseq >= int(str(key.value))
    if op == "FLAG":
        letter, wanted = cast(tuple[str, bool], key.value)
        return (letter in candidate.message.flags) == wanted
    return _content(key, candidate)


def _content(key: Key, candidate: Candidate) -> bool:
    op = key.op
    if op in ("SINCE", "BEFORE", "ON"):
        return _compare(op, _day(candidate.message.received), key.day)
    if op in ("SENTSINCE", "SENTBEFORE", "SENTON"):
        sent = _sent_day(candidate.header)
        return sent is not None and _compare(op.removeprefix("SENT"), sent, key.day)
    if op in ("LARGER", "SMALLER"):
        size = candidate.stream.seek(0, 2)
        return size > int(str(key.value)) if op == "LARGER" else size < int(str(key.value))
    if op in _ADDRESS_FIELDS:
        value = describe.field_value(candidate.header, _ADDRESS_FIELDS[op])
        return value is not None and _field_contains(value, str(key.value))
    if op == "HEADER":
        name, wanted = cast(tuple[str, str], key.value)
        value = describe.field_value(candidate.header, name)
        return value is not None and _field_contains(value, wanted)
    if op == "TEXT" and _contains(candidate.header, str(key.value)):
        return True
    if op in ("BODY", "TEXT"):
        return _body_contains(candidate, str(key.value))
    return False


def _compare(op: str, day: datetime.date, wanted: datetime.date) -> bool:
    if op == "SINCE":
        return day >= wanted
    if op == "BEFORE":
        return day < wanted
    return day == wanted


def _day(when: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).date()


def _sent_day(header: bytes) -> datetime.date | None:
    value = describe.field_value(header, "date")
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(value.decode("ascii", "replace")).date()
    except (TypeError, ValueError):
        return None


def _field_contains(value: bytes, wanted: str) -> bool:
    """A header field matches as written or with its encoded words decoded (RFC 2047): a
    search for "café" finds ``=?utf-8?q?caf=C3=A9?=``, as RFC 9051 §6.4.4 expects."""
    if _contains(value, wanted):
        return True
    if b"=?" not in value:
        return False
    try:
        decoded = str(email.header.make_header(email.header.decode_header(value.decode("ascii", "replace"))))
    except (ValueError, LookupError, UnicodeError):  # an unknown charset, a broken word
        return False
    return wanted in decoded.casefold()


def _contains(value: bytes, wanted: str) -> bool:
    return wanted in value.decode("utf-8", "replace").casefold()


def _body_contains(candidate: Candidate, wanted: str) -> bool:
    needle = wanted.encode("utf-8")
    stream = candidate.stream
    stream.seek(len(candidate.header))
    tail = b""
    while True:
        block = stream.read(_BLOCK)
        if not block:
            return False
        window = (tail + block).lower()
        if needle.lower() in window:
            return True
        tail = block[-len(needle) :] if needle else b""
