"""DKIM canonicalisation (RFC 6376 §3.4) of a message read in pieces: the header section in
memory (bounded), the body streamed through its hashes, never whole in memory.

Untrusted input seen here: the whole message, from anyone who can send mail. The header section
is refused past :data:`MAX_HEADER_SECTION` octets; the body is read :data:`CHUNK` octets at a
time and any line, however long, is hashed as it comes (only its last two octets wait for the
next piece), so memory stays bounded by a few chunks whatever the message.

Why not dkimpy's canonicalisation: its API takes the whole message as one ``bytes`` and splits
it into a list of lines, about three times the message in memory (ARCHITECTURE.md rule 4
forbids holding a message). The algorithms are small and exactly specified; the tests hold this
code to dkimpy's output on generated bodies and to OpenDKIM's signatures.

Line endings: a message on the wire has CRLF line endings (RFC 5322 §2.1); a file written with
bare LF is read as if each LF were CRLF, as dkimpy and OpenDKIM do. A CR not before an LF is an
ordinary character.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# The header section is hashed from memory. Postfix keeps at most 100 KiB of any one header
# field (header_size_limit = 102400); a section ten times that is no mail anyone sends.
MAX_HEADER_SECTION = 1024 * 1024
# The body is read and hashed in pieces of this size.
CHUNK = 64 * 1024
# A line longer than this without a line ending is hashed in pieces as it comes.
_CARRY_LIMIT = CHUNK

CRLF = b"\r\n"
_WSP_RUN = re.compile(rb"[ \t]+")
# Relaxed (§3.4.4 a): "Ignore all whitespace at the end of lines": it goes with the line end.
_RELAXED_LINE_END = re.compile(rb"[ \t]*\r?\n")
_LINE_END = re.compile(rb"\r?\n")

MessageSource = Path | bytes | BinaryIO


class HeaderSectionError(ValueError):
    """The header section cannot be read (too large); ``str()`` says why in one line."""


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as it is in the message (line endings made CRLF, final CRLF kept)."""

    raw: bytes

    @property
    def name(self) -> str:
        """The field name, lower case, for matching h= (RFC 6376 §3.5: "compared without regard
        to case"); empty for a line that is no field (no colon)."""
        name, colon, _ = self.raw.partition(b":")
        if not colon:
            return ""
        return name.rstrip(b" \t").decode("latin-1").lower()

    def relaxed(self) -> bytes:
        """§3.4.2: name in lower case, value unfolded, white space runs made one SP, white space
        around the colon and at the end removed."""
        name, _, value = self.raw.partition(b":")
        value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
        return name.rstrip(b" \t").lower() + b":" + value + CRLF

    def canonical(self, relaxed: bool) -> bytes:
        """§3.4.1 "simple": the field exactly as it is; or §3.4.2 "relaxed"."""
        return self.relaxed() if relaxed else self.raw


@contextlib.contextmanager
def open_message(source: MessageSource) -> Iterator[BinaryIO]:
    """A binary stream over a message given as a path, bytes or an open binary file (read from
    its current position, left open)."""
    if isinstance(source, Path):
        with source.open("rb") as stream:
            yield stream
    elif isinstance(source, bytes):
        yield io.BytesIO(source)
    else:
        yield source


def read_header_section(stream: BinaryIO, limit: int = MAX_HEADER_SECTION) -> list[HeaderField]:
    """The header fields, top first, up to the empty line (RFC 5322 §2.1), which is consumed;
    the stream is left at the first octet of the body."""
    lines: list[bytes] = []
    used = 0
    while True:
        line = stream.readline(limit - used + 1)
        used += len(line)
        if used > limit:
            raise HeaderSectionError(f"header section larger than {limit} octets")
        if line in (b"", b"\n", b"\r\n"):
            break
        lines.append(line[:-1].removesuffix(b"\r") + CRLF if line.endswith(b"\n") else line + CRLF)
    return _fields(lines)


def _fields(lines: Sequence[bytes]) -> list[HeaderField]:
    """Lines joined into fields: a line starting with white space continues the field above
    (RFC 5322 §2.2.3)."""
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return [HeaderField(b"".join(parts)) for parts in fields]


def select_fields(fields: Sequence[HeaderField], names: Sequence[str]) -> list[HeaderField]:
    """The fields h= names, in its order (RFC 6376 §5.4.2): for a name given several times,
    instances from the bottom up; a name with no instance left selects nothing (the "null
    string"), which is how over-signing keeps a field from being added."""
    used: set[int] = set()
    chosen: list[HeaderField] = []
    for wanted in names:
        for index in range(len(fields) - 1, -1, -1):
            if index not in used and fields[index].name == wanted.lower():
                used.add(index)
                chosen.append(fields[index])
                break
    return chosen


