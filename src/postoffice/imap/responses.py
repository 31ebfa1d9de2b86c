"""Responses as bytes (RFC 9051 §7): status responses, untagged data, and the values in them.

Untrusted input seen here: none parsed; message data (header fields, bodies) and names chosen
by clients are written as quoted strings only when that is safe (printable ASCII without ``"``
or ``\\``), otherwise as literals, so nothing a sender wrote can end a response early or be
read as protocol.

A value is written by its type: ``str`` as an atom (written as it is: flags, numbers, NIL),
``int`` as a number, ``bytes`` as a string, ``None`` as NIL, a list or tuple in parentheses,
and :class:`Literal` always as a literal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

# Quoted strings longer than this go as literals (clients read both; long quoted lines are not
# worth the scan).
_MAX_QUOTED = 512


@dataclass(frozen=True, slots=True)
class Literal:
    """Octets sent as a literal; ``binary``: as a literal8 (``~{n}``, RFC 3516), which may hold NUL."""

    data: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class FileLiteral:
    """A literal of ``length`` octets the transport copies from ``source`` (what the caller
    gave: for postoffice an open file and an offset) as it sends them, in blocks."""

    length: int
    source: object


Value: TypeAlias = "str | int | bytes | Literal | FileLiteral | Sequence[Value] | None"
# What a command's responses are made of: bytes to write, and FileLiterals to copy.
Segment: TypeAlias = "bytes | FileLiteral"


def _quotable(data: bytes) -> bool:
    return len(data) <= _MAX_QUOTED and all(0x20 <= byte < 0x7F and byte not in (0x22, 0x5C) for byte in data)


def string(data: bytes) -> bytes:
    if _quotable(data):
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def write(value: Value) -> bytes:
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        raise TypeError("no booleans in IMAP")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, bytes):
        return string(value)
    if isinstance(value, Literal):
        return (b"~" if value.binary else b"") + b"{%d}\r\n" % len(value.data) + value.data
    if isinstance(value, FileLiteral):
        raise TypeError("a FileLiteral is written with segments()")
    return b"(" + b" ".join(write(item) for item in value) + b")"


def segments(value: Value) -> list[Segment]:
    """``value`` as :func:`write` writes it, but with each FileLiteral left in place (after
    its ``{n}`` announcement) for the transport to copy: bytes and FileLiterals in order."""
    if isinstance(value, FileLiteral):
        return [b"{%d}\r\n" % value.length, value]
    if value is None or isinstance(value, (str, int, bytes, Literal)):
        return [write(value)]
    out: list[Segment] = [b"("]
    for index, item in enumerate(value):
        if index:
            out.append(b" ")
        out += segments(item)
    out.append(b")")
    return _joined(out)


def _joined(parts: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for part in parts:
        if isinstance(part, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += part
        else:
            out.append(part)
    return out


def untagged_segments(*parts: Value) -> list[Segment]:
    """:func:`untagged`, with FileLiterals left in place (see :func:`segments`)."""
    out: list[Segment] = [b"* "]
    for index, part in enumerate(parts):
        if index:
            out.append(b" ")
        out += segments(part)
    out.append(b"\r\n")
    return _joined(out)


def mailbox(name: str) -> bytes:
    """A mailbox name in a response: quoted (INBOX and plain names), else a literal."""
    return string(name.encode("utf-8"))


def untagged(*parts: Value) -> bytes:
    """``* part part ...`` with CRLF."""
    return b"* " + b" ".join(write(part) for part in parts) + b"\r\n"


def status(tag: str | None, kind: str, text: str, code: str | None = None) -> bytes:
    """A status response: ``TAG OK [CODE] text`` (``*`` when ``tag`` is None)."""
    head = f"{tag or '*'} {kind} "
    if code:
        head += f"[{code}] "
    return (head + _clean(text)).encode("utf-8") + b"\r\n"


def continuation(text: str = "Ready") -> bytes:
    return f"+ {_clean(text)}\r\n".encode()


def _clean(text: str) -> str:
    """Response text is one line: no CR, LF or other controls (a client's words may be in it)."""
    return "".join(char if char.isprintable() else " " for char in text)[:300] or "done"
