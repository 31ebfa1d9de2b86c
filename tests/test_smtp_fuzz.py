"""Property tests of the SMTP server core and the transaction layer over it: whatever bytes
arrive, they answer or wait, never raise.

Invariants, for random bytes and for streams built from real SMTP vocabulary:

* driving the core with the accept-everything application raises nothing;
* every line written is a well-formed reply line (RFC 5321 §4.2: ``\\d{3}[ -]``) of at most
  512 octets with its CRLF (§4.5.3.1.5);
* the state is always a :class:`State`, and end of file always leads to one final ``Closing``;
* how the stream is split into reads changes neither the output bytes nor the events;
* through the transaction layer (``smtpd``, with its standard stages, AUTH and an in-memory
  store): the same, every ``250 queued as`` has its stored message, and every message opened
  is stored or discarded by the time the connection is gone.
"""

from __future__ import annotations

import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.smtp import commands as c
from postoffice.smtp import events as ev
from postoffice.smtp import replies
from postoffice.smtp.server import ServerSettings
from postoffice.smtp.state import State
from smtp_pair import HOST, Driver, lines, normalised, parse_replies
from smtpd_pair import MemoryStore, SmtpdSession, fuzz_services

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPLY_LINE = re.compile(rb"\d{3}[ -][^\r\n]*")

CONFIGS = [
    ServerSettings(hostname=HOST),
    # Small limits, so that size, recipient, line and error limits are reached by short streams.
    ServerSettings(
        hostname=HOST,
        max_message_size=40,
        max_recipients=2,
        text_line_limit=30,
        max_errors=6,
    ),
    ServerSettings(hostname=HOST, auth_mechanisms=("PLAIN", "LOGIN"), dsn=True, max_errors=1000),
    # A submission listener on port 465: TLS from the start, AUTH only inside it.
    ServerSettings(
        hostname=HOST,
        implicit_tls=True,
        auth_mechanisms=("PLAIN", "LOGIN"),
        auth_requires_tls=True,
        max_errors=1000,
    ),
]
# STARTTLS is kept out of the split-equivalence property on purpose: after "220 Ready to start
# TLS" the core drops whatever plaintext is buffered (RFC 3207 §4.2), so the result depends on
# what had arrived by then. It is fuzzed for robustness all the same.
TLS_CONFIG = ServerSettings(hostname=HOST, starttls=True, auth_mechanisms=("PLAIN",), max_errors=1000)
TLS_REQUIRED_CONFIG = ServerSettings(
    hostname=HOST, starttls=True, auth_mechanisms=("PLAIN",), auth_requires_tls=True, max_errors=1000
)

