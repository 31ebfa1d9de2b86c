"""The sans-I/O SMTP server core, driven with bytes only: one test (or table row) per RFC point.

Every expected reply is a constant from :mod:`postoffice.smtp.replies`; the only hand-written
wire bytes are the classroom transcript, which pins the exact text a person sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from postoffice.errors import LocalProtocolError
from postoffice.smtp import commands as c
from postoffice.smtp import events as ev
from postoffice.smtp import replies as r
from postoffice.smtp.grammar import Path
from postoffice.smtp.replies import Reply
from postoffice.smtp.server import ServerConnection, ServerSettings
from postoffice.smtp.state import State
from smtp_pair import (
    AUTH_CHALLENGE,
    AUTH_OK,
    HOST,
    QUEUE_ID,
    TLS_READY,
    Driver,
    Pair,
    Policy,
    WireReply,
    lines,
    normalised,
    parse_replies,
    run,
)

EHLO = "EHLO client.example"
GREETED = b""
AFTER_HELO = lines("HELO client.example")
AFTER_EHLO = lines(EHLO)
IN_MAIL = AFTER_EHLO + lines("MAIL FROM:<a@example.org>")
IN_RCPT = IN_MAIL + lines("RCPT TO:<b@example.net>")
IN_BDAT = IN_RCPT + b"BDAT 3\r\nabc"
SMALL = ServerSettings(hostname=HOST, max_message_size=64)


def settings(**overrides: Any) -> ServerSettings:
    return ServerSettings(hostname=HOST, **overrides)


def started(setup: bytes, config: ServerSettings | None = None, policy: Policy | None = None) -> Driver:
    """A session that went through ``setup``; every reply to it must have been positive."""
    driver = run(setup, settings=config, policy=policy)
    assert all(reply.code < 400 for reply in driver.replies), driver.transcript
    return driver


def one_reply(output: bytes) -> WireReply:
    got = parse_replies(output)
    assert len(got) == 1, got
    return got[0]


def assert_reply(reply: WireReply, expected: Reply, *, esmtp: bool = True) -> None:
    """The code, and the enhanced code exactly when the session used EHLO (RFC 2034 §3)."""
    assert (reply.code, reply.enhanced) == (expected.code, expected.enhanced if esmtp else None), reply.raw


def kinds(got: list[WireReply]) -> list[tuple[int, str | None]]:
    return [(reply.code, reply.enhanced) for reply in got]


def kind(expected: Reply, *, esmtp: bool = True) -> tuple[int, str | None]:
    return (expected.code, expected.enhanced if esmtp else None)


def rendered(*expected: Reply, esmtp: bool) -> bytes:
    return b"".join(reply.render(enhanced=esmtp) for reply in expected)


# --- the classroom conversation -----------------------------------------------------------------

CLASSROOM_CONTENT = b"Subject: This is the subject of the email\r\n\r\nThis is the body of the email\r\n"


def _classroom(hello: str) -> tuple[Pair, list[WireReply]]:
    pair = Pair()
    got = [pair.greeting, pair.command(hello)]
    got.append(pair.command("MAIL FROM:<sender@fci-cu.edu.eg.com>"))
    got.append(pair.command("RCPT TO:<recipient@fci-cu.edu.eg.com>"))
    got.append(pair.command("DATA"))
    assert pair.send(b"Subject: This is the subject of the email\r\n") == []
    assert pair.send(b"\r\n") == []
    assert pair.send(b"This is the body of the email\r\n") == []
    got.append(pair.command("."))
    got.append(pair.command("QUIT"))
    assert pair.server.messages == [CLASSROOM_CONTENT]
    assert pair.server.closed
    mail = pair.server.of_type(ev.MailReceived)[0].command.path
    rcpt = pair.server.of_type(ev.RcptReceived)[0].command.path
    assert (str(mail), str(rcpt)) == ("sender@fci-cu.edu.eg.com", "recipient@fci-cu.edu.eg.com")
    return pair, got


def test_classroom_conversation_after_helo_verbatim() -> None:
    """RFC 5321 §4.2 / RFC 2034 §3: a HELO session gets plain replies, no enhanced codes."""
    pair, got = _classroom("HELO example.com")
    assert [reply.raw for reply in got] == [
        b"220 mx.test ESMTP postoffice ready\r\n",
        b"250 mx.test Hello example.com, pleased to meet you\r\n",
        b"250 Ok\r\n",
        b"250 Ok\r\n",
        b'354 Enter message, ending with "." on a line by itself\r\n',
        b"250 Ok: queued as TESTID\r\n",
        b"221 Bye\r\n",
    ]
    expected = (
        r.greeting(HOST),
        r.helo_ok(HOST, "example.com"),
        r.SENDER_OK,
        r.RECIPIENT_OK,
        r.START_MAIL_INPUT,
        r.queued(QUEUE_ID),
        r.CLOSING,
    )
    assert bytes(pair.server.transcript) == rendered(*expected, esmtp=False)


def test_classroom_conversation_after_ehlo_carries_enhanced_codes() -> None:
    """RFC 2034 §3: after EHLO every reply but the greeting, EHLO and 354 has an enhanced code."""
    pair, got = _classroom("EHLO example.com")
    assert got[1].code == r.OK.code and got[1].lines[0] == "mx.test Hello example.com"
    assert [reply.raw for reply in got[2:]] == [
        b"250 2.1.0 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b'354 Enter message, ending with "." on a line by itself\r\n',
        b"250 2.0.0 Ok: queued as TESTID\r\n",
        b"221 2.0.0 Bye\r\n",
    ]
    expected = (
        r.greeting(HOST),
        r.ehlo_ok(HOST, "example.com", pair.server.conn.extensions()),
        r.SENDER_OK,
        r.RECIPIENT_OK,
        r.START_MAIL_INPUT,
        r.queued(QUEUE_ID),
        r.CLOSING,
    )
    assert bytes(pair.server.transcript) == rendered(*expected, esmtp=True)


# --- EHLO (RFC 5321 §4.1.1.1) ------------------------------------------------------------------


def test_ehlo_advertises_the_extensions() -> None:
    pair = Pair(settings(max_message_size=10_000_000))
    reply = pair.command(EHLO)
    assert reply.code == r.OK.code
    assert reply.raw.count(b"250-") == len(reply.lines) - 1  # continuation lines (§4.2.1)
    assert reply.lines[0] == "mx.test Hello client.example"
    assert sorted(reply.lines[1:]) == sorted(
        ["PIPELINING", "SIZE 10000000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"]
    )


@pytest.mark.parametrize(
    ("overrides", "keyword"),
    [
        pytest.param({"starttls": True}, "STARTTLS", id="starttls"),
        pytest.param({"auth_mechanisms": ("PLAIN", "LOGIN")}, "AUTH PLAIN LOGIN", id="auth"),
        pytest.param({"dsn": True}, "DSN", id="dsn"),
    ],
)
def test_ehlo_advertises_optional_extensions_only_when_configured(
    overrides: dict[str, object], keyword: str
) -> None:
    assert keyword in Pair(settings(**overrides)).command(EHLO).lines[1:]
    assert keyword not in Pair().command(EHLO).lines[1:]


def test_helo_reply_is_one_line_without_keywords() -> None:
    reply = Pair().command("HELO client.example")
    assert reply.lines == ("mx.test Hello client.example, pleased to meet you",)


# --- one command, one reply --------------------------------------------------------------------


class Case(NamedTuple):
    setup: bytes
    command: str | bytes
    expected: Reply
    config: ServerSettings | None = None


COMMAND_REPLIES = {
    # RFC 5321 §4.2.4: 500 for an unrecognised command.
    "unknown-verb": Case(AFTER_EHLO, "FOO bar", r.UNRECOGNIZED_COMMAND),
    "empty-line": Case(AFTER_EHLO, "", r.UNRECOGNIZED_COMMAND),
    "leading-space": Case(AFTER_EHLO, " NOOP", r.UNRECOGNIZED_COMMAND),
    # §4.2.4: 501 for a syntax error in the arguments.
    "mail-without-from": Case(AFTER_EHLO, "MAIL <a@example.org>", r.SYNTAX_ERROR_IN_PARAMETERS),
    "mail-no-argument": Case(AFTER_EHLO, "MAIL", r.SYNTAX_ERROR_IN_PARAMETERS),
    "mail-without-brackets": Case(AFTER_EHLO, "MAIL FROM:a@example.org", r.BAD_SENDER_SYNTAX),
    "mail-unclosed-path": Case(AFTER_EHLO, "MAIL FROM:<a@example.org", r.BAD_SENDER_SYNTAX),
    "mail-text-after-path": Case(AFTER_EHLO, "MAIL FROM:<a@example.org>x", r.BAD_SENDER_SYNTAX),
    "mail-postmaster-sender": Case(AFTER_EHLO, "MAIL FROM:<postmaster>", r.BAD_SENDER_SYNTAX),
    "mail-bad-domain": Case(AFTER_EHLO, "MAIL FROM:<a@-example.org>", r.BAD_SENDER_SYNTAX),
    "mail-no-domain": Case(AFTER_EHLO, "MAIL FROM:<a>", r.BAD_SENDER_SYNTAX),
    "rcpt-without-to": Case(IN_MAIL, "RCPT <b@example.net>", r.SYNTAX_ERROR_IN_PARAMETERS),
    "rcpt-without-brackets": Case(IN_MAIL, "RCPT TO:b@example.net", r.BAD_RECIPIENT_SYNTAX),
    "rcpt-null-path": Case(IN_MAIL, "RCPT TO:<>", r.BAD_RECIPIENT_SYNTAX),
    "helo-without-name": Case(GREETED, "HELO", r.HELO_REQUIRES_DOMAIN),
    "ehlo-without-name": Case(GREETED, "EHLO ", r.HELO_REQUIRES_DOMAIN),
    "helo-two-words": Case(GREETED, "HELO client example", r.HELO_REQUIRES_DOMAIN),
    "data-with-argument": Case(IN_RCPT, "DATA now", r.SYNTAX_ERROR_IN_PARAMETERS),
    "rset-with-argument": Case(IN_RCPT, "RSET all", r.SYNTAX_ERROR_IN_PARAMETERS),
    "quit-with-argument": Case(AFTER_EHLO, "QUIT now", r.SYNTAX_ERROR_IN_PARAMETERS),
    "vrfy-without-argument": Case(AFTER_EHLO, "VRFY", r.SYNTAX_ERROR_IN_PARAMETERS),
    "ipv4-literal-octet-300": Case(AFTER_EHLO, "MAIL FROM:<a@[192.0.2.300]>", r.BAD_SENDER_SYNTAX),
    "ipv4-literal-three-parts": Case(AFTER_EHLO, "MAIL FROM:<a@[192.0.2]>", r.BAD_SENDER_SYNTAX),
    "ipv6-literal-bad-hex": Case(IN_MAIL, "RCPT TO:<b@[IPv6:::g]>", r.BAD_RECIPIENT_SYNTAX),
    "ipv6-literal-zone-id": Case(IN_MAIL, "RCPT TO:<b@[IPv6:fe80::1%eth0]>", r.BAD_RECIPIENT_SYNTAX),
    "empty-literal": Case(AFTER_EHLO, "MAIL FROM:<a@[]>", r.BAD_SENDER_SYNTAX),
    "local-part-65-octets": Case(AFTER_EHLO, f"MAIL FROM:<{'a' * 65}@example.org>", r.BAD_SENDER_SYNTAX),
    "rcpt-local-part-65-octets": Case(IN_MAIL, f"RCPT TO:<{'b' * 65}@example.net>", r.BAD_RECIPIENT_SYNTAX),
    "bdat-without-size": Case(IN_RCPT, "BDAT", r.SYNTAX_ERROR_IN_PARAMETERS),
    "bdat-size-not-a-number": Case(IN_RCPT, "BDAT ten", r.SYNTAX_ERROR_IN_PARAMETERS),
    "bdat-bad-keyword": Case(IN_RCPT, "BDAT 3 FIRST", r.SYNTAX_ERROR_IN_PARAMETERS),
    "bdat-superscript-digit": Case(IN_RCPT, "BDAT ²", r.SYNTAX_ERROR_IN_PARAMETERS),
    # §4.1.4 / §4.2.4: 503 for a command out of sequence.
    "mail-before-helo": Case(GREETED, "MAIL FROM:<a@example.org>", r.NEED_HELO),
    "rcpt-before-helo": Case(GREETED, "RCPT TO:<b@example.net>", r.NEED_HELO),
    "data-before-helo": Case(GREETED, "DATA", r.NEED_HELO),
    "rcpt-before-mail": Case(AFTER_EHLO, "RCPT TO:<b@example.net>", r.NEED_MAIL),
    "data-before-mail": Case(AFTER_EHLO, "DATA", r.NEED_MAIL),
    "data-before-rcpt": Case(IN_MAIL, "DATA", r.NEED_RCPT),
    "nested-mail": Case(IN_MAIL, "MAIL FROM:<c@example.org>", r.NESTED_MAIL),
    "nested-mail-after-rcpt": Case(IN_RCPT, "MAIL FROM:<c@example.org>", r.NESTED_MAIL),
    "data-after-bdat": Case(IN_BDAT, "DATA", r.DATA_AFTER_BDAT),
    "starttls-in-transaction": Case(IN_MAIL, "STARTTLS", r.BAD_SEQUENCE, settings(starttls=True)),
    "auth-in-transaction": Case(IN_MAIL, "AUTH PLAIN", r.BAD_SEQUENCE, settings(auth_mechanisms=("PLAIN",))),
    # §4.2.4 / §4.5.1: 502 for what postoffice does not implement.
    "expn": Case(AFTER_EHLO, "EXPN staff", r.NOT_IMPLEMENTED),
    "turn": Case(AFTER_EHLO, "TURN", r.NOT_IMPLEMENTED),
    "etrn": Case(AFTER_EHLO, "ETRN example.org", r.NOT_IMPLEMENTED),
    "starttls-not-offered": Case(AFTER_EHLO, "STARTTLS", r.NOT_IMPLEMENTED),
    "auth-not-offered": Case(AFTER_EHLO, "AUTH PLAIN", r.NOT_IMPLEMENTED),
    # §3.5.3: VRFY answered with 252, never confirming a user.
    "vrfy": Case(AFTER_EHLO, "VRFY postmaster", r.VRFY_CANNOT_VERIFY),
    "vrfy-before-helo": Case(GREETED, "VRFY someone", r.VRFY_CANNOT_VERIFY),
    # §4.1.1.8-9: HELP and NOOP work in any state; NOOP ignores its argument.
    "help": Case(AFTER_EHLO, "HELP", r.HELP),
    "help-topic": Case(IN_RCPT, "HELP MAIL", r.HELP),
    "noop": Case(AFTER_EHLO, "NOOP", r.OK),
    "noop-before-helo": Case(GREETED, "NOOP", r.OK),
    "noop-argument": Case(IN_RCPT, "NOOP hello there", r.OK),
    "verb-case-insensitive": Case(AFTER_EHLO, "nOoP", r.OK),
    "rset": Case(IN_RCPT, "RSET", r.RESET_OK),
    "rset-before-helo": Case(GREETED, "RSET", r.RESET_OK),
    "quit": Case(IN_RCPT, "QUIT", r.CLOSING),
}


@pytest.mark.parametrize("case", COMMAND_REPLIES.values(), ids=COMMAND_REPLIES.keys())
def test_command_reply(case: Case) -> None:
    driver = started(case.setup, case.config)
    before = driver.conn.state
    reply = one_reply(driver.feed(lines(case.command)))
    assert_reply(reply, case.expected, esmtp=driver.conn.esmtp)
    if case.expected.code >= 400:
        assert driver.conn.state is before, "a refused command must not move the state"
        last = driver.events[-1]
        assert isinstance(last, ev.Replied)
        assert (last.reply.code, last.reply.enhanced) == (case.expected.code, case.expected.enhanced)


def test_rset_clears_the_transaction() -> None:
    """§4.1.1.5: RSET discards sender, recipients and content state."""
    driver = started(IN_RCPT)
    assert driver.conn.in_transaction
    assert_reply(one_reply(driver.feed(lines("RSET"))), r.RESET_OK)
    assert driver.conn.state is State.READY and not driver.conn.in_transaction
    assert_reply(one_reply(driver.feed(lines("DATA"))), r.NEED_MAIL)
    assert_reply(one_reply(driver.feed(lines("RCPT TO:<b@example.net>"))), r.NEED_MAIL)
    assert_reply(one_reply(driver.feed(lines("MAIL FROM:<c@example.org>"))), r.SENDER_OK)


def test_rset_before_helo_keeps_helo_required() -> None:
    driver = started(lines("RSET"))
    assert driver.conn.state is State.INIT
    assert_reply(one_reply(driver.feed(lines("MAIL FROM:<a@example.org>"))), r.NEED_HELO, esmtp=False)


def test_second_ehlo_resets_the_transaction() -> None:
    """§4.1.4: a repeated EHLO clears the transaction as RSET does."""
    driver = started(IN_RCPT + lines(EHLO))
    assert driver.conn.state is State.READY
    assert_reply(one_reply(driver.feed(lines("MAIL FROM:<c@example.org>"))), r.SENDER_OK)


def test_data_when_every_recipient_was_refused() -> None:
    """RFC 2920 §3.1 / RFC 5321 §3.3: DATA after only failed RCPTs gets 554, not 354."""
    driver = run(IN_MAIL + lines("RCPT TO:<nobody@example.net>", "DATA"), policy=Policy(rcpt=r.USER_UNKNOWN))
    got = driver.replies[-2:]
    assert_reply(got[0], r.USER_UNKNOWN)
    assert_reply(got[1], r.NO_VALID_RECIPIENTS)
    assert driver.of_type(ev.DataReceived) == []


def test_refused_helo_leaves_the_session_unidentified() -> None:
    driver = run(lines(EHLO, "MAIL FROM:<a@example.org>"), policy=Policy(hello=r.HELO_REQUIRES_DOMAIN))
    assert driver.conn.state is State.INIT
    assert_reply(driver.replies[-1], r.NEED_HELO, esmtp=False)


# --- paths (§4.1.2) ------------------------------------------------------------------------------


class PathCase(NamedTuple):
    setup: bytes
    command: str
    check: Callable[[Path], bool]


PATHS = {
    "null-reverse-path": PathCase(AFTER_EHLO, "MAIL FROM:<>", lambda p: p.is_null),
    "postmaster-lower": PathCase(IN_MAIL, "RCPT TO:<postmaster>", lambda p: p.postmaster),
    "postmaster-capital": PathCase(IN_MAIL, "RCPT TO:<Postmaster>", lambda p: p.postmaster),
    "postmaster-upper": PathCase(IN_MAIL, "RCPT TO:<POSTMASTER>", lambda p: p.postmaster),
    "postmaster-with-domain": PathCase(
        IN_MAIL,
        "RCPT TO:<postmaster@example.net>",
        lambda p: not p.postmaster and str(p) == "postmaster@example.net",
    ),
    "quoted-space": PathCase(
        AFTER_EHLO,
        'MAIL FROM:<"john doe"@example.org>',
        lambda p: p.mailbox is not None and p.mailbox.unquoted_local_part == "john doe",
    ),
    "quoted-angle-bracket": PathCase(
        IN_MAIL,
        'RCPT TO:<"a>b"@example.net>',
        lambda p: p.mailbox is not None and p.mailbox.unquoted_local_part == "a>b",
    ),
    "quoted-pair": PathCase(
        IN_MAIL,
        'RCPT TO:<"a\\"b"@example.net>',
        lambda p: p.mailbox is not None and p.mailbox.unquoted_local_part == 'a"b',
    ),
    "ipv4-literal": PathCase(
        AFTER_EHLO, "MAIL FROM:<user@[192.0.2.1]>", lambda p: str(p) == "user@[192.0.2.1]"
    ),
    "ipv6-loopback-literal": PathCase(
        IN_MAIL, "RCPT TO:<user@[IPv6:::1]>", lambda p: str(p) == "user@[ipv6:::1]"
    ),
    "ipv6-literal": PathCase(
        IN_MAIL, "RCPT TO:<user@[IPv6:2001:db8::1]>", lambda p: str(p) == "user@[ipv6:2001:db8::1]"
    ),
    "source-route-ignored": PathCase(
        AFTER_EHLO, "MAIL FROM:<@a.example,@b.example:user@c.example>", lambda p: str(p) == "user@c.example"
    ),
    "rcpt-source-route-ignored": PathCase(
        IN_MAIL, "RCPT TO:<@relay.example:user@example.net>", lambda p: str(p) == "user@example.net"
    ),
    "space-after-colon": PathCase(
        AFTER_EHLO, "MAIL FROM: <a@example.org>", lambda p: str(p) == "a@example.org"
    ),
    "domain-lower-cased": PathCase(
        AFTER_EHLO, "MAIL FROM:<User@EXAMPLE.Org>", lambda p: str(p) == "User@example.org"
    ),
    "local-part-64-octets": PathCase(
        AFTER_EHLO, f"MAIL FROM:<{'a' * 64}@example.org>", lambda p: str(p) == f"{'a' * 64}@example.org"
    ),
}


@pytest.mark.parametrize("case", PATHS.values(), ids=PATHS.keys())
def test_path_accepted(case: PathCase) -> None:
    driver = started(case.setup)
    reply = one_reply(driver.feed(lines(case.command)))
    event = driver.events[-1]
    assert isinstance(event, (ev.MailReceived, ev.RcptReceived))
    assert_reply(reply, r.SENDER_OK if isinstance(event, ev.MailReceived) else r.RECIPIENT_OK)
    assert case.check(event.command.path), event.command.path


# --- ESMTP parameters ------------------------------------------------------------------------------


UTF8_SENDER = "MAIL FROM:<用户@例子.广告> SMTPUTF8"
PARAMETERS = {
    # RFC 1870 SIZE
    "size-declared": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> SIZE=1000", r.SENDER_OK),
    "size-at-limit": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> SIZE=64", r.SENDER_OK, SMALL),
    "size-over-limit": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> SIZE=65", r.MESSAGE_TOO_BIG, SMALL),
    "size-not-a-number": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> SIZE=big", r.SYNTAX_ERROR_IN_PARAMETERS),
    "size-without-value": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> SIZE", r.SYNTAX_ERROR_IN_PARAMETERS),
    "size-superscript": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> SIZE=²", r.SYNTAX_ERROR_IN_PARAMETERS),
    "size-arabic-digits": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> SIZE=١٢", r.SYNTAX_ERROR_IN_PARAMETERS),
    "size-21-digits": Case(
        AFTER_EHLO, f"MAIL FROM:<a@example.org> SIZE={'9' * 21}", r.SYNTAX_ERROR_IN_PARAMETERS
    ),
    # RFC 6152 BODY
    "body-7bit": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> BODY=7BIT", r.SENDER_OK),
    "body-8bitmime": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> BODY=8BITMIME", r.SENDER_OK),
    "body-lower-case": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> body=8bitmime", r.SENDER_OK),
    "body-binarymime": Case(
        AFTER_EHLO, "MAIL FROM:<a@example.org> BODY=BINARYMIME", r.PARAMETER_NOT_IMPLEMENTED_504
    ),
    "body-without-value": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> BODY", r.PARAMETER_NOT_IMPLEMENTED_504),
    # RFC 5321 §4.1.1.11: unknown parameters are 555
    "unknown-mail-parameter": Case(
        AFTER_EHLO, "MAIL FROM:<a@example.org> FOO=bar", r.PARAMETER_NOT_IMPLEMENTED
    ),
    "unknown-rcpt-parameter": Case(IN_MAIL, "RCPT TO:<b@example.net> FOO", r.PARAMETER_NOT_IMPLEMENTED),
    "notify-without-dsn": Case(IN_MAIL, "RCPT TO:<b@example.net> NOTIFY=NEVER", r.PARAMETER_NOT_IMPLEMENTED),
    "ret-without-dsn": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> RET=FULL", r.PARAMETER_NOT_IMPLEMENTED),
    "auth-param-without-auth": Case(
        AFTER_EHLO, "MAIL FROM:<a@example.org> AUTH=<>", r.PARAMETER_NOT_IMPLEMENTED
    ),
    "duplicate-parameter": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> SIZE=1 SIZE=2", r.BAD_SENDER_SYNTAX),
    "bad-keyword": Case(AFTER_EHLO, "MAIL FROM:<a@example.org> -X=1", r.BAD_SENDER_SYNTAX),
    # §4.1.1.1: parameters need an EHLO session
    "mail-parameter-after-helo": Case(
        AFTER_HELO, "MAIL FROM:<a@example.org> SIZE=10", r.PARAMETER_NOT_IMPLEMENTED
    ),
    "body-after-helo": Case(
        AFTER_HELO, "MAIL FROM:<a@example.org> BODY=8BITMIME", r.PARAMETER_NOT_IMPLEMENTED
    ),
    "rcpt-parameter-after-helo": Case(
        AFTER_HELO + lines("MAIL FROM:<a@example.org>"),
        "RCPT TO:<b@example.net> FOO",
        r.PARAMETER_NOT_IMPLEMENTED,
    ),
    # RFC 6531 §3.4: non-ASCII addresses only in an SMTPUTF8 transaction
    "utf8-sender-with-smtputf8": Case(AFTER_EHLO, UTF8_SENDER, r.SENDER_OK),
    "utf8-sender-without-smtputf8": Case(
        AFTER_EHLO, "MAIL FROM:<用户@例子.广告>", r.NON_ASCII_NEEDS_SMTPUTF8
    ),
    "utf8-domain-without-smtputf8": Case(
        AFTER_EHLO, "MAIL FROM:<a@bücher.example>", r.NON_ASCII_NEEDS_SMTPUTF8
    ),
    "utf8-recipient-in-utf8-transaction": Case(
        AFTER_EHLO + lines(UTF8_SENDER), "RCPT TO:<pelé@example.net>", r.RECIPIENT_OK
    ),
    "utf8-recipient-in-ascii-transaction": Case(
        IN_MAIL, "RCPT TO:<pelé@example.net>", r.NON_ASCII_NEEDS_SMTPUTF8
    ),
    "smtputf8-with-value": Case(
        AFTER_EHLO, "MAIL FROM:<a@example.org> SMTPUTF8=yes", r.SYNTAX_ERROR_IN_PARAMETERS
    ),
    "smtputf8-after-helo": Case(AFTER_HELO, UTF8_SENDER, r.PARAMETER_NOT_IMPLEMENTED),
    # RFC 3461 DSN, when offered
    "dsn-ret-envid": Case(
        AFTER_EHLO, "MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B1", r.SENDER_OK, settings(dsn=True)
    ),
    "dsn-ret-bad": Case(
        AFTER_EHLO, "MAIL FROM:<a@example.org> RET=ALL", r.SYNTAX_ERROR_IN_PARAMETERS, settings(dsn=True)
    ),
    "dsn-envid-crlf": Case(
        AFTER_EHLO,
        "MAIL FROM:<a@example.org> ENVID=a+0D+0Ab",
        r.SYNTAX_ERROR_IN_PARAMETERS,
        settings(dsn=True),
    ),
    "dsn-envid-lower-hex": Case(
        AFTER_EHLO, "MAIL FROM:<a@example.org> ENVID=a+2b", r.SYNTAX_ERROR_IN_PARAMETERS, settings(dsn=True)
    ),
    "dsn-notify-orcpt": Case(
        IN_MAIL,
        "RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.net",
        r.RECIPIENT_OK,
        settings(dsn=True),
    ),
    "dsn-notify-never-and-more": Case(
        IN_MAIL,
        "RCPT TO:<b@example.net> NOTIFY=NEVER,DELAY",
        r.SYNTAX_ERROR_IN_PARAMETERS,
        settings(dsn=True),
    ),
    "dsn-orcpt-newline": Case(
        IN_MAIL,
        "RCPT TO:<b@example.net> ORCPT=rfc822;x+0Ay",
        r.SYNTAX_ERROR_IN_PARAMETERS,
        settings(dsn=True),
    ),
}


@pytest.mark.parametrize("case", PARAMETERS.values(), ids=PARAMETERS.keys())
def test_parameters(case: Case) -> None:
    driver = started(case.setup, case.config)
    reply = one_reply(driver.feed(lines(case.command)))
    assert_reply(reply, case.expected, esmtp=driver.conn.esmtp)
    decided = isinstance(driver.events[-1], (ev.MailReceived, ev.RcptReceived))
    assert decided == (case.expected.code < 400), "refusals come from the core, acceptances from the app"


def test_parameters_reach_the_application_decoded() -> None:
    driver = started(AFTER_EHLO, settings(dsn=True))
    driver.feed(lines("MAIL FROM:<a@example.org> SIZE=1000 BODY=8bitmime RET=hdrs ENVID=QQ+2B1"))
    driver.feed(lines("RCPT TO:<b@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40example.net"))
    mail = driver.of_type(ev.MailReceived)[0].command
    rcpt = driver.of_type(ev.RcptReceived)[0].command
    assert (mail.size, mail.body, mail.ret, mail.envid, mail.smtputf8) == (
        1000,
        "8BITMIME",
        "HDRS",
        "QQ+1",
        False,
    )
    assert (rcpt.notify, rcpt.orcpt) == (("SUCCESS", "DELAY"), "rfc822;b@example.net")


def test_smtputf8_transaction_is_flagged() -> None:
    driver = started(AFTER_EHLO + lines(UTF8_SENDER))
    assert driver.conn.transaction_smtputf8
    assert driver.of_type(ev.MailReceived)[0].command.smtputf8
    driver.feed(lines("RSET"))
    assert not driver.conn.transaction_smtputf8


# --- pipelining (RFC 2920) --------------------------------------------------------------------------

PIPELINED = (
    lines(EHLO, "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>", "DATA")
    + b"Subject: one\r\n\r\nfirst\r\n.\r\n"
    + lines("MAIL FROM:<>", "RCPT TO:<postmaster>", "DATA")
    + b"second\r\n..\r\n.\r\n"
    + lines("RSET", "NOOP", "VRFY x", "MAIL FROM:<x@example.org>", "RCPT TO:<y@example.net>", "BDAT 5 LAST")
    + b"third"
    + lines("QUIT")
)
PIPELINED_MESSAGES = [b"Subject: one\r\n\r\nfirst\r\n", b"second\r\n.\r\n", b"third"]


def _pipelined_expected(conn: ServerConnection) -> bytes:
    return rendered(
        r.greeting(HOST),
        r.ehlo_ok(HOST, "client.example", conn.extensions()),
        r.SENDER_OK,
        r.RECIPIENT_OK,
        r.RECIPIENT_OK,
        r.START_MAIL_INPUT,
        r.queued(QUEUE_ID),
        r.SENDER_OK,
        r.RECIPIENT_OK,
        r.START_MAIL_INPUT,
        r.queued(QUEUE_ID),
        r.RESET_OK,
        r.OK,
        r.VRFY_CANNOT_VERIFY,
        r.SENDER_OK,
        r.RECIPIENT_OK,
        r.queued(QUEUE_ID),
        r.CLOSING,
        esmtp=True,
    )


def test_pipelined_commands_answered_in_order() -> None:
    """RFC 2920 §3.1: many commands in one write, one reply each, in order; several transactions."""
    driver = run(PIPELINED)
    assert bytes(driver.transcript) == _pipelined_expected(driver.conn)
    assert driver.messages == PIPELINED_MESSAGES
    assert driver.closed


@pytest.mark.parametrize("size", [1, 2, 3, 7, None], ids=lambda s: f"pieces-of-{s or 'all'}")
def test_split_feeding_gives_the_same_output(size: int | None) -> None:
    whole = run(PIPELINED)
    split = run(PIPELINED, size=size)
    assert split.transcript == whole.transcript
    assert split.messages == whole.messages == PIPELINED_MESSAGES
    assert normalised(split.events) == normalised(whole.events)


# --- DATA (§4.1.1.4, §4.5.2) ------------------------------------------------------------------------

DOT_STUFFING = {
    "double-dot-text": (b"..x\r\n", b".x\r\n"),
    "double-dot-line": (b"..\r\n", b".\r\n"),
    "triple-dot-line": (b"...\r\n", b"..\r\n"),
    "stuffed-mid-message": (b"a\r\n..b\r\nc\r\n", b"a\r\n.b\r\nc\r\n"),
    "single-leading-dot-removed": (b".x\r\n", b"x\r\n"),
    "dot-not-at-line-start": (b"x.\r\ny..\r\n", b"x.\r\ny..\r\n"),
    "empty-message": (b"", b""),
    "one-empty-line": (b"\r\n", b"\r\n"),
    "empty-lines": (b"a\r\n\r\n\r\nb\r\n", b"a\r\n\r\n\r\nb\r\n"),
    "eight-bit": ("héllo wörld\r\n".encode(), "héllo wörld\r\n".encode()),
}


@pytest.mark.parametrize(("wire", "content"), DOT_STUFFING.values(), ids=DOT_STUFFING.keys())
def test_data_dot_unstuffing(wire: bytes, content: bytes) -> None:
    driver = started(IN_RCPT + lines("DATA"))
    assert_reply(one_reply(driver.feed(wire + b".\r\n")), r.queued(QUEUE_ID))
    assert driver.messages == [content]
    assert driver.of_type(ev.MessageComplete) == [ev.MessageComplete(len(content))]


def test_empty_message_is_a_message() -> None:
    driver = started(IN_RCPT + lines("DATA"))
    driver.feed(b".\r\n")
    assert driver.messages == [b""]
    assert [type(e) for e in driver.events[-2:]] == [ev.MessageStart, ev.MessageComplete]


def test_data_content_is_not_answered_before_the_terminator() -> None:
    driver = started(IN_RCPT + lines("DATA"))
    for piece in (b"MAIL FROM:<x@y>\r\n", b"QUIT\r\n", b".", b"\r"):
        assert driver.feed(piece) == b""
    assert_reply(one_reply(driver.feed(b"\n")), r.queued(QUEUE_ID))
    assert driver.messages == [b"MAIL FROM:<x@y>\r\nQUIT\r\n"]


DATA_STREAM = IN_RCPT + lines("DATA") + b"a\r\n..b\r\n.\r\n\r\nc.\r\n" + b".\r\n" + lines("NOOP")


def test_data_split_at_every_position() -> None:
    """Where the bytes are cut never changes the result, terminator included."""
    whole = run(DATA_STREAM)
    assert whole.messages == [b"a\r\n.b\r\n"]  # ".\r\n" ends it: the rest are commands
    for cut in range(1, len(DATA_STREAM)):
        driver = Driver()
        driver.feed_at(DATA_STREAM, [cut])
        assert driver.transcript == whole.transcript, cut
        assert driver.messages == whole.messages, cut


def test_terminator_split_in_every_way() -> None:
    prefix = IN_RCPT + lines("DATA") + b"x\r\n..\r\ny"
    stream = prefix + b"\r\n.\r\n" + lines("NOOP")
    expected = run(stream)
    assert expected.messages == [b"x\r\n.\r\ny\r\n"]
    for first in range(len(prefix) - 2, len(stream)):
        for second in range(first + 1, len(stream)):
            driver = Driver()
            driver.feed_at(stream, [first, second])
            assert driver.transcript == expected.transcript, (first, second)
            assert driver.messages == expected.messages, (first, second)


def test_message_size_limit_rejects_at_the_end() -> None:
    """RFC 1870 §6.3: over the limit → 552 5.3.4, after the terminator; nothing is delivered."""
    driver = started(IN_RCPT + lines("DATA"), SMALL)
    assert driver.feed(b"x" * 50 + b"\r\n" + b"y" * 50 + b"\r\n") == b""
    reply = one_reply(driver.feed(b".\r\n"))
    assert reply.raw == r.MESSAGE_TOO_BIG.render(enhanced=True)
    assert driver.of_type(ev.MessageComplete) == []
    assert driver.of_type(ev.MessageRejected) == [ev.MessageRejected(r.MESSAGE_TOO_BIG)]
    assert driver.messages == []
    assert sum(len(e.data) for e in driver.of_type(ev.MessageData)) <= SMALL.max_message_size
    assert driver.conn.state is State.READY
    assert_reply(one_reply(driver.feed(lines("MAIL FROM:<a@example.org>"))), r.SENDER_OK)


def test_message_exactly_at_the_size_limit_is_accepted() -> None:
    driver = started(IN_RCPT + lines("DATA"), SMALL)
    content = b"x" * 62 + b"\r\n"
    assert_reply(one_reply(driver.feed(content + b".\r\n")), r.queued(QUEUE_ID))
    assert driver.messages == [content]


@pytest.mark.parametrize(
    ("length", "accepted"), [(998, True), (999, False), (5000, False)], ids=["998", "999", "5000"]
)
def test_text_line_limit(length: int, accepted: bool) -> None:
    """§4.5.3.1.6: a text line is at most 1000 octets including CRLF."""
    driver = started(IN_RCPT + lines("DATA"))
    reply = one_reply(driver.feed(b"a\r\n" + b"x" * length + b"\r\nb\r\n.\r\n"))
    if accepted:
        assert_reply(reply, r.queued(QUEUE_ID))
        assert len(driver.messages) == 1
    else:
        assert reply.raw == r.text_line_too_long(1000).render(enhanced=True)
        assert driver.messages == []


def test_text_line_limit_zero_disables_the_check() -> None:
    driver = started(IN_RCPT + lines("DATA"), settings(text_line_limit=0))
    line = b"x" * 100_000 + b"\r\n"
    driver.feed_in_pieces(line + b".\r\n", 4096)
    assert driver.messages == [line]


@pytest.mark.parametrize(
    ("length", "accepted"), [(70_000, True), (99_998, True), (99_999, False), (150_000, False)]
)
@pytest.mark.parametrize("size", [4096, None], ids=["pieces", "whole"])
def test_text_line_limit_above_the_buffering_cut(length: int, accepted: bool, size: int | None) -> None:
    """A limit larger than the reader's 64 KiB cut is measured across the pieces of a line."""
    driver = started(IN_RCPT + lines("DATA"), settings(text_line_limit=100_000))
    driver.feed_in_pieces(b"x" * length + b"\r\n.\r\n", size)
    assert bool(driver.messages) == accepted
    assert len(driver.of_type(ev.MessageRejected)) == (0 if accepted else 1)


