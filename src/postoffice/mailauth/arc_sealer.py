"""Our ARC set on a forwarded copy (RFC 8617 §5.1), sealed with the forwarding domain's DKIM key.

Untrusted input seen here: the message being forwarded (anyone's; its size is bounded before it
is read) and its Authentication-Results field of ours, which the verification at the end of
DATA wrote (any field claiming our authserv-id that came from outside was renamed then).

The ARC-Authentication-Results copies that field and the ARC-Seal's cv= comes from its ``arc=``
result (none, pass, fail): :func:`postoffice.mailauth.arc.seal` does both, with dkimpy. ARC
signs with rsa-sha256 only (RFC 8617 §4.1.2 names no other algorithm), so an RSA key of the
domain seals and an Ed25519 one does not. A copy that cannot be sealed (no RSA key, no
Authentication-Results of ours because the mail came from an authenticated user or was not
verified, a message too large) is forwarded without an ARC set, and one line says why.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from postoffice.mailauth.arc import ArcError, SealingKey, seal
from postoffice.mailauth.dkim_signer import Signer

log = logging.getLogger("postoffice.mailauth")

# dkimpy seals the message in memory: beyond this size a copy is forwarded without ARC (the same
# bound verification puts on reading an incoming chain).
SEAL_SIZE_LIMIT = 10 * 1024 * 1024


class ArcSealer:
    """Seals with ``signer``'s keys (the DKIM key directory), as ``authserv_id``."""

    def __init__(self, signer: Signer, authserv_id: str) -> None:
        self._signer = signer
        self._authserv_id = authserv_id

    def key(self, domain: str) -> SealingKey | None:
        """The first RSA key that signs for ``domain``, as PEM; None without one."""
        for key in self._signer.keys(domain):
            private = key.private_key
            if isinstance(private, rsa.RSAPrivateKey):
                pem = private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
                return SealingKey(key.selector, key.domain, pem)
        return None

    def arc_set(self, message: bytes | None, domain: str, *, what: str) -> bytes:
        """The ARC set to put above ``message`` (None: it was too large to read), or b"" when
        it cannot be sealed (logged, one line). Blocks: RSA and the body hash."""
        if message is None:
            return self._unsealed(what, domain, f"message over {SEAL_SIZE_LIMIT} octets")
        key = self.key(domain)
        if key is None:
            return self._unsealed(what, domain, f"no RSA key: postoffice dkim generate {domain}")
        try:
            fields = seal(message, key, self._authserv_id)
        except ArcError as exc:
            return self._unsealed(what, domain, str(exc))
        except Exception as exc:  # dkimpy on a hostile message: its failures are not a closed set
            return self._unsealed(what, domain, f"{type(exc).__name__}: {str(exc)[:120]}")
        log.info("%s event=arc-sealed domain=%s selector=%s", what, domain, key.selector)
        return fields

    @staticmethod
    def _unsealed(what: str, domain: str, reason: str) -> bytes:
        log.info("%s event=arc-not-sealed domain=%s reason=%r", what, domain, reason)
        return b""
