"""Every session limit, over real loopback sockets, with small configured values.

Each test starts a server with ``Limits(...)`` overridden, drives it with raw SMTP
(:class:`conftest.RawSmtp`) and checks the exact reply, that the session goes on or is closed
as the limit says, and that nothing was stored that should not have been.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import RawSmtp, RunningServer
from postoffice.config import Limits
from postoffice.smtp import replies

pytestmark = pytest.mark.timeout(20)

OK = replies.OK.render(enhanced=True)
SENDER_OK = replies.SENDER_OK.render(enhanced=True)
RECIPIENT_OK = replies.RECIPIENT_OK.render(enhanced=True)
START_DATA = replies.START_MAIL_INPUT.render(enhanced=True)


def stored_files(server: RunningServer) -> list[Path]:
    """Every file in the mail root and the spool (after deliveries settled)."""
    server.wait_idle()
    roots = (server.config.mail_dir, server.config.spool_dir)
    return [path for root in roots for path in root.rglob("*") if path.is_file()]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def session_count(server: RunningServer) -> int:
    async def count() -> int:
        return len(server.app.smtp.sessions)

    result: int = server.call(count())
    return result


# --- line length ----------------------------------------------------------------------------


def test_command_line_too_long_gets_500_and_the_session_continues(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(command_line=512))
    client = smtp_client(server.port)
    client.ehlo()
    # RFC 5321 §4.5.3.1.4: 512 octets including CRLF is allowed, one more is not.
    exactly = "NOOP " + "x" * (512 - len("NOOP ") - 2)
    assert client.command(exactly) == OK
    assert client.command(exactly + "x") == replies.LINE_TOO_LONG.render(enhanced=True)
    assert client.command("NOOP") == OK
    assert client.command("MAIL FROM:<a@example.org>") == SENDER_OK
    assert client.command("QUIT") == replies.CLOSING.render(enhanced=True)


def test_megabyte_line_without_crlf_gets_exactly_one_500(
    server: RunningServer, smtp_client: Callable[..., RawSmtp]
) -> None:
    client = smtp_client(server.port)
    client.ehlo()
    for _ in range(16):
        client.send(b"X" * 65536)
    client.send(b"\r\nNOOP\r\n")
    assert client.read_reply() == replies.LINE_TOO_LONG.render(enhanced=True)
    assert client.read_reply() == OK
    # Nothing else was said in between or after: one line, one reply.
    assert client.command("QUIT") == replies.CLOSING.render(enhanced=True)
    assert client.read_rest() == b""


def test_megabyte_line_split_before_its_lf(
    server: RunningServer, smtp_client: Callable[..., RawSmtp]
) -> None:
    client = smtp_client(server.port)
    client.ehlo()
    client.send(b"NOOP " + b"y" * (1024 * 1024) + b"\r")
    client.send(b"\nNOOP\r\n")
    assert client.read_reply() == replies.LINE_TOO_LONG.render(enhanced=True)
    assert client.read_reply() == OK


# --- message size ---------------------------------------------------------------------------

SMALL = 64 * 1024  # RFC 5321 §4.5.3.1.7's floor


def test_size_parameter_over_the_limit_is_refused_at_mail(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(message_size=SMALL))
    client = smtp_client(server.port)
    assert f"250-SIZE {SMALL}\r\n".encode() in client.ehlo()
    too_big = replies.MESSAGE_TOO_BIG.render(enhanced=True)
    assert client.command(f"MAIL FROM:<a@example.org> SIZE={SMALL + 1}") == too_big
    assert client.command(f"MAIL FROM:<a@example.org> SIZE={SMALL}") == SENDER_OK
    assert stored_files(server) == []


def test_streamed_data_over_the_limit_gets_552_and_is_not_delivered(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(message_size=SMALL))
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<a@example.org>") == SENDER_OK
    assert client.command("RCPT TO:<big@example.org>") == RECIPIENT_OK
    assert client.command("DATA") == START_DATA
    line = b"z" * 998 + b"\r\n"
    for _ in range(3 * SMALL // len(line)):
        client.send(line)
    assert client.command(b".") == replies.MESSAGE_TOO_BIG.render(enhanced=True)
    # The transaction is over, the session is not.
    assert client.command("NOOP") == OK
    assert client.command("RCPT TO:<big@example.org>") == replies.NEED_MAIL.render(enhanced=True)
    assert stored_files(server) == []  # nothing in the spool, nothing in a mailbox


def test_streamed_bdat_over_the_limit_gets_552(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(message_size=SMALL))
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<a@example.org>") == SENDER_OK
    assert client.command("RCPT TO:<big@example.org>") == RECIPIENT_OK
    # RawSmtp.command() ends what it sends with CRLF: that CRLF is each chunk's last two octets.
    chunk = b"w" * SMALL
    assert client.command(b"BDAT %d\r\n" % len(chunk) + chunk[:-2]) == replies.chunk_received(SMALL).render(
        enhanced=True
    )
    assert client.command(b"BDAT 3 LAST\r\nw") == replies.MESSAGE_TOO_BIG.render(enhanced=True)
    assert client.command("NOOP") == OK
    assert stored_files(server) == []


def test_message_exactly_at_the_limit_is_accepted(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(message_size=SMALL))
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<a@example.org>") == SENDER_OK
    assert client.command("RCPT TO:<fits@example.org>") == RECIPIENT_OK
    content = b"v" * (SMALL - 2)
    reply = client.command(b"BDAT %d LAST\r\n" % SMALL + content)  # + CRLF: SMALL octets
    assert reply.startswith(b"250 2.0.0 Ok: queued as ")
    server.wait_idle()
    [path] = (server.config.mail_dir / "example.org" / "fits" / "new").iterdir()
    assert path.read_bytes().endswith(content + b"\r\n")


# --- recipients -----------------------------------------------------------------------------


def test_recipient_limit(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(recipients=100))
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<many@example.org>") == SENDER_OK
    client.send(b"".join(b"RCPT TO:<r%d@example.org>\r\n" % n for n in range(101)))
    got = [client.read_reply() for _ in range(101)]
    assert got[:100] == [RECIPIENT_OK] * 100
    assert got[100] == replies.TOO_MANY_RECIPIENTS.render(enhanced=True)
    assert client.command("DATA") == START_DATA
    assert client.command(b"Subject: many\r\n\r\nhi\r\n.").startswith(b"250 2.0.0 Ok: queued as ")
    server.wait_idle()
    boxes = sorted(path.name for path in (server.config.mail_dir / "example.org").iterdir())
    assert len(boxes) == 100
    assert "r100" not in boxes
    # The count is per transaction: the next one may have 100 again.
    assert client.command("MAIL FROM:<many@example.org>") == SENDER_OK
    assert client.command("RCPT TO:<r100@example.org>") == RECIPIENT_OK


# --- errors per session ---------------------------------------------------------------------


def test_too_many_errors_closes_the_session(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(errors_per_session=3))
    client = smtp_client(server.port)
    client.ehlo()
    unknown = replies.UNRECOGNIZED_COMMAND.render(enhanced=True)
    assert client.command("FROB") == unknown
    assert client.command("NOOP") == OK  # a success does not reset the count
    assert client.command("RCPT TO:<a@example.org>") == replies.NEED_MAIL.render(enhanced=True)
    assert client.command("FROB") == unknown
    assert client.read_reply() == replies.TOO_MANY_ERRORS.render(enhanced=True)
    assert client.read_rest() == b""
    wait_until(lambda: session_count(server) == 0)
    # The server itself goes on.
    assert smtp_client(server.port).ehlo().startswith(b"250-mx.test Hello")


def test_too_many_errors_in_one_pipelined_write(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(errors_per_session=3))
    client = smtp_client(server.port)
    client.ehlo()
    client.send(b"FROB\r\n" * 10 + b"NOOP\r\n")
    unknown = replies.UNRECOGNIZED_COMMAND.render(enhanced=True)
    assert client.read_rest() == unknown * 3 + replies.TOO_MANY_ERRORS.render(enhanced=True)


# --- connections ----------------------------------------------------------------------------


def _is_greeting(reply: bytes) -> bool:
    return reply == replies.greeting("mx.test").render(enhanced=False)


def test_connections_per_client(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(connections_per_client=2, trusted_networks=()))
    first, second = smtp_client(server.port), smtp_client(server.port)
    assert _is_greeting(first.greeting())
    assert _is_greeting(second.greeting())
    third = smtp_client(server.port)
    assert third.read_rest() == replies.TOO_MANY_CONNECTIONS_FROM_CLIENT.render(enhanced=False)
    # The two admitted sessions are unaffected.
    for client in (first, second):
        assert client.command("EHLO client.test").startswith(b"250-mx.test Hello")
        assert client.command("MAIL FROM:<a@example.org>") == SENDER_OK
    assert first.command("QUIT") == replies.CLOSING.render(enhanced=True)
    first.close()
    wait_until(lambda: session_count(server) == 1)
    fourth = smtp_client(server.port)
    assert _is_greeting(fourth.greeting())


def test_trusted_loopback_is_exempt_from_the_per_client_limit(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(connections_per_client=2))
    assert server.config.limits.is_trusted("127.0.0.1")
    clients = [smtp_client(server.port) for _ in range(5)]
    for client in clients:
        assert _is_greeting(client.greeting())
        assert client.command("NOOP") == replies.OK.render(enhanced=False)


def test_total_connections_limit(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    # Loopback is trusted by default: the total limit applies to trusted clients too.
    server = server_factory(limits=Limits(connections=2))
    first, second = smtp_client(server.port), smtp_client(server.port)
    assert _is_greeting(first.greeting())
    assert _is_greeting(second.greeting())
    assert smtp_client(server.port).read_rest() == replies.TOO_MANY_CONNECTIONS.render(enhanced=False)
    assert first.command("NOOP") == replies.OK.render(enhanced=False)
    assert second.command("NOOP") == replies.OK.render(enhanced=False)
    second.close()
    wait_until(lambda: session_count(server) == 1)
    assert _is_greeting(smtp_client(server.port).greeting())


def test_refused_connections_do_not_count(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(connections=1))
    first = smtp_client(server.port)
    assert _is_greeting(first.greeting())
    for _ in range(5):
        assert smtp_client(server.port).read_rest() == replies.TOO_MANY_CONNECTIONS.render(enhanced=False)
    first.close()
    wait_until(lambda: session_count(server) == 0)
    assert _is_greeting(smtp_client(server.port).greeting())


# --- timeouts -------------------------------------------------------------------------------


def test_command_timeout(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(command_timeout=0.5))
    client = smtp_client(server.port)
    client.ehlo()
    started = time.monotonic()
    assert client.read_rest() == replies.TIMEOUT.render(enhanced=True)
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 5
    wait_until(lambda: session_count(server) == 0)


def test_activity_postpones_the_command_timeout(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(command_timeout=0.6))
    client = smtp_client(server.port)
    client.ehlo()
    started = time.monotonic()
    for _ in range(6):
        time.sleep(0.2)
        assert client.command("NOOP") == OK
    assert time.monotonic() - started > 1.0
    assert client.read_rest() == replies.TIMEOUT.render(enhanced=True)


def test_timeout_before_ehlo(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(command_timeout=0.5))
    client = smtp_client(server.port)
    assert _is_greeting(client.greeting())
    assert client.read_rest() == replies.TIMEOUT.render(enhanced=False)


def test_data_block_timeout(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(command_timeout=30, data_block_timeout=0.5))
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<a@example.org>") == SENDER_OK
    assert client.command("RCPT TO:<slow@example.org>") == RECIPIENT_OK
    assert client.command("DATA") == START_DATA
    client.send(b"Subject: never finished\r\n\r\npart of a mess")
    started = time.monotonic()
    assert client.read_rest() == replies.TIMEOUT.render(enhanced=True)
    assert 0.4 <= time.monotonic() - started < 5
    wait_until(lambda: session_count(server) == 0)
    assert stored_files(server) == []


def test_data_done_timeout_despite_a_trickle(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(command_timeout=30, data_block_timeout=30, data_done_timeout=1.0))
    client = smtp_client(server.port)
    client.ehlo()
    assert client.command("MAIL FROM:<a@example.org>") == SENDER_OK
    assert client.command("RCPT TO:<trickle@example.org>") == RECIPIENT_OK
    assert client.command("DATA") == START_DATA
    client.sock.settimeout(0.2)
    started = time.monotonic()
    received = b""
    while time.monotonic() - started < 10:
        try:
            client.send(b"one more line\r\n")
            chunk = client.sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    assert received == replies.TIMEOUT.render(enhanced=True)
    assert 0.9 <= time.monotonic() - started < 5
    wait_until(lambda: session_count(server) == 0)
    assert stored_files(server) == []


def test_half_closed_client_gets_its_replies(server: RunningServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"EHLO client.test\r\nNOOP\r\nQUIT\r\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.endswith(OK + replies.CLOSING.render(enhanced=True))


# --- a client that does not read its replies ------------------------------------------------


def _flood_until_stalled(
    sock: socket.socket,
    line: bytes,
    cap: int,
    quiet: float = 2.0,
    stopped_reading: Callable[[], bool] | None = None,
) -> int:
    """Send ``line`` over and over without reading; the octets sent once the server stops taking more.

    "Stops" is ``stopped_reading()`` turning true while our sends block, when the test can ask;
    otherwise ``quiet`` seconds without progress (a server busy with a burst of commands pauses
    for a moment, one that no longer reads pauses for good). Asking beats guessing on a loaded
    machine, where a busy server can pause for longer than any quiet period.
    """
    # A small send buffer on our side, so that what we send is mostly what the server took.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    sock.setblocking(False)
    block = line * 10000
    sent = 0
    last_progress = time.monotonic()
    while sent < cap and time.monotonic() - last_progress < quiet:
        offset = sent % len(block)
        try:
            sent += sock.send(block[offset:])
        except BlockingIOError:
            if stopped_reading is not None and time.monotonic() - last_progress > 0.1 and stopped_reading():
                break
            time.sleep(0.01)
            continue
        except (ConnectionResetError, BrokenPipeError):
            break  # dropped by the server: taking no more, for good
        last_progress = time.monotonic()
    sock.settimeout(10)
    return sent


def _transports(server: RunningServer) -> list[tuple[bool, int]]:
    """Whether the server reads each session's socket, and how many reply octets wait for it."""

    async def state() -> list[tuple[bool, int]]:
        # The transport is the session's own; looked at here because "is it still reading"
        # is exactly the property under test and nothing on the wire can show it directly.
        return [
            (session._transport.is_reading(), session._transport.get_write_buffer_size())
            for session in server.app.smtp.sessions
            if session._transport is not None
        ]

    result: list[tuple[bool, int]] = server.call(state())
    return result