def test_long_data_line_keeps_memory_bounded() -> None:
    driver = started(IN_RCPT + lines("DATA"))
    piece = b"z" * 8192
    for _ in range(128):  # 1 MiB without CRLF
        driver.feed(piece)
        assert driver.conn.buffered <= 64 * 1024 + len(piece)
    assert_reply(one_reply(driver.feed(b"\r\n.\r\n")), r.text_line_too_long(1000))


# --- BDAT (RFC 3030) ---------------------------------------------------------------------------------


def test_bdat_last_chunk() -> None:
    driver = started(IN_RCPT)
    assert_reply(one_reply(driver.feed(b"BDAT 5 LAST\r\nhello")), r.queued(QUEUE_ID))
    assert driver.messages == [b"hello"]
    assert [type(e) for e in driver.events[-3:]] == [ev.MessageStart, ev.MessageData, ev.MessageComplete]
    assert driver.conn.state is State.READY


def test_bdat_zero_last_is_an_empty_message() -> None:
    driver = started(IN_RCPT)
    assert_reply(one_reply(driver.feed(lines("BDAT 0 LAST"))), r.queued(QUEUE_ID))
    assert driver.messages == [b""]


def test_bdat_several_chunks() -> None:
    driver = started(IN_RCPT)
    assert_reply(one_reply(driver.feed(b"BDAT 3\r\nabc")), r.chunk_received(3))
    assert_reply(one_reply(driver.feed(b"BDAT 4\r\ndefg")), r.chunk_received(7))
    assert_reply(one_reply(driver.feed(b"BDAT 0\r\n")), r.chunk_received(7))
    assert_reply(one_reply(driver.feed(b"BDAT 2 last\r\nhi")), r.queued(QUEUE_ID))
    assert driver.messages == [b"abcdefghi"]
    assert [e.size for e in driver.of_type(ev.ChunkReceived)] == [3, 7, 7]
    assert len(driver.of_type(ev.MessageStart)) == 1


