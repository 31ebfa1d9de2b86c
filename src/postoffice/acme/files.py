"""The ACME state on disk, ``<data-dir>/acme/``: two keys and the certificate.

Untrusted input seen here: none from the network; the certificate written here came from the
CA and was checked by :mod:`postoffice.acme.certificate` first.

``account.key`` signs the requests to the CA (RFC 8555 §6.2); ``cert.key`` is the
certificate's own key, made once and kept across renewals, so a TLSA 3 1 1 record (RFC 7672)
and every process's view of the key stay the same while only ``cert.pem`` changes. Each file is
written whole and renamed into place (:func:`postoffice.durable.replace_file`): a reader, such
as another worker, sees the old certificate or the new one, never half of either.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from postoffice.durable import replace_file

log = logging.getLogger("postoffice.acme")

KEY_MODE = 0o600
CERT_MODE = 0o644
DIRECTORY_MODE = 0o700


@dataclass(frozen=True, slots=True)
class AcmeFiles:
    """Where the ACME account key, the certificate's key and the certificate are kept."""

    directory: Path

    @property
    def account_key(self) -> Path:
        return self.directory / "account.key"

    @property
    def key(self) -> Path:
        return self.directory / "cert.key"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def issued_by(self) -> Path:
        """The directory URL ``cert.pem`` was ordered from: another CA configured since (staging
        to production, say) means a new order now."""
        return self.directory / "cert.ca"

    def has_certificate(self) -> bool:
        return self.cert.is_file() and self.key.is_file()

    def ensure_keys(self) -> None:
        """Make the directory and the two keys, each once (ECDSA P-256: RFC 8555 §6.2 ES256)."""
        self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        for path in (self.account_key, self.key):
            if not path.exists():
                _new_key(path)

    def read_key(self, path: Path) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: not an ECDSA key")
        return key

    def key_pem(self) -> bytes:
        return self.key.read_bytes()

    def save_certificate(self, chain: bytes, directory: str) -> None:
        # The chain first: a crash between the two leaves the old CA's name, so the next start
        # orders again rather than keeping a certificate it cannot tell the origin of.
        replace_file(self.cert, chain, mode=CERT_MODE)
        replace_file(self.issued_by, directory.encode() + b"\n", mode=CERT_MODE)

    def ordered_from(self) -> str | None:
        try:
            return self.issued_by.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None

    def signature(self) -> tuple[int, int, int] | None:
        """What changes when ``cert.pem`` is replaced (inode, mtime, size); None: no file."""
        try:
            status = os.stat(self.cert)
        except OSError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size


def _new_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    replace_file(path, pem, mode=KEY_MODE)
    log.info("event=acme-key-created path=%s", path)
