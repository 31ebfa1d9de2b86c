"""ARC (RFC 8617): chains sealed by dkimpy's own arc_sign verify with ours, ours verify with
dkimpy's own arc_verify (asking the zone itself), and a tampered chain fails. All keys are
published on a loopback dnslib server."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from dns_zone import DnsZone, ZoneServer, dns_zone_server
from postoffice.mailauth import arc, results
from postoffice.mailauth.arc import ArcError, SealingKey

MESSAGE = (
    b"From: Ann <ann@example.com>\r\n"
    b"To: list@lists.example.org\r\n"
    b"Subject: ARC test\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <arc-test@example.com>\r\n"
    b"\r\n"
    b"Hello through the forwarders.\r\n"
)


def _key(zone: DnsZone, selector: str, domain: str) -> SealingKey:
    """A fresh 2048-bit RSA key, its public half published as a DKIM key record."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    # RFC 6376 §3.6.2.2: a record over 255 octets is several strings, joined by the reader.
    zone.txt(f"{selector}._domainkey.{domain}", *(record[i : i + 255] for i in range(0, len(record), 255)))
    return SealingKey(selector, domain, pem)


@pytest.fixture(scope="module")
def keys() -> Iterator[tuple[ZoneServer, SealingKey, SealingKey]]:
    zone = DnsZone()
    first = _key(zone, "list", "lists.example.org")
    ours = _key(zone, "arc2026", "postoffice.test")
    with dns_zone_server(zone) as server:
        yield server, first, ours


def _dkimpy_dnsfunc(server: ZoneServer) -> Callable[..., bytes | None]:
    """dkimpy's lookups, done by dnspython's synchronous resolver (not our code)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer.rrset[0].strings)  # type: ignore[index]

    return dnsfunc


def _dkimpy_seal(message: bytes, key: SealingKey, authserv_id: str, auth_results: bytes) -> bytes:
    """A forwarder sealing with dkimpy alone: its A-R on top, then arc_sign's set."""
    with_results = (
        b"Authentication-Results: " + authserv_id.encode() + b"; " + auth_results + b"\r\n" + message
    )
    lines = dkim.arc_sign(
        with_results, key.selector.encode(), key.domain.encode(), key.private_key, authserv_id.encode()
    )
    return b"".join(lines) + with_results


async def _ours_seal(message: bytes, key: SealingKey, server: ZoneServer) -> bytes:
    """postoffice forwarding: verify, write our A-R with the arc= result, seal."""
    chain = await arc.verify(message, server.resolver(timeout=1.0))
    field = results.header_field(
        "mx.postoffice.test", [results.arc_result(chain.result, chain.instances, chain.oldest_pass)]
    )
    with_results = field + message
    return arc.seal(with_results, key, "mx.postoffice.test") + with_results


async def test_no_arc_sets_is_none(keys: tuple[ZoneServer, SealingKey, SealingKey]) -> None:
    server, _, _ = keys
    assert await arc.verify(MESSAGE, server.resolver(timeout=1.0)) == arc.ArcResult(
        "none", reason="no ARC sets"
    )


async def test_chain_sealed_by_dkimpy_verifies(keys: tuple[ZoneServer, SealingKey, SealingKey]) -> None:
    server, first, _ = keys
    sealed = _dkimpy_seal(MESSAGE, first, "lists.example.org", b"spf=pass smtp.mailfrom=example.com")
    result = await arc.verify(sealed, server.resolver(timeout=1.0))
    assert (result.result, result.instances, result.oldest_pass) == ("pass", 1, 0)


async def test_our_seal_verifies_with_dkimpy(keys: tuple[ZoneServer, SealingKey, SealingKey]) -> None:
    server, first, ours = keys
    sealed = _dkimpy_seal(MESSAGE, first, "lists.example.org", b"spf=pass smtp.mailfrom=example.com")
    twice = await _ours_seal(sealed, ours, server)
    assert twice.startswith(b"ARC-Seal: i=2; cv=pass;")
    status, sets, reason = dkim.arc_verify(twice, dnsfunc=_dkimpy_dnsfunc(server))
    assert (status, len(sets)) == (b"pass", 2), reason
    result = await arc.verify(twice, server.resolver(timeout=1.0))
    assert (result.result, result.instances, result.oldest_pass) == ("pass", 2, 0)


