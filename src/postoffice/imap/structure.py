"""A message's MIME structure with the offsets of every part, read in one streaming pass.

Untrusted input seen here: message bytes, as any sender wrote them. The pass reads line by
line (a line longer than :data:`MAX_LINE` is taken in pieces) and keeps only header blocks,
each cut at :data:`MAX_HEADER` octets, and offsets: a 20 MB attachment costs a few numbers, and
``BODY[2]<0.4096>`` is then one seek and one read (:func:`section_range`). Nesting is bounded
(:data:`MAX_DEPTH`); deeper parts are taken as plain content.

Boundaries follow RFC 2046 §5.1.1: a delimiter line is ``--boundary`` (``--boundary--`` closes),
and the line break before it belongs to the delimiter, not to the part.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
from dataclasses import dataclass, field
from typing import BinaryIO

MAX_LINE = 64 * 1024
MAX_HEADER = 256 * 1024
MAX_DEPTH = 32
# Header fields are read as UTF-8 (RFC 6532: SMTPUTF8 mail has raw UTF-8 in them, parameters
# such as name="résumé.txt" included); other bytes pass through as surrogates.
_HEADER_PARSER = email.parser.HeaderParser(policy=email.policy.compat32)


@dataclass(slots=True)
class Part:
    """One entity: header from ``start`` to ``body_start``, body to ``end`` (offsets in the
    message); ``header`` its (possibly cut) header octets; ``lines`` the body's line count;
    ``children`` of a multipart; ``message`` the entity a message/rfc822 part holds."""

    start: int
    header: bytes = b""
    body_start: int = 0
    end: int = 0
    lines: int = 0
    content_type: str = "text/plain"
    # The type and subtype as the header writes them (BODYSTRUCTURE keeps their case, as
    # Dovecot does); content_type is their lower-case form, for decisions.
    written_type: tuple[str, str] = ("text", "plain")
    params: list[tuple[str, str]] = field(default_factory=list)
    children: list[Part] = field(default_factory=list)
    message: Part | None = None

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]

    @property
    def size(self) -> int:
        return self.end - self.body_start

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.params if key == name), None)


class _Lines:
    """The message's lines with their offsets, one at a time, with one line of look-ahead."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.offset = 0  # where the next line starts
        self.breaks = 0  # line feeds taken so far
        self._peeked: bytes | None = None

    def peek(self) -> bytes:
        if self._peeked is None:
            self._peeked = self.stream.readline(MAX_LINE)
        return self._peeked

    def take(self) -> bytes:
        line = self.peek()
        self._peeked = None
        self.offset += len(line)
        self.breaks += line.endswith(b"\n")
        return line


def parse_structure(stream: BinaryIO) -> Part:
    """The structure of the message ``stream`` holds (read from where it is positioned)."""
    lines = _Lines(stream)
    part = _entity(lines, (), 0, "text/plain")
    return part


def _is_delimiter(line: bytes, boundaries: tuple[bytes, ...]) -> bool:
    if not line.startswith(b"--"):
        return False
    stripped = line.rstrip(b"\r\n \t")
    return any(stripped in (b"--" + b, b"--" + b + b"--") for b in boundaries)


def _entity(lines: _Lines, boundaries: tuple[bytes, ...], depth: int, default: str) -> Part:
    part = Part(lines.offset)
    header = bytearray()
    while True:
        line = lines.peek()
        if not line or _is_delimiter(line, boundaries):
            break
        lines.take()
        if line in (b"\r\n", b"\n"):
            break
        if len(header) < MAX_HEADER:
            header += line
    part.header = bytes(header[:MAX_HEADER])
    part.body_start = lines.offset
    _content_type(part, default)
    boundary = part.param("boundary")
    if part.maintype == "multipart" and boundary and depth < MAX_DEPTH:
        _multipart(lines, part, boundaries, boundary.encode("utf-8", "surrogateescape"), depth)
    elif part.content_type == "message/rfc822" and depth < MAX_DEPTH:
        start_breaks = lines.breaks
        part.message = _entity(lines, boundaries, depth + 1, "text/plain")
        # Its line feeds, less the one before the delimiter that follows (the delimiter's).
        part.end = part.message.end
        part.lines = lines.breaks - start_breaks - (part.end < lines.offset)
    else:
        part.end, part.lines = _body(lines, boundaries)
    return part


def _body(lines: _Lines, boundaries: tuple[bytes, ...]) -> tuple[int, int]:
    """Read a leaf body up to the next delimiter; its end offset and its count of line breaks."""
    count, last = 0, b""
    line = b""
    while True:
        line = lines.peek()
        if not line or _is_delimiter(line, boundaries):
            break
        last = lines.take()
        count += last.endswith(b"\n")
    end = lines.offset
    if line and last.endswith(b"\n"):  # the break before a delimiter is the delimiter's
        end -= 2 if last.endswith(b"\r\n") else 1
        count -= 1
    return end, count


def _multipart(lines: _Lines, part: Part, boundaries: tuple[bytes, ...], boundary: bytes, depth: int) -> None:
    inner = (*boundaries, boundary)
    default = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
    _body(lines, inner)  # the preamble
    while True:
        line = lines.peek()
        if not line or not _is_delimiter(line, (boundary,)):
            break  # an outer delimiter, or the end: this multipart ends unclosed
        lines.take()
        if line.rstrip(b"\r\n \t").endswith(b"--") and line.rstrip(b"\r\n \t") != b"--" + boundary:
            part.end, _ = _body(lines, boundaries)  # the epilogue
            return
        part.children.append(_entity(lines, inner, depth + 1, default))
    part.end = lines.offset


def _content_type(part: Part, default: str) -> None:
    parsed = _HEADER_PARSER.parsestr(part.header.decode("utf-8", "surrogateescape"))
    value = parsed.get("Content-Type")
    if value is None or "/" not in str(value).split(";", 1)[0]:
        # None, or malformed: the default (RFC 2045 §5.2).
        part.content_type = default
        maintype, _, subtype = default.partition("/")
        part.written_type = (maintype, subtype)
        part.params = [("charset", "us-ascii")] if default == "text/plain" else []
        return
    part.content_type = parsed.get_content_type()
    written_main, _, written_sub = str(value).split(";", 1)[0].strip().partition("/")
    part.written_type = (written_main.strip(), written_sub.strip())
    params = []
    for key, raw in (parsed.get_params() or [])[1:]:
        value_text = email.utils.collapse_rfc2231_value(raw) if isinstance(raw, tuple) else raw
        params.append((key.lower(), email.utils.unquote(str(value_text))))
    if part.maintype == "text" and not any(key == "charset" for key, _ in params):
        params.insert(0, ("charset", "us-ascii"))  # RFC 2045 §5.2's default, said out loud
    part.params = params


def resolve(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """The part that section numbers name (RFC 9051 §6.4.5), or None."""
    node = root
    for depth, number in enumerate(numbers):
        if depth and node.message is not None:
            node = node.message
        if node.children:
            if number > len(node.children):
                return None
            node = node.children[number - 1]
        elif number != 1:
            return None
    return node