def test_client_that_does_not_read_replies_is_not_read_either(
    server: RunningServer, smtp_client: Callable[..., RawSmtp]
) -> None:
    client = smtp_client(server.port)
    client.ehlo()
    # HELP: six octets in, a three-line reply out. A server that went on reading a client that
    # reads nothing would pile up the replies to everything it sends (some 90 MiB for 4 MiB of
    # commands); it must stop reading instead, with a bounded amount of replies waiting.
    line = b"HELP\r\n"

    def stopped_reading() -> bool:
        return [reading for reading, _ in _transports(server)] == [False]

    _flood_until_stalled(client.sock, line, 4 * 1024 * 1024, quiet=30.0, stopped_reading=stopped_reading)
    wait_until(stopped_reading)
    [(_, waiting)] = _transports(server)
    assert waiting < 8 * 1024 * 1024
    # Another client is served as usual meanwhile.
    other = smtp_client(server.port)
    assert other.ehlo().startswith(b"250-mx.test Hello")
    assert other.command("QUIT") == replies.CLOSING.render(enhanced=True)
    # What was answered is answered in order; a client that leaves takes its session along.
    reply = replies.HELP.render(enhanced=True)
    assert [client.read_reply() for _ in range(1000)] == [reply] * 1000
    client.close()
    wait_until(lambda: session_count(server) == 0)


def test_timeout_drops_a_client_that_does_not_read(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(command_timeout=0.5, connections=1))
    client = smtp_client(server.port)
    client.ehlo()
    _flood_until_stalled(client.sock, b"HELP\r\n", 4 * 1024 * 1024)
    # The 421 cannot reach a client that reads nothing; the connection goes anyway, and with
    # it the one connection slot.
    wait_until(lambda: session_count(server) == 0)
    assert _is_greeting(smtp_client(server.port).greeting())
