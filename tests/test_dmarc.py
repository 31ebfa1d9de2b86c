"""DMARC (RFC 7489): the case table against a loopback DNS server, the same table through
OpenDMARC, and the record parser, alignment and sampling on their own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import dns.resolver
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dmarc_support
from conftest import require_tool
from dmarc_support import CASES, Case, Verdict
from dns_zone import DnsZone, ZoneServer, dns_zone_server
from postoffice.mailauth import dmarc
from postoffice.mailauth.dmarc import DmarcRecord, DmarcRecordError, parse_record
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict


@pytest.fixture(scope="module")
def zone_server() -> Iterator[ZoneServer]:
    zone = DnsZone()
    dmarc_support.publish(zone)
    with dns_zone_server(zone) as server:
        yield server


def _ours(result: dmarc.DmarcResult) -> Verdict:
    return Verdict(result.result, result.policy, result.disposition)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_case_table(case: Case, zone_server: ZoneServer) -> None:
    found = await dmarc.evaluate_message(
        case.from_fields, case.spf, case.dkim, zone_server.resolver(timeout=1.0), sample=lambda pct: False
    )
    assert _ours(found) == case.expected, found.reason


def _comparable(ours: Verdict, theirs: Verdict) -> Verdict:
    """Our verdict with only the parts OpenDMARC reports (it prints p=none without a policy)."""
    return Verdict(
        ours.result if theirs.result is not None else None,
        (ours.policy or "none") if theirs.policy is not None else None,
        ours.disposition if theirs.disposition is not None else None,
    )


def test_opendmarc_agrees(tmp_path: Path) -> None:
    """Every case through OpenDMARC: the same verdict, or exactly the difference the table names."""
    require_tool("opendmarc")
    require_tool("miltertest")
    require_tool("unshare")
    why_not = dmarc_support.can_run_opendmarc()
    if why_not:
        pytest.skip(why_not)
    zone = DnsZone()
    dmarc_support.publish(zone)
    differences = []
    with dmarc_support.dns_on_port_53(zone) as address, dmarc_support.opendmarc(tmp_path, address) as port:
        for case in CASES:
            theirs = dmarc_support.run_case(case, port, tmp_path)
            wanted = case.opendmarc or _comparable(case.expected, theirs)
            if theirs != wanted:
                differences.append(f"{case.name}: OpenDMARC {theirs}, table {wanted}")
            elif case.opendmarc is None:
                assert _comparable(case.expected, theirs) == theirs
    assert differences == [], "\n".join(differences)


# --- the record (RFC 7489 §6.3, §6.4) ------------------------------------------------------------


def test_record_defaults_and_tags() -> None:
    record = parse_record(
        "v=DMARC1;p=Reject ; sp=none; pct=20; adkim=s; aspf=S; fo=0:d; ri=3600; "
        "rua=mailto:a@example.com!10m, bogus, mailto:b@example.com; x-future=1;"
    )
    assert record == DmarcRecord(
        p="reject",
        sp="none",
        pct=20,
        adkim="s",
        aspf="s",
        fo=("0", "d"),
        ri=3600,
        rua=("mailto:a@example.com!10m", "mailto:b@example.com"),
    )
    assert parse_record("v=DMARC1; p=none") == DmarcRecord(p="none")


@pytest.mark.parametrize(
    "text",
    [
        "v=DMARC2; p=reject",
        "v=dmarc1; p=reject",  # the version is case-sensitive
        "p=reject; v=DMARC1",
        "v=DMARC1; p=bogus",
        "v=DMARC1",
        "v=DMARC1; p=reject; pct=101",
        "v=DMARC1; p=reject; pct=-1",
        "v=DMARC1; p=reject; adkim=x",
        "v=DMARC1; p=reject; p=none",
        "v=DMARC1; p=reject; junk",
        "v=DMARC1; p=reject; fo=2",
    ],
)
def test_malformed_records(text: str) -> None:
    with pytest.raises(DmarcRecordError):
        parse_record(text)


def test_no_valid_policy_with_a_report_address_is_p_none() -> None:
    """RFC 7489 §6.6.3: an invalid p with a valid rua acts as p=none."""
    assert parse_record("v=DMARC1; p=whatever; rua=mailto:d@example.com").p == "none"


@given(st.text(max_size=200))
def test_record_parser_raises_only_its_error(text: str) -> None:
    with contextlib.suppress(DmarcRecordError):
        parse_record(text)


@given(
    st.lists(
        st.sampled_from(
            [
                "v=DMARC1",
                "p=reject",
                "sp=none",
                "pct=50",
                "adkim=s",
                "rua=mailto:x@y",
                " ",
                ";",
                "=",
                "fo=1:d",
            ]
        ),
        max_size=12,
    ).map(";".join)
)
def test_record_parser_on_near_records(text: str) -> None:
    with contextlib.suppress(DmarcRecordError):
        parse_record(text)


# --- domains, alignment, sampling ----------------------------------------------------------------


def test_organizational_domain_from_the_shipped_list() -> None:
    assert dmarc.organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert dmarc.organizational_domain("mail.example.com") == "example.com"
    assert dmarc.organizational_domain("co.uk") == "co.uk"


def test_alignment_modes() -> None:
    assert dmarc.aligned("example.com", "Mail.Example.COM.", "r")
    assert not dmarc.aligned("example.com", "mail.example.com", "s")
    assert dmarc.aligned("example.com", "EXAMPLE.com", "s")
    assert not dmarc.aligned("example.co.uk", "other.co.uk", "r")
    assert not dmarc.aligned("example.com", "[192.0.2.1]", "r")


def test_unicode_from_domain_is_compared_as_a_labels() -> None:
    assert dmarc.normalize_domain("Bücher.DE.") == "xn--bcher-kva.de"
    assert dmarc.aligned("xn--bcher-kva.de", "mail.bücher.de", "r")


async def test_pct_sampling_is_injected(zone_server: ZoneServer) -> None:
    """RFC 7489 §6.6.4: in the sample, the policy; outside it, the next weaker one."""
    resolver = zone_server.resolver(timeout=1.0)
    zone_server.zone.txt("_dmarc.sampled.example", "v=DMARC1; p=reject; pct=30")
    asked: list[int] = []

    def inside(pct: int) -> bool:
        asked.append(pct)
        return True

    result = await dmarc.evaluate("sampled.example", None, [], resolver, sample=inside)
    assert (result.disposition, asked) == ("reject", [30])
    result = await dmarc.evaluate("sampled.example", None, [], resolver, sample=lambda pct: False)
    assert result.disposition == "quarantine"


def test_default_sampler_takes_about_pct_percent() -> None:
    taken = sum(dmarc.sample_percent(30) for _ in range(2000))
    assert 450 < taken < 750  # 600 expected; this band is over 6 standard deviations wide


async def test_several_records_mean_no_policy(zone_server: ZoneServer) -> None:
    """RFC 7489 §6.6.3: more than one DMARC record ends policy discovery: no DMARC."""
    zone_server.zone.txt("_dmarc.twice.example", "v=DMARC1; p=reject")
    zone_server.zone.txt("_dmarc.twice.example", "v=DMARC1; p=none")
    result = await dmarc.evaluate("twice.example", None, [], zone_server.resolver(timeout=1.0))
    assert result.result == "none"


async def test_servfail_is_temperror_and_other_txt_is_ignored(zone_server: ZoneServer) -> None:
    zone_server.zone.rcode("_dmarc.broken.example", "SERVFAIL")
    resolver = zone_server.resolver(timeout=1.0)
    assert (await dmarc.evaluate("broken.example", None, [], resolver)).result == "temperror"
    zone_server.zone.txt("_dmarc.spf-only.example", "v=spf1 -all")
    assert (await dmarc.evaluate("spf-only.example", None, [], resolver)).result == "none"


async def test_org_domain_record_found_for_a_subdomain_without_one(zone_server: ZoneServer) -> None:
    resolver = zone_server.resolver(timeout=1.0)
    result = await dmarc.evaluate("deep.shop.example.com", SpfVerdict("pass", "example.com"), [], resolver)
    assert (result.result, result.policy_domain, result.policy, result.spf_aligned) == (
        "pass",
        "example.com",
        "quarantine",
        True,
    )


async def test_helo_identity_aligns_like_mail_from(zone_server: ZoneServer) -> None:
    """RFC 7489 §3.1.2 / RFC 7208 §2.4: with an empty MAIL FROM, SPF checked the HELO name."""
    resolver = zone_server.resolver(timeout=1.0)
    result = await dmarc.evaluate("example.com", SpfVerdict("pass", "mx.example.com", "helo"), [], resolver)
    assert result.result == "pass"


@pytest.mark.parametrize(
    ("fields", "domains"),
    [
        (["Ann <ann@Example.COM>"], ["example.com"]),
        ([b"a@example.com,\r\n b@mail.example.com"], ["example.com", "mail.example.com"]),
        (["Team: a@example.com, b@example.com;"], ["example.com"]),
    ],
)
def test_author_domains(fields: list[str | bytes], domains: list[str]) -> None:
    assert dmarc.author_domains(fields) == domains


@pytest.mark.parametrize(
    "fields",
    [[], ["a@example.com", "b@example.com"], ["no-domain"], ["a@[192.0.2.1]"], [", , ,"], ["<>"]],
)
def test_author_errors(fields: list[str]) -> None:
    with pytest.raises(dmarc.AuthorError):
        dmarc.author_domains(fields)


def test_author_domains_are_bounded() -> None:
    many = ", ".join(f"a@d{n}.example" for n in range(dmarc.MAX_AUTHOR_DOMAINS + 1))
    with pytest.raises(dmarc.AuthorError, match="domains"):
        dmarc.author_domains([many])


@given(st.text(max_size=120))
def test_author_domains_raise_only_their_error(text: str) -> None:
    with contextlib.suppress(dmarc.AuthorError):
        dmarc.author_domains([text])


def _by_full_parser(text: str) -> list[str] | str:
    try:
        return dmarc._parsed_domains(text.strip())
    except dmarc.AuthorError as exc:
        return f"error: {exc}"


def _by_author_domains(text: str) -> list[str] | str:
    try:
        return dmarc.author_domains([text])
    except dmarc.AuthorError as exc:
        return f"error: {exc}"


@pytest.mark.parametrize(
    "text",
    [
        "ann@example.com",
        "Ann Smith <ann@Example.COM>",
        '"Smith, Ann" <ann@example.com>',
        "Ann<ann@example.com>",
        "<a.b.c@mail.example.com>",
        "a@-bad-.example",
        "a@example",
        "a@192.0.2.1",
        "Ann ann@example.com",
        "a@example.com (Ann)",
        '"a\\"b" <a@example.com>',
        "a..b@example.com",
        "a@example.com.",
        "a@bü.example",
    ],
)
def test_plain_from_fields_read_like_the_full_parser(text: str) -> None:
    """The cheap path for a plain mailbox gives what the stdlib's parser gives."""
    assert _by_author_domains(text) == _by_full_parser(text)


