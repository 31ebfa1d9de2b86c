"""A self-signed certificate for the server's host name and the local machine, made once with
``cryptography``.

Untrusted input seen here: none from the network. The files in ``<data-dir>/tls/`` were written
here; they are read back at each start to check that they still belong together, still name
the host and have not expired, and are replaced otherwise.

Used only when no certificate is configured: mail clients will warn about it (nobody vouches
for it), but the connection is encrypted, which is what RFC 8314 asks of submission, and
opportunistic STARTTLS between MTAs does not verify certificates anyway (RFC 7435 §1.3).
Besides the host name it names ``localhost``, ``127.0.0.1`` and ``::1``, so a local client
that trusts this very file (``postoffice send --cafile <data-dir>/tls/cert.pem``) can verify
it whichever way it reaches the server on this machine.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from postoffice.durable import replace_file

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
# 825 days: the longest validity Apple platforms accept for a TLS server certificate, so the
# certificate can be trusted by hand on every common client. A fresh one is made at start
# when less than RENEW_BEFORE is left.
VALIDITY = datetime.timedelta(days=825)
RENEW_BEFORE = datetime.timedelta(days=30)
# How clients on this machine name it, besides the host name.
LOCAL_NAMES = ("localhost",)
LOCAL_ADDRESSES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path, bool]:
    """The certificate and key files for ``hostname`` in ``directory``, and whether they were
    made just now (False: an earlier one is still good)."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    now = datetime.datetime.now(datetime.UTC)
    if _still_good(cert_path, key_path, hostname, now):
        return cert_path, key_path, False
    key = ec.generate_private_key(ec.SECP256R1())  # P-256: every TLS 1.2+ client has it
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, _ascii(hostname)),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "postoffice self-signed"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate a client's clock skew
        .not_valid_after(now + VALIDITY)
        # RFC 6125 §6.4.4: clients match the host name against the subjectAltName; an IP
        # address is matched against its iPAddress entries only (RFC 5280 §4.2.1.6).
        .add_extension(x509.SubjectAlternativeName(_alt_names(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Key identifiers: OpenSSL's strict verification (Python 3.13's default) wants them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, True


def _alt_names(hostname: str) -> list[x509.GeneralName]:
    dns = dict.fromkeys((_ascii(hostname), *LOCAL_NAMES))
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    names += [x509.IPAddress(address) for address in LOCAL_ADDRESSES]
    return names


def _ascii(hostname: str) -> str:
    # A certificate names hosts in their ASCII (A-label) form (RFC 5280 §7.2).
    return hostname.encode("idna").decode("ascii")


def _still_good(cert_path: Path, key_path: Path, hostname: str, now: datetime.datetime) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    return (
        key.public_key().public_bytes(pem, public) == certificate.public_key().public_bytes(pem, public)
        # One made before the local names were added is made again.
        and set(_alt_names(hostname)) <= set(names)
        and certificate.not_valid_after_utc - RENEW_BEFORE > now
    )


def _write(path: Path, data: bytes) -> None:
    """Write ``path`` atomically with mode 0600 (it may be a private key), flushed to disk."""
    replace_file(path, data, mode=0o600)
