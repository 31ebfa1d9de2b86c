"""ARC (RFC 8617): verify a message's chain of ARC sets, and add ours when mail is forwarded.

Untrusted input seen here: the whole message (its ARC-Seal, ARC-Message-Signature and
ARC-Authentication-Results fields are anyone's) and the DKIM key records in DNS the chain
names. The cryptography and canonicalization are dkimpy's (``arc_verify``/``arc_sign``); this
module looks the keys up first, concurrently and bounded (RFC 8617 §4.2.1: at most 50 sets), on
the server's async resolver, then hands dkimpy a synchronous ``dnsfunc`` that answers from
that cache, so dkimpy never does network I/O of its own. Everything dkimpy can raise is turned
into a "fail" result; nothing from a message escapes as an exception.

The message is taken as bytes: dkimpy needs the whole of it. A caller bounds its size.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dkim
import dns.asyncresolver

from postoffice.errors import PostofficeError
from postoffice.mailauth.dnstxt import TxtTemporaryError, lookup_txt
from postoffice.mailauth.results import header_fields

# RFC 8617 §4.2.1: "The maximum value [of i=] is 50"; a chain longer than that fails.
MAX_INSTANCES = 50
# RFC 8617 §4.1.2: ARC uses the RSA key sizes of DKIM (RFC 8301 §3.2: at least 1024 bits).
MIN_KEY_BITS = 1024
_ARC_SIGNATURES = (b"arc-seal", b"arc-message-signature")
_NAME_CHARS = re.compile(rb"[A-Za-z0-9_.-]+")


class ArcError(PostofficeError):
    """An ARC set cannot be added (no key, no Authentication-Results of ours to seal)."""


@dataclass(frozen=True, slots=True)
class ArcResult:
    """RFC 8617 §4.4: the chain validation status ("none", "pass" or "fail"), the number of
    ARC sets, and (§5.2 step 6, for a chain that passed) the oldest instance whose
    ARC-Message-Signature still validates, 0 when all of them do."""

    result: str
    instances: int = 0
    oldest_pass: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SealingKey:
    """Our DKIM key for ARC sets: its selector and domain (published at
    ``<selector>._domainkey.<domain>``) and the PEM private key."""

    selector: str
    domain: str
    private_key: bytes


# --- the keys the chain names --------------------------------------------------------------------


def _header_section(message: bytes) -> list[bytes]:
    return list(header_fields(io.BytesIO(message)))


def _tags(value: bytes) -> dict[bytes, bytes]:
    """A DKIM tag list (RFC 6376 §3.2), white space around names and values removed; later
    duplicates ignored (dkimpy refuses them when it verifies)."""
    tags: dict[bytes, bytes] = {}
    for part in value.split(b";"):
        name, _, tag_value = part.partition(b"=")
        tags.setdefault(name.strip().lower(), tag_value.strip())
    return tags


def chain_keys(message: bytes) -> tuple[int, list[str]]:
    """The number of ARC sets (the highest i=) and the DNS names of the keys their seals and
    message signatures name (``<s>._domainkey.<d>``), each once."""
    names: list[str] = []
    highest = 0
    for field in _header_section(message):
        name, _, value = field.partition(b":")
        if name.strip().lower() not in _ARC_SIGNATURES:
            continue
        tags = _tags(value)
        instance = tags.get(b"i", b"")
        if instance.isdigit():
            highest = max(highest, int(instance))
        selector, domain = tags.get(b"s", b""), tags.get(b"d", b"")
        if _NAME_CHARS.fullmatch(selector) and _NAME_CHARS.fullmatch(domain):
            key = f"{selector.decode()}._domainkey.{domain.decode()}".lower().rstrip(".")
            if key not in names:
                names.append(key)
    return highest, names


async def fetch_keys(names: list[str], resolver: dns.asyncresolver.Resolver) -> dict[str, bytes | None]:
    """Each name's TXT record (the first, as DKIM takes it: RFC 6376 §3.6.2.2), None when
    there is none or the lookup failed; all asked at once."""

    async def one(name: str) -> bytes | None:
        try:
            answer = await lookup_txt(resolver, name)
        except TxtTemporaryError:
            return None
        return answer.records[0].encode() if answer.records else None

    found = await asyncio.gather(*(one(name) for name in names))
    return dict(zip(names, found, strict=True))


def cached_dnsfunc(keys: Mapping[str, bytes | None]) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc(name, timeout=...)``, answering only from ``keys``."""

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        return keys.get(text.lower().rstrip("."))

    return dnsfunc


