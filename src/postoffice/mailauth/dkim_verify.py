"""DKIM verification (RFC 6376 §6; RFC 8463 for Ed25519; RFC 8301 for what no longer passes):
one :class:`DkimResult` for every DKIM-Signature field of a message.

Untrusted input seen here: the whole message (its DKIM-Signature fields are anyone's text) and
the key records its signers' DNS returns. Every signature gets a recorded result, never an
exception: malformed fields are ``neutral``, unusable keys and unacceptable signatures
``permerror`` or ``policy``, DNS failures ``temperror``. Work is bounded: the header section
by :data:`~postoffice.mailauth.dkim_canon.MAX_HEADER_SECTION`, the signatures checked by
``max_signatures`` (RFC 6376 §6.1 lets verifiers limit them; the rest are ``policy``), each
key lookup by ``timeout``, and the body is read once, in pieces, for all of them.

Results use RFC 8601 §2.7.1's words, for Authentication-Results:

* pass: the signature verified (``unsigned_octets`` > 0 means l= left body content unsigned:
  RFC 6376 §8.2, "content appended ... may be interpreted as part of the signed message");
* fail: it did not (the body or the signed fields changed, or the signature is wrong);
* neutral: the field is malformed or asks for what this verifier does not support;
* temperror: the key could not be looked up now;
* permerror: no key, a broken or revoked key, From not signed, i= outside d=, expired;
* policy: verifiable maybe, but never a pass here: rsa-sha1 and RSA keys under 1024 bits
  (RFC 8301 §3.1, §3.2), or beyond the number of signatures checked.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding

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
from postoffice.mailauth.dkim_dns import DEFAULT_TIMEOUT, TxtLookupError, TxtResolver
from postoffice.mailauth.dkim_record import KeyRecord, KeyRecordError, parse_key_record
from postoffice.mailauth.dkim_tags import TagListError, colon_list, parse_tag_list, without_whitespace

Result = Literal["pass", "fail", "neutral", "temperror", "permerror", "policy"]

# How many signatures are checked; each costs a DNS lookup and a body hash.
MAX_SIGNATURES = 10
# RFC 8301 §3.2: "Verifiers MUST NOT consider signatures using RSA keys of less than 1024 bits
# as valid signatures."
MIN_RSA_BITS = 1024
# The characters of "b=" kept for Authentication-Results' header.b (RFC 6008 §4: at least 8).
B_PREFIX = 8
# RFC 6376 §3.5 a=: the algorithms and the key type and hash each names.
ALGORITHMS = {"rsa-sha256": ("rsa", "sha256"), "ed25519-sha256": ("ed25519", "sha256")}
_REQUIRED = ("v", "a", "b", "bh", "d", "h", "s")  # §3.5 "REQUIRED" tags
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")  # _ as in real selectors
_DIGITS = re.compile(r"[0-9]{1,12}")  # t=, x=: 1*12DIGIT (§3.5)
_LENGTH = re.compile(r"[0-9]{1,76}")  # l=: 1*76DIGIT


@dataclass(frozen=True, slots=True)
class DkimResult:
    """The outcome for one DKIM-Signature field, with what Authentication-Results reports."""

    result: Result
    domain: str  # d=, as written (header.d)
    selector: str  # s=
    algorithm: str  # a=
    reason: str  # one line, for the A-R comment and the log
    b_prefix: str = ""  # the first characters of b= (header.b, RFC 6008)
    identity: str = ""  # i=, or "@" + d= when absent (header.i)
    signed_length: int | None = None  # l=
    unsigned_octets: int = 0  # canonical body octets after l=: content no signature covers
    testing: bool = False  # the key record says t=y: the domain is testing DKIM
    key_bits: int | None = None

    @property
    def unsigned_content(self) -> bool:
        return self.unsigned_octets > 0


@dataclass(slots=True)
class _Signature:
    """A DKIM-Signature field that parsed, waiting for its key and body hash."""

    field: HeaderField
    tags: dict[str, str]
    key_type: str
    hash_name: str
    relaxed_header: bool
    relaxed_body: bool
    names: list[str]
    signature: bytes
    body_hash: bytes
    length: int | None
    base: DkimResult  # domain, selector, ... with a placeholder result
    body: BodyHash = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.body = BodyHash(self.hash_name, self.length)

    @property
    def key_name(self) -> str:
        return f"{self.base.selector}._domainkey.{self.base.domain}"


class _Invalid(Exception):
    """A signature that ends early with ``result``: ``str()`` is the reason."""

    def __init__(self, result: Result, reason: str) -> None:
        super().__init__(reason)
        self.result = result


async def verify(
    message: MessageSource,
    resolver: TxtResolver,
    *,
    now: float | None = None,
    max_signatures: int = MAX_SIGNATURES,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[DkimResult]:
    """One result per DKIM-Signature field, top first; empty when the message has none."""
    clock = time.time() if now is None else now
    with open_message(message) as stream:
        try:
            header = read_header_section(stream)
        except HeaderSectionError as exc:
            return [DkimResult("permerror", "", "", "", f"message not checked: {exc}")]
        fields = [item for item in header if item.name == "dkim-signature"]
        results: list[DkimResult | _Signature] = []
        for index, item in enumerate(fields):
            if index < max_signatures:
                results.append(_parse(item, clock))
            else:
                results.append(_not_checked(item, max_signatures))
        pending = [item for item in results if isinstance(item, _Signature)]
        keys = await _keys_and_body(stream, pending, resolver, timeout)
    return [
        item if isinstance(item, DkimResult) else _check(item, header, keys[item.key_name])
        for item in results
    ]


async def _keys_and_body(
    stream: BinaryIO, pending: Sequence[_Signature], resolver: TxtResolver, timeout: float
) -> dict[str, KeyRecord | _Invalid]:
    """The key of every signature (looked up side by side, each name once) while the body is
    hashed in a thread, once per canonicalisation, for all of them."""
    names = sorted({item.key_name for item in pending})
    lookups = [asyncio.ensure_future(_key(resolver, name, timeout)) for name in names]
    try:
        if pending:
            canonicalizers = [
                BodyCanonicalizer(relaxed, [item.body for item in pending if item.relaxed_body == relaxed])
                for relaxed in (False, True)
            ]
            await asyncio.to_thread(hash_body, stream, canonicalizers)
        keys = await asyncio.gather(*lookups)
    finally:
        for lookup in lookups:
            lookup.cancel()
    return dict(zip(names, keys, strict=True))


async def _key(resolver: TxtResolver, name: str, timeout: float) -> KeyRecord | _Invalid:
    """The key record at ``name``, or why there is none (RFC 6376 §6.1.2)."""
    try:
        async with asyncio.timeout(timeout):
            records = await resolver.txt(name)
    except (TxtLookupError, TimeoutError) as exc:
        return _Invalid("temperror", f"key lookup failed: {exc or 'timed out'}")
    if not records:
        return _Invalid("permerror", f"no key record at {name}")  # "PERMFAIL (no key for signature)"
    if len(records) > 1:
        # §3.6.2.2: "if there are multiple records in an RRset, the results are undefined".
        return _Invalid("permerror", f"{len(records)} TXT records at {name}, one expected")
    try:
        return parse_key_record(records[0].decode("utf-8", "replace"))
    except KeyRecordError as exc:
        return _Invalid("permerror", f"key record at {name}: {exc}")


def _not_checked(item: HeaderField, limit: int) -> DkimResult:
    base = _base(item)
    reason = f"not checked: only the first {limit} signatures of a message are"
    return DkimResult("policy", base.domain, base.selector, base.algorithm, reason, base.b_prefix)


def _base(item: HeaderField) -> DkimResult:
    """What can be told of a field before it is understood: d=, s=, a=, b= as far as they parse."""
    try:
        tags = parse_tag_list(_value(item))
    except TagListError:
        tags = {}
    return DkimResult(
        "neutral",
        tags.get("d", "")[:253],
        tags.get("s", "")[:253],
        tags.get("a", "")[:30],
        "",
        without_whitespace(tags.get("b", ""))[:B_PREFIX],
        tags.get("i", "@" + tags.get("d", ""))[:320],
    )


def _value(item: HeaderField) -> str:
    return item.raw.partition(b":")[2].decode("utf-8", "replace")


def _parse(item: HeaderField, now: float) -> _Signature | DkimResult:
    base = _base(item)
    try:
        tags = parse_tag_list(_value(item))
        return _signature(item, tags, base, now)
    except (TagListError, _Invalid) as exc:
        result: Result = exc.result if isinstance(exc, _Invalid) else "neutral"
        return _result(base, result, f"malformed signature: {exc}" if result == "neutral" else str(exc))


def _result(base: DkimResult, result: Result, reason: str, **changes: Any) -> DkimResult:
    return dataclasses.replace(base, result=result, reason=reason, **changes)


def _signature(item: HeaderField, tags: dict[str, str], base: DkimResult, now: float) -> _Signature:
    """The parsed field, or _Invalid: the §6.1.1 checks ("Validate the Signature Header Field")."""
    missing = [name for name in _REQUIRED if name not in tags]
    if missing:
        raise _Invalid("neutral", f"no {', '.join(name + '=' for name in missing)}")
    if tags["v"] != "1":
        raise _Invalid("neutral", f"v={tags['v'][:10]} is not 1")
    algorithm = tags["a"].lower()
    if algorithm == "rsa-sha1":
        raise _Invalid("policy", "rsa-sha1 is not accepted (RFC 8301 §3.1)")
    if algorithm not in ALGORITHMS:
        raise _Invalid("neutral", f"unknown algorithm a={algorithm[:30]}")
    key_type, hash_name = ALGORITHMS[algorithm]
    relaxed_header, relaxed_body = _canonicalization(tags.get("c", "simple/simple"))
    _check_names(tags)
    names = [name.lower() for name in colon_list(tags["h"])]
    if "from" not in names:
        raise _Invalid("permerror", "From is not signed (RFC 6376 §6.1.1)")
    if "" in names:
        raise _Invalid("neutral", "h= has an empty field name")
    if "q" in tags and not {"dns/txt", "dns"} & set(colon_list(tags["q"])):
        raise _Invalid("permerror", f"no supported key query method in q={tags['q'][:30]}")
    _check_times(tags, now)
    signature = _base64(tags["b"], "b")
    body_hash = _base64(tags["bh"], "bh")
    length = _length(tags)
    return _Signature(
        item, tags, key_type, hash_name, relaxed_header, relaxed_body, names, signature, body_hash,
        length, _result(base, "neutral", "", signed_length=length),
    )  # fmt: skip


def _canonicalization(value: str) -> tuple[bool, bool]:
    """c= (§3.5): header/body algorithms, "simple" for a missing half; True means relaxed."""
    header, _, body = value.strip().lower().partition("/")
    choices = {"simple": False, "relaxed": True}
    if header not in choices or (body or "simple") not in choices:
        raise _Invalid("neutral", f"unknown canonicalization c={value[:30]}")
    return choices[header], choices[body or "simple"]


def _check_names(tags: dict[str, str]) -> None:
    """d= and s= are DNS names, and i= is d= or a subdomain of it (§6.1.1)."""
    for tag in ("d", "s"):
        labels = tags[tag].strip().split(".")
        if not all(_LABEL.fullmatch(label) for label in labels) or len(tags[tag]) > 253:
            raise _Invalid("neutral", f"{tag}={tags[tag][:60]} is not a domain name")
    if len(f"{tags['s']}._domainkey.{tags['d']}") > 253:
        raise _Invalid("neutral", "s= and d= make a name longer than DNS allows")
    domain = tags["d"].lower()
    if "i" in tags:
        _, at, identity = tags["i"].rpartition("@")
        identity = identity.lower()
        if not at:
            raise _Invalid("neutral", "i= has no @")
        if identity != domain and not identity.endswith("." + domain):
            raise _Invalid("permerror", f"i= domain {identity[:60]} is not within d={domain}")


def _check_times(tags: dict[str, str], now: float) -> None:
    """t= and x= (§3.5): numbers; x= after t=; a signature past x= has expired."""
    for tag in ("t", "x"):
        if tag in tags and _DIGITS.fullmatch(tags[tag]) is None:
            raise _Invalid("neutral", f"{tag}= is not a number")
    if "x" in tags:
        if "t" in tags and int(tags["x"]) < int(tags["t"]):
            raise _Invalid("neutral", "x= is before t=")
        if int(tags["x"]) < now:
            raise _Invalid("permerror", "the signature has expired (x=)")


def _base64(value: str, tag: str) -> bytes:
    try:
        return binascii.a2b_base64(without_whitespace(value), strict_mode=True)
    except binascii.Error:
        raise _Invalid("neutral", f"{tag}= is not base64") from None


def _length(tags: dict[str, str]) -> int | None:
    if "l" not in tags:
        return None
    if _LENGTH.fullmatch(tags["l"]) is None:
        raise _Invalid("neutral", "l= is not a number")
    return int(tags["l"])


def _check(item: _Signature, header: Sequence[HeaderField], key: KeyRecord | _Invalid) -> DkimResult:
    """The result of a parsed signature, given its key and its body hash (§6.1.2, §6.1.3)."""
    base = item.base
    try:
        record = _usable_key(item, key)
    except _Invalid as exc:
        return _result(base, exc.result, str(exc))
    found = {"testing": record.testing, "key_bits": record.bits}
    if record.key_type == "rsa" and record.bits < MIN_RSA_BITS:
        return _result(base, "policy", f"RSA key of {record.bits} bits (RFC 8301 §3.2)", **found)
    unsigned = 0
    if item.length is not None:
        if item.length > item.body.length:
            reason = f"l={item.length} is more than the body's {item.body.length} canonical octets"
            return _result(base, "fail", reason, **found)
        unsigned = item.body.length - item.length
    if item.body.digest() != item.body_hash:
        return _result(base, "fail", "body hash did not verify (the body was changed)", **found)
    if not _signature_verifies(item, header, record):
        return _result(base, "fail", "signature did not verify (the signed fields were changed)", **found)
    reason = (
        "good signature" if not unsigned else f"good signature; l= leaves {unsigned} body octets unsigned"
    )
    return _result(base, "pass", reason, unsigned_octets=unsigned, **found)


def _usable_key(item: _Signature, key: KeyRecord | _Invalid) -> KeyRecord:
    """The key, if it may check this signature (§3.6.1: k=, h=, t=s)."""
    if isinstance(key, _Invalid):
        raise key
    if key.key_type != item.key_type:
        raise _Invalid("permerror", f"a k={key.key_type} key cannot check a={item.base.algorithm}")
    if key.hashes is not None and item.hash_name not in key.hashes:
        raise _Invalid("permerror", f"the key record allows only h={':'.join(key.hashes)[:40]}")
    identity_domain = item.tags.get("i", "@" + item.tags["d"]).rpartition("@")[2].lower()
    if key.same_domain and identity_domain != item.tags["d"].lower():
        raise _Invalid("permerror", "the key (t=s) forbids an i= in a subdomain of d=")
    return key


def _signature_verifies(item: _Signature, header: Sequence[HeaderField], record: KeyRecord) -> bool:
    """§3.7: the selected fields, then this field with b= emptied and no final CRLF."""
    selected = select_fields(header, item.names)
    own = HeaderField(_without_b_value(item.field.raw)).canonical(item.relaxed_header)
    data = b"".join(part.canonical(item.relaxed_header) for part in selected) + own.removesuffix(CRLF)
    try:
        if isinstance(record.key, ed25519.Ed25519PublicKey):
            # RFC 8463 §3: Ed25519 over the SHA-256 hash of the data.
            record.key.verify(item.signature, hashlib.sha256(data).digest())
        else:
            record.key.verify(item.signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _without_b_value(raw: bytes) -> bytes:
    """The field with b='s value "(including all surrounding whitespace) deleted" (§3.7); the
    white space before the tag name, and everything else, stays as it is."""
    name, colon, value = raw.partition(b":")
    specs = value.split(b";")
    for index, spec in enumerate(specs):
        tag, equals, _ = spec.partition(b"=")
        if equals and tag.strip(b" \t\r\n") == b"b":
            ending = CRLF if index == len(specs) - 1 and spec.endswith(CRLF) else b""
            specs[index] = tag + equals + ending
    return name + colon + b";".join(specs)
