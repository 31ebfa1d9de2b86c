"""The sans-I/O IMAP core with bytes alone: framing, literals, tokens, grammar, structure.

The fuzz tests hold the core's promise: whatever the bytes, the reader gives events and the
parser a command or an ImapParseError, never another exception.
"""

from __future__ import annotations

import contextlib
import io
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.imap import ImapParseError
from postoffice.imap.fetch_items import Section, fetch_items
from postoffice.imap.grammar import flag_list, mailbox_name, sequence_set
from postoffice.imap.reader import SPOOL_MIN, Command, CommandReader, Continue, Refused
from postoffice.imap.responses import Literal, untagged
from postoffice.imap.search import BadCharset, parse_search
from postoffice.imap.structure import parse_structure, resolve
from postoffice.imap.tokens import parse_command
from postoffice.imapd.fetch import MessageView, section_bytes


def events(reader: CommandReader) -> list[object]:
    out = []
    while (event := reader.next_event()) is not None:
        out.append(event)
    return out


def test_synchronising_literal_gets_a_continuation() -> None:
    reader = CommandReader()
    reader.receive_data(b"a1 LOGIN {5}\r\n")
    assert events(reader) == [Continue()]
    reader.receive_data(b"alice {6}\r\n")
    assert events(reader) == [Continue()]
    reader.receive_data(b"secret\r\n")
    [command] = events(reader)
    assert isinstance(command, Command)
    parsed = parse_command(command)
    assert (parsed.tag, parsed.name, parsed.args) == ("a1", "LOGIN", [b"alice", b"secret"])


def test_literal_plus_needs_no_continuation() -> None:
    reader = CommandReader()
    reader.receive_data(b"a2 APPEND Sent (\\Seen) {4+}\r\nab\r\n\r\n")
    [command] = events(reader)
    assert isinstance(command, Command)
    parsed = parse_command(command)
    assert parsed.args == ["Sent", ["\\Seen"], b"ab\r\n"]


class ListSink:
    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.discarded = False

    def write(self, data: bytes) -> None:
        self.pieces.append(data)

    def discard(self) -> None:
        self.discarded = True


def test_a_big_literal_goes_to_the_spool_piece_by_piece() -> None:
    sinks: list[tuple[tuple[bytes, ...], ListSink]] = []

    def spool(segments: tuple[bytes, ...], size: int) -> ListSink:
        assert size == SPOOL_MIN
        sinks.append((segments, ListSink()))
        return sinks[-1][1]

    reader = CommandReader(spool=spool)
    reader.receive_data(b"a APPEND Sent (\\Seen) {%d+}\r\n" % SPOOL_MIN + b"x" * 1000)
    assert events(reader) == []
    for start in range(1000, SPOOL_MIN, 1000):
        reader.receive_data(b"y" * min(1000, SPOOL_MIN - start))
        assert events(reader) == []
    reader.receive_data(b"\r\n")
    [command] = events(reader)
    assert isinstance(command, Command)
    [(announced, sink)] = sinks
    assert announced == (b"a APPEND Sent (\\Seen) ",)
    assert len(b"".join(sink.pieces)) == SPOOL_MIN and max(map(len, sink.pieces)) <= 1000
    parsed = parse_command(command)
    assert parsed.args == ["Sent", ["\\Seen"], b""] and parsed.spooled is sink and not sink.discarded
    # A command refused after its literal was spooled drops the file; so does a closed reader.
    reader.receive_data(b"b APPEND Sent {%d+}\r\n" % SPOOL_MIN + b"x" * SPOOL_MIN + b" " + b"w" * 9000)
    assert isinstance(events(reader)[0], Refused) and sinks[-1][1].discarded
    reader.receive_data(b"\r\nc APPEND Sent {%d+}\r\nhalf" % SPOOL_MIN)
    events(reader)
    reader.close()
    assert sinks[-1][1].discarded and sinks[-1][1].pieces == [b"half"]


def test_too_big_literals_are_refused_and_the_session_goes_on() -> None:
    reader = CommandReader(max_literal=10)
    reader.receive_data(b"a3 APPEND Sent {11}\r\n")
    assert events(reader) == [Refused("a3", "literal too big", True)]
    # A non-synchronising one is on its way: it is read and dropped with its line.
    reader.receive_data(b"a4 APPEND Sent {11+}\r\n0123456789A more\r\na5 NOOP\r\n")
    found = events(reader)
    assert found[0] == Refused("a4", "literal too big", True)
    assert isinstance(found[1], Command) and parse_command(found[1]).name == "NOOP"


def test_long_lines_are_refused_and_dropped() -> None:
    reader = CommandReader(max_line=100)
    reader.receive_data(b"a6 NOOP " + b"x" * 300)
    reader.receive_data(b"y" * 300 + b"\r\na7 NOOP\r\n")
    found = events(reader)
    assert found[0] == Refused("a6", "command line too long")
    assert isinstance(found[1], Command) and parse_command(found[1]).tag == "a7"


def test_tokens_keep_brackets_whole() -> None:
    parsed = parse_command(
        Command((b'x UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100> "q\\"s")',))
    )
    assert parsed.name == "UID FETCH"
    assert parsed.args == ["1:*", ["FLAGS", "BODY.PEEK[HEADER.FIELDS (From To)]<0.100>", b'q"s']]