# The vocabulary of real sessions: verbs, arguments, and the line-ending and dot fragments
# that decide where lines and messages end.
FRAGMENTS = [
    b"HELO x.example",
    b"EHLO x.example",
    b"MAIL FROM:<a@b.example>",
    b"MAIL FROM:<>",
    b"mail from:",
    b"RCPT TO:<c@d.example>",
    b"RCPT TO:<postmaster>",
    b"RCPT TO:",
    b"DATA",
    b"BDAT ",
    b"BDAT 3",
    b"BDAT 0 LAST",
    b" LAST",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY x",
    b"HELP",
    b"EXPN y",
    b"STARTTLS",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH PLAIN AGEAYg==",
    b"dXNlcg==",
    b"*",
    b" SIZE=",
    b" SIZE=10",
    b" SIZE=99999999999",
    b" BODY=8BITMIME",
    b" BODY=BINARYMIME",
    b" SMTPUTF8",
    b" NOTIFY=SUCCESS,FAILURE",
    b" ORCPT=rfc822;a+40b",
    b" ENVID=x+2B",
    b" RET=HDRS",
    b"<",
    b">",
    b"@",
    b'"',
    b":",
    b"[IPv6:::1]",
    b"[192.0.2.1]",
    "ü".encode(),
    "²".encode(),
    "😀".encode(),
    b"\r\n",
    b"\r\n",
    b"\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b"\r\n.\r\n",
    b".\r\n",
    b"\r\n.",
    b"\x00",
    b"\xff",
    b" ",
    b"\t",
    b"x" * 40,
    b"y" * 600,
]
# Prefixes that put the session straight into the interesting states.
PREFIXES = [
    b"",
    lines("EHLO x.example"),
    lines("EHLO x.example", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>"),
    lines("EHLO x.example", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA"),
    lines("HELO x.example", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>"),
]

VERBS = [b"HELO", b"EHLO", b"MAIL FROM:", b"mail from:", b"RCPT TO:", b"Rcpt To:", b"DATA", b"BDAT", b"RSET"]
VERBS += [b"NOOP", b"QUIT", b"VRFY", b"HELP", b"EXPN", b"STARTTLS", b"AUTH", b"XYZZY", b""]
PATHS = [b"<a@b.example>", b"<>", b"<postmaster>", b'<"q x"@[192.0.2.1]>', b"<@r.example:u@v.example>"]
PATHS += ["<ü@x.example>".encode(), b"<a@[IPv6:::1]>", b"<a", b"a@b", b"<" + b"a" * 70 + b"@x>"]
KEYWORDS = [
    b"SIZE",
    b"BODY",
    b"SMTPUTF8",
    b"NOTIFY",
    b"ORCPT",
    b"ENVID",
    b"RET",
    b"AUTH",
    b"LAST",
    b"FOO",
    b"-X",
]
NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=60).map(lambda n: str(n).encode()),
    st.sampled_from([b"99999999999", b"0" * 25, "²".encode(), "١٢".encode(), b"-1", b"1e3"]),
)
VALUES = st.one_of(
    NUMBERS,
    st.sampled_from(
        [b"8BITMIME", b"7BIT", b"BINARYMIME", b"rfc822;a+40b", b"x+2B", b"+0D+0A", b"", "ü".encode()]
    ),
)
parameter = st.builds(
    lambda keyword, value: keyword if value is None else keyword + b"=" + value,
    st.sampled_from(KEYWORDS),
    st.none() | VALUES,
)
argument = st.one_of(
    st.sampled_from(PATHS), parameter, NUMBERS, st.sampled_from(FRAGMENTS), st.binary(max_size=4)
)
ENDINGS = [b"\r\n"] * 8 + [b"\n", b"\r", b""]


def _line(*parts: bytes | None) -> bytes:
    return b"".join(part for part in parts if part is not None)


def _spaced(items: list[bytes]) -> bytes:
    return b"".join(b" " + item for item in items)


# Lines shaped like each command, so that arguments reach the parsers behind the verbs.
mail_text = st.builds(
    _line,
    st.sampled_from([b"MAIL FROM:", b"mail from:", b"MAIL FROM: "]),
    st.sampled_from(PATHS),
    st.lists(parameter, max_size=3).map(_spaced),
)
rcpt_text = st.builds(
    _line,
    st.sampled_from([b"RCPT TO:", b"Rcpt To:"]),
    st.sampled_from(PATHS),
    st.lists(parameter, max_size=3).map(_spaced),
)
bdat_text = st.builds(
    _line, st.just(b"BDAT "), NUMBERS, st.none() | st.sampled_from([b" LAST", b" last", b" FIRST"])
)
generic_text = st.builds(_line, st.sampled_from(VERBS), st.lists(argument, max_size=3).map(_spaced))
command_text = st.one_of(mail_text, rcpt_text, bdat_text, generic_text)
command_line = st.builds(_line, command_text, st.sampled_from(ENDINGS))
# Mostly whole lines; loose fragments and raw bytes make the framing itself the target.
fragment = st.one_of(
    command_line, command_line, command_line, st.sampled_from(FRAGMENTS), st.binary(max_size=6)
)
commandish = st.builds(
    lambda prefix, parts: prefix + b"".join(parts),
    st.sampled_from(PREFIXES),
    st.lists(fragment, max_size=30),
)
random_bytes = st.builds(
    lambda prefix, tail: prefix + tail, st.sampled_from(PREFIXES), st.binary(max_size=2000)
)


@st.composite
def split(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> tuple[bytes, list[int]]:
    data = draw(streams)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12))
    return data, cuts