async def test_first_seal_is_ours(keys: tuple[ZoneServer, SealingKey, SealingKey]) -> None:
    """An alias forwarding a message that had no chain: i=1, cv=none."""
    server, _, ours = keys
    sealed = await _ours_seal(MESSAGE, ours, server)
    assert b"ARC-Seal: i=1; cv=none;" in sealed
    status, _, reason = dkim.arc_verify(sealed, dnsfunc=_dkimpy_dnsfunc(server))
    assert status == b"pass", reason


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Hello through the forwarders.", b"Hello through the forgers...."),
        (b"Subject: ARC test", b"Subject: ARC pwnd"),
        (b"cv=none", b"cv=pass"),
    ],
)
async def test_tampered_chain_fails(
    keys: tuple[ZoneServer, SealingKey, SealingKey], old: bytes, new: bytes
) -> None:
    server, first, _ = keys
    sealed = _dkimpy_seal(MESSAGE, first, "lists.example.org", b"spf=pass smtp.mailfrom=example.com")
    tampered = sealed.replace(old, new)
    assert tampered != sealed
    result = await arc.verify(tampered, server.resolver(timeout=1.0))
    assert (result.result, result.instances) == ("fail", 1), result.reason
    status, _, _ = dkim.arc_verify(tampered, dnsfunc=_dkimpy_dnsfunc(server))
    assert status != b"pass"


async def test_modified_after_sealing_then_resealed_gives_oldest_pass(
    keys: tuple[ZoneServer, SealingKey, SealingKey],
) -> None:
    """A mailing list adds a footer after verifying: the older AMS breaks, the chain holds
    (RFC 8617 §5.2: oldest-pass says from which instance on the content is intact)."""
    server, first, ours = keys
    sealed = _dkimpy_seal(MESSAGE, first, "lists.example.org", b"spf=pass smtp.mailfrom=example.com")
    chain = await arc.verify(sealed, server.resolver(timeout=1.0))
    footer = sealed + b"-- \r\nlist footer\r\n"
    field = results.header_field("mx.postoffice.test", [results.arc_result(chain.result, chain.instances)])
    resealed = arc.seal(field + footer, ours, "mx.postoffice.test") + field + footer
    result = await arc.verify(resealed, server.resolver(timeout=1.0))
    assert (result.result, result.instances, result.oldest_pass) == ("pass", 2, 2)


async def test_missing_key_and_dns_timeout_fail(keys: tuple[ZoneServer, SealingKey, SealingKey]) -> None:
    server, first, _ = keys
    sealed = _dkimpy_seal(MESSAGE, first, "lists.example.org", b"spf=pass smtp.mailfrom=example.com")
    unknown = sealed.replace(b"s=list;", b"s=gone;")
    assert (await arc.verify(unknown, server.resolver(timeout=1.0))).result == "fail"
    server.zone.timeout("slow._domainkey.lists.example.org")
    slow = sealed.replace(b"s=list;", b"s=slow;")
    assert (await arc.verify(slow, server.resolver(timeout=0.5))).result == "fail"


async def test_too_many_sets_fail_without_lookups(keys: tuple[ZoneServer, SealingKey, SealingKey]) -> None:
    server, _, _ = keys
    asked = len(server.zone.queries)
    message = b"ARC-Seal: i=51; cv=pass; a=rsa-sha256; d=x.example; s=s; b=AAAA\r\n" + MESSAGE
    result = await arc.verify(message, server.resolver(timeout=1.0))
    assert (result.result, result.instances, len(server.zone.queries)) == ("fail", 51, asked)


def test_seal_needs_our_results(keys: tuple[ZoneServer, SealingKey, SealingKey]) -> None:
    _, _, ours = keys
    with pytest.raises(ArcError, match="Authentication-Results"):
        arc.seal(MESSAGE, ours, "mx.postoffice.test")
    with pytest.raises(ArcError):
        arc.seal(
            b"Authentication-Results: mx.postoffice.test; arc=none\r\n" + MESSAGE,
            SealingKey("s", "d.example", b"not a key"),
            "mx.postoffice.test",
        )


def test_chain_keys_are_named_once() -> None:
    message = (
        b"ARC-Seal: i=2; cv=pass; a=rsa-sha256; d=B.example; s=two; b=x\r\n"
        b"ARC-Message-Signature: i=2; a=rsa-sha256; d=b.example;\r\n s=two; h=from; bh=x; b=x\r\n"
        b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=a.example; s=one; b=x\r\n"
        b"ARC-Seal: i=1; d=bad domain; s=one\r\n"
    ) + MESSAGE
    assert arc.chain_keys(message) == (2, ["two._domainkey.b.example", "one._domainkey.a.example"])


_ARC_FIELD = st.builds(
    lambda name, tags: name + b": " + tags + b"\r\n",
    st.sampled_from([b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]),
    st.lists(
        st.sampled_from(
            [
                b"i=1",
                b"i=2",
                b"cv=none",
                b"cv=pass",
                b"d=a.example",
                b"s=s",
                b"b=AAAA",
                b"bh=AAAA",
                b"h=from",
                b"a=rsa-sha256",
                b"x",
                b";",
                b"=",
            ]
        ),
        max_size=10,
    ).map(b"; ".join),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_ARC_FIELD, max_size=5))
def test_verify_never_raises_on_junk_sets(fields: list[bytes]) -> None:
    result = arc.verify_with_keys(b"".join(fields) + MESSAGE, {})
    assert result.result in ("none", "fail")