# --- verifying (RFC 8617 §5.2) -------------------------------------------------------------------


async def verify(message: bytes, resolver: dns.asyncresolver.Resolver) -> ArcResult:
    """The chain validation status of ``message``'s ARC sets."""
    instances, names = chain_keys(message)
    if instances == 0:
        return ArcResult("none", reason="no ARC sets")
    if instances > MAX_INSTANCES:
        return ArcResult("fail", instances, reason=f"i={instances} is over {MAX_INSTANCES}")
    keys = await fetch_keys(names, resolver)
    # dkimpy hashes the whole message and checks RSA signatures: off the event loop.
    return await asyncio.to_thread(verify_with_keys, message, keys)


def verify_with_keys(message: bytes, keys: Mapping[str, bytes | None]) -> ArcResult:
    """:func:`verify` once the keys are known (``keys``: DNS name → TXT record or None)."""
    try:
        status, sets, reason = dkim.arc_verify(message, dnsfunc=cached_dnsfunc(keys), minkey=MIN_KEY_BITS)
    except Exception as exc:  # dkimpy on hostile input: its failures are not a closed set
        return ArcResult("fail", reason=f"{type(exc).__name__}: {str(exc)[:120]}")
    instances = max((entry.get("instance", 0) for entry in sets), default=0)
    # dkimpy says None for a chain an earlier sealer already failed (cv=fail): a failure.
    result = status.decode() if isinstance(status, bytes) else "fail"
    if result != "pass":
        return ArcResult(result, instances, reason=str(reason)[:200])
    return ArcResult("pass", instances, _oldest_pass(sets), str(reason))


def _oldest_pass(sets: list[dict[str, object]]) -> int:
    """RFC 8617 §5.2 step 6: walking down from the newest set, the last instance whose
    ARC-Message-Signature validates; 0 when every one does."""
    oldest = 0
    for entry in sorted(sets, key=lambda entry: -int(str(entry.get("instance", 0)))):
        if not entry.get("ams-valid"):
            return oldest
        oldest = int(str(entry.get("instance", 0)))
    return 0


# --- sealing (RFC 8617 §5.1) ---------------------------------------------------------------------


def seal(message: bytes, key: SealingKey, authserv_id: str, *, timestamp: int | None = None) -> bytes:
    """The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results, CRLF-ended)
    to put on top of ``message`` before forwarding it.

    ``message`` must start with our Authentication-Results field (authserv-id ``authserv_id``)
    holding the ``arc=`` result of :func:`verify`: RFC 8617 §5.1.1 copies it into the
    ARC-Authentication-Results and takes the seal's cv= from it. Raises ArcError when it is
    missing or the key is unusable.
    """
    try:
        lines = dkim.arc_sign(
            message,
            key.selector.encode(),
            key.domain.encode(),
            key.private_key,
            authserv_id.encode(),
            timestamp=timestamp,
        )
    except dkim.DKIMException as exc:
        raise ArcError(f"cannot seal: {exc}") from None
    if not lines:
        raise ArcError(f"cannot seal: no Authentication-Results of {authserv_id} with an arc= result")
    return b"".join(line if line.endswith(b"\r\n") else line.rstrip(b"\n") + b"\r\n" for line in lines)
