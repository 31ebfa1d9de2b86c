"""Sessions the server ends itself, on every transport and event loop, and SIGTERM in every state.

When the server closes a session (the AUTH throttle's 421, the error limit's 421, shutdown's
421), the client reads the reply, the connection closes and no session stays behind: over
plaintext, STARTTLS and implicit TLS, on asyncio's event loop and on uvloop. Whatever goes wrong
inside a session is one log line and the end of that session, never a traceback. Real sockets,
real TLS (trustme certificates), a real ``postoffice serve`` process for the signal test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import LoopFactory, RawSmtp, RunningServer, ServerProcess
from postoffice.accounts import Accounts
from postoffice.config import AuthConfig, Limits
from postoffice.net.tls import SHUTDOWN_TIMEOUT
from postoffice.smtp import replies as r
from postoffice.smtp.replies import Reply
from submission_support import (
    ALICE,
    ALICE_PASSWORD,
    Certs,
    TlsRawSmtp,
    make_certs,
    plain_response,
    ports,
    process_ports,
    start_submission_server,
    wait_for,
)

LOOPS = ("asyncio", "uvloop")
TRANSPORTS = ("plaintext", "starttls", "implicit")
# Postfix smtpd_hard_error_limit, made small so a test reaches it in a few commands.
ERROR_LIMIT = 3
# Application.stop's grace for transactions in progress when SIGTERM comes.
SHUTDOWN_GRACE = 30.0


def loop_factory(name: str) -> LoopFactory:
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: LoopFactory = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def server(
    log: pytest.LogCaptureFixture, server_factory: Callable[..., RunningServer], certs: Certs, loop: str
) -> RunningServer:
    """smtp, submission and smtps listeners; AUTH in plaintext from loopback on the smtp one.

    ``log`` comes first: it checks the log after the server has stopped."""
    return start_submission_server(
        server_factory,
        certs,
        loop_factory=loop_factory(loop),
        auth=AuthConfig(max_failures=2, failure_delay=0.0, allow_plaintext_on_loopback=True),
        limits=Limits(errors_per_session=ERROR_LIMIT),
    )


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of the server's thread, checked afterwards: no traceback, nothing from asyncio.

    Servers started after this fixture have stopped by then (pytest ends fixtures in reverse)."""
    caplog.set_level(logging.INFO)
    yield caplog
    gc.collect()  # a task whose exception nobody retrieved reports it when collected
    records = [record for when in ("setup", "call", "teardown") for record in caplog.get_records(when)]
    assert [
        record.getMessage() for record in records if record.exc_info or "Traceback" in record.getMessage()
    ] == []
    assert [record.getMessage() for record in records if record.name.startswith("asyncio")] == []


def reply(of: Reply) -> bytes:
    return of.render(enhanced=True)


def open_session(server: RunningServer, certs: Certs, transport: str) -> TlsRawSmtp:
    """A session past EHLO: on the MX port in plaintext, after STARTTLS, or on the TLS port."""
    listening = ports(server)
    if transport == "implicit":
        client = TlsRawSmtp(listening["smtps"], context=certs.client_context(), implicit=True)
        client.ehlo()
    elif transport == "starttls":
        client = TlsRawSmtp(listening["submission"])
        client.ehlo()
        client.starttls(certs.client_context())
        client.command("EHLO client.test")
    else:
        client = TlsRawSmtp(listening["smtp"])
        client.ehlo()
    return client


def ends_after(client: RawSmtp, server: RunningServer) -> None:
    """The server closes the connection with nothing after its reply; once the client hangs
    up as clients do, no session is left (the status endpoint counts the same set)."""
    assert client.read_rest() == b""
    client.close()
    wait_for(lambda: not server.app.smtp.sessions)
    assert server.app.operations.status()["sessions"] == 0


def fail_auth(client: RawSmtp) -> bytes:
    return client.command(f"AUTH PLAIN {plain_response(ALICE, 'a wrong guess')}")


