"""Printing the conversation as the classroom showed it: ``C: ...`` and ``S: ...`` lines.

Untrusted input seen here: reply lines from the server and lines of the message, printed to a
terminal. Control characters are shown escaped (``\\x1b``) so that a hostile server cannot
drive the terminal with escape sequences. AUTH secrets arrive already redacted by the client.
"""

from __future__ import annotations

from typing import TextIO

from postoffice.client.connection import TranscriptLine

# Lines of the message body shown before the rest is summarised; the header section is always
# shown in full, since that is where a reader looks for what went wrong.
DEFAULT_BODY_LINES = 10


def terminal_safe(text: str) -> str:
    """``text`` with every non-printable character escaped, as ``repr`` would."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class TranscriptPrinter:
    """A transcript hook that writes lines to ``stream``; the body is shortened unless ``full``."""

    def __init__(self, stream: TextIO, *, full: bool = False, body_lines: int = DEFAULT_BODY_LINES) -> None:
        self._stream = stream
        self._full = full
        self._body_lines = body_lines
        self._in_body = False
        self._shown = 0
        self._hidden_lines = 0
        self._hidden_octets = 0

    def __call__(self, line: TranscriptLine) -> None:
        if line.content:
            self._content(line)
            return
        self._summarise()
        self._in_body = False
        self._print(line)

    def _content(self, line: TranscriptLine) -> None:
        if not self._in_body:
            if line.text == "":
                self._in_body = True  # the empty line between header section and body
                self._shown = 0
            self._print(line)
            return
        if self._full or self._shown < self._body_lines:
            self._shown += 1
            self._print(line)
        else:
            self._hidden_lines += 1
            self._hidden_octets += len(line.text.encode("utf-8")) + 2

    def _summarise(self) -> None:
        if self._hidden_lines:
            lines = "line" if self._hidden_lines == 1 else "lines"
            self._stream.write(
                f"C: [... {self._hidden_lines} more {lines}, {self._hidden_octets} octets;"
                " --transcript-full shows them ...]\n"
            )
            self._hidden_lines = self._hidden_octets = 0

    def _print(self, line: TranscriptLine) -> None:
        self._stream.write(f"{line.direction}: {terminal_safe(line.text)}\n")
        self._stream.flush()