def check_output(output: bytes) -> None:
    assert output == b"" or output.endswith(b"\r\n"), output[-80:]
    for line in output.split(b"\r\n")[:-1]:
        assert REPLY_LINE.fullmatch(line), line[:80]
        assert len(line) + 2 <= 512, line[:80]
    parse_replies(output)  # multi-line replies are consistent


def drive(data: bytes, cuts: list[int], config: ServerSettings) -> Driver:
    """Feed ``data`` cut at ``cuts`` and then end of file; check the invariants on the way."""
    driver = Driver(config)
    for piece in _pieces(data, cuts):
        driver.feed(piece)
        assert isinstance(driver.conn.state, State)
        assert driver.conn.state is not State.CLOSED or driver.closed
    driver.eof()
    check_output(bytes(driver.transcript))
    assert driver.conn.state is State.CLOSED
    closings = driver.of_type(ev.Closing)
    assert len(closings) == 1 and driver.events[-1] is closings[0]
    assert driver.conn.next_event() is ev.NEED_DATA
    return driver


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


contexts = st.builds(
    c.ParseContext,
    esmtp=st.booleans(),
    utf8_transaction=st.booleans(),
    max_message_size=st.sampled_from([0, 40, 10_000_000]),
    dsn=st.booleans(),
    auth=st.booleans(),
)


@FUZZ
@given(st.one_of(command_text, st.binary(max_size=80), st.text(max_size=80).map(str.encode)), contexts)
def test_command_parser_parses_or_refuses(line: bytes, context: c.ParseContext) -> None:
    """One command line is a Command or a CommandError carrying a 5xx reply, nothing else."""
    try:
        command = c.parse_command(line, context)
    except c.CommandError as exc:
        assert 500 <= exc.reply.code < 600
        check_output(exc.reply.render(enhanced=True))
    else:
        assert isinstance(command, c.Command)


@FUZZ
@given(split(random_bytes), st.sampled_from([*CONFIGS, TLS_CONFIG, TLS_REQUIRED_CONFIG]))
def test_random_bytes_never_break_the_core(case: tuple[bytes, list[int]], config: ServerSettings) -> None:
    drive(*case, config)


@FUZZ
@given(split(commandish), st.sampled_from([*CONFIGS, TLS_CONFIG, TLS_REQUIRED_CONFIG]))
def test_command_streams_never_break_the_core(case: tuple[bytes, list[int]], config: ServerSettings) -> None:
    driver = drive(*case, config)
    # Every reply on the wire is accounted for by exactly one event: the greeting, one per
    # decision, one per Replied and MessageRejected, and the 421 of the error limit.
    events = driver.events
    expected = 1 + sum(isinstance(e, (ev.Decision, ev.Replied, ev.MessageRejected)) for e in events)
    expected += events[-1] == ev.Closing(replies.TOO_MANY_ERRORS)
    assert len(parse_replies(bytes(driver.transcript))) == expected


@FUZZ
@given(split(commandish), st.sampled_from(CONFIGS))
def test_splitting_never_changes_command_streams(
    case: tuple[bytes, list[int]], config: ServerSettings
) -> None:
    data, cuts = case
    whole = drive(data, [], config)
    pieces = drive(data, cuts, config)
    assert pieces.transcript == whole.transcript
    assert normalised(pieces.events) == normalised(whole.events)
    assert pieces.messages == whole.messages