def test_bdat_content_is_verbatim() -> None:
    """RFC 3030 §2: no dot-stuffing or line rules in a chunk; bare LF and CRLF.CRLF are data."""
    chunk = b"line\nbare LF\r\n.\r\nnot the end\r.\r\x00\xff..\r\nQUIT\r\n"
    driver = started(IN_RCPT)
    assert_reply(one_reply(driver.feed(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk)), r.queued(QUEUE_ID))
    assert driver.messages == [chunk]
    assert driver.of_type(ev.MessageRejected) == []
    assert not driver.closed


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(GREETED, r.NEED_HELO, id="before-helo"),
        pytest.param(AFTER_HELO, r.NEED_MAIL, id="after-helo-before-mail"),
        pytest.param(
            AFTER_HELO + lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>"),
            r.NOT_IMPLEMENTED,
            id="after-helo-not-ehlo",
        ),
        pytest.param(AFTER_EHLO, r.NEED_MAIL, id="before-mail"),
        pytest.param(IN_MAIL, r.NEED_RCPT, id="before-rcpt"),
    ],
)
def test_bdat_refused_after_consuming_its_chunk(setup: bytes, expected: Reply) -> None:
    """RFC 3030 §2: a refused BDAT's octets are still read, never taken as commands."""
    chunk = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\n"
    driver = started(setup)
    mails = len(driver.of_type(ev.MailReceived))
    assert driver.feed(f"BDAT {len(chunk)}\r\n".encode() + chunk[:-1]) == b""  # not yet: one octet short
    reply = one_reply(driver.feed(chunk[-1:]))
    assert_reply(reply, expected, esmtp=driver.conn.esmtp)
    assert len(driver.of_type(ev.MailReceived)) == mails
    assert driver.conn.buffered == 0
    assert_reply(one_reply(driver.feed(lines("NOOP"))), r.OK, esmtp=driver.conn.esmtp)