# --- the reply arrives, the session goes ------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_auth_throttle_421_is_delivered_and_the_session_ends(
    server: RunningServer, certs: Certs, transport: str, log: pytest.LogCaptureFixture
) -> None:
    client = open_session(server, certs, transport)
    assert fail_auth(client) == reply(r.AUTH_FAILED)
    assert fail_auth(client) == reply(r.TOO_MANY_AUTH_FAILURES)  # after the password check
    ends_after(client, server)
    # Locked out now: the next AUTH is refused before any password is tried.
    again = open_session(server, certs, transport)
    assert again.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(
        r.TOO_MANY_AUTH_FAILURES
    )
    ends_after(again, server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_error_limit_421_is_delivered_and_the_session_ends(
    server: RunningServer, certs: Certs, transport: str, log: pytest.LogCaptureFixture
) -> None:
    client = open_session(server, certs, transport)
    for _ in range(ERROR_LIMIT - 1):
        assert client.command("BOGUS") == reply(r.UNRECOGNIZED_COMMAND)
    client.send(b"BOGUS\r\nNOOP\r\n")  # what follows the last error is never answered
    assert client.read_reply() == reply(r.UNRECOGNIZED_COMMAND)
    assert client.read_reply() == reply(r.TOO_MANY_ERRORS)
    ends_after(client, server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_shutdown_421_is_delivered_and_the_session_ends(
    server: RunningServer, certs: Certs, transport: str, log: pytest.LogCaptureFixture
) -> None:
    client = open_session(server, certs, transport)
    stopping = asyncio.run_coroutine_threadsafe(server.app.smtp.stop(grace=10.0), server.loop)
    assert client.read_reply() == reply(r.shutting_down("mx.test"))
    ends_after(client, server)
    stopping.result(10)


def test_shutdown_ends_a_starttls_handshake_at_once(
    server: RunningServer, certs: Certs, log: pytest.LogCaptureFixture
) -> None:
    """A handshake in progress is no transaction: shutdown drops it (a 421 would garble the
    TLS stream) and the session ends then, not when the grace runs out."""
    client = TlsRawSmtp(ports(server)["submission"])
    client.ehlo()
    assert client.command("STARTTLS") == reply(r.READY_TO_START_TLS)
    client.send(client_hello(certs.client_context())[:10])  # and the rest never comes
    wait_for(lambda: len(server.app.smtp.sessions) == 1)
    started = time.monotonic()
    stopping = asyncio.run_coroutine_threadsafe(server.app.smtp.stop(grace=20.0), server.loop)
    wait_for(lambda: not server.app.smtp.sessions, timeout=5.0)
    stopping.result(5)
    assert time.monotonic() - started < 5.0
    connection_ends(client)
    client.close()
    assert "event=dropped" not in log.text  # ended by close_with, not at the end of the grace


@pytest.mark.parametrize("transport", ["starttls", "implicit"])
def test_tls_close_does_not_wait_for_the_clients_close_notify(
    server: RunningServer, certs: Certs, transport: str, log: pytest.LogCaptureFixture
) -> None:
    """RFC 8446 §6.1: the side that closes need not wait for the peer's close_notify. A
    client that reads our 421 and then neither answers nor hangs up holds no session."""
    client = open_session(server, certs, transport)
    client.send(b"BOGUS\r\n" * ERROR_LIMIT)
    for _ in range(ERROR_LIMIT):
        assert client.read_reply() == reply(r.UNRECOGNIZED_COMMAND)
    assert client.read_reply() == reply(r.TOO_MANY_ERRORS)
    assert client.read_rest() == b""  # our close_notify
    wait_for(lambda: not server.app.smtp.sessions, timeout=SHUTDOWN_TIMEOUT + 3.0)
    assert "event=disconnect" in log.text
    client.close()


# --- whatever escapes a session's handler -----------------------------------------------------


BROKEN = {
    "greeting": "observer broke on the greeting",
    "command": "observer broke on a command",
    "queued": "observer broke after the commit",
}
# Where each breaks: a protocol callback, or the task that commits a message.
WHERE = {"greeting": "connection_made", "command": "data_received", "queued": "commit"}


class BrokenObserver:
    """A transcript observer that fails at one point of the conversation (a bug, a full disk)."""

    def __init__(self, at: str) -> None:
        self.at = at

    def client_said(self, session_id: str, peer: str, line: str) -> None:
        if self.at == "command" and line.startswith("NOOP"):
            raise RuntimeError(BROKEN["command"])

    def server_said(self, session_id: str, peer: str, reply: Reply) -> None:
        if self.at == "greeting" and reply.code == 220:
            raise RuntimeError(BROKEN["greeting"])
        if self.at == "queued" and "queued as" in reply.text:
            raise RuntimeError(BROKEN["queued"])


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("at", list(BROKEN))
def test_an_exception_in_a_session_is_one_line_and_drops_only_that_session(
    log: pytest.LogCaptureFixture, server_factory: Callable[..., RunningServer], at: str, loop_name: str
) -> None:
    """Raised in connection_made, in data_received and in the task that commits a message: each
    is logged as one line naming the session and the error, and only that session ends."""
    observer = BrokenObserver(at)
    broken = server_factory(loop_factory=loop_factory(loop_name), app_options={"observer": observer})
    client = RawSmtp(broken.port)
    try:
        if at != "greeting":
            client.ehlo()
            if at == "command":
                client.send(b"NOOP\r\n")
            else:
                client.command("MAIL FROM:<a@client.test>")
                client.command("RCPT TO:<box@capture.test>")
                client.command("DATA")
                client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert client.read_rest() == b""  # dropped, without a reply to what broke
    finally:
        client.close()
    wait_for(lambda: not broken.app.smtp.sessions)
    [failure] = [m for m in log.messages if "event=internal-error" in m]
    assert f"where={WHERE[at]} error='RuntimeError: {BROKEN[at]}'" in failure
    if at == "queued":  # it broke after the commit: the message is stored all the same
        assert [m["Subject"] for m in broken.messages("box@capture.test")] == ["x"]
    # The server goes on: the next session is served (a greeting once the observer is fixed).
    observer.at = ""
    other = RawSmtp(broken.port)
    try:
        assert other.greeting() == r.greeting("mx.test").render(enhanced=False)
        assert other.command("NOOP") == r.OK.render(enhanced=False)
    finally:
        other.close()


# --- SIGTERM with sessions in every state -----------------------------------------------------


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight of a TLS handshake, as a client would send it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="mx.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def half_close(client: RawSmtp) -> None:
    """Shut the client's write side at the TCP level (no TLS close_notify)."""
    with socket.socket(fileno=socket.dup(client.sock.fileno())) as raw:
        raw.shutdown(socket.SHUT_WR)


def connection_ends(client: RawSmtp) -> None:
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        assert client.read_rest() == b""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop_name", LOOPS)
def test_sigterm_with_sessions_in_every_state_exits_0_within_the_grace(
    server_process: Callable[..., ServerProcess], tmp_path: Path, certs: Certs, loop_name: str
) -> None:
    if loop_name == "uvloop":
        pytest.importorskip("uvloop")  # `serve` runs on uvloop whenever it is installed
    running = server_process(
        "--domain", "example.test", "--submission", "127.0.0.1:0", "--smtps", "127.0.0.1:0",
        "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
        loop="default" if loop_name == "uvloop" else "asyncio",
    )  # fmt: skip
    Accounts(tmp_path / "data" / "accounts.json").add_user(ALICE, ALICE_PASSWORD)
    found = process_ports(running, ("smtp", "submission", "smtps"))
    context = certs.client_context()
    opened: list[RawSmtp] = []

    def raw(kind: str) -> TlsRawSmtp:
        client = TlsRawSmtp(found[kind])
        client.sock.settimeout(SHUTDOWN_GRACE + 15)
        opened.append(client)
        return client

    def greeted(kind: str) -> TlsRawSmtp:
        client = raw(kind)
        client.ehlo()
        return client

    def in_tls(kind: str) -> TlsRawSmtp:
        client = greeted(kind)
        client.starttls(context)
        client.command("EHLO client.test")
        return client

    def in_data(client: TlsRawSmtp) -> TlsRawSmtp:
        assert client.command("MAIL FROM:<x@elsewhere.test>") == reply(r.SENDER_OK)
        assert client.command(f"RCPT TO:<{ALICE}>") == reply(r.RECIPIENT_OK)
        assert client.command("DATA") == reply(r.START_MAIL_INPUT)
        client.send(b"Subject: half a message\r\n\r\nthe first half")
        return client

    try:
        implicit = TlsRawSmtp(found["smtps"], context=context, implicit=True)
        opened.append(implicit)
        implicit.ehlo()
        idle = [greeted("smtp"), in_tls("submission"), implicit]
        mid_data = [in_data(greeted("smtp")), in_data(in_tls("smtp"))]

        asking = in_tls("submission")  # AUTH LOGIN asked for the user name; no answer comes
        assert asking.command("AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
        checking = in_tls("submission")  # a wrong password, its 535 delayed by the throttle
        checking.send(f"AUTH PLAIN {plain_response(ALICE, 'wrong')}\r\n".encode())

        handshakes, implicit_handshakes = [], []
        hello = client_hello(context)
        for sent in (b"", hello[: len(hello) // 2]):  # TCP only, or half a ClientHello
            starting = greeted("submission")
            assert starting.command("STARTTLS") == reply(r.READY_TO_START_TLS)
            starting.send(sent)
            handshakes.append(starting)
            implicit_handshakes.append(raw("smtps"))
            implicit_handshakes[-1].send(sent)

        half_closed = [greeted("smtp"), in_tls("submission"), in_data(greeted("smtp"))]
        for client in half_closed:
            half_close(client)
        wait_for(lambda: any("event=auth-failed" in line for line in list(running.output)))

        running.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for client in [*idle, asking]:
            assert client.read_reply() == reply(r.shutting_down("mx.test"))
            assert client.read_rest() == b""
        assert checking.read_reply() == reply(r.AUTH_FAILED)  # the check in progress is answered
        assert checking.read_reply() == reply(r.shutting_down("mx.test"))
        for client in [*handshakes, *half_closed]:
            connection_ends(client)
        # Nothing is in progress in any of those: they end now, not when the grace runs out.
        assert time.monotonic() - signalled < SHUTDOWN_GRACE / 3
        status = running.process.wait(SHUTDOWN_GRACE + 15)
        elapsed = time.monotonic() - signalled
        for client in mid_data:  # the grace ran out for the unfinished messages
            assert client.read_reply() == reply(r.shutting_down("mx.test"))
        # On the implicit TLS port a session starts once its handshake is done (asyncio's
        # create_server(ssl=)): an unfinished one is no session, and ends with the process.
        for client in implicit_handshakes:
            connection_ends(client)
    finally:
        for client in opened:
            client.close()
    output = "".join(running.output)
    assert status == 0, output
    assert elapsed < SHUTDOWN_GRACE + 1, output  # the other parts stop in milliseconds
    assert "event=stopped" in output
    assert "Traceback" not in output
    assert "Fatal error" not in output
