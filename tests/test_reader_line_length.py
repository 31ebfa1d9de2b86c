"""DATA line-length checking gives the verdict of splitting into lines, however lines fall.

The reader finds an over-long line (RFC 5321 §4.5.3.1.6) by jumping between CRLFs rather
than splitting each segment into lines; this holds the two to the same answer.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from postoffice.smtp.reader import Reader, _has_long_line


def longest_by_splitting(segment: bytes, start: int) -> int:
    return max(len(line) for line in segment[start:].split(b"\r\n"))


lines = st.lists(st.integers(min_value=0, max_value=70), min_size=1, max_size=60)


@given(lengths=lines, limit=st.integers(min_value=3, max_value=64), start_line=st.integers(0, 3))
def test_jumping_agrees_with_splitting(lengths: list[int], limit: int, start_line: int) -> None:
    segment = b"".join(b"x" * length + b"\r\n" for length in lengths)
    start = sum(length + 2 for length in lengths[: min(start_line, len(lengths))])
    assert _has_long_line(segment, start, limit) == (longest_by_splitting(segment, start) > limit - 2)


@given(lengths=lines, limit=st.integers(min_value=1000, max_value=1100), cut=st.integers(1, 70_000))
def test_reader_verdict_does_not_depend_on_where_bytes_arrive(
    lengths: list[int], limit: int, cut: int
) -> None:
    content = b"".join(b"y" * (length * 20) + b"\r\n" for length in lengths)
    expected = max(length * 20 for length in lengths) > limit - 2
    reader = Reader(max_line=512, text_line_limit=limit)
    reader.start_data()
    for piece in (content[:cut], content[cut:] + b".\r\n"):
        reader.feed(piece)
        while reader.read_data() is not None:
            pass
    assert reader.problems.line_too_long == expected
