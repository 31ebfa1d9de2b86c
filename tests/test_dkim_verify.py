"""DKIM verification's results for what goes wrong: every signature gets a recorded result in
bounded time and memory, never an exception. Keys come from a dnslib server on loopback."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import require_tool
from dkim_support import TxtDns, dkimpy_sign, txt_dns
from postoffice.errors import DkimError
from postoffice.mailauth import dkim_keys
from postoffice.mailauth.dkim_keys import DkimKey
from postoffice.mailauth.dkim_sign import sign
from postoffice.mailauth.dkim_verify import MAX_SIGNATURES, DkimResult, verify

MESSAGE = b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: lunch\r\n\r\nShall we?\r\n"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> DkimKey:
    return dkim_keys.generate(tmp_path_factory.mktemp("data"), "example.com", "s1")


@pytest.fixture(scope="module")
def ed_key(tmp_path_factory: pytest.TempPathFactory) -> DkimKey:
    return dkim_keys.generate(tmp_path_factory.mktemp("data"), "example.com", "e1", "ed25519")


@pytest.fixture(scope="module")
def shared_dns() -> Iterator[TxtDns]:
    with txt_dns() as dns:
        yield dns


@pytest.fixture
def dns(shared_dns: TxtDns) -> TxtDns:
    """The module's DNS server, emptied for each test."""
    shared_dns.zone.reset({})
    return shared_dns


async def _verify(message: bytes | Path, records: dict[str, list[str]], dns: TxtDns) -> list[DkimResult]:
    dns.zone.reset(records)
    return await verify(message, dns.resolver())


def _field(text: str) -> bytes:
    return f"DKIM-Signature: {text}\r\n".encode()


async def test_no_signature_no_results(dns: TxtDns) -> None:
    assert await _verify(MESSAGE, {}, dns) == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "no tags"),
        ("v=1; a=rsa-sha256; v=1", "appears twice"),
        ("v=1; =x", "not a tag name"),
        ("garbage without equals", "has no '='"),
        ("v=1; a=rsa-sha256; d=example.com; s=s1; h=from; bh=AAAA", "no b="),
        ("v=2; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1", "v=2 is not 1"),
        ("v=1; a=rsa-md5; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1", "unknown algorithm"),
        ("v=1; a=rsa-sha256; c=fancy; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1", "canonicalization"),
        ("v=1; a=rsa-sha256; b=AAA; bh=AAAA; d=example.com; h=from; s=s1", "b= is not base64"),
        ("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=exa/mple.com; h=from; s=s1", "not a domain name"),
        ("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=from; s=../x", "not a domain name"),
        ("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1; l=-5", "l= is not a number"),
        ("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1; t=soon", "t= is not a number"),
        ("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=from::to; s=s1", "empty field name"),
        ("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1; x=5; t=9", "x= is before t="),
    ],
)
async def test_malformed_signatures_are_neutral(value: str, reason: str, dns: TxtDns) -> None:
    [result] = await _verify(_field(value) + MESSAGE, {}, dns)
    assert result.result == "neutral"
    assert reason in result.reason


@pytest.mark.parametrize(
    ("value", "result", "reason"),
    [
        ("v=1; a=rsa-sha1; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1", "policy", "RFC 8301"),
        ("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=to:subject; s=s1", "permerror", "From is not"),
        (
            "v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1; i=a@example.org",
            "permerror",
            "not within d=",
        ),
        ("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1; x=1000", "permerror", "expired"),
        ("v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=example.com; h=from; s=s1; q=http", "permerror", "q="),
    ],
)
async def test_unacceptable_signatures(value: str, result: str, reason: str, dns: TxtDns) -> None:
    [found] = await _verify(_field(value) + MESSAGE, {}, dns)
    assert dns.zone.queries == []  # decided without a lookup
    assert (found.result, found.domain, found.selector) == (result, "example.com", "s1")
    assert reason in found.reason


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (None, "no key record"),
        ("v=DKIM1; k=rsa; p=", "revoked"),
        ("v=DKIM1; k=rsa; p=not-base64!", "not base64"),
        ("v=DKIM1; k=rsa; p=AAAAAAAA", "not an RSA public key"),
        ("v=DKIM1; k=dsa; p=AAAA", "unknown key type"),
        ("v=DKIM2; p=AAAA", "not DKIM1"),
        ("k=rsa; s=tlsrpt; p=AAAA", "not for email"),
        ("\x00\x01 garbage \xff", "not a key record"),
        ("v=DKIM1; k=ed25519; p=AAAA", "32 octets"),
        ("v=DKIM1; k=rsa; h=sha1; p={p}", "allows only h=sha1"),
        ("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", "cannot check a=rsa"),
    ],
)
async def test_bad_key_records_are_permerrors(
    key: DkimKey, record: str | None, reason: str, dns: TxtDns
) -> None:
    signed = b"".join(sign(MESSAGE, [key])) + MESSAGE
    p = key.record().rpartition("p=")[2]
    records = {} if record is None else {key.record_name: [record.format(p=p)]}
    [result] = await _verify(signed, records, dns)
    assert (result.result, result.selector) == ("permerror", "s1")
    assert reason in result.reason


