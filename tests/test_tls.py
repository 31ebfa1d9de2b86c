"""TLS on real sockets: STARTTLS (RFC 3207), implicit TLS (RFC 8314), certificates and reloads.

Certificates are made by trustme; clients are smtplib, aiosmtplib, swaks and raw sockets.
"""

from __future__ import annotations

import re
import signal
import smtplib
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest
import trustme
from cryptography import x509

from conftest import RawSmtp, RunningServer, ServerProcess, require_tool
from postoffice.accounts import Accounts
from postoffice.config import TLSConfig
from postoffice.net.tls import ServerTls
from postoffice.smtp import replies as r
from submission_support import (
    ALICE,
    ALICE_PASSWORD,
    Certs,
    TlsRawSmtp,
    make_certs,
    message,
    ports,
    process_ports,
    start_submission_server,
    unverified_context,
    wait_for,
)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@pytest.fixture
def server(server_factory: Callable[..., RunningServer], certs: Certs) -> RunningServer:
    return start_submission_server(server_factory, certs)


def reply(of: r.Reply) -> bytes:
    return of.render(enhanced=True)


# --- STARTTLS and implicit TLS with real clients ----------------------------------------------


def test_starttls_with_smtplib(server: RunningServer, certs: Certs) -> None:
    port = ports(server)["submission"]
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")  # passwords only inside TLS
        code, text = client.starttls(context=certs.client_context())
        assert (code, text) == (r.READY_TO_START_TLS.code, b"2.0.0 Ready to start TLS")
        client.ehlo()
        assert not client.has_extn("starttls")  # RFC 3207 §4.2: not offered again
        assert client.has_extn("auth") and client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert client.sock.getpeercert(binary_form=True) == certs.server_certificate_der()


