"""A message as POP3 sends it: CRLF line endings, byte-stuffed, cut after TOP's lines.

Untrusted input seen here: message bytes from a mailbox (what any SMTP client sent, or what
another program wrote into the Maildir), with CRLF or bare LF line endings. They are only
copied; nothing in them is interpreted but line ends and the blank line after the header.

RFC 1939 §3: multi-line responses end in "CRLF.CRLF", and "if any line of the multi-line
response begins with the termination octet, the line is 'byte-stuffed' by pre-pending the
termination octet to that line". RFC 1939 §11: the size in octets is "the size of the message
... as it would be transmitted", CRLF line endings included, though without the stuffing;
:func:`transmitted_size` counts with the same :class:`Normalizer` that sends, so the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable


class Normalizer:
    """Turns a message's bytes, chunk by chunk, into its lines as sent: every line end CRLF,
    stuffed (``stuff``) or not, and after the header only ``body_lines`` lines (TOP) when given.

    Holds no more than one line's state between chunks: a message is never whole in memory.
    """

    def __init__(self, *, stuff: bool = True, body_lines: int | None = None) -> None:
        self._stuff = stuff
        self._body_lines = body_lines
        self._at_line_start = True
        self._pending_cr = False  # a chunk ended in CR: its LF may start the next chunk
        self._line_empty = True  # the current line has no octet yet (a blank line ends the header)
        self._in_body = False
        self._done = False  # TOP's lines are all out

    def feed(self, chunk: bytes) -> bytes:
        """The next part of the output for ``chunk`` of the message."""
        out = bytearray()
        for line in chunk.splitlines(keepends=True):
            if self._done:
                break
            self._line(line, out)
        return bytes(out)

    def _line(self, piece: bytes, out: bytearray) -> None:
        if self._pending_cr:
            self._pending_cr = False
            if piece.startswith(b"\n"):
                piece = piece[1:]  # the LF of a CRLF split between chunks: written already
                if not piece:
                    return
        ends = piece.endswith((b"\n", b"\r"))
        text = piece.rstrip(b"\r\n") if ends else piece
        if self._at_line_start and self._stuff and text.startswith(b"."):
            out += b"."
        out += text
        if text:
            self._line_empty = False
        if not ends:
            self._at_line_start = False
            return
        # A line ends here: CRLF, LF or a lone CR (taken as a line end, as splitlines does).
        self._pending_cr = piece.endswith(b"\r")
        out += b"\r\n"
        self._end_line()

    def _end_line(self) -> None:
        blank = self._line_empty
        self._at_line_start = True
        self._line_empty = True
        if not self._in_body:
            self._in_body = blank
            if blank and self._body_lines == 0:
                self._done = True
            return
        if self._body_lines is not None:
            self._body_lines -= 1
            if self._body_lines <= 0:
                self._done = True

    def finish(self) -> bytes:
        """What ends the message: a CRLF if its last line had none."""
        return b"" if self._at_line_start else b"\r\n"


def transmitted_size(chunks: Iterable[bytes]) -> int:
    """The message's size as RETR sends it (CRLF line ends, no stuffing: RFC 1939 §5 LIST)."""
    normalizer = Normalizer(stuff=False)
    size = sum(len(normalizer.feed(chunk)) for chunk in chunks)
    return size + len(normalizer.finish())
