"""The TLS-ALPN-01 challenge responder (RFC 8737): a validation certificate per name, shown to
the CA's TLS connections on the HTTPS listener while it validates.

Untrusted input seen here: the server name of each TLS ClientHello (OpenSSL parses it; it is
only looked up here).

RFC 8737 §3: the CA connects to port 443 with SNI set to the name being validated and ALPN
offering only ``acme-tls/1``; it must be shown a self-signed certificate whose only
subjectAltName is that name and which carries the critical acmeIdentifier extension
(id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31), a DER OCTET STRING of the SHA-256 of the key
authorization. Python's ``ssl`` has no ALPN-select callback that could choose the certificate
by the protocols offered, so the choice is made by name, in the servername callback of
:class:`postoffice.net.tls.ServerTls`: while a name is being validated (seconds), every
handshake for that name gets a context whose certificate is the validation certificate and
whose only ALPN protocol is ``acme-tls/1``. An ordinary client for that name in those seconds
fails its handshake and retries; docs/certificates.md says so.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# RFC 8737 §6.2: the ALPN protocol name; §6.1: id-pe-acmeIdentifier.
ACME_TLS_PROTOCOL = "acme-tls/1"
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# How long the validation certificate claims to be valid: it is thrown away after the order.
_VALIDITY = datetime.timedelta(days=7)


def acme_identifier_value(key_authorization: str) -> bytes:
    """The extension's value, DER: ``Authorization ::= OCTET STRING (SIZE (32))`` holding
    SHA-256 of the key authorization (RFC 8737 §3). Tag 0x04, length 0x20, then the digest."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return bytes((0x04, len(digest))) + digest


def validation_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The self-signed certificate for ``name`` and its key, both PEM (RFC 8737 §3)."""
    key = ec.generate_private_key(ec.SECP256R1())
    # The name goes in the subjectAltName only: a common name holds at most 64 characters.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME TLS-ALPN-01 validation")])
    now = datetime.datetime.now(datetime.UTC)
    identifier = x509.UnrecognizedExtension(ACME_IDENTIFIER, acme_identifier_value(key_authorization))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(identifier, critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _validation_context(name: str, key_authorization: str) -> ssl.SSLContext:
    cert_pem, key_pem = validation_certificate(name, key_authorization)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §4: TLS 1.2 or later
    context.set_alpn_protocols([ACME_TLS_PROTOCOL])
    # load_cert_chain reads files only; the key lives for the instant it takes, mode 0600.
    with tempfile.TemporaryDirectory(prefix="postoffice-alpn-") as scratch:
        pem = Path(scratch) / "validation.pem"
        pem.touch(mode=0o600)
        pem.write_bytes(key_pem + cert_pem)
        context.load_cert_chain(pem)
    return context


class TlsAlpnChallenges:
    """Names being validated and their validation contexts; shared by the ACME thread (which
    publishes) and the event loop's servername callback (which looks up)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: dict[str, ssl.SSLContext] = {}

    def publish(self, name: str, key_authorization: str) -> None:
        context = _validation_context(name, key_authorization)
        with self._lock:
            self._contexts[name.lower()] = context

    def withdraw(self, name: str) -> None:
        with self._lock:
            self._contexts.pop(name.lower(), None)

    def context_for(self, name: str | None) -> ssl.SSLContext | None:
        """The validation context for SNI ``name`` (an A-label, as Python gives it), if any."""
        if not name or not self._contexts:
            return None
        with self._lock:
            return self._contexts.get(name.lower().rstrip("."))