def test_implicit_tls_with_smtp_ssl(
    server: RunningServer, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    port = ports(server)["smtps"]
    with smtplib.SMTP_SSL(
        "127.0.0.1", port, local_hostname="client.test", context=certs.client_context(), timeout=10
    ) as client:
        client.ehlo()
        assert client.has_extn("auth")
        assert not client.has_extn("starttls")  # already inside TLS
        client.login(ALICE, ALICE_PASSWORD)
        assert client.sendmail(ALICE, [ALICE], message(ALICE, ALICE, "over 465")) == {}
    [stored] = server.messages(ALICE)
    assert stored["Subject"] == "over 465"
    assert "with ESMTPSA" in stored["Received"]
    wait_for(lambda: "event=disconnect" in caplog.text)
    assert "event=tls client=127.0.0.1 version=TLSv1.3" in caplog.text
    assert [record.getMessage() for record in caplog.records if record.name.startswith("asyncio")] == []


def test_mx_listener_offers_starttls_and_auth_only_inside(server: RunningServer, certs: Certs) -> None:
    port = ports(server)["smtp"]
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")
        client.starttls(context=certs.client_context())
        client.ehlo()
        assert client.has_extn("auth")
        assert client.sendmail("someone@elsewhere.test", [ALICE], message("x@elsewhere.test", ALICE)) == {}
    [stored] = server.messages(ALICE)
    assert "with ESMTPS " in stored["Received"]  # TLS, not authenticated (RFC 3848)


async def test_aiosmtplib_starttls_and_implicit_tls(server: RunningServer, certs: Certs) -> None:
    listening = ports(server)
    for port, options in (
        (listening["submission"], {"start_tls": True}),
        (listening["smtps"], {"use_tls": True}),
    ):
        errors, _ = await aiosmtplib.send(
            message(ALICE, ALICE, f"aiosmtplib {port}"),
            sender=ALICE,
            recipients=[ALICE],
            hostname="127.0.0.1",
            port=port,
            username=ALICE,
            password=ALICE_PASSWORD,
            tls_context=certs.client_context(),
            timeout=10,
            **options,
        )
        assert errors == {}
    subjects = sorted(m["Subject"] for m in server.messages(ALICE))
    assert subjects == sorted(f"aiosmtplib {listening[k]}" for k in ("submission", "smtps"))


@pytest.mark.parametrize(
    ("kind", "tls_option", "mechanism"),
    [
        ("submission", "--tls", "PLAIN"),
        ("submission", "--tls", "LOGIN"),
        ("smtps", "--tlsc", "PLAIN"),
        ("smtps", "--tlsc", "LOGIN"),
    ],
)
def test_swaks_submits_over_tls(server: RunningServer, kind: str, tls_option: str, mechanism: str) -> None:
    swaks = require_tool("swaks")
    result = subprocess.run(
        [
            swaks,
            "--server", f"127.0.0.1:{ports(server)[kind]}",
            tls_option,
            "--auth", mechanism,
            "--auth-user", ALICE,
            "--auth-password", ALICE_PASSWORD,
            "--from", ALICE,
            "--to", ALICE,
            "--header", f"Subject: swaks {kind} {mechanism}",
            "--helo", "client.test",
            "--timeout", "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0 Authentication successful" in result.stdout
    assert "TLS started" in result.stdout
    [stored] = server.messages(ALICE)
    assert stored["Subject"] == f"swaks {kind} {mechanism}"


# --- STARTTLS security ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["smtp", "submission"])
@pytest.mark.parametrize(
    "injected",
    [b"RSET\r\n", b"MAIL FROM:<attacker@elsewhere.test>\r\n", b"NOOP\r\nQUIT\r\n"],
    ids=["rset", "mail", "noop-quit"],
)
def test_starttls_command_injection(server: RunningServer, certs: Certs, kind: str, injected: bytes) -> None:
    """CVE-2011-0411 / CVE-2024-34083: commands sent with STARTTLS in one write are discarded.

    A reply to the injected command would either arrive in plaintext after the 220 (and break
    the handshake) or inside TLS before the EHLO reply (and show in the transcript): neither.
    """
    client = TlsRawSmtp(ports(server)[kind])
    try:
        client.ehlo()
        client.send(b"STARTTLS\r\n" + injected)
        assert client.read_reply() == reply(r.READY_TO_START_TLS)
        assert client._buffer == b""
        client.sock = certs.client_context().wrap_socket(client.sock, server_hostname="mx.test")
        client.send(b"EHLO client.test\r\nNOOP\r\nQUIT\r\n")
        transcript = client.read_rest()
    finally:
        client.close()
    ehlo, _, rest = transcript.partition(b"250 CHUNKING\r\n")
    assert ehlo.startswith(b"250-mx.test Hello client.test\r\n")
    assert b"STARTTLS" not in ehlo
    assert rest == reply(r.OK) + reply(r.CLOSING)


def test_starttls_resets_the_session(server: RunningServer, certs: Certs) -> None:
    """RFC 3207 §4.2: after the handshake the client must EHLO again; nothing before counts."""
    client = TlsRawSmtp(ports(server)["smtp"])
    try:
        client.ehlo()
        client.starttls(certs.client_context())
        assert client.command("MAIL FROM:<a@elsewhere.test>") == r.NEED_HELO.render(enhanced=False)
    finally:
        client.close()


def test_starttls_twice_is_503_and_with_argument_501(server: RunningServer, certs: Certs) -> None:
    client = TlsRawSmtp(ports(server)["submission"])
    try:
        client.ehlo()
        assert client.command("STARTTLS now") == reply(r.SYNTAX_ERROR_IN_PARAMETERS)
        client.starttls(certs.client_context())
        client.command("EHLO client.test")
        assert client.command("STARTTLS") == reply(r.BAD_SEQUENCE)
    finally:
        client.close()


def test_starttls_inside_implicit_tls_is_503(server: RunningServer, certs: Certs) -> None:
    client = TlsRawSmtp(ports(server)["smtps"], context=certs.client_context(), implicit=True)
    try:
        client.ehlo()
        assert client.command("STARTTLS") == reply(r.BAD_SEQUENCE)
    finally:
        client.close()


def test_failed_handshakes_leave_the_server_working(server: RunningServer, certs: Certs) -> None:
    listening = ports(server)
    garbage = RawSmtp(listening["smtps"])  # plaintext to the TLS port
    garbage.send(b"EHLO client.test\r\n")
    assert garbage.read_rest() == b""  # closed without a word in plaintext
    garbage.close()
    client = TlsRawSmtp(listening["submission"])
    client.ehlo()
    client.send(b"STARTTLS\r\n")
    assert client.read_reply() == reply(r.READY_TO_START_TLS)
    client.send(b"this is not a TLS ClientHello\r\n")
    rest = client.read_rest()  # a TLS alert at most, then the server closes
    assert re.match(rb"[0-9]{3}[ -]", rest) is None, rest
    client.close()
    wait_for(lambda: not server.app.smtp.sessions)
    with smtplib.SMTP_SSL("127.0.0.1", listening["smtps"], context=certs.client_context(), timeout=10) as ok:
        assert ok.noop()[0] == r.OK.code


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_is_refused(server: RunningServer, certs: Certs) -> None:
    """RFC 8996 / RFC 8314 §4.1: TLS 1.2 is the least the server speaks."""
    assert server.app.security.tls is not None
    assert server.app.security.tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    old = certs.client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        smtplib.SMTP_SSL("127.0.0.1", ports(server)["smtps"], context=old, timeout=10).quit()
    current = certs.client_context()
    current.maximum_version = ssl.TLSVersion.TLSv1_2
    with smtplib.SMTP_SSL("127.0.0.1", ports(server)["smtps"], context=current, timeout=10) as client:
        assert isinstance(client.sock, ssl.SSLSocket) and client.sock.version() == "TLSv1.2"


def test_min_version_tls_1_3(server_factory: Callable[..., RunningServer], certs: Certs) -> None:
    server = start_submission_server(
        server_factory, certs, tls=TLSConfig(cert=certs.cert, key=certs.key, min_version="TLSv1.3")
    )
    tls12 = certs.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        smtplib.SMTP_SSL("127.0.0.1", ports(server)["smtps"], context=tls12, timeout=10).quit()


# --- which listener offers what ---------------------------------------------------------------


def test_capture_mode_without_certificate_offers_no_tls(server_factory: Callable[..., RunningServer]) -> None:
    """Developers' SMTP libraries that upgrade and verify whenever STARTTLS is offered keep working."""
    server = server_factory()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo()
        assert not client.has_extn("starttls") and not client.has_extn("auth")
        code, text = client.docmd("AUTH", "PLAIN AGEAYg==")
        assert (code, text.decode()) == (r.ENCRYPTION_REQUIRED.code, f"5.7.11 {r.ENCRYPTION_REQUIRED.text}")
    assert not server.config.tls_dir.exists()


def test_self_signed_certificate_made_once(
    server_factory: Callable[..., RunningServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    caplog.set_level("INFO", logger="postoffice")
    first = server_factory(data_dir=data_dir, domains=("example.test",))
    cert_file, key_file = data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"
    assert "a self-signed certificate for mx.test was generated" in caplog.text
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mx.test", "localhost"]
    with smtplib.SMTP("127.0.0.1", first.port, timeout=10) as client:
        client.starttls(context=unverified_context())
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(cert_file.read_text())
    first.stop()
    caplog.clear()
    before = cert_file.read_bytes()
    server_factory(data_dir=data_dir, domains=("example.test",))
    assert cert_file.read_bytes() == before
    assert "using the self-signed certificate made earlier" in caplog.text


def test_self_signed_certificate_is_remade_for_a_new_hostname(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server_factory(data_dir=data_dir, domains=("example.test",)).stop()
    server_factory(data_dir=data_dir, domains=("example.test",), hostname="mail.example.test")
    certificate = x509.load_pem_x509_certificate((data_dir / "tls" / "cert.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mail.example.test", "localhost"]


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_self_signed_certificate_verifies_for_local_names(
    server_factory: Callable[..., RunningServer], tmp_path: Path, name: str
) -> None:
    # The generated certificate, trusted as its own CA, verifies however a local client names
    # this machine: host name and certificate checked as every default TLS client does.
    running = server_factory(data_dir=tmp_path / "data", domains=("example.test",))
    cert_file = tmp_path / "data" / "tls" / "cert.pem"
    context = ssl.create_default_context(cafile=str(cert_file))
    with smtplib.SMTP(name, running.port, local_hostname="client.test", timeout=10) as client:
        code, _ = client.starttls(context=context)
        assert code == r.READY_TO_START_TLS.code
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.getpeercert()["subjectAltName"] == (
            ("DNS", "mx.test"),
            ("DNS", "localhost"),
            ("IP Address", "127.0.0.1"),
            ("IP Address", "0:0:0:0:0:0:0:1"),
        )


def test_send_cafile_trusts_the_self_signed_certificate(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    Accounts(tmp_path / "data" / "accounts.json").add_user(ALICE, ALICE_PASSWORD)
    running = server_factory(data_dir=tmp_path / "data", domains=("example.test",))
    cert_file = tmp_path / "data" / "tls" / "cert.pem"
    result = subprocess.run(
        [
            sys.executable, "-m", "postoffice", "send", "--server", f"127.0.0.1:{running.port}",
            "--starttls", "--cafile", str(cert_file), "--from", "me@client.test",
            "--to", ALICE, "--body", "hello",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    [stored] = running.messages(ALICE)
    assert "with ESMTPS " in stored["Received"]


def test_a_certificate_without_the_local_names_is_made_again(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server_factory(data_dir=data_dir, domains=("example.test",)).stop()
    # What earlier versions made: the host name alone.
    old = trustme.CA().issue_cert("mx.test")
    old.private_key_pem.write_to_path(str(data_dir / "tls" / "key.pem"))
    old.cert_chain_pems[0].write_to_path(str(data_dir / "tls" / "cert.pem"))
    server_factory(data_dir=data_dir, domains=("example.test",))
    certificate = x509.load_pem_x509_certificate((data_dir / "tls" / "cert.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mx.test", "localhost"]


def test_certificate_and_key_in_one_file(tmp_path: Path, certs: Certs) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(certs.key.read_bytes() + certs.cert.read_bytes())
    ServerTls(combined)  # loads; a missing key would raise


def test_unloadable_certificate_is_one_line(tmp_path: Path, certs: Certs) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "postoffice", "serve", "--data-dir", str(tmp_path / "data"),
            "--smtp", "127.0.0.1:0", "--tls-cert", str(certs.cert), "--tls-key", str(tmp_path / "absent.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("postoffice: tls.cert: cannot load the certificate and key from")
    assert "absent.pem" in lines[0]


# --- SIGHUP -----------------------------------------------------------------------------------


def _peer_certificate(port: int, context: ssl.SSLContext) -> bytes:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=context)
        assert isinstance(client.sock, ssl.SSLSocket)
        certificate = client.sock.getpeercert(binary_form=True)
        assert certificate is not None
        return certificate


def test_sighup_reloads_the_certificate_without_dropping_sessions(
    server_process: Callable[..., ServerProcess], tmp_path: Path, certs: Certs
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    (live / "cert.pem").write_bytes(certs.cert.read_bytes())
    (live / "key.pem").write_bytes(certs.key.read_bytes())
    process = server_process(
        "--domain", "example.test", "--submission", "127.0.0.1:0",
        "--tls-cert", str(live / "cert.pem"), "--tls-key", str(live / "key.pem"),
    )  # fmt: skip
    Accounts(tmp_path / "data" / "accounts.json").add_user(ALICE, ALICE_PASSWORD)
    port = process_ports(process, ("smtp", "submission"))["smtp"]
    assert _peer_certificate(port, certs.client_context()) == certs.server_certificate_der()

    # A session in TLS before the reload...
    session = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    session.starttls(context=certs.client_context())
    session.ehlo()

    renewed = make_certs(tmp_path / "renewed", trustme.CA())
    (live / "cert.pem").write_bytes(renewed.cert.read_bytes())
    (live / "key.pem").write_bytes(renewed.key.read_bytes())
    process.process.send_signal(signal.SIGHUP)
    wait_for(lambda: any("event=tls-reloaded" in line for line in process.output))
    assert _peer_certificate(port, renewed.client_context()) == renewed.server_certificate_der()

    # ...goes on as if nothing happened.
    assert session.sendmail("x@elsewhere.test", [ALICE], message("x@elsewhere.test", ALICE, "kept")) == {}
    session.quit()

    # A broken pair on the next SIGHUP is refused; the renewed certificate stays in use.
    (live / "key.pem").write_bytes(certs.key.read_bytes())  # the old key: not the certificate's
    process.process.send_signal(signal.SIGHUP)
    wait_for(lambda: any("event=tls-reload-failed" in line for line in process.output))
    assert _peer_certificate(port, renewed.client_context()) == renewed.server_certificate_der()
    assert process.process.poll() is None
    assert process.terminate() == 0


def test_listeners_from_the_command_line(server_process: Callable[..., ServerProcess]) -> None:
    process = server_process("--submission", "127.0.0.1:0", "--smtps", "127.0.0.1:0")
    found = process_ports(process, ("smtp", "submission", "smtps"))
    assert len({found["smtp"], found["submission"], found["smtps"]}) == 3
    # The banner's later lines may still be on their way from the process.
    wait_for(lambda: any(line.startswith("tls certificate ") for line in list(process.output)))
    with smtplib.SMTP_SSL("127.0.0.1", found["smtps"], context=unverified_context(), timeout=10) as client:
        client.ehlo()
        assert client.has_extn("auth")
    assert process.terminate() == 0
