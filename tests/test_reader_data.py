"""The DATA reader against a line-by-line model of RFC 5321, at the byte level.

The reader works on whole buffers with C-level searches (``smtp/reader.py``); these tests hold
it to what reading the content one CRLF-terminated line at a time gives (§4.1.1.4: the end of
data is a line holding one period; §4.5.2: a leading period is removed; a CR or LF that is not
part of a CRLF makes the message refused), however the bytes are cut into reads: the end of
data marker, dot-stuffed lines and bare line endings at every offset of a read boundary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.smtp.reader import _MAX_PENDING_DATA, Reader, _has_bare_line_ending

NEXT_COMMAND = b"NOOP\r\n"


@dataclass(frozen=True)
class Outcome:
    content: bytes
    bare: bool
    too_long: bool
    rest: bytes  # what is left for the command reader after the end of data


def model(wire: bytes, limit: int) -> Outcome | None:
    """The content up to the line ".", read one CRLF-terminated line at a time; None when the
    wire has no end of data."""
    lines: list[bytes] = []
    position = 0
    while (end := wire.find(b"\r\n", position)) >= 0:
        line, position = wire[position:end], end + 2
        if line == b".":
            content = b"".join(piece + b"\r\n" for piece in lines)
            return Outcome(
                content,
                bare=any(b"\r" in piece or b"\n" in piece for piece in lines),
                too_long=bool(limit) and any(len(piece) > limit - 2 for piece in lines),
                rest=wire[position:],
            )
        lines.append(line[1:] if line.startswith(b".") else line)
    return None


def read(wire: bytes, cuts: list[int], limit: int = 0) -> Outcome | None:
    """What the reader makes of ``wire`` delivered in reads cut at ``cuts``."""
    reader = Reader(max_line=512, text_line_limit=limit)
    reader.start_data()
    out = bytearray()
    edges = [0, *sorted(cut for cut in cuts if 0 < cut < len(wire)), len(wire)]
    for start, stop in itertools.pairwise(edges):
        reader.feed(wire[start:stop])
        while (result := reader.read_data()) is not None:
            data, done = result
            out += data
            if done:
                rest = bytes(reader._buffer) + wire[stop:]
                problems = reader.problems
                return Outcome(bytes(out), problems.bare_line_ending, problems.line_too_long, rest)
    return None


def assert_as_modelled(wire: bytes, cuts: list[int], limit: int = 0) -> None:
    expected = model(wire, limit)
    assert expected is not None
    assert read(wire, cuts, limit) == expected, cuts


STUFFED = b"a\r\n..b\r\n.\r\r\n...\r\n.x.\r\n\r\n..\r\nc.\r\n"


def test_the_model_reads_what_a_client_means() -> None:
    outcome = model(STUFFED + b".\r\n" + NEXT_COMMAND, 0)
    assert outcome == Outcome(b"a\r\n.b\r\n\r\r\n..\r\nx.\r\n\r\n.\r\nc.\r\n", True, False, NEXT_COMMAND)


@pytest.mark.parametrize(
    "content",
    [STUFFED, STUFFED.replace(b".\r\r\n", b"")],
    ids=["with-a-bare-cr", "clean"],
)
def test_every_two_cuts_give_the_same_content_and_verdict(content: bytes) -> None:
    """The end of data, dot-stuffed lines and a bare CR each cut across reads at every offset,
    in two places at once."""
    wire = content + b".\r\n" + NEXT_COMMAND
    for first in range(len(wire)):
        for second in range(first, len(wire)):
            assert_as_modelled(wire, [first, second])


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\n\r", b"\r\r\n", b"\r\n\n"])
def test_a_bare_line_ending_is_found_wherever_it_falls(ending: bytes) -> None:
    """A bare CR or LF at every offset of a message, the message cut at every offset."""
    line = b"line.\r\n"
    found = 0
    for at in range(len(line) * 3 + 1):
        body = line * 3
        content = body[:at] + ending + body[at:]
        wire = content + (b"" if content.endswith(b"\r\n") else b"\r\n") + b".\r\n" + NEXT_COMMAND
        expected = model(wire, 0)
        assert expected is not None
        found += expected.bare  # "\n\r" between a CR and its LF makes two CRLFs
        for cut in range(len(wire)):
            assert read(wire, [cut]) == expected, (at, cut)
    assert found >= len(line) * 3 + 1 - 3  # all but, at most, the three between a CR and its LF


@pytest.mark.parametrize("follower", [b"\n", b"x"], ids=["crlf", "bare-cr"])
def test_a_cr_at_the_cut_of_a_long_line_waits_for_the_next_octet(follower: bytes) -> None:
    """A line longer than the reader holds is handed on in pieces; a CR at the end of what
    arrived may be half of a CRLF, so it is judged with the octet after it."""
    head = b"y" * _MAX_PENDING_DATA + b"\r"
    wire = head + follower + b"\r\n.\r\n" + NEXT_COMMAND
    for cut in range(len(head) - 3, len(head) + 4):
        assert_as_modelled(wire, [cut])
        assert_as_modelled(wire, [cut - 1, cut])


def test_the_end_of_data_after_a_long_line_at_every_offset_of_the_cut() -> None:
    content = b"z" * (_MAX_PENDING_DATA + 5) + b"\r\n..\r\n"
    wire = content + b".\r\n" + NEXT_COMMAND
    for cut in [*range(_MAX_PENDING_DATA - 3, _MAX_PENDING_DATA + 8), *range(len(content) - 6, len(wire))]:
        assert_as_modelled(wire, [cut], limit=1000)
        assert_as_modelled(wire, [cut], limit=0)


def test_a_bare_line_ending_after_the_end_of_data_is_the_next_commands() -> None:
    wire = b"clean\r\n.\r\nNOOP\rx\n\r\n"
    for cut in range(len(wire)):
        outcome = read(wire, [cut])
        assert outcome is not None and not outcome.bare, cut


@pytest.mark.parametrize(
    ("segment", "bare"),
    [
        (b"", False),
        (b"a\r\nb\r\n", False),
        (b"\r\n", False),
        (b"a\rb\r\n", True),
        (b"a\nb\r\n", True),
        (b"\na\r\n", True),  # a segment starts after a CRLF: an LF first stands alone
        (b"aaaa\r", True),  # ... and ends before a CRLF, never inside one
        (b"\naaaa\r", True),  # as many CRs as LFs, and no CR followed by another octet
        (b"a\n\rb", True),  # as many CRs as LFs, none together
        (b"\r\r\n\n", True),
        (b"\r\n\r\n\n", True),
    ],
)
def test_bare_line_endings_in_one_segment(segment: bytes, bare: bool) -> None:
    assert _has_bare_line_ending(segment) is bare


# Content made of what the searches look for: CR, LF, CRLF, periods at line starts, and
# three-octet sequences that look like the start of the end of data.
pieces = st.sampled_from([b".", b"..", b"a", b"\r\n", b"\r", b"\n", b".\r", b"\r\n.", b"\r\n.\r", b"xyz"])
content = st.lists(pieces, max_size=60).map(b"".join)


@given(
    content,
    st.lists(st.integers(min_value=0, max_value=400), max_size=10),
    st.sampled_from([0, 3, 5, 1000]),
)
def test_any_content_cut_anywhere_reads_as_the_line_model_says(
    body: bytes, cuts: list[int], limit: int
) -> None:
    wire = body + b"\r\n.\r\n" + NEXT_COMMAND
    assert_as_modelled(wire, cuts, limit)


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=220), max_size=6))
def test_any_octets_cut_anywhere_read_as_the_line_model_says(body: bytes, cuts: list[int]) -> None:
    wire = body + b"\r\n.\r\n" + NEXT_COMMAND
    assert_as_modelled(wire, cuts, 1000)


def test_a_bdat_chunk_is_read_verbatim_however_it_is_cut() -> None:
    """RFC 3030 §2: a chunk is exactly its size in octets, periods and bare line endings
    included; what follows it is the next command's."""
    chunk = b".\r\n..x\r\rbare\n.\r\n"
    wire = chunk + NEXT_COMMAND
    for cut in range(len(wire) + 1):
        reader = Reader(max_line=512, text_line_limit=1000)
        pieces = bytearray()
        for part in (wire[:cut], wire[cut:]):
            reader.feed(part)
            while (piece := reader.read_chunk(len(chunk) - len(pieces))) is not None:
                pieces += piece
        assert bytes(pieces) == chunk, cut
        assert reader.read_line() == NEXT_COMMAND[:-2], cut
