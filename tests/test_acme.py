"""Automatic certificates (RFC 8555) against a real ACME server: Pebble, on loopback.

A server with ``[acme] enabled`` orders a certificate for its host name from Pebble, answers
the HTTP-01 challenge on its ``[listen] acme_http`` listener and presents the certificate on
STARTTLS; it renews a short-lived one without dropping sessions, keeps the certificate it has
when a challenge fails or the CA is down, and shows the certificate in status and /metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509

from acme_pebble import Pebble, free_port, pebble
from conftest import RunningServer, ServerProcess, wait_until
from dns_zone import ZoneServer, dns_zone_server
from postoffice.acme.renewal import Backoff
from postoffice.config import AcmeSettings, Listener
from postoffice.config.tables import MtaStsSettings
from postoffice.status import render_status

HOST = "mail.acme.test"


@pytest.fixture
def dns() -> Iterator[ZoneServer]:
    with dns_zone_server() as server:
        server.zone.a(HOST, "127.0.0.1")
        yield server


@pytest.fixture
def acme_port() -> int:
    return free_port()


def acme_server(
    server_factory: Callable[..., RunningServer], ca: Pebble | None, acme_port: int, **acme: object
) -> RunningServer:
    settings = AcmeSettings(
        enabled=True,
        directory=ca.directory if ca is not None else str(acme.pop("directory")),
        ca_file=ca.ca_file if ca is not None else Path(str(acme.pop("ca_file"))),
        email="postmaster@acme.test",
        retry_min=float(str(acme.pop("retry_min", 1.0))),
        retry_max=float(str(acme.pop("retry_max", 2.0))),
    )
    return server_factory(
        hostname=HOST,
        acme=settings,
        acme_http_listeners=(Listener("acme_http", "127.0.0.1", acme_port),),
    )


def presented(server: RunningServer, context: ssl.SSLContext) -> x509.Certificate:
    """The certificate a STARTTLS client is shown (chain checked against ``context``)."""
    return presented_at(server.port, context)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def source(server: RunningServer) -> str | None:
    tls = server.app.security.tls
    return tls.source if tls is not None else None


def test_a_fresh_server_obtains_a_certificate_and_presents_it_on_starttls(
    server_factory: Callable[..., RunningServer], dns: ZoneServer, acme_port: int, tmp_path: Path
) -> None:
    with pebble(tmp_path / "pebble", dns_port=dns.port, http_port=acme_port) as ca:
        server = acme_server(server_factory, ca, acme_port)
        wait_until(lambda: source(server) == "acme", 30, "an ACME certificate")
        certificate = presented(server, ca.client_context())  # verified: Pebble's chain, our name
        assert certificate.issuer == ca.intermediate().subject
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [HOST]
        assert presented_at(server.port, unverified(), sni=False) == certificate
        files = server.config.acme_dir
        assert {path.name for path in files.iterdir()} >= {"account.key", "cert.key", "cert.pem"}
        assert (files / "account.key").stat().st_mode & 0o777 == 0o600
        assert (files / "cert.key").stat().st_mode & 0o777 == 0o600


def test_backoff_doubles_from_retry_min_up_to_retry_max() -> None:
    backoff = Backoff(600.0, 3600.0)
    assert [backoff.after(failures) for failures in range(1, 6)] == [600, 1200, 2400, 3600, 3600]


def test_postoffice_status_prints_each_certificate_with_its_source_and_expiry() -> None:
    certificate = {"source": "acme", "names": [HOST], "not_after": "2027-03-06T21:10:00+00:00"}
    text = render_status({"queue": {}, "certificates": [certificate]})
    assert f"  certificate (acme): {HOST} expires 2027-03-06T21:10:00+00:00" in text.splitlines()


def test_status_and_metrics_show_the_certificate_expiry_and_source(
    server_factory: Callable[..., RunningServer], dns: ZoneServer, acme_port: int, tmp_path: Path
) -> None:
    with pebble(tmp_path / "pebble", dns_port=dns.port, http_port=acme_port) as ca:
        server = acme_server(server_factory, ca, acme_port)
        wait_until(lambda: source(server) == "acme", 30, "an ACME certificate")
        web = server.app.http_addresses[0]
        base = f"http://{web.host}:{web.port}"
        with urllib.request.urlopen(f"{base}/api/v1/status", timeout=10) as response:
            status = json.load(response)
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            metrics = response.read().decode()
    (certificate,) = status["certificates"]
    assert certificate["source"] == "acme"
    assert certificate["names"] == [HOST]
    tls = server.app.security.tls
    assert tls is not None and tls.info is not None
    assert certificate["not_after"] == tls.info.not_after.isoformat()
    samples = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('postoffice_certificate_expiry_timestamp_seconds{source="acme"}')
    ]
    assert samples == [tls.info.not_after.timestamp()]


def test_the_challenge_listener_answers_only_challenges(
    server_factory: Callable[..., RunningServer], dns: ZoneServer, acme_port: int, tmp_path: Path
) -> None:
    with pebble(tmp_path / "pebble", dns_port=dns.port, http_port=acme_port) as ca:
        acme_server(server_factory, ca, acme_port)
        for path in ("/", "/.well-known/acme-challenge/", "/.well-known/acme-challenge/unknown", "/metrics"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{acme_port}{path}", timeout=10)
            assert refused.value.code == 404, path
            assert refused.value.read() == b""


def test_a_short_lived_certificate_is_renewed_without_dropping_sessions(
    server_factory: Callable[..., RunningServer],
    dns: ZoneServer,
    acme_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    with pebble(tmp_path / "pebble", dns_port=dns.port, http_port=acme_port, validity=9) as ca:
        server = acme_server(server_factory, ca, acme_port)
        wait_until(lambda: source(server) == "acme", 30, "an ACME certificate")
        first = presented(server, unverified())
        # A session in TLS before the renewal...
        session = smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=10)
        session.starttls(context=unverified())
        # ... renewal at two thirds of nine seconds.
        wait_until(lambda: caplog.text.count("event=acme-issued") >= 2, 30, "a renewal")
        wait_until(
            lambda: presented(server, unverified()).serial_number != first.serial_number, 10, "renewed"
        )
        assert session.noop()[0] == 250  # ... goes on
        session.quit()
    assert "acme-renewal-scheduled" in caplog.text


def test_a_failed_challenge_is_one_line_and_the_self_signed_certificate_stays(
    server_factory: Callable[..., RunningServer],
    dns: ZoneServer,
    acme_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    dns.zone._names.clear()
    dns.zone.a(HOST, "127.0.0.2")  # the CA looks for us where nothing listens
    with pebble(tmp_path / "pebble", dns_port=dns.port, http_port=acme_port) as ca:
        server = acme_server(server_factory, ca, acme_port, retry_min=30.0, retry_max=60.0)
        wait_until(lambda: "event=acme-failed" in caplog.text, 30, "a failed order")
    (failure,) = [record for record in caplog.records if "event=acme-failed" in record.getMessage()]
    line = failure.getMessage()
    assert "validation failed" in line and HOST in line and "retry_in=30s" in line, line
    assert "127.0.0.2" in line  # the CA's own words: where it looked
    assert failure.exc_info is None and "\n" not in line
    assert source(server) == "self-signed"
    assert "self-signed" in presented(server, unverified()).issuer.rfc4514_string()


def test_a_failed_renewal_keeps_the_certificate_in_use(
    server_factory: Callable[..., RunningServer],
    dns: ZoneServer,
    acme_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    with pebble(tmp_path / "pebble", dns_port=dns.port, http_port=acme_port, validity=6) as ca:
        server = acme_server(server_factory, ca, acme_port, retry_min=30.0, retry_max=60.0)
        wait_until(lambda: source(server) == "acme", 30, "an ACME certificate")
        first = presented(server, unverified())
        dns.zone._names.clear()
        dns.zone.a(HOST, "127.0.0.2")  # the renewal's challenge fails
        wait_until(lambda: "event=acme-failed" in caplog.text, 30, "a failed renewal")
        assert presented(server, unverified()).serial_number == first.serial_number
        assert source(server) == "acme"
    assert caplog.text.count("event=acme-issued") == 1


def test_the_ca_being_down_is_retried_and_nothing_is_lost(
    server_factory: Callable[..., RunningServer],
    dns: ZoneServer,
    acme_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    port = free_port()
    workdir = tmp_path / "pebble"
    workdir.mkdir()
    trustme.CA().cert_pem.write_to_path(str(workdir / "ca.pem"))  # Pebble's own replaces it
    server = acme_server(
        server_factory,
        None,
        acme_port,
        directory=f"https://127.0.0.1:{port}/dir",
        ca_file=workdir / "ca.pem",  # written when Pebble starts
    )
    wait_until(lambda: "cannot reach the CA" in caplog.text, 30, "a failed attempt")
    assert source(server) == "self-signed"
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=10) as client:
        client.starttls(context=unverified())
        client.sendmail("a@client.test", ["b@acme.test"], b"Subject: while the CA is down\r\n\r\nhi\r\n")
    with pebble(workdir, dns_port=dns.port, http_port=acme_port, port=port):
        wait_until(lambda: source(server) == "acme", 30, "an ACME certificate once the CA is back")
    assert len(server.messages("b@acme.test")) == 1
    assert all(record.exc_info is None for record in caplog.records if "acme" in record.getMessage())


def test_with_workers_worker_0_orders_and_every_worker_presents_the_certificate(
    server_process: Callable[..., ServerProcess], dns: ZoneServer, acme_port: int, tmp_path: Path
) -> None:
    with pebble(tmp_path / "pebble", dns_port=dns.port, http_port=acme_port) as ca:
        config = tmp_path / "postoffice.toml"
        config.write_text(
            f"[acme]\nenabled = true\ndirectory = {json.dumps(ca.directory)}\n"
            f"ca_file = {json.dumps(str(ca.ca_file))}\nretry_min = 1\nretry_max = 2\n"
            f'[listen]\nacme_http = ["127.0.0.1:{acme_port}"]\n',
            encoding="utf-8",
        )
        running = server_process("--config", str(config), "--workers", "2", "--hostname", HOST)
        wait_until(lambda: any("event=acme-issued" in line for line in running.output), 30, "a certificate")
        intermediate = ca.intermediate().subject

        def all_acme() -> bool:
            # One connection each from a new source port: the kernel spreads them over both.
            return all(presented_at(running.port, unverified()).issuer == intermediate for _ in range(8))

        wait_until(all_acme, 20, "every worker presenting the ACME certificate")
        presented_at(running.port, ca.client_context())  # and it verifies
        assert sum("event=acme-order" in line for line in running.output) == 1  # worker 0 alone
        # Worker 0 switched when it saved the file; worker 1 found the file on its own.
        assert sum("event=tls-reloaded" in line and "source=acme" in line for line in running.output) == 2
        assert running.terminate() == 0


def presented_at(port: int, context: ssl.SSLContext, *, sni: bool = True) -> x509.Certificate:
    """The certificate STARTTLS on ``port`` shows; ``sni=False`` sends no server name (an IP
    address is never sent as one, RFC 6066 §3), as many MTAs do."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        if sni:
            client._host = HOST  # the name the certificate is checked against, and SNI
        client.starttls(context=context)
        der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_reload_does_not_turn_acme_on_without_a_restart(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    changed = dataclasses.replace(server.config, acme=AcmeSettings(enabled=True))

    async def reload() -> None:
        server.app.apply(changed)

    server.call(reload())
    assert "event=reload-ignored key=acme reason=restart-needed" in caplog.text
    assert not server.app.config.acme.enabled and server.app.acme is None


def test_with_mta_sts_on_the_certificate_covers_the_policy_host_served_over_https(
    server_factory: Callable[..., RunningServer], dns: ZoneServer, acme_port: int, tmp_path: Path
) -> None:
    """RFC 8461 §3.3: senders fetch https://mta-sts.DOMAIN/.well-known/mta-sts.txt and check the
    certificate for that name; the ACME certificate carries it, and [listen] https presents it."""
    dns.zone.a("mta-sts.acme.test", "127.0.0.1")
    with pebble(tmp_path / "pebble", dns_port=dns.port, http_port=acme_port) as ca:
        settings = AcmeSettings(
            enabled=True, directory=ca.directory, ca_file=ca.ca_file, retry_min=1.0, retry_max=2.0
        )
        server = server_factory(
            hostname=HOST,
            domains=("acme.test",),
            acme=settings,
            mta_sts=MtaStsSettings(mode="enforce"),
            acme_http_listeners=(Listener("acme_http", "127.0.0.1", acme_port),),
            http_listeners=(Listener("https", "127.0.0.1", 0),),
        )
        wait_until(lambda: source(server) == "acme", 30, "an ACME certificate")
        certificate = presented(server, ca.client_context())
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [HOST, "mta-sts.acme.test"]
        [https] = server.app.http_addresses
        with httpx.Client(verify=ca.client_context(), trust_env=False, timeout=10) as client:
            request = client.build_request(
                "GET",
                f"https://127.0.0.1:{https.port}/.well-known/mta-sts.txt",
                headers={"Host": "mta-sts.acme.test"},
                extensions={"sni_hostname": "mta-sts.acme.test"},
            )
            response = client.send(request)
        assert response.status_code == 200 and "mode: enforce" in response.text
