"""SMTP AUTH (RFC 4954): the core's rules on bytes, then the real server with real clients.

Named tests for the security rules: plaintext AUTH refusal, brute-force throttling, and a
password that never reaches the log.
"""

from __future__ import annotations

import base64
import logging
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import RunningServer, ServerProcess
from postoffice.config import AuthConfig
from postoffice.smtp import events as ev
from postoffice.smtp import replies as r
from postoffice.smtp.server import ServerSettings
from postoffice.smtp.state import State
from smtp_pair import HOST, Driver, lines
from submission_support import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    Certs,
    TlsRawSmtp,
    b64,
    make_certs,
    plain_response,
    ports,
    process_ports,
    smtp_over_starttls,
    start_submission_server,
    wait_for,
)


def reply(of: r.Reply, *, enhanced: bool = True) -> bytes:
    return of.render(enhanced=enhanced)


# --- the core: when AUTH is offered -----------------------------------------------------------

TLS_AUTH = ServerSettings(
    hostname=HOST, starttls=True, auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=True
)


def ehlo_keywords(driver: Driver) -> list[str]:
    return list(driver.replies[-1].lines[1:])


def test_core_offers_auth_only_inside_tls() -> None:
    driver = Driver(TLS_AUTH)
    driver.feed(lines("EHLO client.test"))
    assert "AUTH PLAIN LOGIN" not in ehlo_keywords(driver)
    driver.feed(lines("AUTH PLAIN AGEAYg=="))
    assert driver.replies[-1].raw == reply(r.ENCRYPTION_REQUIRED)
    assert driver.of_type(ev.AuthRequested) == []  # refused by the core: no password is looked at
    driver.feed(lines("STARTTLS"))
    driver.feed(lines("EHLO client.test"))
    assert "AUTH PLAIN LOGIN" in ehlo_keywords(driver)


def test_core_auth_param_of_mail_only_when_auth_is_offered() -> None:
    driver = Driver(TLS_AUTH)
    driver.feed(lines("EHLO client.test", "MAIL FROM:<a@example.test> AUTH=<>"))
    assert driver.replies[-1].raw == reply(r.PARAMETER_NOT_IMPLEMENTED)


def test_core_implicit_tls_starts_inside_tls() -> None:
    settings = ServerSettings(
        hostname=HOST, implicit_tls=True, auth_mechanisms=("PLAIN",), auth_requires_tls=True
    )
    driver = Driver(settings)
    driver.feed(lines("EHLO client.test", "STARTTLS"))
    assert "AUTH PLAIN" in driver.replies[-2].lines
    assert driver.replies[-1].raw == reply(r.BAD_SEQUENCE)


def test_core_starttls_forgets_a_plaintext_login() -> None:
    """RFC 3207 §4.2: nothing learnt before TLS survives it, an AUTH included."""
    settings = ServerSettings(hostname=HOST, starttls=True, auth_mechanisms=("PLAIN",))
    driver = Driver(settings)
    driver.feed(lines("EHLO client.test", "AUTH PLAIN AGEAYg=="))
    assert driver.conn.authenticated
    driver.feed(lines("STARTTLS"))
    assert driver.conn.tls_active and not driver.conn.authenticated and driver.conn.state is State.INIT


# --- the real server ----------------------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@pytest.fixture
def server(server_factory: Callable[..., RunningServer], certs: Certs) -> RunningServer:
    return start_submission_server(server_factory, certs)


def tls_client(server: RunningServer, certs: Certs, kind: str = "submission") -> TlsRawSmtp:
    if kind == "smtps":
        client = TlsRawSmtp(ports(server)["smtps"], context=certs.client_context(), implicit=True)
        client.ehlo()
        return client
    client = TlsRawSmtp(ports(server)[kind])
    client.ehlo()
    client.starttls(certs.client_context())
    client.command("EHLO client.test")
    return client


@pytest.mark.parametrize("kind", ["smtp", "submission", "smtps"])
def test_login_with_plain_initial_response(server: RunningServer, certs: Certs, kind: str) -> None:
    client = tls_client(server, certs, kind)
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(r.AUTH_SUCCESSFUL)
    client.close()


