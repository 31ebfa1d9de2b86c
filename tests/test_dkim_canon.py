"""DKIM tag lists and canonicalisation: fuzzed, and held to dkimpy's output (an independent
implementation) on generated header fields and bodies, fed in pieces of any size."""

from __future__ import annotations

import hashlib
import io

from dkim.canonicalization import Relaxed, Simple
from dkim.util import parse_tag_value
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.mailauth import dkim_canon
from postoffice.mailauth.dkim_canon import BodyCanonicalizer, BodyHash, HeaderField, read_header_section
from postoffice.mailauth.dkim_tags import TagListError, colon_list, parse_tag_list, without_whitespace

# --- tag=value lists (RFC 6376 §3.2) ------------------------------------------------------------


@given(st.text(max_size=300))
@settings(max_examples=500)
def test_tag_list_parser_parses_or_raises_tag_list_error(text: str) -> None:
    try:
        tags = parse_tag_list(text)
    except TagListError as exc:
        assert "\n" not in str(exc)
    else:
        assert tags and all(isinstance(value, str) for value in tags.values())


_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True)
_VALUES = st.from_regex(r"([!-:<-~]{1,8}((\r\n)?[ \t]{1,2}[!-:<-~]{1,8}){0,2})?", fullmatch=True)
_SPACE = st.sampled_from(["", " ", "\t", "\r\n ", "  "])


@given(st.dictionaries(_NAMES, _VALUES, min_size=1, max_size=8), _SPACE, _SPACE, st.booleans())
def test_tag_lists_round_trip_and_agree_with_dkimpy(
    tags: dict[str, str], before: str, after: str, trailing: bool
) -> None:
    text = ";".join(f"{before}{name}{after}={after}{value}{before}" for name, value in tags.items())
    text += ";" if trailing else ""
    assert parse_tag_list(text) == tags
    theirs = parse_tag_value(text.encode())
    assert {name.decode(): value.decode() for name, value in theirs.items()} == tags


def test_tag_list_rules() -> None:
    assert parse_tag_list("v=1; h=from : to;") == {"v": "1", "h": "from : to"}
    assert colon_list(parse_tag_list("h=From :\r\n\tTo")["h"]) == ["From", "To"]
    assert without_whitespace("ab\r\n\tcd ef") == "abcdef"
    for bad, why in [
        ("v=1;v=2", "twice"),
        ("1v=1", "not a tag name"),
        (";", "no tags"),
        ("v=a\x00b", "control"),
    ]:
        try:
            parse_tag_list(bad)
        except TagListError as exc:
            assert why in str(exc)
        else:
            raise AssertionError(f"{bad!r} parsed")


# --- header fields (§3.4.1, §3.4.2) -------------------------------------------------------------

_HEADER_TEXT = st.from_regex(r"[ -~]{0,20}((\r\n)[ \t][ -~]{0,20}){0,2}", fullmatch=True)


@given(st.from_regex(r"[!-9;-~]{1,12}", fullmatch=True), st.sampled_from(["", " ", "\t "]), _HEADER_TEXT)
def test_relaxed_header_canonicalisation_agrees_with_dkimpy(name: str, space: str, value: str) -> None:
    field = HeaderField(f"{name}{space}:{value}\r\n".encode())
    [(their_name, their_value)] = Relaxed.canonicalize_headers([((name + space).encode(), value.encode())])
    assert field.relaxed() == their_name + b":" + their_value
    assert field.canonical(relaxed=False) == field.raw


def test_header_section_is_read_up_to_the_empty_line_and_bounded() -> None:
    stream = io.BytesIO(b"A: 1\nB: 2\r\n  more\r\nno colon\r\n\r\nbody\r\n")
    fields = read_header_section(stream)
    assert [f.raw for f in fields] == [b"A: 1\r\n", b"B: 2\r\n  more\r\n", b"no colon\r\n"]
    assert [f.name for f in fields] == ["a", "b", ""]
    assert stream.read() == b"body\r\n"
    try:
        read_header_section(io.BytesIO(b"X: " + b"y" * 100 + b"\r\n\r\n"), limit=50)
    except dkim_canon.HeaderSectionError as exc:
        assert "larger than 50" in str(exc)
    else:
        raise AssertionError("no error")


def test_fields_are_selected_bottom_up_and_missing_ones_select_nothing() -> None:
    fields = [HeaderField(raw) for raw in (b"To: a\r\n", b"From: x\r\n", b"to: b\r\n")]
    chosen = dkim_canon.select_fields(fields, ["to", "from", "To", "from", "cc", "to"])
    assert [f.raw for f in chosen] == [b"to: b\r\n", b"From: x\r\n", b"To: a\r\n"]


# --- bodies (§3.4.3, §3.4.4), streamed ----------------------------------------------------------

# Bodies end with a line ending, as every body does that arrives over SMTP. (Without one,
# dkimpy keeps the last line's trailing white space under relaxed; §3.4.4 a removes it, and so
# does postoffice: see test_empty_bodies.)
_BODY = st.lists(
    st.sampled_from([b"a", b"bc", b" ", b"\t", b"  \t", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"x y"]),
    max_size=40,
).map(lambda parts: b"".join(parts) + b"\r\n")


def _ours(body: bytes, relaxed: bool, piece: int) -> tuple[bytes, int]:
    sink = BodyHash("sha256")
    canonicalizer = BodyCanonicalizer(relaxed, [sink])
    for start in range(0, len(body), piece):
        canonicalizer.update(body[start : start + piece])
    canonicalizer.finish()
    return sink.digest(), sink.length


def _theirs(body: bytes, relaxed: bool) -> bytes:
    # dkimpy's parser turns every LF (with or without CR) into CRLF before canonicalising.
    text = b"\r\n".join(body.replace(b"\r\n", b"\n").split(b"\n"))
    return (Relaxed if relaxed else Simple).canonicalize_body(text)


@given(_BODY, st.booleans(), st.integers(min_value=1, max_value=7))
@settings(max_examples=400)
def test_body_canonicalisation_agrees_with_dkimpy_in_pieces_of_any_size(
    body: bytes, relaxed: bool, piece: int
) -> None:
    expected = _theirs(body, relaxed)
    assert _ours(body, relaxed, piece) == (hashlib.sha256(expected).digest(), len(expected))


def test_long_lines_are_hashed_as_they_come() -> None:
    """A line longer than the carry limit is passed on in pieces; the result is the same."""
    body = b"start" + b"  \t x" * 50_000 + b"   \r\n\r\n" + b"y" * 200_000 + b" \t\r" * 30_000 + b"\n"
    for relaxed in (False, True):
        expected = _theirs(body, relaxed)
        assert _ours(body, relaxed, 1000) == (hashlib.sha256(expected).digest(), len(expected))


def test_empty_bodies() -> None:
    """§3.4.3: an empty body is one CRLF for simple; §3.4.4: nothing for relaxed."""
    assert _ours(b"", False, 1)[1] == 2 and _ours(b"\r\n\r\n", False, 1)[1] == 2
    assert _ours(b"", True, 1)[1] == 0 and _ours(b" \r\n\t\r\n", True, 1)[1] == 0
    # §3.4.4: "Ignore all whitespace at the end of lines", the last one too; then a CRLF is added.
    assert _ours(b"a \t", True, 1) == (hashlib.sha256(b"a\r\n").digest(), 3)
