"""Dot-stuffing of streamed content (RFC 5321 §4.5.2) and xtext (RFC 3461 §4), on bytes alone."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.delivery.dot_stuffing import dot_stuff, encode_xtext, end_of_data
from postoffice.smtp.grammar import decode_xtext


def reference(content: bytes) -> bytes:
    """Line by line, as §4.5.2 describes it, then the terminator."""
    lines = content.split(b"\r\n")
    last = lines.pop()  # b"" when the content ends with CRLF
    out = [b"." + line if line.startswith(b".") else line for line in lines]
    body = b"".join(line + b"\r\n" for line in out)
    if last:
        body += (b"." + last if last.startswith(b".") else last) + b"\r\n"
    return body + b".\r\n"


def stream(blocks: list[bytes]) -> bytes:
    out = b""
    at_line_start = True
    for block in blocks:
        stuffed, at_line_start = dot_stuff(block, at_line_start)
        out += stuffed
    return out + end_of_data(at_line_start)


@pytest.mark.parametrize(
    ("blocks", "wire"),
    [
        ([b""], b".\r\n"),
        ([b".\r\n"], b"..\r\n.\r\n"),
        ([b"a\r\n.b\r\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b"\n.b\r\n"], b"a\r\n..b\r\n.\r\n"),  # CRLF split across blocks
        ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),  # a block starting a line with "."
        ([b"a.b\r\n.", b".\r\n"], b"a.b\r\n...\r\n.\r\n"),
        ([b"no final newline"], b"no final newline\r\n.\r\n"),
    ],
)
def test_examples(blocks: list[bytes], wire: bytes) -> None:
    assert stream(blocks) == wire


lines = st.lists(st.sampled_from([b"", b".", b"..", b"a", b".a", b"a.", b"text . text"]), max_size=12)


@given(lines, st.lists(st.integers(min_value=0, max_value=80), max_size=6), st.booleans())
def test_any_split_gives_the_reference_stuffing(
    parts: list[bytes], cuts: list[int], final_crlf: bool
) -> None:
    content = b"\r\n".join(parts) + (b"\r\n" if final_crlf and parts else b"")
    points = sorted({0, len(content), *(min(cut, len(content)) for cut in cuts)})
    blocks = [content[a:b] for a, b in itertools.pairwise(points)] or [b""]
    assert stream(blocks) == reference(content)


@pytest.mark.parametrize(
    ("text", "xtext"),
    [("abc", "abc"), ("a+b=c", "a+2Bb+3Dc"), ("two words", "two+20words"), ("rfc822;x@y", "rfc822;x@y")],
)
def test_xtext_round_trips(text: str, xtext: str) -> None:
    assert encode_xtext(text) == xtext
    assert decode_xtext(xtext) == text
