"""What a certificate says about itself: names, issuer, validity, and where it came from.

Untrusted input seen here: certificate chains in PEM from the ACME CA (before they are saved)
and from files the operator names, parsed by ``cryptography``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

# Where a server certificate comes from.
SOURCES = ("acme", "self-signed", "file")


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """The leaf certificate of a chain."""

    source: str
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    path: str = ""

    @property
    def lifetime(self) -> datetime.timedelta:
        return self.not_after - self.not_before

    def renew_at(self) -> datetime.datetime:
        """Two thirds into its lifetime (what Let's Encrypt advises for 90-day certificates:
        renew with 30 days left)."""
        return self.not_before + self.lifetime * 2 / 3

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "subject": self.subject,
            "issuer": self.issuer,
            "names": list(self.names),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "path": self.path,
        }


def certificate_info(chain: bytes, source: str, path: str = "") -> CertificateInfo:
    """The first certificate in ``chain`` (PEM); ValueError if there is none."""
    leaf = x509.load_pem_x509_certificate(chain)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return CertificateInfo(
        source=source,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        names=names,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        path=path,
    )


def read_certificate_info(path: Path, source: str) -> CertificateInfo | None:
    """The certificate in the file at ``path``; None if it cannot be read."""
    try:
        return certificate_info(path.read_bytes(), source, str(path))
    except (OSError, ValueError):
        return None
