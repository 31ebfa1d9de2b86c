"""DKIM key records (RFC 6376 §3.6.1; RFC 8463 §4 for Ed25519): the TXT text at
``SELECTOR._domainkey.DOMAIN`` turned into a public key and its flags.

Untrusted input seen here: TXT records from the DNS, written by whoever controls the signing
domain (or spoofs its answers). Anything that is not a usable key is a
:class:`KeyRecordError` with a one-line reason; nothing else escapes.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postoffice.mailauth.dkim_tags import TagListError, colon_list, parse_tag_list, without_whitespace

# RFC 8301 §3.2: "Verifiers MUST be able to validate signatures with keys ranging from 1024
# bits to 4096 bits"; above twice that, a key is refused rather than spend the CPU on it.
MAX_RSA_BITS = 8192

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class KeyRecordError(ValueError):
    """The record gives no usable key; ``str()`` says why in one line."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A parsed key record."""

    key_type: str  # "rsa" or "ed25519" (k=)
    key: PublicKey
    bits: int
    hashes: tuple[str, ...] | None  # h=: the hash algorithms the key may be used with; None = any
    testing: bool  # t=y: "This domain is testing DKIM"
    same_domain: bool  # t=s: i= must be exactly d=, no subdomain


def parse_key_record(text: str) -> KeyRecord:
    """The key of a record's text (its strings already joined, RFC 6376 §3.6.2.2)."""
    try:
        tags = parse_tag_list(text)
    except TagListError as exc:
        raise KeyRecordError(f"not a key record: {exc}") from None
    if tags.get("v", "DKIM1") != "DKIM1":
        raise KeyRecordError(f"v={tags['v'][:20]} is not DKIM1")
    services = colon_list(tags.get("s", "*"))
    if "*" not in services and "email" not in services:
        raise KeyRecordError("the key is not for email (s=)")
    if "p" not in tags:
        raise KeyRecordError("no p= (public key)")
    data = without_whitespace(tags["p"])
    if not data:
        raise KeyRecordError("the key is revoked (empty p=)")  # §3.6.1 "An empty value means ..."
    try:
        raw = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        raise KeyRecordError("p= is not base64") from None
    key_type = without_whitespace(tags.get("k", "rsa")).lower()
    key, bits = _public_key(key_type, raw)
    hashes = tuple(colon_list(tags["h"])) if "h" in tags else None
    flags = colon_list(tags.get("t", ""))
    return KeyRecord(key_type, key, bits, hashes, "y" in flags, "s" in flags)


def _public_key(key_type: str, raw: bytes) -> tuple[PublicKey, int]:
    if key_type == "ed25519":
        # RFC 8463 §4.2: "the base64-encoded public key", 32 octets.
        if len(raw) != 32:
            raise KeyRecordError(f"an Ed25519 key is 32 octets, not {len(raw)}")
        return ed25519.Ed25519PublicKey.from_public_bytes(raw), 256
    if key_type != "rsa":
        raise KeyRecordError(f"unknown key type k={key_type[:20]}")
    # In practice p= holds a SubjectPublicKeyInfo (OpenDKIM, dkimpy, every large signer); RFC
    # 6376 §3.6.1 words it as an RSAPublicKey. cryptography reads both from DER.
    try:
        key = serialization.load_der_public_key(raw)
    except (ValueError, TypeError):
        raise KeyRecordError("p= is not an RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyRecordError(f"p= holds a {type(key).__name__}, not an RSA key")
    if key.key_size > MAX_RSA_BITS:
        raise KeyRecordError(f"RSA key of {key.key_size} bits is over the {MAX_RSA_BITS} accepted")
    return key, key.key_size
