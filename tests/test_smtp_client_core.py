"""The sans-I/O SMTP client on bytes alone: reply parsing, EHLO keywords, commands, dot-stuffing.

The last tests pair the client core with our server core (``smtp_pair.Driver``), no sockets:
whatever bytes a message holds, what the client stuffs is what the server unstuffs.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.errors import LocalProtocolError, SmtpProtocolError
from postoffice.smtp import client as core
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtp.server import ServerSettings
from smtp_pair import Driver


def parse(data: bytes) -> list[Reply]:
    reader = core.ReplyReader()
    reader.feed(data)
    found = []
    while (reply := reader.next_reply()) is not None:
        found.append(reply)
    return found


# --- replies ----------------------------------------------------------------------------------


def test_single_line_reply_with_enhanced_code() -> None:
    assert parse(b"250 2.1.0 Ok\r\n") == [Reply(250, "2.1.0", ("Ok",))]


def test_every_reply_our_server_renders_parses_back_to_itself() -> None:
    for reply in (replies.SENDER_OK, replies.HELP, replies.USER_UNKNOWN, replies.START_MAIL_INPUT):
        assert parse(reply.render(enhanced=True)) == [reply]


def test_multi_line_reply_strips_the_enhanced_code_from_every_line() -> None:
    data = b"550-5.7.1 first line\r\n550-5.7.1 second\r\n550 5.7.1 last\r\n"
    assert parse(data) == [Reply(550, "5.7.1", ("first line", "second", "last"))]


def test_enhanced_code_of_another_class_is_text() -> None:
    # RFC 2034 §3: the class must match the reply code; "2.example" is a host name.
    assert parse(b"220 2.3.4 looks like a code\r\n") == [Reply(220, "2.3.4", ("looks like a code",))]
    assert parse(b"550 2.1.0 wrong class\r\n") == [Reply(550, None, ("2.1.0 wrong class",))]
    assert parse(b"220 2.example.net ESMTP\r\n") == [Reply(220, None, ("2.example.net ESMTP",))]


def test_code_without_text_and_bare_lf_are_accepted() -> None:
    assert parse(b"250\r\n354\n") == [Reply(250, None, ("",)), Reply(354, None, ("",))]


def test_reply_split_across_feeds_arrives_once_whole() -> None:
    reader = core.ReplyReader()
    data = b"250-mx.test Hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
    for index in range(len(data)):
        reader.feed(data[index : index + 1])
        if index < len(data) - 1:
            assert reader.next_reply() is None
    reply = reader.next_reply()
    assert reply is not None and reply.lines == ("mx.test Hello", "PIPELINING", "SIZE 1000")
    assert not reader.has_unread


def test_on_line_sees_every_line_as_received() -> None:
    seen: list[str] = []
    reader = core.ReplyReader(seen.append)
    reader.feed(b"250-2.0.0 one\r\n250 2.0.0 two\r\n")
    assert seen == ["250-2.0.0 one", "250 2.0.0 two"]


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"25 short\r\n",
        b"650 no such class\r\n",
        b"250x no separator\r\n",
        b"250-one\r\n251 two\r\n",  # the code changes inside one reply (§4.2.1)
        b"2" * (core.REPLY_LINE_LIMIT + 1),
        b"250 " + b"x" * core.REPLY_LINE_LIMIT + b"\r\n",
    ],
)
def test_malformed_replies_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(SmtpProtocolError):
        parse(data)


def test_endless_multi_line_reply_is_a_protocol_error() -> None:
    with pytest.raises(SmtpProtocolError):
        parse(b"250-x\r\n" * (core.REPLY_MAX_LINES + 1))


def test_connection_closed_inside_a_reply() -> None:
    reader = core.ReplyReader()
    reader.feed(b"250-first\r\n")
    with pytest.raises(SmtpProtocolError):
        reader.end_of_input()
    complete = core.ReplyReader()
    complete.feed(b"221 Bye\r\n")
    complete.end_of_input()  # nothing pending: no error


def test_non_utf8_reply_text_is_replaced_not_raised() -> None:
    assert parse(b"550 caf\xe9\r\n")[0].lines == ("caf\ufffd",)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(SmtpProtocolError):
        parse(data)


# --- EHLO keywords ----------------------------------------------------------------------------


def test_extensions_of_our_own_ehlo_reply() -> None:
    reply = replies.ehlo_ok("mx.test", "client", ["PIPELINING", "SIZE 1000", "AUTH PLAIN login", "8BITMIME"])
    ext = core.Extensions.from_ehlo(parse(reply.render(enhanced=False))[0])
    assert "PIPELINING" in ext and "pipelining" in ext and "STARTTLS" not in ext
    assert ext.size_limit == 1000
    assert ext.auth_mechanisms == ("PLAIN", "LOGIN")


def test_size_zero_or_missing_means_no_limit() -> None:
    assert core.Extensions.from_ehlo(Reply(250, None, ("hi", "SIZE 0"))).size_limit is None
    assert core.Extensions.from_ehlo(Reply(250, None, ("hi", "SIZE"))).size_limit is None
    assert core.Extensions.from_ehlo(Reply(250, None, ("hi",))).size_limit is None


def test_legacy_auth_equals_form_is_read_as_auth() -> None:
    ext = core.Extensions.from_ehlo(Reply(250, None, ("hi", "AUTH=LOGIN PLAIN")))
    assert ext.auth_mechanisms == ("LOGIN", "PLAIN")
    both = core.Extensions.from_ehlo(Reply(250, None, ("hi", "AUTH CRAM-MD5", "AUTH=LOGIN")))
    assert both.auth_mechanisms == ("CRAM-MD5",)


def test_lines_that_are_not_keywords_are_skipped() -> None:
    ext = core.Extensions.from_ehlo(Reply(250, None, ("hi", "", "-bad", "X-EXPS GSSAPI")))
    assert dict(ext.keywords) == {"X-EXPS": "GSSAPI"}


# --- commands ---------------------------------------------------------------------------------


def test_mail_and_rcpt_commands() -> None:
    assert core.mail("a@example.org") == b"MAIL FROM:<a@example.org>\r\n"
    assert core.mail("", {"SIZE": "10", "BODY": "8BITMIME"}) == b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n"
    assert (
        core.mail("ü@bücher.example", {"SMTPUTF8": None})
        == "MAIL FROM:<ü@bücher.example> SMTPUTF8\r\n".encode()
    )
    assert core.rcpt("b@example.com") == b"RCPT TO:<b@example.com>\r\n"


@pytest.mark.parametrize(
    "address", ["a@example.org>\r\nRCPT TO:<evil@example.net", "a@example.org\n", "no-at-sign", "a@@b", ""]
)
def test_addresses_that_could_inject_or_are_invalid_are_refused(address: str) -> None:
    with pytest.raises(LocalProtocolError):
        core.rcpt(address)


def test_command_injection_through_a_hello_name_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        core.ehlo("client.test\r\nRSET")


def test_command_line_limit() -> None:
    with pytest.raises(LocalProtocolError):
        core.ehlo("a" * core.COMMAND_LINE_LIMIT)


def test_auth_plain_initial_response() -> None:
    line, later = core.auth_plain("alice", "s3cret")
    assert later is None
    verb, mechanism, response = line.decode().split()
    assert (verb, mechanism) == ("AUTH", "PLAIN")
    assert base64.b64decode(response) == b"\0alice\0s3cret"


def test_auth_plain_too_long_for_one_line_is_sent_after_the_challenge() -> None:
    # RFC 4954 §4: an initial response that would make the line too long is not sent on it.
    line, later = core.auth_plain("alice", "p" * 600)
    assert line == b"AUTH PLAIN\r\n"
    assert later is not None and base64.b64decode(later.strip()) == b"\0alice\0" + b"p" * 600


def test_login_responses() -> None:
    assert core.login_response("alice") == base64.b64encode(b"alice") + b"\r\n"
    assert core.login_response("") == b"\r\n"


def test_redaction_hides_auth_initial_responses_only() -> None:
    line, _ = core.auth_plain("alice", "s3cret")
    assert core.redacted(line) == "AUTH PLAIN ***"
    assert core.redacted(b"AUTH LOGIN\r\n") == "AUTH LOGIN"
    assert core.redacted(b"MAIL FROM:<a@b.test>\r\n") == "MAIL FROM:<a@b.test>"


def test_needs_smtputf8() -> None:
    assert not core.needs_smtputf8(["a@b.test"], b"Subject: hi")
    assert core.needs_smtputf8(["ü@b.test"])
    assert core.needs_smtputf8(["a@b.test"], "Subject: Grüße".encode())


def test_header_section() -> None:
    assert core.header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n") == b"A: 1\r\nB: 2"
    assert core.header_section(b"A: 1\n\nbody") == b"A: 1"
    assert core.header_section(b"A: 1") == b"A: 1"


# --- dot-stuffing (RFC 5321 §4.5.2) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".a\r\n.\r\n..\r\n", b"..a\r\n..\r\n...\r\n.\r\n"),
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),  # bare LF and bare CR become CRLF
        (b"a\n.\n", b"a\r\n..\r\n.\r\n"),  # the smuggling shape: LF.LF cannot end the data
    ],
)
def test_dot_stuff(message: bytes, wire: bytes) -> None:
    assert core.dot_stuff(message) == wire


def test_dot_stuffer_across_chunk_boundaries() -> None:
    message = b"one\r\n.two\r\nthree\r\r\n.\n"
    for cut in range(len(message) + 1):
        stuffer = core.DotStuffer()
        out = stuffer.feed(message[:cut]) + stuffer.feed(message[cut:]) + stuffer.finish()
        assert out == core.dot_stuff(message), cut


def reference_stuffing(content: bytes) -> bytes:
    """CRLF content line by line, as §4.5.2 describes it, then the terminator."""
    lines = content.split(b"\r\n")
    last = lines.pop()  # b"" when the content ends with CRLF
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    if last:
        body += (b"." + last if last.startswith(b".") else last) + b"\r\n"
    return body + b".\r\n"


spool_lines = st.lists(st.sampled_from([b"", b".", b"..", b"a", b".a", b"a.", b"text . text"]), max_size=12)


@given(spool_lines, st.lists(st.integers(min_value=0, max_value=80), max_size=6), st.booleans())
def test_crlf_content_in_any_blocks_gives_the_reference_stuffing(
    parts: list[bytes], cuts: list[int], final_crlf: bool
) -> None:
    # The shape of a spooled message read in blocks: CRLF only, split anywhere (even in a CRLF).
    content = b"\r\n".join(parts) + (b"\r\n" if final_crlf and parts else b"")
    points = sorted({0, len(content), *(min(cut, len(content)) for cut in cuts)})
    stuffer = core.DotStuffer()
    out = b"".join(stuffer.feed(content[a:b]) for a, b in itertools.pairwise(points)) + stuffer.finish()
    assert out == reference_stuffing(content)


def normalise(message: bytes) -> bytes:
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    return text if not text or text.endswith(b"\r\n") else text + b"\r\n"


def server_receives(message_wire: bytes) -> list[bytes]:
    """A whole transaction, client core commands against our server core, no sockets."""
    driver = Driver(ServerSettings(hostname="mx.test", text_line_limit=0))
    reader = core.ReplyReader()
    reader.feed(driver.transcript)
    assert reader.next_reply() == replies.greeting("mx.test")
    for line in (core.ehlo("client.test"), core.mail("a@client.test"), core.rcpt("b@mx.test"), core.DATA):
        reader.feed(driver.feed(line))
        reply = reader.next_reply()
        assert reply is not None and reply.positive, reply
    reader.feed(driver.feed(message_wire))
    reply = reader.next_reply()
    assert reply == replies.queued("TESTID"), reply
    return driver.messages


@pytest.mark.parametrize("message", [b"", b"Subject: x\r\n\r\n.\r\n..\r\nend", b".\n.\n."])
def test_our_server_unstuffs_what_the_client_stuffs(message: bytes) -> None:
    assert server_receives(core.dot_stuff(message)) == [normalise(message)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\xff", b" "]), max_size=40))
def test_any_message_survives_the_round_trip(pieces: list[bytes]) -> None:
    message = b"".join(pieces)
    assert server_receives(core.dot_stuff(message)) == [normalise(message)]