def test_bdat_chunk_over_size_ends_the_transaction() -> None:
    driver = started(IN_RCPT, SMALL)
    reply = one_reply(driver.feed(b"BDAT 100\r\n" + b"x" * 100))
    assert reply.raw == r.MESSAGE_TOO_BIG.render(enhanced=True)
    assert driver.of_type(ev.MessageRejected) == [ev.MessageRejected(r.MESSAGE_TOO_BIG)]
    assert driver.conn.state is State.READY
    assert_reply(one_reply(driver.feed(b"BDAT 3 LAST\r\nabc")), r.NEED_MAIL)
    assert driver.of_type(ev.MessageComplete) == []


def test_bdat_total_over_size_over_several_chunks() -> None:
    driver = started(IN_RCPT, SMALL)
    assert_reply(one_reply(driver.feed(b"BDAT 40\r\n" + b"x" * 40)), r.chunk_received(40))
    assert_reply(one_reply(driver.feed(b"BDAT 40 LAST\r\n" + b"y" * 40)), r.MESSAGE_TOO_BIG)
    assert driver.messages == []


def test_bdat_chunk_refused_by_the_application_ends_the_transaction() -> None:
    driver = started(IN_RCPT, policy=Policy(chunk=r.INSUFFICIENT_STORAGE))
    assert_reply(one_reply(driver.feed(b"BDAT 3\r\nabc")), r.INSUFFICIENT_STORAGE)
    assert driver.conn.state is State.READY
    assert_reply(one_reply(driver.feed(b"BDAT 3 LAST\r\ndef")), r.NEED_MAIL)


