"""The web side over HTTPS (``[listen] https`` / ``--https``): the same application (web UI, JSON
API, our MTA-STS policy, which RFC 8461 §3.3 wants at ``https://mta-sts.DOMAIN/``), with the
server's own certificate context, so a new certificate (ACME, SIGHUP) reaches it without a
restart. Real TLS clients (httpx, ssl) against servers on loopback; a trustme CA signs."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509

from conftest import RunningServer, ServerProcess, spawn_server
from postoffice.accounts import Accounts
from postoffice.config import load_config
from postoffice.config.names import Listener
from postoffice.config.tables import MtaStsSettings, TLSConfig
from postoffice.mailauth.mta_sts import StsPolicy, parse_policy

pytestmark = pytest.mark.timeout(90)

DOMAIN = "example.test"
HOST = "mail.example.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def cert_files(ca: trustme.CA, directory: Path, *names: str) -> tuple[Path, Path]:
    issued = ca.issue_cert(*names)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def https_port(server: RunningServer) -> int:
    [address] = [a for a in server.app.http_addresses if a.scheme == "https"]
    return address.port


def get(port: int, path: str, host: str, context: ssl.SSLContext) -> httpx.Response:
    """GET over TLS to 127.0.0.1, with ``host`` as SNI, certificate name and Host header."""
    with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
        request = client.build_request(
            "GET",
            f"https://127.0.0.1:{port}{path}",
            headers={"Host": host},
            extensions={"sni_hostname": host},
        )
        return client.send(request)


def presented_serial(port: int, host: str) -> int:
    """The serial number of the certificate the listener presents now."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_the_mta_sts_policy_and_the_api_are_served_over_https(
    server_factory: Callable[..., RunningServer], ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = cert_files(ca, tmp_path / "tls", HOST, f"mta-sts.{DOMAIN}")
    server = server_factory(
        hostname=HOST,
        domains=(DOMAIN,),
        tls=TLSConfig(cert=cert, key=key),
        mta_sts=MtaStsSettings(mode="enforce", max_age=604800),
        http_listeners=(Listener("http", "127.0.0.1", 0), Listener("https", "127.0.0.1", 0)),
    )
    port = https_port(server)
    assert port != server.http_port
    response = get(port, "/.well-known/mta-sts.txt", f"mta-sts.{DOMAIN}", trusting(ca))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert parse_policy(response.text) == StsPolicy("enforce", 604800, (HOST,))
    # The rest of the application is there too: the operations API, JSON.
    status = get(port, "/api/v1/status", HOST, trusting(ca))
    assert status.status_code == 200
    listeners = status.json()["listeners"]
    assert f"https 127.0.0.1:{port}" in listeners and f"http 127.0.0.1:{server.http_port}" in listeners
    # Plain HTTP on the TLS port is not answered as HTTP.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=5)


def test_the_web_api_works_over_https_alone(
    server_factory: Callable[..., RunningServer], ca: trustme.CA, tmp_path: Path
) -> None:
    """Capture mode on loopback, HTTPS only (http = []): the mailbox API answers over TLS."""
    cert, key = cert_files(ca, tmp_path / "tls", "localhost")
    server = server_factory(
        tls=TLSConfig(cert=cert, key=key), http_listeners=(Listener("https", "127.0.0.1", 0),)
    )
    [address] = server.app.http_addresses
    assert address.scheme == "https"
    response = get(address.port, "/api/v1/messages", "localhost", trusting(ca))
    assert response.status_code == 200 and isinstance(response.json(), dict | list)