@given(st.from_regex(dmarc._PLAIN_MAILBOX, fullmatch=True) | st.text(max_size=80))
def test_any_from_field_reads_like_the_full_parser(text: str) -> None:
    text = text.replace("\r", "").replace("\n", "")  # author_domains unfolds; compare unfolded text
    assert _by_author_domains(text) == _by_full_parser(text)


async def test_dkim_verdicts_any_aligned_pass_wins(zone_server: ZoneServer) -> None:
    resolver = zone_server.resolver(timeout=1.0)
    verdicts = [DkimVerdict("pass", "other.example", "s", "b"), DkimVerdict("pass", "example.com", "s", "b")]
    result = await dmarc.evaluate("example.com", None, verdicts, resolver)
    assert (result.result, result.dkim_aligned, result.spf_aligned) == ("pass", True, False)


async def test_cached_answers_are_read_from_the_cache_within_their_ttl() -> None:
    """Records the resolver's cache holds are used as dnspython would use them (the TTL kept):
    a record changed in DNS is seen only once the cached answer expires."""
    zone = DnsZone()
    zone.txt("_dmarc.cached.example", "v=DMARC1; p=reject")
    with dns_zone_server(zone) as server:
        resolver = server.resolver(timeout=1.0)
        resolver.cache = dns.resolver.LRUCache(10)
        first = await dmarc.discover_policy("cached.example", resolver)
        changed = DnsZone()
        changed.txt("_dmarc.cached.example", "v=DMARC1; p=none")
        server.serve(changed)
        assert await dmarc.discover_policy("cached.example", resolver) == first
        resolver.cache.flush()
        again = await dmarc.discover_policy("cached.example", resolver)
    assert first.record is not None and first.record.p == "reject"
    assert again.record is not None and again.record.p == "none"