def test_rset_during_bdat() -> None:
    driver = started(IN_BDAT)
    assert driver.conn.state is State.BDAT
    assert_reply(one_reply(driver.feed(lines("RSET"))), r.RESET_OK)
    assert driver.conn.state is State.READY


# --- limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "ok"), [(512, True), (513, False), (5000, False)])
def test_command_line_limit(length: int, ok: bool) -> None:
    """§4.5.3.1.4: a command line is at most 512 octets including CRLF; then life goes on."""
    driver = started(AFTER_EHLO)
    line = b"NOOP " + b"x" * (length - 7)
    assert len(line) + 2 == length
    assert_reply(one_reply(driver.feed(line + b"\r\n")), r.OK if ok else r.LINE_TOO_LONG)
    assert_reply(one_reply(driver.feed(lines("NOOP"))), r.OK)


def test_huge_line_without_crlf_is_one_error_in_bounded_memory() -> None:
    driver = started(AFTER_EHLO)
    piece = b"A" * 4096
    for _ in range(256):  # 1 MiB, no CRLF
        assert driver.feed(piece) == b""
        assert driver.conn.buffered < 13 * 1024
    assert driver.feed(b"\r") == b""
    reply = one_reply(driver.feed(b"\n"))
    assert reply.raw == r.LINE_TOO_LONG.render(enhanced=True)
    assert_reply(one_reply(driver.feed(lines("NOOP"))), r.OK)