@FUZZ
@given(split(random_bytes), st.sampled_from(CONFIGS))
def test_splitting_never_changes_random_streams(
    case: tuple[bytes, list[int]], config: ServerSettings
) -> None:
    data, cuts = case
    whole = drive(data, [], config)
    pieces = drive(data, cuts, config)
    assert pieces.transcript == whole.transcript
    assert normalised(pieces.events) == normalised(whole.events)


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=800), max_size=8))
def test_data_content_round_trips(content: bytes, cuts: list[int]) -> None:
    """Any CRLF-clean content, dot-stuffed as a client must (§4.5.2), comes back unchanged."""
    content = content.replace(b"\r", b"").replace(b"\n", b"\r\n")
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    stuffed = re.sub(rb"(?m)^\.", b"..", content)
    start = lines("EHLO x.example", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
    stream = start + stuffed + b".\r\n" + lines("QUIT")
    config = ServerSettings(hostname=HOST, text_line_limit=0)
    driver = drive(stream, [len(start) + cut for cut in cuts], config)
    assert driver.messages == [content]


# Content made of the pieces the terminator and dot-stuffing search looks at, so that lines
# starting with periods, CRLF "." near the end of a read, and bare CR or LF all occur often.
dotted_content = st.lists(
    st.sampled_from([b".", b"..", b"a", b"\r\n", b"\r", b"\n", b".\r"]), max_size=40
).map(b"".join)


@FUZZ
@given(dotted_content, st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_dotted_content_round_trips_and_bare_endings_are_found(content: bytes, cuts: list[int]) -> None:
    """Clean content comes back unchanged however it is cut; content with a bare CR or LF is
    refused (554 5.6.0) however it is cut."""
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    bare = len(re.findall(rb"\r(?!\n)|(?<!\r)\n", content)) > 0
    stuffed = re.sub(rb"(?m)(?<=\r\n)\.|\A\.", b"..", content)
    start = lines("EHLO x.example", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
    stream = start + stuffed + b".\r\n" + lines("QUIT")
    config = ServerSettings(hostname=HOST, text_line_limit=0)
    driver = drive(stream, [len(start) + cut for cut in cuts], config)
    if bare:
        assert driver.messages == []
        assert replies.BARE_LINE_ENDING_IN_DATA.render(enhanced=True) in driver.transcript
    else:
        assert driver.messages == [content]


def test_content_over_the_size_limit_does_not_depend_on_the_cuts() -> None:
    """Regression (found by the property above): the octets before the size limit used to be
    handed on only when they arrived in a read of their own."""
    config = CONFIGS[1]  # max_message_size=40
    data = b"EHLO x.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
    data += b"MAIL FROM:<a@b.example>\r\n" * 3
    whole = drive(data, [], config)
    pieces = drive(data, [95], config)  # the first content line in a read of its own
    assert normalised(pieces.events) == normalised(whole.events)
    for driver in (whole, pieces):
        handed_on = b"".join(event.data for event in driver.events if isinstance(event, ev.MessageData))
        assert len(handed_on) == 40


# --- through the transaction layer ------------------------------------------------------------


def drive_smtpd(data: bytes, cuts: list[int], config: ServerSettings) -> tuple[SmtpdSession, MemoryStore]:
    """Feed ``data`` to a conversation with the standard stages, then end of file; check the
    invariants on the way."""
    store = MemoryStore()
    session = SmtpdSession(fuzz_services(store), config)
    try:
        for piece in _pieces(data, cuts):
            session.feed(piece)
            assert isinstance(session.conversation.state, State)
            if session.closed is not None:
                break
        if session.closed is None:
            session.feed(b"")
    finally:
        session.close()
    check_output(bytes(session.transcript))
    assert session.closed is not None and session.conversation.state is State.CLOSED
    queued = [
        reply
        for reply in parse_replies(bytes(session.transcript))
        if reply.code == 250 and "queued as" in reply.lines[-1]
    ]
    assert len(queued) == len(store.messages)
    assert store.all_ended
    return session, store


@FUZZ
@given(split(commandish), st.sampled_from([*CONFIGS, TLS_CONFIG, TLS_REQUIRED_CONFIG]))
def test_command_streams_never_break_the_transaction_layer(
    case: tuple[bytes, list[int]], config: ServerSettings
) -> None:
    drive_smtpd(*case, config)


@FUZZ
@given(split(random_bytes), st.sampled_from(CONFIGS))
def test_random_bytes_never_break_the_transaction_layer(
    case: tuple[bytes, list[int]], config: ServerSettings
) -> None:
    drive_smtpd(*case, config)


@FUZZ
@given(split(commandish), st.sampled_from(CONFIGS))
def test_splitting_never_changes_what_the_transaction_layer_stores(
    case: tuple[bytes, list[int]], config: ServerSettings
) -> None:
    data, cuts = case
    whole, whole_store = drive_smtpd(data, [], config)
    pieces, pieces_store = drive_smtpd(data, cuts, config)
    assert pieces.transcript == whole.transcript
    assert [m.content for m in pieces_store.messages] == [
        m.content.replace(b"MEM", b"MEM") for m in whole_store.messages
    ]