async def test_two_key_records_are_a_permerror(key: DkimKey, dns: TxtDns) -> None:
    signed = b"".join(sign(MESSAGE, [key])) + MESSAGE
    [result] = await _verify(signed, {key.record_name: [key.record(), key.record() + "; n=again"]}, dns)
    assert result.result == "permerror" and "2 TXT records" in result.reason


async def test_dns_failures_are_temperrors_in_bounded_time(key: DkimKey, dns: TxtDns) -> None:
    signed = b"".join(sign(MESSAGE, [key])) + MESSAGE
    dns.zone.reset({key.record_name: [key.record()]})
    dns.zone.silent.add(f"{key.record_name}.")
    started = time.monotonic()
    [timed_out] = await verify(signed, dns.resolver(timeout=5.0), timeout=0.5)
    assert time.monotonic() - started < 2.0
    dns.zone.reset({key.record_name: [key.record()]})
    dns.zone.servfail.add(f"{key.record_name}.")
    [failed] = await verify(signed, dns.resolver(timeout=1.0))
    assert (timed_out.result, failed.result) == ("temperror", "temperror")
    assert "key lookup failed" in timed_out.reason and "key lookup failed" in failed.reason


async def test_short_rsa_keys_never_pass(tmp_path: Path, dns: TxtDns) -> None:
    """RFC 8301 §3.2: a 512-bit key gives policy, even with a good signature."""
    # cryptography refuses to make keys under 1024 bits; OpenSSL's command still does.
    pem = subprocess.run(
        [require_tool("openssl"), "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512"],
        capture_output=True,
        check=True,
    ).stdout
    small = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(small, rsa.RSAPrivateKey)
    weak = DkimKey("example.com", "weak", tmp_path / "weak.key", True, small)
    signed = dkimpy_sign(MESSAGE, weak) + MESSAGE
    [result] = await _verify(signed, {weak.record_name: [weak.record()]}, dns)
    assert (result.result, result.key_bits) == ("policy", 512)


async def test_key_flags_testing_and_same_domain(key: DkimKey, dns: TxtDns) -> None:
    signed = dkimpy_sign(MESSAGE, key, identity=b"alice@mail.example.com") + MESSAGE
    [testing] = await _verify(signed, {key.record_name: [key.record() + "; t=y"]}, dns)
    assert (testing.result, testing.testing, testing.identity) == ("pass", True, "alice@mail.example.com")
    [strict] = await _verify(signed, {key.record_name: [key.record() + "; t=s"]}, dns)
    assert strict.result == "permerror" and "t=s" in strict.reason


async def test_changed_signed_field_fails(key: DkimKey, ed_key: DkimKey, dns: TxtDns) -> None:
    signed = b"".join(sign(MESSAGE, [key, ed_key])) + MESSAGE
    changed = signed.replace(b"Subject: lunch", b"Subject: dinner")
    results = await _verify(changed, {k.record_name: [k.record()] for k in (key, ed_key)}, dns)
    assert [r.result for r in results] == ["fail", "fail"]
    assert all("signed fields" in r.reason for r in results)


async def test_a_second_from_breaks_the_oversigned_signature(key: DkimKey, dns: TxtDns) -> None:
    signed = b"".join(sign(MESSAGE, [key])) + MESSAGE
    added = signed.replace(b"To: bob", b"From: Mallory <boss@example.com>\r\nTo: bob")
    [result] = await _verify(added, {key.record_name: [key.record()]}, dns)
    assert result.result == "fail"