def test_huge_line_in_one_write_is_one_error() -> None:
    driver = started(AFTER_EHLO)
    out = driver.feed(b"MAIL FROM:<" + b"a" * 1_000_000 + b"@x>\r\n" + lines("NOOP"))
    got = parse_replies(out)
    assert kinds(got) == [kind(r.LINE_TOO_LONG), kind(r.OK)]
    assert driver.of_type(ev.MailReceived) == []


def test_recipient_limit() -> None:
    """§4.5.3.1.10: past the recipient limit → 452 4.5.3; the transaction stays usable."""
    driver = started(IN_MAIL, settings(max_recipients=2))
    got = parse_replies(driver.feed(lines(*(f"RCPT TO:<u{i}@example.net>" for i in range(3)), "DATA")))
    assert kinds(got) == [kind(r.RECIPIENT_OK)] * 2 + [kind(r.TOO_MANY_RECIPIENTS), kind(r.START_MAIL_INPUT)]
    assert len(driver.of_type(ev.RcptReceived)) == 2
    driver.feed(b"hi\r\n.\r\n")
    assert driver.messages == [b"hi\r\n"]


def test_error_limit_closes_the_session() -> None:
    """Postfix smtpd_hard_error_limit: after max_errors errors, 421 4.7.0 and close."""
    driver = started(AFTER_EHLO, settings(max_errors=3))
    got = parse_replies(driver.feed(lines("FOO", "BAR", "BAZ", "NOOP", "HELP")))
    assert kinds(got) == [kind(r.UNRECOGNIZED_COMMAND)] * 3 + [kind(r.TOO_MANY_ERRORS)]
    assert got[-1].raw == r.TOO_MANY_ERRORS.render(enhanced=True)
    assert driver.events[-1] == ev.Closing(r.TOO_MANY_ERRORS)
    assert driver.conn.state is State.CLOSED