class BodyHash:
    """One body hash: the first ``limit`` octets of the canonical body (all of it when None,
    RFC 6376 §3.5 l=) through ``hash_name``; ``length`` counts every canonical octet seen, so
    octets past ``limit`` show as ``length - limit``."""

    def __init__(self, hash_name: str, limit: int | None = None) -> None:
        self._hash = hashlib.new(hash_name)
        self.limit = limit
        self.length = 0

    def feed(self, data: bytes) -> None:
        if self.limit is None:
            self._hash.update(data)
        elif self.length < self.limit:
            self._hash.update(data[: self.limit - self.length])
        self.length += len(data)

    def digest(self) -> bytes:
        return self._hash.digest()


class BodyCanonicalizer:
    """Streams a body through RFC 6376 §3.4.3 "simple" or §3.4.4 "relaxed" into ``sinks``.

    Empty lines are held back (a count, not the octets) until a non-empty line follows, since
    both algorithms drop the empty lines at the end of the body.
    """

    def __init__(self, relaxed: bool, sinks: Sequence[BodyHash]) -> None:
        self.relaxed = relaxed
        self._sinks = list(sinks)
        self._carry = b""  # the end of the input that is not yet a whole line
        self._held = 0  # CRLFs not yet passed on: empty lines, if nothing follows them
        self._in_line = False  # part of the current line has been passed on
        self._started = False  # anything has been passed on: the body is not empty

    def update(self, chunk: bytes) -> None:
        data = self._carry + chunk
        cut = data.rfind(b"\n") + 1
        if cut:
            self._lines(data[:cut])
        self._carry = data[cut:]
        if len(self._carry) > _CARRY_LIMIT:
            self._partial_line()

    def finish(self) -> None:
        if self._carry or self._in_line:
            # §3.4.3/§3.4.4: a body not ending in CRLF gets one.
            self._lines(self._carry + CRLF)
            self._carry = b""
        if not self._started and not self.relaxed:
            self._feed(CRLF)  # §3.4.3: "If there is no body ..., a CRLF is added."

    def _lines(self, text: bytes) -> None:
        """Whole lines (``text`` ends with a line ending)."""
        if self.relaxed:
            # §3.4.4 a then b: trailing white space goes, the other runs become one SP.
            text = _WSP_RUN.sub(b" ", _RELAXED_LINE_END.sub(CRLF, text))
        else:
            text = _LINE_END.sub(CRLF, text)
        content, line_ends = _trailing_line_ends(text)
        if content:
            self._release()
            self._feed(content + CRLF)
            self._held = line_ends - 1
        elif self._in_line:
            self._feed(CRLF)
            self._held = line_ends - 1
        else:
            self._held += line_ends
        self._in_line = False

    def _partial_line(self) -> None:
        """Pass on most of a long unfinished line; keep what the next octets may change: a CR
        (a line ending if LF follows) and, for relaxed, one SP standing for a white space run
        that is dropped if the line ends there."""
        text = _WSP_RUN.sub(b" ", self._carry) if self.relaxed else self._carry
        end = len(text) - text.endswith(b"\r")
        if self.relaxed and text[:end].endswith(b" "):
            end -= 1
        if end > 0:
            self._release()
            self._feed(text[:end])
            self._in_line = True
        self._carry = text[end:]

    def _release(self) -> None:
        """The held CRLFs were not the body's end after all: pass them on, a bounded piece at a
        time."""
        while self._held:
            count = min(self._held, CHUNK // 2)
            self._feed(CRLF * count)
            self._held -= count

    def _feed(self, data: bytes) -> None:
        self._started = True
        for sink in self._sinks:
            sink.feed(data)


def _trailing_line_ends(text: bytes) -> tuple[bytes, int]:
    """``text`` (canonical lines, ending with CRLF) split into what comes before its final run
    of CRLFs and the number of CRLFs in that run."""
    stripped = text.rstrip(b"\r\n")
    tail = text[len(stripped) :]  # CRs and LFs; every LF has a CR before it
    lone_cr = tail.rfind(b"\r\r")  # a CR followed by another CR is content, not a line end
    if lone_cr >= 0:
        return text[: len(stripped) + lone_cr + 1], (len(tail) - lone_cr - 1) // 2
    return stripped, len(tail) // 2


def hash_body(stream: BinaryIO, canonicalizers: Sequence[BodyCanonicalizer]) -> None:
    """Read the rest of ``stream`` (the body) once, through every canonicaliser."""
    while chunk := stream.read(CHUNK):
        for canonicalizer in canonicalizers:
            canonicalizer.update(chunk)
    for canonicalizer in canonicalizers:
        canonicalizer.finish()