def test_login_with_plain_after_empty_challenge(server: RunningServer, certs: Certs) -> None:
    client = tls_client(server, certs)
    assert client.command("AUTH PLAIN") == b"334 \r\n"
    assert client.command(plain_response(ALICE, ALICE_PASSWORD)) == reply(r.AUTH_SUCCESSFUL)
    client.close()


@pytest.mark.parametrize("initial", [False, True])
def test_login_with_login_mechanism(server: RunningServer, certs: Certs, initial: bool) -> None:
    client = tls_client(server, certs)
    if initial:
        assert client.command(f"AUTH LOGIN {b64(ALICE)}") == b"334 UGFzc3dvcmQ6\r\n"
    else:
        assert client.command("AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
        assert client.command(b64(ALICE)) == b"334 UGFzc3dvcmQ6\r\n"
    assert client.command(b64(ALICE_PASSWORD)) == reply(r.AUTH_SUCCESSFUL)
    client.close()


def test_smtplib_login_and_send(server: RunningServer, certs: Certs) -> None:
    with smtp_over_starttls(ports(server)["submission"], certs.client_context()) as client:
        assert client.login(ALICE, ALICE_PASSWORD) == (
            r.AUTH_SUCCESSFUL.code,
            b"2.7.0 Authentication successful",
        )
        client.sendmail(ALICE, [BOB], f"From: {ALICE}\r\nSubject: hi bob\r\n\r\nhi\r\n")
    [stored] = server.messages(BOB)
    assert stored["Subject"] == "hi bob"
    assert "with ESMTPSA" in stored["Received"]
    assert ALICE not in stored["Received"]  # the login name stays private (aliases hide it)


def test_commands_pipelined_after_auth_see_the_login(server: RunningServer, certs: Certs) -> None:
    """Reading pauses while the password is checked; what follows is read with the outcome."""
    client = tls_client(server, certs)
    client.send(
        f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}\r\nMAIL FROM:<{ALICE}>\r\nRCPT TO:<{BOB}>\r\n".encode()
    )
    assert [client.read_reply() for _ in range(3)] == [
        reply(r.AUTH_SUCCESSFUL),
        reply(r.SENDER_OK),
        reply(r.RECIPIENT_OK),
    ]
    client.close()


def test_wrong_password_and_unknown_user_get_the_same_reply(server: RunningServer, certs: Certs) -> None:
    client = tls_client(server, certs)
    wrong = client.command(f"AUTH PLAIN {plain_response(ALICE, 'not the password')}")
    unknown = client.command(f"AUTH PLAIN {plain_response('nobody@example.test', ALICE_PASSWORD)}")
    assert wrong == unknown == reply(r.AUTH_FAILED)
    assert r.AUTH_FAILED.code == 535 and r.AUTH_FAILED.enhanced == "5.7.8"
    # A failed login leaves the client free to try again.
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(r.AUTH_SUCCESSFUL)
    client.close()


def test_authorization_identity_of_someone_else_fails(server: RunningServer, certs: Certs) -> None:
    """RFC 4616 §2: acting as another user needs permission nobody has."""
    client = tls_client(server, certs)
    as_bob = plain_response(ALICE, ALICE_PASSWORD, authzid=BOB)
    assert client.command(f"AUTH PLAIN {as_bob}") == reply(r.AUTH_FAILED)
    as_herself = plain_response(ALICE, ALICE_PASSWORD, authzid=ALICE.upper())
    assert client.command(f"AUTH PLAIN {as_herself}") == reply(r.AUTH_SUCCESSFUL)
    client.close()