def test_a_login_over_https_gets_a_secure_cookie_and_the_api_answers(
    server_factory: Callable[..., RunningServer], ca: trustme.CA, tmp_path: Path
) -> None:
    data_dir = tmp_path / "mta"
    Accounts(data_dir / "accounts.json").add_user(f"alice@{DOMAIN}", "alice-password")
    cert, key = cert_files(ca, tmp_path / "tls", HOST)
    server = server_factory(
        hostname=HOST,
        domains=(DOMAIN,),
        data_dir=data_dir,
        tls=TLSConfig(cert=cert, key=key),
        http_listeners=(Listener("https", "127.0.0.1", 0),),
    )
    base = f"https://127.0.0.1:{https_port(server)}"
    sni = {"sni_hostname": HOST}
    with httpx.Client(verify=trusting(ca), trust_env=False, timeout=10, headers={"Host": HOST}) as http:
        assert http.get(f"{base}/api/v1/mailboxes", extensions=sni).status_code == 401
        login = http.post(
            f"{base}/api/v1/login",
            json={"address": f"alice@{DOMAIN}", "password": "alice-password"},
            extensions=sni,
        )
        assert login.status_code == 200, login.text
        # The session cookie is Secure: the request came over https (web/api.py).
        assert "secure" in login.headers["set-cookie"].lower()
        mailboxes = http.get(f"{base}/api/v1/mailboxes", extensions=sni)
        assert mailboxes.status_code == 200, mailboxes.text


def test_a_new_certificate_reaches_https_without_a_restart(
    server_factory: Callable[..., RunningServer], ca: trustme.CA, tmp_path: Path
) -> None:
    first_cert, first_key = cert_files(ca, tmp_path / "first", HOST)
    server = server_factory(
        hostname=HOST,
        domains=(DOMAIN,),
        tls=TLSConfig(cert=first_cert, key=first_key),
        http_listeners=(Listener("https", "127.0.0.1", 0),),
    )
    port = https_port(server)
    before = presented_serial(port, HOST)
    # What ACME does with a renewed certificate (net/certwatch.py): the shared context swaps.
    cert, key = cert_files(ca, tmp_path / "renewed", HOST)
    tls = server.app.security.tls
    assert tls is not None and tls.use(cert, key, "acme")
    after = presented_serial(port, HOST)
    assert after != before
    assert get(port, "/api/v1/status", HOST, trusting(ca)).status_code == 200


def test_https_is_configured_in_the_file_and_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text('[listen]\nhttps = ["0.0.0.0:443"]\n')
    assert load_config(path).http_listeners == (
        Listener("http", "127.0.0.1", 8025),
        Listener("https", "0.0.0.0", 443),
    )
    path.write_text('[listen]\nhttp = []\nhttps = ["[::1]:8443"]\n')
    assert load_config(path).http_listeners == (Listener("https", "::1", 8443),)
    flag = load_config(path, listeners=[Listener("https", "127.0.0.1", 9443)])
    assert flag.http_listeners == (Listener("https", "127.0.0.1", 9443),)
    assert load_config(None).http_listeners == (Listener("http", "127.0.0.1", 8025),)  # not unless asked


def wait_for_line(process: ServerProcess, prefix: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in list(process.output):
            if line.startswith(prefix):
                return line.strip()
        time.sleep(0.05)
    raise AssertionError(f"no {prefix!r} line in:\n" + "".join(process.output))


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_https_in_the_banner_and_with_workers(tmp_path: Path, ca: trustme.CA, workers: int) -> None:
    cert, key = cert_files(ca, tmp_path / "tls", "localhost")
    process = spawn_server(
        tmp_path / "data",
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--workers",
        str(workers),
    )
    try:
        line = wait_for_line(process, "listening https ")
        port = int(line.rsplit(":", 1)[1])
        response = get(port, "/api/v1/status", "localhost", trusting(ca))
        assert response.status_code == 200 and f"https 127.0.0.1:{port}" in response.json()["listeners"]
        shown = subprocess.run(
            [sys.executable, "-m", "postoffice", "status", "--http", f"127.0.0.1:{process.http_port()}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert f"listening https 127.0.0.1:{port}" in shown.stdout, shown.stdout + shown.stderr
    finally:
        assert process.terminate() == 0
