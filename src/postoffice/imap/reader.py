"""Framing of what an IMAP client sends: command lines with their literals, or raw lines.

Untrusted input seen here: every byte the client sends. A command is lines ending in CRLF
(RFC 9051 §2.2), where a line may end in a literal announcement ``{n}`` (synchronising: the
server answers ``+`` before the client sends the n octets, §4.3) or ``{n+}`` (LITERAL+,
RFC 7888: the octets follow at once). Memory stays bounded: a line longer than ``max_line``
is discarded up to its CRLF, a literal larger than ``max_literal`` is refused (a synchronising
one before the client sends it, a non-synchronising one is read and dropped), and a command
whose parts add up past ``max_command`` is refused too. Each refusal is one event; the session
answers it and goes on.

A line ends only at CRLF; a bare LF is kept in the line and fails the grammar later.

A literal of ``SPOOL_MIN`` octets or more may go to a :class:`LiteralSink` instead of memory
(an APPEND's message, written to the Maildir's ``tmp/`` as it arrives): the ``spool`` callback
sees the command so far and gives a sink, or None to keep the literal in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

_CRLF = b"\r\n"
# "{" number ["+"] "}" at the end of a line (RFC 9051 §9 literal, RFC 7888 literal8 aside).
_LITERAL_RE = re.compile(rb"\{([0-9]{1,10})(\+?)\}\Z")
_TAG_RE = re.compile(rb"[!#$&'*+,\-./0-9:;<=>?@A-Z\[^_`a-z|~]{1,64}")
# Literals this big or bigger are offered to the spool callback (smaller ones cost little).
SPOOL_MIN = 256 * 1024


class LiteralSink(Protocol):
    """Where a spooled literal's octets go as they arrive."""

    def write(self, data: bytes) -> None: ...

    def discard(self) -> None: ...


# The command so far (its segments, the last the line that announced the literal, without the
# announcement) and the literal's size -> a sink for it, or None to keep it in memory.
Spool = Callable[[tuple[bytes, ...], int], LiteralSink | None]


@dataclass(frozen=True, slots=True)
class Command:
    """A whole command: ``segments[0::2]`` are line texts (without CRLF and without the literal
    announcement that ended them), ``segments[1::2]`` the literals between them."""

    segments: tuple[bytes, ...]
    # The literal that went to a sink (its segment is then b""): at most one, the last.
    spooled: LiteralSink | None = None


@dataclass(frozen=True, slots=True)
class Continue:
    """A synchronising literal was announced and fits: send ``+`` so the client sends it."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Too long (a line, a literal or the whole command): the command is gone; answer BAD (or
    NO [TOOBIG]) with ``tag`` when one was read. ``too_big`` tells a literal from a line."""

    tag: str | None
    reason: str
    too_big: bool = False


@dataclass(frozen=True, slots=True)
class Line:
    """One line in raw mode (AUTHENTICATE's responses, IDLE's DONE), without its CRLF."""

    text: bytes


Event = Command | Continue | Refused | Line


def tag_of(line: bytes) -> str | None:
    """The tag a command line starts with, if it starts with something tag-shaped."""
    match = _TAG_RE.match(line)
    if match is None or line[match.end() : match.end() + 1] not in (b" ", b""):
        return None
    return match.group().decode("ascii")


