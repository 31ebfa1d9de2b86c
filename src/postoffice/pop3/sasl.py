"""SASL PLAIN for POP3 AUTH (RFC 5034, RFC 4616), sans-I/O: base64 text to credentials.

Untrusted input seen here: the initial response of ``AUTH PLAIN`` and the line answering its
``+`` continuation, base64 text carrying a user name and a password. Nothing here logs, stores
or echoes them.
"""

from __future__ import annotations

import binascii

# The mechanisms offered (RFC 5034 §3); PLAIN sends the password in the clear inside the
# session, so it is offered only where USER/PASS is (inside TLS, or on loopback).
MECHANISMS = ("PLAIN",)


class SaslError(ValueError):
    """A response that is not one; the text is the -ERR's."""


def decode(text: str, *, initial: bool) -> bytes:
    """The octets of one base64 response (RFC 5034 §4: ``=`` is an empty initial response)."""
    if initial and text == "=":
        return b""
    try:
        encoded = text.encode("ascii")
        decoded = binascii.a2b_base64(encoded, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise SaslError("invalid base64") from None
    if binascii.b2a_base64(decoded, newline=False) != encoded:
        raise SaslError("invalid base64")  # one response, one meaning (RFC 4648 §3.5)
    return decoded


def plain(message: bytes) -> tuple[str, str, str]:
    """RFC 4616 §2 ``[authzid] NUL authcid NUL passwd``: ``(authzid, authcid, password)``."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise SaslError("malformed PLAIN response")
    try:
        authzid, authcid, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise SaslError("PLAIN response is not UTF-8") from None
    return authzid, authcid, password