def test_application_refusals_count_as_errors() -> None:
    driver = started(IN_MAIL, settings(max_errors=2), Policy(rcpt=r.USER_UNKNOWN))
    got = parse_replies(driver.feed(lines("RCPT TO:<x@example.net>", "RCPT TO:<y@example.net>")))
    assert kinds(got) == [kind(r.USER_UNKNOWN), kind(r.USER_UNKNOWN), kind(r.TOO_MANY_ERRORS)]
    assert driver.closed


# --- security: one named regression test each -----------------------------------------------------

SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n"


def _assert_smuggling_refused(sequence: bytes) -> None:
    """CVE-2023-51764 / CVE-2024-27305: only CRLF.CRLF ends DATA; a message with a bare CR or LF
    is refused as a whole, and the smuggled commands stay message content."""
    stream = (
        IN_RCPT
        + lines("DATA")
        + b"Subject: hi\r\n\r\nbody"
        + sequence
        + SMUGGLED
        + b"\r\n.\r\n"
        + lines("QUIT")
    )
    for size in (None, 1):
        driver = run(stream, size=size)
        assert len(driver.of_type(ev.MailReceived)) == 1  # the real MAIL only
        assert len(driver.of_type(ev.RcptReceived)) == 1
        assert len(driver.of_type(ev.DataReceived)) == 1
        assert driver.of_type(ev.MessageComplete) == []
        assert driver.of_type(ev.MessageRejected) == [ev.MessageRejected(r.BARE_LINE_ENDING_IN_DATA)]
        assert driver.messages == []
        got = driver.replies
        assert got[-2].raw == r.BARE_LINE_ENDING_IN_DATA.render(enhanced=True)
        assert got[-1].raw == r.CLOSING.render(enhanced=True)
        assert sum(reply.code == r.START_MAIL_INPUT.code for reply in got) == 1


def test_smuggling_lf_dot_lf() -> None:
    _assert_smuggling_refused(b"\n.\n")


def test_smuggling_lf_dot_crlf() -> None:
    _assert_smuggling_refused(b"\n.\r\n")


def test_smuggling_cr_dot_cr() -> None:
    _assert_smuggling_refused(b"\r.\r")


def test_smuggling_crlf_dot_cr() -> None:
    _assert_smuggling_refused(b"\r\n.\r")


def test_real_terminator_then_commands_are_commands() -> None:
    """The control for the smuggling tests: after a real CRLF.CRLF the same bytes are commands."""
    driver = run(IN_RCPT + lines("DATA") + b"body\r\n.\r\n" + SMUGGLED + b".\r\n")
    assert len(driver.of_type(ev.MailReceived)) == 2
    assert driver.messages == [b"body\r\n", b"smuggled\r\n"]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"NOOP\nNOOP", id="lf-between-commands"),
        pytest.param(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.net>", id="lf-hides-a-command"),
        pytest.param(b"NOOP\rNOOP", id="cr-between-commands"),
        pytest.param(b"HELO evil.example\rX-Injected: yes", id="cr-in-helo"),
    ],
)
def test_bare_line_ending_in_command(line: bytes) -> None:
    """RFC 5321 §2.3.8: lines end with CRLF; a bare CR or LF makes one invalid line, 500."""
    driver = started(AFTER_EHLO)
    assert driver.feed(line) == b""
    reply = one_reply(driver.feed(b"\r\n"))
    assert reply.raw == r.BARE_LINE_ENDING_IN_COMMAND.render(enhanced=True)
    assert driver.of_type(ev.MailReceived) == [] and len(driver.of_type(ev.HelloReceived)) == 1


def test_lf_alone_never_ends_a_command() -> None:
    driver = started(AFTER_EHLO)
    assert driver.feed(b"NOOP\nNOOP\n") == b""
    assert_reply(one_reply(driver.feed(b"\r\n")), r.BARE_LINE_ENDING_IN_COMMAND)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"NOOP\x00", id="nul-after-verb"),
        pytest.param(b"HELO a\x00b", id="nul-in-helo"),
        pytest.param(b"MAIL FROM:<a\x00@example.org>", id="nul-in-path"),
        pytest.param(b"NOOP\t", id="tab"),
        pytest.param(b"HELO \xff\xfe", id="invalid-utf8"),
        pytest.param("HELO a\u2028b".encode(), id="unicode-line-separator"),
        pytest.param("HELO a\x85b".encode(), id="unicode-next-line"),
    ],
)
def test_control_characters_in_command(line: bytes) -> None:
    """RFC 5321 §2.4: commands are printable text; a NUL or other control is 501."""
    driver = started(GREETED)
    reply = one_reply(driver.feed(line + b"\r\n"))
    assert_reply(reply, r.SYNTAX_ERROR_IN_PARAMETERS, esmtp=False)
    assert driver.of_type(ev.HelloReceived) == [] and driver.of_type(ev.MailReceived) == []


