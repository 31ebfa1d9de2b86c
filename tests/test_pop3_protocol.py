"""The sans-I/O POP3 core (postoffice.pop3), driven with bytes alone: states, replies, the
message transform (CRLF, byte-stuffing, TOP), and a Hypothesis fuzz of the parser."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.pop3.commands import KEYWORDS, MAX_ARGUMENT, MAX_LINE, CommandError, parse
from postoffice.pop3.content import Normalizer, transmitted_size
from postoffice.pop3.events import NEED_DATA, Closed, Entry, Login, Retrieve, StartTls, Update
from postoffice.pop3.server import Pop3Connection, Pop3Settings, State

ENTRIES = [Entry("uid-one", 120), Entry("uid-two", 80)]


def connect(**options: bool) -> Pop3Connection:
    settings_ = Pop3Settings(hostname="mx.test", **{"login_in_clear": True, **options})
    core = Pop3Connection(settings_)
    assert core.data_to_send().startswith(b"+OK mx.test POP3 server ready")
    return core


def send(core: Pop3Connection, data: bytes) -> tuple[object, bytes]:
    core.receive_data(data)
    event = core.next_event()
    return event, core.data_to_send()


def logged_in() -> Pop3Connection:
    core = connect()
    assert send(core, b"USER alice\r\n") == (NEED_DATA, b"+OK send PASS\r\n")
    event, _ = send(core, b"PASS secret words\r\n")
    assert event == Login("alice", "secret words")
    core.logged_in(ENTRIES)
    assert core.data_to_send() == b"+OK maildrop has 2 messages (200 octets)\r\n"
    assert core.state is State.TRANSACTION
    return core


def test_stat_list_uidl_dele_rset() -> None:
    core = logged_in()
    assert send(core, b"STAT\r\n")[1] == b"+OK 2 200\r\n"
    assert send(core, b"LIST\r\n")[1] == b"+OK 2 messages\r\n1 120\r\n2 80\r\n.\r\n"
    assert send(core, b"uidl 2\r\n")[1] == b"+OK 2 uid-two\r\n"
    assert send(core, b"DELE 1\r\n")[1] == b"+OK message 1 deleted\r\n"
    assert send(core, b"STAT\r\n")[1] == b"+OK 1 80\r\n"
    assert send(core, b"LIST 1\r\n")[1] == b"-ERR message 1 already deleted\r\n"
    assert send(core, b"UIDL\r\n")[1] == b"+OK 1 messages\r\n2 uid-two\r\n.\r\n"
    assert send(core, b"RSET\r\n")[1].startswith(b"+OK")
    assert send(core, b"STAT\r\n")[1] == b"+OK 2 200\r\n"


def test_quit_in_transaction_hands_out_the_deletions() -> None:
    core = logged_in()
    send(core, b"DELE 2\r\n")
    event, _ = send(core, b"QUIT\r\n")
    assert event == Update(("uid-two",))
    assert core.next_event() is NEED_DATA  # nothing more is read until UPDATE is done
    core.updated(True)
    assert core.data_to_send() == b"+OK mx.test POP3 server signing off\r\n"
    assert isinstance(core.next_event(), Closed)


def test_retr_and_top_are_events_with_the_message_stuffed() -> None:
    core = logged_in()
    event, _ = send(core, b"RETR 1\r\n")
    assert event == Retrieve(1, "uid-one", None)
    core.message_begins(Retrieve(1, "uid-one"))
    core.message_chunk(b"Subject: x\n\n.dot line\r\nlast")
    core.message_ends()
    assert core.data_to_send() == b"+OK 120 octets\r\nSubject: x\r\n\r\n..dot line\r\nlast\r\n.\r\n"
    event, _ = send(core, b"TOP 2 0\r\n")
    assert event == Retrieve(2, "uid-two", 0)


def test_bad_commands_are_errors_and_the_session_goes_on() -> None:
    core = logged_in()
    for line, reply in [
        (b"FROB\r\n", b"-ERR unknown command\r\n"),
        (b"RETR\r\n", b"-ERR RETR takes a message number\r\n"),
        (b"RETR x\r\n", b"-ERR no such message\r\n"),
        (b"RETR 3\r\n", b"-ERR no such message\r\n"),
        (b"TOP 1 -1\r\n", b"-ERR TOP takes a line count\r\n"),
        (b"STAT  \r\n", b"-ERR malformed arguments\r\n"),
        (b"\xff\xfe\r\n", b"-ERR command is not ASCII\r\n"),
        (b"USER bob\r\n", b"-ERR already logged in\r\n"),
        (b"LIST " + b"9" * (MAX_LINE + 10) + b"\r\n", b"-ERR line too long\r\n"),
    ]:
        assert send(core, line) == (NEED_DATA, reply), line
    assert send(core, b"NOOP\r\n")[1] == b"+OK\r\n"


def test_commands_need_a_login_first() -> None:
    core = connect()
    assert send(core, b"STAT\r\n")[1] == b"-ERR STAT needs a login first\r\n"
    assert send(core, b"PASS x\r\n")[1] == b"-ERR USER first, then PASS with the password\r\n"


def test_login_only_inside_tls_unless_allowed_in_clear() -> None:
    core = connect(login_in_clear=False, tls=True)
    capabilities = send(core, b"CAPA\r\n")[1]
    assert b"STLS\r\n" in capabilities and b"USER" not in capabilities
    assert send(core, b"USER alice\r\n")[1] == b"-ERR [AUTH] log in inside TLS: use STLS first\r\n"
    event, out = send(core, b"STLS\r\nUSER injected\r\n")
    assert isinstance(event, StartTls) and out == b"+OK begin TLS negotiation\r\n"
    core.tls_started()
    # What followed STLS in plaintext was dropped (RFC 2595 §4), not read inside TLS.
    assert core.next_event() is NEED_DATA and core.data_to_send() == b""
    capabilities = send(core, b"CAPA\r\n")[1]
    assert b"USER\r\n" in capabilities and b"SASL PLAIN\r\n" in capabilities and b"STLS" not in capabilities


def test_auth_plain_with_and_without_initial_response() -> None:
    token = base64.b64encode(b"\0alice@example.test\0pw").decode()
    core = connect()
    event, _ = send(core, f"AUTH PLAIN {token}\r\n".encode())
    assert event == Login("alice@example.test", "pw", "", "PLAIN")
    core.login_failed("authentication failed")
    assert core.data_to_send() == b"-ERR [AUTH] authentication failed\r\n"
    assert send(core, b"AUTH PLAIN\r\n")[1] == b"+ \r\n"
    event, _ = send(core, token.encode() + b"\r\n")
    assert event == Login("alice@example.test", "pw", "", "PLAIN")
    core.login_failed("no")
    core.data_to_send()
    assert send(core, b"AUTH PLAIN\r\n*\r\n")[1] == b"+ \r\n-ERR authentication cancelled\r\n"
    assert send(core, b"AUTH PLAIN not-base64!\r\n")[1] == b"-ERR invalid base64\r\n"
    assert send(core, b"AUTH CRAM-MD5\r\n")[1] == b"-ERR unsupported mechanism; PLAIN is offered\r\n"


def test_end_of_stream_closes_without_update() -> None:
    core = logged_in()
    send(core, b"DELE 1\r\n")
    core.receive_data(b"")
    assert isinstance(core.next_event(), Closed)


def test_normalizer_counts_what_it_sends() -> None:
    message = b"A: b\n\nline one\r\n.two\rthree"
    assert transmitted_size([message]) == len(b"A: b\r\n\r\nline one\r\n.two\r\nthree\r\n")
    # Split anywhere, even inside a CRLF, it sends the same.
    for cut in range(len(message)):
        normalizer = Normalizer()
        out = normalizer.feed(message[:cut]) + normalizer.feed(message[cut:]) + normalizer.finish()
        assert out == b"A: b\r\n\r\nline one\r\n..two\r\nthree\r\n", cut


def test_top_sends_the_header_and_n_body_lines() -> None:
    normalizer = Normalizer(body_lines=1)
    out = normalizer.feed(b"A: b\r\nC: d\r\n\r\nfirst\r\nsecond\r\n") + normalizer.finish()
    assert out == b"A: b\r\nC: d\r\n\r\nfirst\r\n"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=80) | st.sampled_from([b"\r\n", b"USER a\r\n", b"PASS b\r\n", b"LIST 1\r\n"]),
        max_size=30,
    )
)
def test_fuzz_the_core_never_raises_and_always_answers(chunks: list[bytes]) -> None:
    core = connect()
    for chunk in chunks:
        core.receive_data(chunk)
        for _ in range(100):
            event = core.next_event()
            if isinstance(event, Login):
                core.logged_in(ENTRIES)
            elif isinstance(event, Retrieve):
                core.message_unavailable(event)
            elif isinstance(event, StartTls):
                core.tls_started()
            elif isinstance(event, Update):
                core.updated(True)
            else:
                break
        out = core.data_to_send()
        # Every answer starts with a status indicator (or SASL's "+ " continuation).
        assert out == b"" or out.startswith((b"+OK", b"-ERR", b"+ ")), out


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_the_parser_raises_only_command_errors(line: bytes) -> None:
    try:
        command = parse(line)
    except CommandError:
        return
    assert command.keyword in KEYWORDS
    assert all(0 < len(argument) <= MAX_ARGUMENT for argument in command.arguments)
