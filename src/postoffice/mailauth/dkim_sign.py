"""DKIM signing (RFC 6376 §5, RFC 8463 for Ed25519): the DKIM-Signature fields to put on top of
a message.

Untrusted input seen here: the message, written by a local user or program (submission,
``send``/``sendmail``) or by postoffice itself (bounces). It is read as
:mod:`~postoffice.mailauth.dkim_canon` reads it: the header section in memory up to a bound, the
body streamed through one hash, so a message of any size signs in bounded memory.

Every signature is ``c=relaxed/relaxed`` (RFC 6376 §3.4.2 and §3.4.4: it survives the re-folding
and white space changes that relays make), with ``a=rsa-sha256`` or ``a=ed25519-sha256`` (RFC
8301 §3.1: rsa-sha1 "MUST NOT" be used to sign), ``t=`` the signing time and no ``l=`` (a
signature covers the whole body; see RFC 6376 §8.2 for what ``l=`` invites). ``h=`` names the
fields RFC 6376 §5.4.1 recommends, each as often as it occurs, and From once more (over-signing,
§5.4.2: a second From added later breaks the signature instead of being shown to the reader).

The crypto is ``cryptography``'s (constant-time, in OpenSSL); dkimpy (pure-Python RSA, whole
messages in memory) verifies our signatures in the tests, as does OpenDKIM.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from postoffice.errors import DkimError
from postoffice.mailauth.dkim_canon import (
    CRLF,
    BodyCanonicalizer,
    BodyHash,
    HeaderField,
    HeaderSectionError,
    MessageSource,
    hash_body,
    open_message,
    read_header_section,
    select_fields,
)
from postoffice.mailauth.dkim_keys import DkimKey

# RFC 6376 §5.4.1: "The following header fields SHOULD be included in the signature, if they
# are present in the message being signed", plus the MIME fields that decide how the body is
# read (MIME-Version, Content-*) and Message-ID, Sender, as OpenDKIM and dkimpy sign them.
SIGNED_FIELDS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    # RFC 8460 §5.3: a TLS report names its policy domain and submitter in these; signed, so
    # that a receiver can trust them as much as the signature.
    "tls-report-domain",
    "tls-report-submitter",
)
# Signed once more than they occur (§5.4.2), so that adding one breaks the signature.
OVERSIGNED = ("from",)
# Header lines are kept under 78 characters (RFC 5322 §2.1.1 "SHOULD").
_LINE_WIDTH = 78
_B64_PIECE = 64


def sign(
    message: MessageSource,
    keys: Sequence[DkimKey],
    *,
    now: float | None = None,
    fields: Sequence[str] = SIGNED_FIELDS,
) -> list[bytes]:
    """The DKIM-Signature fields (each ending with CRLF) for ``message``, one per key, to put
    above its header section in this order. No keys, no fields.

    Raises DkimError when the message cannot be signed: no From field (RFC 6376 §5.4 "The From
    header field MUST be signed"), or a header section over the bound.
    """
    if not keys:
        return []
    with open_message(message) as stream:
        try:
            header = read_header_section(stream)
        except HeaderSectionError as exc:
            raise DkimError(f"cannot sign: {exc}") from None
        names = signed_names(header, fields)
        if not any(item.name == "from" for item in header):
            raise DkimError("cannot sign: the message has no From header field (RFC 6376 §5.4)")
        body_hash = BodyHash("sha256")
        hash_body(stream, [BodyCanonicalizer(True, [body_hash])])
    timestamp = int(time.time() if now is None else now)
    selected = b"".join(item.relaxed() for item in select_fields(header, names))
    return [_signature(key, names, body_hash.digest(), timestamp, selected) for key in keys]


def signed_names(header: Sequence[HeaderField], fields: Sequence[str] = SIGNED_FIELDS) -> list[str]:
    """h=: each wanted field as often as it occurs, top to bottom, then the over-signed ones."""
    wanted = {name.lower() for name in fields}
    names = [item.name for item in header if item.name in wanted]
    return names + [name for name in OVERSIGNED if name in wanted]


def _signature(
    key: DkimKey, names: Sequence[str], body_hash: bytes, timestamp: int, selected: bytes
) -> bytes:
    """One DKIM-Signature field: the tags, the hash of the signed fields and of this field with
    an empty b= (RFC 6376 §3.7), then b= filled in."""
    algorithm = f"{key.algorithm}-sha256"
    tokens = [
        "v=1;",
        f"a={algorithm};",
        "c=relaxed/relaxed;",
        f"d={key.domain};",
        f"s={key.selector};",
        f"t={timestamp};",
        *_h_tokens(names),
        f"bh={base64.b64encode(body_hash).decode('ascii')};",
        "b=",
    ]
    unsigned = HeaderField(_fold("DKIM-Signature:", tokens) + CRLF)
    # §3.7: the field itself goes last into the hash, canonicalised, "without a trailing CRLF".
    data = selected + unsigned.relaxed().removesuffix(CRLF)
    signature = base64.b64encode(_sign_data(key, data)).decode("ascii")
    pieces = [signature[start : start + _B64_PIECE] for start in range(0, len(signature), _B64_PIECE)]
    return _fold("DKIM-Signature:", tokens + pieces) + CRLF


def _h_tokens(names: Sequence[str]) -> list[str]:
    """h=a:b:c; as tokens a line may break between (FWS is allowed around ":", §3.5)."""
    tokens = [f"{name}:" for name in names]
    tokens[0] = "h=" + tokens[0]
    tokens[-1] = tokens[-1].removesuffix(":") + ";"
    return tokens


def _fold(name: str, tokens: Sequence[str]) -> bytes:
    """``name`` and the tokens separated by SP, a line broken (CRLF TAB) before any token that
    would take it past the width. The break before a token does not depend on the tokens
    after it, so the field signed with an empty b= is this field's prefix."""
    lines = [name]
    for token in tokens:
        if len(lines[-1]) + 1 + len(token) > _LINE_WIDTH:
            lines.append("\t" + token)
        else:
            lines[-1] += " " + token
    return "\r\n".join(lines).encode("ascii")


def _sign_data(key: DkimKey, data: bytes) -> bytes:
    private_key = key.private_key
    if isinstance(private_key, rsa.RSAPrivateKey):
        # RFC 6376 §3.3.1: RSASSA-PKCS1-v1_5 over the SHA-256 of the data.
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    # RFC 8463 §3: PureEdDSA Ed25519 over the SHA-256 hash of the data ("the hash ... is
    # signed"), so the message data is hashed once, then signed.
    return private_key.sign(hashlib.sha256(data).digest())