async def test_body_length_reports_unsigned_content(key: DkimKey, dns: TxtDns) -> None:
    """l= (RFC 6376 §3.5): a pass, with the signed length and the unsigned octets reported."""
    signed = dkimpy_sign(MESSAGE, key, length=True) + MESSAGE
    records = {key.record_name: [key.record()]}
    [exact] = await _verify(signed, records, dns)
    assert (exact.result, exact.signed_length, exact.unsigned_content) == ("pass", 11, False)
    [appended] = await _verify(signed + b"Click here: http://evil.example/\r\n", records, dns)
    assert (appended.result, appended.signed_length, appended.unsigned_octets) == ("pass", 11, 34)
    assert appended.unsigned_content and "34 body octets unsigned" in appended.reason
    [cut] = await _verify(signed.removesuffix(b"Shall we?\r\n"), records, dns)
    assert cut.result == "fail" and "l=11 is more than" in cut.reason


async def test_fifty_signatures_ten_checked_in_bounded_time(key: DkimKey, dns: TxtDns) -> None:
    fields = dkimpy_sign(MESSAGE, key) * 50
    started = time.monotonic()
    results = await _verify(fields + MESSAGE, {key.record_name: [key.record()]}, dns)
    assert time.monotonic() - started < 5.0
    assert len(dns.zone.queries) == 1  # one name, looked up once
    assert [r.result for r in results] == ["pass"] * MAX_SIGNATURES + ["policy"] * 40
    assert "only the first 10" in results[-1].reason


async def test_an_oversized_header_section_is_one_permerror(key: DkimKey, dns: TxtDns) -> None:
    huge = b"X-Filler: " + b"a" * 2_000_000 + b"\r\n"
    [result] = await _verify(b"".join(sign(MESSAGE, [key])) + huge + MESSAGE, {}, dns)
    assert result.result == "permerror" and "header section larger" in result.reason


def _large_message(path: Path, megabytes: int) -> None:
    line = b"Lorem ipsum dolor sit amet,   consectetur\tadipiscing elit, sed do eiusmod.  \r\n"
    with path.open("wb") as out:
        out.write(MESSAGE)
        for _ in range(megabytes * 1024 * 1024 // len(line)):
            out.write(line)
        out.write(b"x" * 3_000_000 + b"  \r\n\r\n\r\n")  # one long line, and empty lines at the end


def test_a_30_mb_message_signs_and_verifies_in_bounded_memory(
    key: DkimKey, tmp_path: Path, dns: TxtDns
) -> None:
    """ARCHITECTURE.md rule 4: the body is streamed, never held whole."""
    path = tmp_path / "large.eml"
    _large_message(path, 30)
    tracemalloc.start()
    try:
        fields = sign(path, [key])
        _, sign_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        signed = tmp_path / "signed.eml"
        with signed.open("wb") as out, path.open("rb") as source:
            out.write(b"".join(fields))
            while chunk := source.read(1 << 20):
                out.write(chunk)
        tracemalloc.reset_peak()
        [result] = asyncio.run(_verify(signed, {key.record_name: [key.record()]}, dns))
        _, verify_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.result == "pass", result.reason
    # About 2 MB, the same for a 3 MB message: a few chunks, whatever the message's size.
    assert sign_peak < 4_000_000 and verify_peak < 4_000_000, (sign_peak, verify_peak)


async def test_the_header_b_prefix_is_the_start_of_b(key: DkimKey, dns: TxtDns) -> None:
    field = sign(MESSAGE, [key])[0].decode()
    b_value = re.sub(r"\s", "", field.rpartition("b=")[2])
    [result] = await _verify(field.encode() + MESSAGE, {key.record_name: [key.record()]}, dns)
    assert result.b_prefix == b_value[:8]


def test_signing_needs_a_from_field_and_keys(key: DkimKey) -> None:
    """RFC 6376 §5.4: "The From header field MUST be signed"; no keys, no signatures."""
    with pytest.raises(DkimError, match="no From header field"):
        sign(MESSAGE.replace(b"From:", b"Sender:"), [key])
    assert sign(MESSAGE, []) == []
    field = sign(MESSAGE, [key], now=1_700_000_000)[0]
    assert b"t=1700000000;" in field and b"h=from: to: subject: from;" in field
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