def test_helo_name_cannot_inject_reply_lines() -> None:
    conn = ServerConnection(settings())
    for name in ("evil\r\n250 fake", "a\nb", "a\rb", "x\u2028y", "\x85"):
        for command in (c.Helo(name), c.Ehlo(name)):
            wire = conn.hello_reply(ev.HelloReceived(command, "")).render(enhanced=False)
            assert b"\n" not in wire.replace(b"\r\n", b"") and b"\r" not in wire.replace(b"\r\n", b"")
            assert b"fake" not in wire or b"?250 fake" in wire
            assert all(line[3:4] in (b" ", b"-") for line in wire.split(b"\r\n")[:-1])


def test_reply_lines_stay_within_512_octets() -> None:
    """§4.5.3.1.5: replies echoing client text (HELO name, parameter keyword) stay bounded."""
    emoji_name = "😀" * 120  # 480 octets of UTF-8, under the 512-octet command line
    keyword = "$" * 1400  # MAIL lines may carry 1024 octets of parameters
    driver = run(lines(f"EHLO {emoji_name}", f"MAIL FROM:<a@example.org> {keyword}", f"HELO {emoji_name}"))
    got = driver.replies
    assert [g.code for g in got] == [r.greeting(HOST).code, r.OK.code, r.BAD_SENDER_SYNTAX.code, r.OK.code]
    for line in bytes(driver.transcript).split(b"\r\n"):
        assert len(line) + 2 <= 512, line[:60]


def test_starttls_discards_pipelined_plaintext() -> None:
    """RFC 3207 §4.2, CVE-2011-0411: commands sent with STARTTLS are dropped, EHLO is required."""
    driver = run(
        lines(EHLO, "STARTTLS", "MAIL FROM:<injected@example.org>"), settings=settings(starttls=True)
    )
    assert driver.replies[-1].raw == TLS_READY.render(enhanced=True)
    assert driver.of_type(ev.MailReceived) == []
    assert driver.conn.tls_active and driver.conn.state is State.INIT
    assert_reply(one_reply(driver.feed(lines("MAIL FROM:<a@example.org>"))), r.NEED_HELO, esmtp=False)
    ehlo = one_reply(driver.feed(lines(EHLO)))
    assert "STARTTLS" not in ehlo.lines
    assert_reply(one_reply(driver.feed(lines("STARTTLS"))), r.BAD_SEQUENCE)


def test_auth_secrets_never_reach_event_lines() -> None:
    driver = run(
        lines(EHLO, "AUTH PLAIN AGFsaWNlAHNlY3JldA=="), settings=settings(auth_mechanisms=("PLAIN",))
    )
    [auth] = driver.of_type(ev.AuthRequested)
    assert auth.line == "AUTH PLAIN ***"
    assert auth.command.initial_response == "AGFsaWNlAHNlY3JldA=="
    assert driver.conn.authenticated
    assert_reply(one_reply(driver.feed(lines("AUTH PLAIN"))), r.BAD_SEQUENCE)  # RFC 4954 §4


def test_auth_exchange_reads_a_response_line() -> None:
    driver = run(lines(EHLO, "AUTH LOGIN", "dXNlcg==", "NOOP"), settings=settings(auth_mechanisms=("LOGIN",)))
    assert [e.data for e in driver.of_type(ev.AuthResponse)] == ["dXNlcg=="]
    assert [g.code for g in driver.replies[-3:]] == [AUTH_CHALLENGE.code, AUTH_OK.code, r.OK.code]


# --- end of file and closing ----------------------------------------------------------------------


def test_eof_in_the_middle_of_data() -> None:
    driver = started(IN_RCPT + lines("DATA"))
    assert driver.feed(b"Subject: cut\r\n\r\nhalf a mess") == b""
    assert driver.eof() == b""
    assert driver.events[-1] == ev.Closing(None)
    assert driver.of_type(ev.MessageComplete) == [] and driver.messages == []
    assert len(driver.of_type(ev.MessageStart)) == 1
    assert driver.conn.state is State.CLOSED


@pytest.mark.parametrize(
    ("setup", "tail"),
    [
        pytest.param(IN_RCPT + lines("DATA"), b"x\r\n.\r", id="data-half-terminator"),
        pytest.param(IN_RCPT, b"BDAT 10 LAST\r\nabc", id="bdat-short-chunk"),
        pytest.param(IN_RCPT, b"NOOP", id="command-without-crlf"),
    ],
)
def test_eof_never_completes_anything(setup: bytes, tail: bytes) -> None:
    driver = started(setup)
    assert driver.feed(tail) == b""
    assert driver.eof() == b""
    assert driver.events[-1] == ev.Closing(None)
    assert driver.of_type(ev.MessageComplete) == []


def test_close_with_sends_the_reply_then_closing() -> None:
    driver = started(AFTER_EHLO)
    driver.conn.close_with(r.TIMEOUT)
    assert driver.conn.data_to_send() == r.TIMEOUT.render(enhanced=True)
    assert driver.conn.next_event() == ev.Closing(r.TIMEOUT)
    assert driver.conn.next_event() is ev.NEED_DATA
    driver.conn.close_with(r.shutting_down(HOST))  # already closed: nothing more
    driver.conn.receive_data(lines("NOOP"))
    assert driver.conn.next_event() is ev.NEED_DATA
    assert driver.conn.data_to_send() == b""


def test_close_with_while_a_decision_is_pending() -> None:
    driver = started(AFTER_EHLO)
    driver.conn.receive_data(lines("MAIL FROM:<a@example.org>"))
    assert isinstance(driver.conn.next_event(), ev.MailReceived)
    driver.conn.close_with(r.shutting_down(HOST))
    assert driver.conn.data_to_send() == r.shutting_down(HOST).render(enhanced=True)
    assert driver.conn.next_event() == ev.Closing(r.shutting_down(HOST))


def test_close_with_one_error_short_of_the_limit_sends_one_reply() -> None:
    """Our own 421 is not a client error: it must not trigger a second 421."""
    driver = started(AFTER_EHLO, settings(max_errors=2))
    driver.feed(lines("FOO"))
    driver.conn.close_with(r.TIMEOUT)
    assert driver.conn.data_to_send() == r.TIMEOUT.render(enhanced=True)
    assert driver.conn.next_event() == ev.Closing(r.TIMEOUT)


@pytest.mark.parametrize("refusal", [r.TOO_MANY_CONNECTIONS, r.shutting_down(HOST)])
def test_refusing_greeting_closes(refusal: Reply) -> None:
    """§3.1: a 421/554 greeting refuses the session."""
    conn = ServerConnection(settings(max_errors=1))
    conn.greet(refusal)
    assert conn.data_to_send() == refusal.render(enhanced=False)
    assert isinstance(conn.next_event(), ev.Closing)
    assert conn.state is State.CLOSED


def test_quit_closes_and_ignores_what_follows() -> None:
    driver = run(lines(EHLO, "QUIT", "NOOP", "MAIL FROM:<a@example.org>"))
    assert driver.replies[-1].raw == r.CLOSING.render(enhanced=True)
    assert driver.events[-1] == ev.Closing(r.CLOSING)
    assert driver.of_type(ev.MailReceived) == []


# --- the driver contract -------------------------------------------------------------------------


def test_next_event_refuses_while_a_decision_is_pending() -> None:
    conn = ServerConnection(settings())
    conn.receive_data(lines(EHLO))
    event = conn.next_event()
    assert isinstance(event, ev.HelloReceived)
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.send(conn.hello_reply(event))
    assert conn.next_event() is ev.NEED_DATA


def test_send_without_a_decision_is_refused() -> None:
    conn = ServerConnection(settings())
    with pytest.raises(LocalProtocolError):
        conn.send(r.OK)


def test_start_tls_without_starttls_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        ServerConnection(settings(starttls=True)).start_tls()
