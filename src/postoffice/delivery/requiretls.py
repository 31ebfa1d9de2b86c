"""REQUIRETLS and ``TLS-Required: No`` (RFC 8689) on the way out: how a message's own request
changes the TLS policy its delivery is held to.

Untrusted input seen here: the header section of a queued message (its sender wrote it), read
only for a ``TLS-Required`` field, at most :data:`HEADER_LIMIT` octets of it.

* A message that arrived with ``MAIL FROM:<...> REQUIRETLS`` (the flag is in its envelope) is
  relayed only over TLS with a certificate valid for the MX host name (the "verify" policy;
  MTA-STS or DANE validation when those decide the policy), and only to a server that offers
  REQUIRETLS, to which the parameter is passed on (§4.2.1). Otherwise it is returned: 5.7.10
  when TLS could not be verified, 5.7.30 when the server does not offer REQUIRETLS.
* ``TLS-Required: No`` (§5) asks that the recipient domain's TLS policy be ignored: a
  destination configured "require" or "verify" gets opportunistic TLS ("may") for it. When the
  message also carries REQUIRETLS, the header field is ignored (§4.1: REQUIRETLS wins).
"""

from __future__ import annotations

import asyncio
import re

from postoffice.smtp.replies import Reply
from postoffice.storage import MessageStore

# The connection cache keeps sessions opened for REQUIRETLS apart from opportunistic ones.
CACHE_SUFFIX = "\x00requiretls"
# TLS policies that a TLS-Required: No field relaxes to opportunistic TLS.
STRICT = frozenset({"require", "verify"})
# A header section is read up to this many octets for the field (a real one is a few KiB).
HEADER_LIMIT = 256 * 1024
# RFC 8689 §5: "TLS-Required: No" (case-insensitive, folding allowed around the value).
_FIELD = re.compile(rb"(?im)^tls-required[ \t]*:[ \t\r\n]*no[ \t]*\r?$")


def required_policy(policy: str, *, relay: bool) -> str | None:
    """The policy a REQUIRETLS message is delivered under: verified TLS to an MX; to the relay,
    its verified STARTTLS or implicit TLS, and None when the relay is used without TLS."""
    if not relay:
        return "verify"
    return None if policy == "none" else policy


def is_tls_failure(reply: Reply) -> bool:
    """A session that failed for want of (verified) TLS: RFC 3463 X.7.4 or X.7.5."""
    return reply.enhanced in ("4.7.4", "4.7.5")


def header_says_tls_optional(header: bytes) -> bool:
    """The header section carries ``TLS-Required: No`` (RFC 8689 §5)."""
    return _FIELD.search(header) is not None


def _read_header(spool: MessageStore, queue_id: str) -> bytes:
    with spool.open(queue_id) as content:
        data = content.read(HEADER_LIMIT)
    end = re.search(rb"\r?\n\r?\n", data)
    return data if end is None else data[: end.start() + 1]


async def tls_optional(spool: MessageStore, queue_id: str) -> bool:
    """Whether the queued message asks for its TLS policy to be ignored; a message that cannot
    be read is held to its policy (the delivery then reports the spool error itself)."""
    try:
        header = await asyncio.to_thread(_read_header, spool, queue_id)
    except OSError:
        return False
    return header_says_tls_optional(header)