class CommandReader:
    """Bytes in, events out. ``raw`` switches to whole lines (no literals) for AUTHENTICATE and
    IDLE; the session sets it back."""

    def __init__(
        self, *, max_line: int = 8192, max_literal: int = 64 * 1024 * 1024, spool: Spool | None = None
    ) -> None:
        self.max_line = max_line
        self.spool = spool
        self.max_literal = max_literal
        self.max_command = max_literal + 16 * max_line
        self.raw = False
        self._buffer = bytearray()
        self._segments: list[bytes] = []
        self._size = 0
        self._literal: int | None = None  # octets of the literal being read
        self._discard = 0  # octets of a refused non-synchronising literal still to drop
        self._skipping = False  # dropping the rest of an over-long line
        self._sink: LiteralSink | None = None  # where the literal being read goes
        self._spooled: LiteralSink | None = None  # a literal of this command that went to a sink

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> Event | None:
        """The next event, or None until more bytes arrive."""
        while True:
            if self._discard:
                dropped = min(self._discard, len(self._buffer))
                del self._buffer[:dropped]
                self._discard -= dropped
                if self._discard:
                    return None
                self._skipping = True  # the rest of the command line goes too
            if self._literal is not None and self._sink is not None:
                if not self._to_sink(self._sink):
                    return None
            elif self._literal is not None:
                if len(self._buffer) < self._literal:
                    return None
                self._segments.append(bytes(self._buffer[: self._literal]))
                del self._buffer[: self._literal]
                self._literal = None
            event = self._read_line()
            if not isinstance(event, _Again):
                return event

    def _to_sink(self, sink: LiteralSink) -> bool:
        """Move what has arrived of the literal to its sink; True once it is all there."""
        assert self._literal is not None
        taken = min(self._literal, len(self._buffer))
        if taken:
            sink.write(bytes(self._buffer[:taken]))
            del self._buffer[:taken]
            self._literal -= taken
        if self._literal:
            return False
        self._segments.append(b"")
        self._literal, self._sink = None, None
        self._discard_spooled()  # one spooled literal a command: an earlier one is dropped
        self._spooled = sink
        return True

    def close(self) -> None:
        """The connection ends: a literal half-written or not handed over is dropped."""
        for sink in (self._sink, self._spooled):
            if sink is not None:
                sink.discard()
        self._sink = self._spooled = None

    def _discard_spooled(self) -> None:
        if self._spooled is not None:
            self._spooled.discard()
            self._spooled = None

    def _read_line(self) -> Event | _Again | None:
        end = self._buffer.find(_CRLF)
        if end < 0:
            if len(self._buffer) > self.max_line and not self._skipping:
                refused = self._refuse("command line too long")
                del self._buffer[: len(self._buffer) - 1]  # keep a CR that may start CRLF
                self._skipping = True
                return refused
            if self._skipping:
                del self._buffer[: max(0, len(self._buffer) - 1)]  # keep a CR that may start CRLF
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        if self._skipping:
            self._skipping = False
            self._reset()
            return _AGAIN
        if end > self.max_line:
            return self._refuse("command line too long", first=line)
        if self.raw:
            return Line(line)
        return self._line(line)

    def _line(self, line: bytes) -> Event | _Again:
        match = _LITERAL_RE.search(line)
        if match is None:
            self._segments.append(line)
            command = Command(tuple(self._segments), self._spooled)
            self._spooled = None  # the command has it now
            self._reset()
            return command
        size, plus = int(match.group(1)), bool(match.group(2))
        self._size += len(line) + size
        if size > self.max_literal or self._size > self.max_command:
            refused = self._refuse("literal too big", too_big=True, first=line)
            if plus:
                self._discard = size  # it is on its way: read and drop it
            return refused
        self._segments.append(line[: match.start()])
        self._literal = size
        if size >= SPOOL_MIN and self.spool is not None:
            self._sink = self.spool(tuple(self._segments), size)
        return _AGAIN if plus else Continue()

    def _refuse(self, reason: str, *, too_big: bool = False, first: bytes | None = None) -> Refused:
        start = self._segments[0] if self._segments else (first or bytes(self._buffer[:80]))
        self._reset()
        return Refused(tag_of(start), reason, too_big)

    def _reset(self) -> None:
        self._discard_spooled()  # nothing when a Command took it
        self._segments = []
        self._size = 0


class _Again:
    """Marker: go round the loop again (a line was consumed without an event)."""


_AGAIN = _Again()
