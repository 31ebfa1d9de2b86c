"""The TLS-ALPN-01 challenge (RFC 8737): the validation certificate, its serving on the HTTPS
listener to ``acme-tls/1`` handshakes, the ``[acme] challenge`` setting, and a whole order
against Pebble by a server that has an HTTPS listener and no port-80 listener.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from acme_pebble import free_port, pebble
from conftest import RunningServer, wait_until
from dns_zone import ZoneServer, dns_zone_server
from postoffice.acme.alpn import ACME_IDENTIFIER, ACME_TLS_PROTOCOL, validation_certificate
from postoffice.config import AcmeSettings, Listener, load_config
from postoffice.errors import ConfigError
from test_acme import HOST, presented_at, source, unverified

KEY_AUTHORIZATION = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


@pytest.fixture
def dns() -> Iterator[ZoneServer]:
    with dns_zone_server() as server:
        server.zone.a(HOST, "127.0.0.1")
        yield server


@pytest.mark.parametrize("name", [HOST, "a" * 63 + "." + "b" * 63 + ".acme.test"])
def test_the_validation_certificate_carries_the_key_authorization_digest_as_rfc_8737_asks(
    name: str,
) -> None:
    cert_pem, key_pem = validation_certificate(name, KEY_AUTHORIZATION)
    certificate = x509.load_pem_x509_certificate(cert_pem)
    identifier = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert identifier.oid.dotted_string == "1.3.6.1.5.5.7.1.31"
    assert identifier.critical
    # DER OCTET STRING (tag 4, length 32) of SHA-256 of the key authorization.
    digest = hashlib.sha256(KEY_AUTHORIZATION.encode("ascii")).digest()
    assert isinstance(identifier.value, x509.UnrecognizedExtension)
    assert identifier.value.value == b"\x04\x20" + digest
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName(name)]  # the identifier's name, and nothing else
    assert certificate.issuer == certificate.subject  # self-signed
    public = certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    algorithm = certificate.signature_hash_algorithm
    assert algorithm is not None
    public.verify(certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(algorithm))
    assert b"PRIVATE KEY" in key_pem


def handshake(port: int, name: str, protocols: list[str] | None) -> tuple[x509.Certificate, str | None]:
    """What a TLS client with SNI ``name`` offering ALPN ``protocols`` is shown on ``port``."""
    context = unverified()
    if protocols is not None:
        context.set_alpn_protocols(protocols)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def test_the_https_listener_shows_the_validation_certificate_for_a_name_being_validated(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory(
        hostname=HOST, domains=("acme.test",), http_listeners=(Listener("https", "127.0.0.1", 0),)
    )
    tls = server.app.security.tls
    assert tls is not None
    [https] = server.app.http_addresses
    before, _ = handshake(https.port, HOST, ["http/1.1"])
    tls.alpn_challenges.publish(HOST, KEY_AUTHORIZATION)
    shown, protocol = handshake(https.port, HOST, [ACME_TLS_PROTOCOL])
    assert protocol == ACME_TLS_PROTOCOL
    assert shown.extensions.get_extension_for_oid(ACME_IDENTIFIER).critical
    other, _ = handshake(https.port, "other.acme.test", [ACME_TLS_PROTOCOL])  # another name: as ever
    assert other == before
    assert presented_at(server.port, unverified()) == before  # STARTTLS for the name: as ever
    tls.alpn_challenges.withdraw(HOST)
    after, protocol = handshake(https.port, HOST, ["http/1.1"])
    assert after == before and protocol is None


def test_auto_answers_tls_alpn_01_on_https_when_no_acme_http_listener_is_given(tmp_path: Path) -> None:
    https, port80 = 'https = ["127.0.0.1:8443"]', 'acme_http = ["127.0.0.1:8080"]'

    def config(challenge: str, *listen: str) -> tuple[tuple[str, ...], int]:
        path = tmp_path / "postoffice.toml"
        text = f'[acme]\nenabled = true\nchallenge = "{challenge}"\n[listen]\n' + "\n".join(listen)
        path.write_text(text + "\n", encoding="utf-8")
        loaded = load_config(path, data_dir=tmp_path)
        return loaded.acme_challenges, len(loaded.acme_listeners)

    assert config("auto") == (("http-01",), 1)  # port 80 by default, as before
    assert config("auto", https) == (("tls-alpn-01",), 0)
    assert config("auto", https, port80) == (("http-01", "tls-alpn-01"), 1)
    assert config("http-01", https) == (("http-01", "tls-alpn-01"), 1)
    assert config("tls-alpn-01", https) == (("tls-alpn-01",), 0)
    with pytest.raises(ConfigError, match="tls-alpn-01 needs \\[listen\\] https"):
        config("tls-alpn-01")


def test_a_server_with_only_an_https_listener_obtains_a_certificate_by_tls_alpn_01(
    server_factory: Callable[..., RunningServer],
    dns: ZoneServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    port = free_port()  # nothing listens on Pebble's HTTP-01 port: only TLS-ALPN-01 can succeed
    with pebble(tmp_path / "pebble", dns_port=dns.port, http_port=free_port(), tls_port=port) as ca:
        settings = AcmeSettings(
            enabled=True, directory=ca.directory, ca_file=ca.ca_file, retry_min=1.0, retry_max=2.0
        )
        server = server_factory(
            hostname=HOST, acme=settings, http_listeners=(Listener("https", "127.0.0.1", port),)
        )
        assert server.app.acme_addresses == []  # nothing on port 80
        wait_until(lambda: source(server) == "acme", 30, "an ACME certificate")
        certificate = presented_at(server.port, ca.client_context())  # STARTTLS, verified
        assert certificate.issuer == ca.intermediate().subject
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)  # the HTTPS listener
        with ca.client_context().wrap_socket(raw, server_hostname=HOST) as https:
            der = https.getpeercert(binary_form=True)
        assert der is not None and x509.load_der_x509_certificate(der) == certificate
        assert f"event=acme-challenge name={HOST} type=tls-alpn-01" in caplog.text
    assert not server.app.security.tls.alpn_challenges._contexts  # type: ignore[union-attr]


def test_check_config_says_the_challenge_is_answered_on_the_https_listener(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    text = 'hostname = "mail.example.org"\n[acme]\nenabled = true\n[listen]\nhttps = ["0.0.0.0:443"]\n'
    path.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "postoffice", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "(TLS-ALPN-01 on 0.0.0.0:443)" in result.stdout, result.stdout