@pytest.mark.parametrize(
    "line", [b"", b"+ NOOP", b"a (", b"a NOOP )", b'a LOGIN "x', b"a FETCH 1 BODY[", b"a X \x01"]
)
def test_malformed_commands_are_parse_errors(line: bytes) -> None:
    with pytest.raises(ImapParseError):
        parse_command(Command((line,)))


def test_grammar() -> None:
    assert sequence_set("1:3,5,7:*").resolve(9) == [(1, 3), (5, 5), (7, 9)]
    assert flag_list(["\\Seen", "\\Deleted", "$Junk"]) == ("ST", {"$Junk"})
    assert mailbox_name(b"inbox") == "INBOX"
    for bad in (b"a//b", b"/x", b"x/", b"x*", b"a\\b", b"~x"):
        with pytest.raises(ImapParseError):
            mailbox_name(bad)
    items = fetch_items(["UID", "BODY.PEEK[1.2.MIME]<0.10>", "BINARY[1]"])
    assert [item.label() for item in items] == ["UID", "BODY[1.2.MIME]<0>", "BINARY[1]"]
    assert not items[1].sets_seen
    search = parse_search(["OR", "FROM", b"bob", "NOT", "SEEN", "UID", "1:*"])
    assert search.key.op == "AND" and search.key.children[0].op == "OR"
    with pytest.raises(BadCharset):
        parse_search(["CHARSET", "KOI8-R", "ALL"])


def test_responses_quote_only_what_is_safe() -> None:
    assert untagged(1, "FETCH", ["UID", 7, "X", b"plain", "Y", b'a"b', "Z", None, "L", Literal(b"x")]) == (
        b'* 1 FETCH (UID 7 X "plain" Y {3}\r\na"b Z NIL L {1}\r\nx)\r\n'
    )


MESSAGE = (
    b"Subject: hi\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
    b"preamble\r\n--B\r\nContent-Type: text/plain\r\n\r\nline one\r\nline two\r\n"
    b"--B\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n"
    b"--B--\r\nepilogue\r\n"
)


def test_structure_offsets_and_sections() -> None:
    root = parse_structure(io.BytesIO(MESSAGE))
    assert root.content_type == "multipart/mixed" and len(root.children) == 2
    text_part = resolve(root, (1,))
    assert text_part is not None and MESSAGE[text_part.body_start : text_part.end] == b"line one\r\nline two"
    assert text_part.lines == 1
    view = MessageView(io.BytesIO(MESSAGE))
    assert section_bytes(view, Section((2,), "HEADER"), None) == b"Subject: inner\r\n\r\n"
    assert section_bytes(view, Section((2,), "TEXT"), None) == b"inner body"
    assert section_bytes(view, Section((1,)), (5, 3)) == b"one"
    assert section_bytes(view, Section((9,)), None) == b""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_fuzz_reader_and_parser(chunks: list[bytes]) -> None:
    exercise(chunks)


def exercise(chunks: list[bytes]) -> None:
    """Everything the core does with a client's bytes: only its own errors may come out."""
    reader = CommandReader(max_line=64, max_literal=32)
    for chunk in chunks:
        reader.receive_data(chunk)
        for event in events(reader):
            if isinstance(event, Command):
                try:
                    parsed = parse_command(event)
                except ImapParseError:
                    continue
                for parse in (fetch_items, sequence_set, mailbox_name):
                    for arg in parsed.args:
                        with contextlib.suppress(ImapParseError):
                            parse(arg)  # type: ignore[operator]
                with contextlib.suppress(ImapParseError):
                    parse_search(parsed.args)


IMAP_WORDS = st.sampled_from(
    [b"a1 ", b"FETCH ", b"SEARCH ", b"1:* ", b"(", b")", b"[", b"]", b'"', b"\\", b"{3}\r\n", b"{2+}\r\n",
     b"BODY[1.HEADER.FIELDS (A)]<0.5>", b"OR ", b"NOT ", b"UID ", b"\r\n", b" ", b"*", b"%"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(IMAP_WORDS, max_size=30))
def test_fuzz_with_imap_words(words: list[bytes]) -> None:
    exercise([b"".join(words), b"\r\n"])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_structure(data: bytes) -> None:
    root = parse_structure(io.BytesIO(b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + data))
    assert 0 <= root.body_start <= root.end <= len(data) + 60


def test_a_partial_fetch_of_a_big_message_stays_small(tmp_path: Path) -> None:
    """A 20 MB attachment: the structure pass keeps offsets, the partial read 4 KiB."""
    path = tmp_path / "big.eml"
    with path.open("wb") as out:
        out.write(
            b"Subject: big\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n\r\nhello\r\n--XX\r\n"
        )
        out.write(b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
        line = b"QUJD" * 19 + b"\r\n"
        for _ in range(20 * 1024 * 1024 // len(line)):
            out.write(line)
        out.write(b"--XX--\r\n")
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            view = MessageView(stream)
            piece = section_bytes(view, Section((2,)), (1_000_000, 4096))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(piece) == 4096 and piece.startswith((b"QUJD", b"UJD", b"JD", b"D", b"\r\n", b"\n"))
    assert peak < 1024 * 1024, f"peak {peak} bytes"
