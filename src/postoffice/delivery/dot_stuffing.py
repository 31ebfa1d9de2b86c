"""Dot-stuffing (RFC 5321 §4.5.2) for message content streamed in blocks, and xtext (RFC 3461 §4).

Untrusted input seen here: message content from SMTP clients, as bytes, and envelope values
(ENVID, ORCPT) that go back out as ESMTP parameters.
"""

from __future__ import annotations


def dot_stuff(block: bytes, at_line_start: bool) -> tuple[bytes, bool]:
    """Stuff one block of content; return it and whether the next block starts a line.

    §4.5.2: "Before sending a line of mail text, the SMTP client checks the first character
    of the line. If it is a period, one additional period is inserted at the beginning of the
    line." The spool holds only CRLF line endings (a bare LF is refused on receipt), so every
    LF ends a line; a CRLF split between two blocks still leaves the LF as the last byte of
    the first.
    """
    stuffed = block.replace(b"\n.", b"\n..")
    if at_line_start and stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed, block.endswith(b"\n") if block else at_line_start


def end_of_data(at_line_start: bool) -> bytes:
    """The terminator ``.CRLF``, after a CRLF when the content did not end with one
    (§4.1.1.4: the data ends with "<CRLF>.<CRLF>", so a final line gets its CRLF)."""
    return b".\r\n" if at_line_start else b"\r\n.\r\n"


def encode_xtext(text: str) -> str:
    """RFC 3461 §4: characters outside "!" to "~", and "+" and "=", as "+HH".

    The inverse of :func:`postoffice.smtp.grammar.decode_xtext`, which turns each "+HH" into
    the character with that code; characters beyond one octet (never produced by decoding)
    are written as their UTF-8 octets.
    """
    out = []
    for octet in b"".join(bytes([ord(char)]) if ord(char) < 256 else char.encode("utf-8") for char in text):
        if 33 <= octet <= 126 and octet not in (ord("+"), ord("=")):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)