def test_cancel_bad_base64_and_unknown_mechanism(server: RunningServer, certs: Certs) -> None:
    client = tls_client(server, certs)
    assert client.command("AUTH PLAIN") == b"334 \r\n"
    assert client.command("*") == reply(r.AUTH_CANCELLED)
    assert client.command("AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
    assert client.command("!!not base64!!") == reply(r.AUTH_BAD_BASE64)
    assert client.command("AUTH PLAIN AGFsaWNl") == reply(r.AUTH_MALFORMED)  # "\0alice": no password
    assert client.command("AUTH CRAM-MD5") == reply(r.AUTH_UNKNOWN_MECHANISM)
    assert client.command("AUTH PLAIN =") == reply(r.AUTH_MALFORMED)
    assert client.command("NOOP") == reply(r.OK)  # the session goes on
    client.close()


def test_auth_before_ehlo_and_twice_is_503(server: RunningServer, certs: Certs) -> None:
    client = TlsRawSmtp(ports(server)["smtps"], context=certs.client_context(), implicit=True)
    client.greeting()
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(
        r.NEED_HELO, enhanced=False
    )
    client.command("EHLO client.test")
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(r.AUTH_SUCCESSFUL)
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(r.BAD_SEQUENCE)
    client.close()


def test_auth_inside_a_transaction_is_503(server: RunningServer, certs: Certs) -> None:
    client = tls_client(server, certs, "smtp")
    client.command("MAIL FROM:<x@elsewhere.test>")
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(r.BAD_SEQUENCE)
    client.close()


@pytest.mark.parametrize("kind", ["smtp", "submission"])
def test_plaintext_auth_refusal(server: RunningServer, certs: Certs, kind: str) -> None:
    """RFC 4954 §4 / RFC 8314: no password in the clear. AUTH is not advertised before TLS,
    and refused with 538 5.7.11 when tried anyway; no password check is even made."""
    client = TlsRawSmtp(ports(server)[kind])
    ehlo = client.ehlo()
    assert b"AUTH" not in ehlo and b"STARTTLS" in ehlo
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(
        r.ENCRYPTION_REQUIRED
    )
    assert client.command("AUTH LOGIN") == reply(r.ENCRYPTION_REQUIRED)
    client.close()


def test_plaintext_auth_on_loopback_when_allowed(
    server_factory: Callable[..., RunningServer], certs: Certs
) -> None:
    server = start_submission_server(
        server_factory, certs, auth=AuthConfig(allow_plaintext_on_loopback=True, failure_delay=0.0)
    )
    with smtplib.SMTP(
        "127.0.0.1", ports(server)["submission"], local_hostname="client.test", timeout=10
    ) as client:
        client.ehlo()
        assert client.has_extn("auth") and client.has_extn("starttls")
        client.login(ALICE, ALICE_PASSWORD)
        assert client.sendmail(ALICE, [BOB], "Subject: local app\r\n\r\nhi\r\n") == {}
    [stored] = server.messages(BOB)
    assert "with ESMTPA" in stored["Received"]


# --- brute force --------------------------------------------------------------------------------


def test_auth_brute_force_throttling(
    server_factory: Callable[..., RunningServer], certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed logins from one address wait longer each time, then get 421 and the door.

    Until the window passes, even the right password from that address gets 421 without being
    tried. Delays are configured tiny here; the growth is checked in the log, not with a clock.
    """
    caplog.set_level(logging.INFO, logger="postoffice")
    server = start_submission_server(
        server_factory, certs, auth=AuthConfig(max_failures=3, failure_window=600.0, failure_delay=0.01)
    )
    client = tls_client(server, certs)
    for _ in range(2):
        assert client.command(f"AUTH PLAIN {plain_response(ALICE, 'guess')}") == reply(r.AUTH_FAILED)
    client.send(f"AUTH LOGIN {b64(ALICE)}\r\n".encode())
    assert client.read_reply() == b"334 UGFzc3dvcmQ6\r\n"
    client.send(f"{b64('guess')}\r\n".encode())
    assert client.read_reply() == reply(r.TOO_MANY_AUTH_FAILURES)
    assert client.read_rest() == b""  # disconnected
    client.close()

    again = tls_client(server, certs)
    assert again.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(
        r.TOO_MANY_AUTH_FAILURES
    )
    assert again.read_rest() == b""
    again.close()

    failures = [
        record.getMessage() for record in caplog.records if "event=auth-failed" in record.getMessage()
    ]
    assert [m.split("failures=")[1] for m in failures] == ["1 delay=0.01s", "2 delay=0.02s", "3 delay=0.03s"]
    assert any("event=auth-refused reason=too-many-failures" in m.getMessage() for m in caplog.records)
    # Mail from that address to local users still flows: only AUTH is shut.
    with smtplib.SMTP("127.0.0.1", ports(server)["smtp"], timeout=10) as mx:
        assert mx.sendmail("x@elsewhere.test", [ALICE], "Subject: still open\r\n\r\nhi\r\n") == {}


def test_auth_waits_for_the_password_check_without_blocking_others(
    server_factory: Callable[..., RunningServer], certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """While one session's login waits out its delay, another session is served."""
    caplog.set_level(logging.INFO, logger="postoffice")
    server = start_submission_server(
        server_factory, certs, auth=AuthConfig(max_failures=5, failure_delay=3.0)
    )
    slow = tls_client(server, certs)
    slow.send(f"AUTH PLAIN {plain_response(ALICE, 'guess')}\r\n".encode())
    wait_for(lambda: "event=auth-failed" in caplog.text)  # logged before the delay starts
    with smtplib.SMTP("127.0.0.1", ports(server)["smtp"], timeout=10) as other:
        assert other.noop()[0] == r.OK.code
    # The other session was served while the slow one is still waiting for its answer.
    slow.sock.setblocking(False)
    with pytest.raises(ssl.SSLWantReadError):  # nothing to read yet
        slow.sock.recv(1)
    slow.sock.settimeout(10)
    assert slow.read_reply() == reply(r.AUTH_FAILED)
    slow.close()


# --- the log ------------------------------------------------------------------------------------


def test_password_never_appears_in_the_log(
    server_process: Callable[..., ServerProcess], tmp_path: Path, certs: Certs
) -> None:
    """A real run with failed and successful logins by PLAIN (initial response) and LOGIN."""
    data_dir = tmp_path / "data"
    password = "Zebra-Quartz-7731-secret"
    wrong = "Wrong-Guess-4242-secret"
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "postoffice",
            "user",
            "add",
            ALICE,
            "--password-stdin",
            "--data-dir",
            str(data_dir),
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    process = server_process(
        "--domain", "example.test", "--submission", "127.0.0.1:0",
        "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
    )  # fmt: skip
    port = process_ports(process, ("submission",))["submission"]

    def session(*exchange: tuple[str, bytes]) -> None:
        client = TlsRawSmtp(port)
        client.ehlo()
        client.starttls(certs.client_context())
        client.command("EHLO client.test")
        for line, expected in exchange:
            assert client.command(line) == expected
        client.command("QUIT")
        client.close()

    session((f"AUTH PLAIN {plain_response(ALICE, wrong)}", reply(r.AUTH_FAILED)))
    session((f"AUTH PLAIN {plain_response(ALICE, password)}", reply(r.AUTH_SUCCESSFUL)))
    session(
        (f"AUTH LOGIN {b64(ALICE)}", b"334 UGFzc3dvcmQ6\r\n"),
        (b64(wrong), reply(r.AUTH_FAILED)),
        ("AUTH LOGIN", b"334 VXNlcm5hbWU6\r\n"),
        (b64(ALICE), b"334 UGFzc3dvcmQ6\r\n"),
        (b64(password), reply(r.AUTH_SUCCESSFUL)),
    )
    wait_for(lambda: sum("event=auth-ok" in line for line in process.output) == 2)
    assert process.terminate() == 0
    log = "".join(process.output)
    assert log.count("event=auth-failed") == 2 and f"user=<{ALICE}>" in log
    secrets: list[str] = []
    for secret in (password, wrong):
        secrets += [secret, b64(secret), plain_response(ALICE, secret)]
    for secret in secrets:
        assert secret not in log, secret
    # Nor any base64 that decodes to one (however the client framed it).
    for word in log.split():
        try:
            decoded = base64.b64decode(word, validate=True)
        except ValueError:
            continue
        assert password.encode() not in decoded and wrong.encode() not in decoded


def test_tls_and_auth_outcomes_are_counted_in_the_metrics(server: RunningServer, certs: Certs) -> None:
    client = tls_client(server, certs)
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, 'wrong')}") == reply(r.AUTH_FAILED)
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == reply(r.AUTH_SUCCESSFUL)
    client.close()
    exposition = server.app.metrics.exposition().decode()
    assert 'postoffice_tls_handshakes_total{outcome="ok"} 1.0' in exposition
    assert 'postoffice_auth_attempts_total{mechanism="PLAIN",outcome="failed"} 1.0' in exposition
    assert 'postoffice_auth_attempts_total{mechanism="PLAIN",outcome="ok"} 1.0' in exposition
