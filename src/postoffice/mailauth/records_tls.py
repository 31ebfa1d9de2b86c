"""The transport-security records of a local domain: MTA-STS (RFC 8461 §3.1) and DANE's TLSA
(RFC 7672 §3.1, RFC 7671 §5.1), for ``postoffice dns DOMAIN``.

Untrusted input seen here: none; the facts come from the configuration and the server's own
certificate file (:func:`current_certificate`), read as PEM.

- ``_mta-sts.DOMAIN`` TXT carries an id that is a hash of the policy text the web listener
  serves (:func:`~postoffice.mailauth.mta_sts.policy_id`): change ``[mta_sts]`` and the id
  changes with it, which tells senders to fetch the policy again (§3.1).
- ``mta-sts.DOMAIN`` must reach an HTTPS server with a certificate for that name: a CNAME to
  the mail host is the usual way (the certificate then needs that name too).
- ``_25._tcp.HOST`` TLSA ``3 1 1``: DANE-EE over the SHA-256 of the certificate's public key, so
  it survives a renewal that keeps the key, and only means something in a DNSSEC-signed zone.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from postoffice.config import Config
from postoffice.mailauth.mta_sts import our_policy, render_record
from postoffice.mailauth.records import MailDomain, Match, Record

# The self-signed certificate's file in <data-dir>/tls (net/selfsigned.py CERT_FILE).
SELF_SIGNED_CERT = "cert.pem"
SMTP_PORT = 25  # RFC 7672 §2.2.3: the TLSA records of an MX host are at _25._tcp


def current_certificate(config: Config) -> Path:
    """The certificate the SMTP listeners present: ``[tls] cert``, else the self-signed one."""
    return config.tls.cert if config.tls.cert is not None else config.tls_dir / SELF_SIGNED_CERT


def tlsa_3_1_1(pem_file: Path) -> str | None:
    """``3 1 1 <hex>`` for the first certificate in ``pem_file``, or None when it cannot be read."""
    try:
        certificate = x509.load_pem_x509_certificate(pem_file.read_bytes())
    except (OSError, ValueError):
        return None
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return f"3 1 1 {hashlib.sha256(spki).hexdigest()}"


def with_transport(config: Config, domain: MailDomain) -> MailDomain:
    """``domain`` with our MTA-STS policy text and the current certificate's TLSA data."""
    return dataclasses.replace(
        domain, sts_policy=our_policy(config), tlsa=tlsa_3_1_1(current_certificate(config))
    )


def transport_records(domain: MailDomain) -> list[Record]:
    return mta_sts_records(domain) + tlsa_records(domain)


def mta_sts_records(domain: MailDomain) -> list[Record]:
    if domain.sts_policy is None:
        return []
    host = f"mta-sts.{domain.domain}."
    lines = domain.sts_policy.strip().replace("\r\n", ", ")
    return [
        Record(
            "MTA-STS",
            f"_mta-sts.{domain.domain}.",
            "TXT",
            render_record(domain.sts_policy),
            Match.STS,
            (
                f"MTA-STS (RFC 8461): senders fetch https://{host[:-1]}/.well-known/mta-sts.txt"
                f" ({lines}); the id is a hash of that policy and changes with it.",
            ),
        ),
        Record(
            "MTA-STS host",
            host,
            "CNAME",
            f"{domain.hostname}.",
            Match.STS_HOST,
            (
                f"The policy host: it must answer HTTPS with a certificate valid for {host[:-1]}"
                " (postoffice's web listener behind a TLS proxy, or an HTTPS listener). A CNAME to"
                " the mail host, or its own A/AAAA records.",
            ),
        ),
    ]


def tlsa_records(domain: MailDomain) -> list[Record]:
    name = f"_{SMTP_PORT}._tcp.{domain.hostname}."
    why = (
        f"DANE (RFC 7672): the key of {domain.hostname}'s certificate. Publish it only in a"
        " DNSSEC-signed zone. Key rollover: a new key needs its record published (beside this"
        " one) a few TTLs before the new certificate is used, then this one removed."
    )
    if domain.tlsa is None:  # no certificate yet (the server makes one at its first start)
        return []
    return [Record("DANE TLSA", name, "TLSA", domain.tlsa, Match.TLSA, (why,))]
