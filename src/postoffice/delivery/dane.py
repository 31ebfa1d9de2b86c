"""DANE for SMTP (RFC 7672): an MX host's TLSA records, and its certificate checked against them.

Untrusted input seen here: TLSA records from the MX host's zone, and the certificate the host
presents. Only an answer the resolver marks authenticated (the AD bit) counts, and only when
the configuration says the resolver validates DNSSEC (``[delivery] dns_validates``): from any
other resolver the bit means nothing (RFC 6698 §4.1, RFC 7672 §2.1.1).

Which records are usable (§2.2, §3.1): DANE-TA(2) and DANE-EE(3), selector Cert(0) or
SPKI(1), matching Full(0), SHA2-256(1) or SHA2-512(2), with data of the right length. The
rest (PKIX usages 0 and 1, unknown numbers, a digest of the wrong length) is unusable; when
every record is unusable, TLS is still mandatory but unauthenticated (§2.2).

DANE-EE matches the server's own certificate or key, with no name or expiry check (§3.1.1).
DANE-TA names a trust anchor the chain must lead to, with the MX name checked (§3.1.2); Python
3.11's ``ssl`` shows a client only the server's own certificate, so a DANE-TA record is usable
here when it carries the whole anchor certificate (``2 0 0``) and the server's certificate is
signed by it; DANE-TA digests are counted unusable.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

DANE_TA, DANE_EE = 2, 3
CERT, SPKI = 0, 1
FULL, SHA256, SHA512 = 0, 1, 2
_DIGEST_SIZE = {SHA256: 32, SHA512: 64}


@dataclass(frozen=True, slots=True)
class Tlsa:
    usage: int
    selector: int
    matching: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching} {self.data.hex()[:16]}"

    @property
    def usable(self) -> bool:
        if self.usage == DANE_EE:
            return self.selector in (CERT, SPKI) and _data_fits(self.matching, self.data)
        # DANE-TA: only the whole anchor certificate (see the module docstring).
        return self.usage == DANE_TA and self.selector == CERT and self.matching == FULL and bool(self.data)


@dataclass(frozen=True, slots=True)
class DanePolicy:
    """The authenticated TLSA RRset of one MX host: TLS is mandatory; ``records`` empty means
    all were unusable (encrypt, without authentication)."""

    name: str  # _25._tcp.mx.example.
    host: str
    records: tuple[Tlsa, ...]
    unusable: int


def dane_policy(name: str, host: str, records: Iterable[Tlsa]) -> DanePolicy:
    found = list(records)
    usable = tuple(record for record in found if record.usable)
    return DanePolicy(name, host, usable, len(found) - len(usable))


def check_certificate(policy: DanePolicy, der: bytes | None) -> str | None:
    """None when the server's certificate ``der`` matches a usable record, else why not."""
    if not policy.records:
        return None  # all unusable: encryption was the requirement (§2.2)
    if der is None:
        return "no certificate presented"
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return "the certificate cannot be parsed"
    for record in policy.records:
        if record.usage == DANE_EE and _matches(record, certificate):
            return None
        if record.usage == DANE_TA and _signed_by_anchor(record.data, certificate, policy.host):
            return None
    return f"the certificate matches none of the {len(policy.records)} usable TLSA records at {policy.name}"


def _data_fits(matching: int, data: bytes) -> bool:
    if matching == FULL:
        return bool(data)
    return matching in _DIGEST_SIZE and len(data) == _DIGEST_SIZE[matching]


def _selected(selector: int, certificate: x509.Certificate) -> bytes:
    if selector == CERT:
        return certificate.public_bytes(Encoding.DER)
    return certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _matches(record: Tlsa, certificate: x509.Certificate) -> bool:
    selected = _selected(record.selector, certificate)
    if record.matching == SHA256:
        return hashlib.sha256(selected).digest() == record.data
    if record.matching == SHA512:
        return hashlib.sha512(selected).digest() == record.data
    return selected == record.data


def _signed_by_anchor(anchor_der: bytes, certificate: x509.Certificate, host: str) -> bool:
    """§3.1.2: the certificate is issued by the anchor, in its validity period, and names the
    MX host (RFC 7672 §3.2.3: the MX host name, in a DNS subjectAltName)."""
    try:
        anchor = x509.load_der_x509_certificate(anchor_der)
        certificate.verify_directly_issued_by(anchor)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    now = datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        return False
    return any(_name_matches(name, host) for name in names.value.get_values_for_type(x509.DNSName))


def _name_matches(name: str, host: str) -> bool:
    """RFC 6125 §6.4.3, as RFC 7672 §3.2.3 allows: exact, or "*" for the whole leftmost label."""
    name, host = name.lower().rstrip("."), host.lower().rstrip(".")
    if name.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == name[2:]
    return name == host


def tlsa_name(host: str, port: int) -> str:
    """Where an MX host's TLSA records are (RFC 6698 §3, RFC 7672 §2.2.3)."""
    return f"_{port}._tcp.{host.rstrip('.')}"
