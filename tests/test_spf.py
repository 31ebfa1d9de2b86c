"""SPF (RFC 7208) beyond the published suite: the API the SMTP stages use, the header fields,
RFC 7208 §7.4's macro examples, and hostile input (huge, looping or garbage records, DNS that
times out or fails), each ending in permerror or temperror within bounded time and queries.

Every check runs against a real DNS server on loopback (tests/dns_zone.py) through dnspython's
async resolver, built by the same function the server uses. The parsers are fuzzed with
Hypothesis: whatever the text, they return a parsed value or raise SpfPermError.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns_zone import DnsZone, ZoneServer, dns_zone_server
from postoffice.dns_resolver import make_resolver
from postoffice.mailauth.spf import SpfOptions, SpfResult, check_helo, check_host, check_mail_from
from postoffice.mailauth.spf_macro import MAX_EXPANSION, MacroValues, expand, expand_domain
from postoffice.mailauth.spf_record import (
    Record,
    SpfPermError,
    is_spf_record,
    parse_domain_spec,
    parse_macro_string,
    parse_record,
)

RESULTS = {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}
CLIENT = "192.0.2.10"


@pytest.fixture(scope="module")
def server() -> Iterator[ZoneServer]:
    with dns_zone_server() as running:
        yield running


@pytest.fixture
def dns(server: ZoneServer) -> ZoneServer:
    """The module's DNS server with a fresh, empty zone for this test."""
    server.serve(DnsZone())
    return server


async def mail_from(dns: ZoneServer, sender: str, ip: str = CLIENT, **options: Any) -> SpfResult:
    spf_options = SpfOptions(receiver="mx.receiver.test", **options)
    return await check_mail_from(ip, sender, "client.test", resolver=dns.resolver(1.0), options=spf_options)


# --- the resolver the server builds ------------------------------------------------------------


def test_make_resolver_asks_the_configured_server_with_its_lifetime() -> None:
    resolver = make_resolver(("127.0.0.1", 5353), timeout=3.5)
    assert resolver.nameservers == ["127.0.0.1"]
    assert resolver.port == 5353
    assert resolver.lifetime == 3.5


# --- results and what they carry ---------------------------------------------------------------


async def test_pass_names_the_matching_mechanism(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 ip4:192.0.2.0/24 -all")
    result = await mail_from(dns, "alice@example.test")
    assert (result.result, result.mechanism, result.domain) == ("pass", "ip4:192.0.2.0/24", "example.test")
    assert result.sender == "alice@example.test" and result.identity == "mailfrom"
    assert result.explanation is None and result.problem is None
    assert result.comment == "domain of alice@example.test designates 192.0.2.10 as permitted sender"


async def test_fail_carries_the_domains_explanation(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 mx -all exp=why.example.test")
    dns.zone.txt("why.example.test", "%{c} may not send for %{o} (asked by %{r})")
    result = await mail_from(dns, "alice@example.test")
    assert (result.result, result.mechanism) == ("fail", "-all")
    assert result.explanation == "192.0.2.10 may not send for example.test (asked by mx.receiver.test)"


async def test_fail_without_exp_uses_the_receivers_default_explanation(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 -all")
    result = await mail_from(dns, "alice@example.test")
    assert result.explanation == "example.test has not authorized 192.0.2.10 to send its mail"
    custom = await mail_from(dns, "alice@example.test", default_explanation="See %{d} for %{i}")
    assert custom.explanation == "See example.test for 192.0.2.10"


def test_a_default_explanation_that_is_not_a_macro_string_is_refused_at_configuration() -> None:
    with pytest.raises(ValueError, match="default SPF explanation"):
        SpfOptions(default_explanation="100%")


@pytest.mark.parametrize(
    ("record", "result"),
    [("v=spf1 ~all", "softfail"), ("v=spf1 ?all", "neutral"), ("v=spf1", "neutral"), ("v=spf1 +all", "pass")],
)
async def test_qualifiers(dns: ZoneServer, record: str, result: str) -> None:
    dns.zone.txt("example.test", record)
    assert (await mail_from(dns, "a@example.test")).result == result


async def test_no_record_is_none(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "google-site-verification=abc")
    result = await mail_from(dns, "a@example.test")
    assert result.result == "none" and result.problem == "example.test publishes no SPF record"
    assert (await mail_from(dns, "a@nxdomain.test")).result == "none"


async def test_null_sender_checks_postmaster_at_the_helo_name(dns: ZoneServer) -> None:
    dns.zone.txt("client.test", "v=spf1 a -all")
    dns.zone.a("client.test", CLIENT)
    result = await mail_from(dns, "")
    assert (result.result, result.domain, result.sender) == ("pass", "client.test", "postmaster@client.test")


async def test_helo_identity(dns: ZoneServer) -> None:
    dns.zone.txt("mail.client.test", "v=spf1 -all")
    result = await check_helo("192.0.2.99", "mail.client.test", resolver=dns.resolver(1.0))
    assert (result.result, result.identity, result.domain) == ("fail", "helo", "mail.client.test")
    assert result.authentication_results().endswith(" smtp.helo=mail.client.test")


@pytest.mark.parametrize("helo", ["[192.0.2.10]", "localhost", "a..b.test", "x" * 64 + ".test", ""])
async def test_helo_that_is_no_domain_name_is_none_without_a_lookup(dns: ZoneServer, helo: str) -> None:
    result = await check_helo(CLIENT, helo, resolver=dns.resolver(1.0))
    assert result.result == "none" and "is not a domain name" in (result.problem or "")
    assert dns.zone.queries == []


async def test_an_internationalised_domain_is_looked_up_by_its_a_labels(dns: ZoneServer) -> None:
    dns.zone.txt("xn--bcher-kva.test", "v=spf1 ip4:192.0.2.10 -all")  # RFC 5890: bücher.test
    result = await mail_from(dns, "anna@bücher.test")
    assert (result.result, result.domain) == ("pass", "bücher.test")


async def test_a_slow_exp_lookup_falls_back_to_the_default_within_the_time_limit(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 -all exp=slow.example.test")
    dns.zone.timeout("slow.example.test")
    started = time.monotonic()
    result = await check_mail_from(
        CLIENT, "a@example.test", "h", resolver=dns.resolver(5.0), options=SpfOptions(time_limit=0.5)
    )
    assert (result.result, result.explanation) == ("fail", "%{o} has not authorized %{c} to send its mail")
    assert time.monotonic() - started < 2.0


async def test_ipv6_client_and_ipv4_mapped_client(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 ip6:2001:db8::/32 ip4:192.0.2.10 -all")
    assert (await mail_from(dns, "a@example.test", ip="2001:db8::25")).result == "pass"
    mapped = await mail_from(dns, "a@example.test", ip="::ffff:192.0.2.10")
    assert (mapped.result, mapped.ip, mapped.mechanism) == ("pass", "192.0.2.10", "ip4:192.0.2.10")
    assert (await mail_from(dns, "a@example.test", ip="2001:db9::1")).result == "fail"


async def test_a_client_that_is_no_ip_address_is_a_permerror_not_an_exception(dns: ZoneServer) -> None:
    result = await check_host("not-an-ip", "example.test", "a@example.test", "h", resolver=dns.resolver())
    assert result.result == "permerror" and "is not an IP address" in (result.problem or "")


async def test_mx_include_and_redirect_together(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 mx include:partner.test redirect=_spf.example.test")
    dns.zone.mx("example.test", 10, "mx.example.test")
    dns.zone.a("mx.example.test", "192.0.2.1")
    dns.zone.txt("partner.test", "v=spf1 ip4:198.51.100.0/24 -all")
    dns.zone.txt("_spf.example.test", "v=spf1 a:out.example.test/28 ~all")
    dns.zone.a("out.example.test", "203.0.113.1")
    assert (await mail_from(dns, "a@example.test", ip="192.0.2.1")).result == "pass"
    assert (await mail_from(dns, "a@example.test", ip="198.51.100.7")).result == "pass"
    assert (await mail_from(dns, "a@example.test", ip="203.0.113.14")).mechanism == "a:out.example.test/28"
    assert (await mail_from(dns, "a@example.test", ip="203.0.113.16")).result == "softfail"


# --- header fields -----------------------------------------------------------------------------


def test_authentication_results_and_received_spf() -> None:
    result = SpfResult("pass", "example.test", "alice@example.test", "192.0.2.10", helo="client.test")
    assert result.authentication_results() == (
        "spf=pass (domain of alice@example.test designates 192.0.2.10 as permitted sender)"
        " smtp.mailfrom=alice@example.test"
    )
    assert result.received_spf("mx.test") == (
        "pass (mx.test: domain of alice@example.test designates 192.0.2.10 as permitted sender)"
        ' client-ip=192.0.2.10; envelope-from="alice@example.test"; helo=client.test;'
        " receiver=mx.test; identity=mailfrom"
    )


def test_header_fields_quote_what_the_client_sent_and_never_carry_a_line_break() -> None:
    hostile = 'a"b\\(c)\r\nX-Injected: yes@example.test'
    result = SpfResult("permerror", "example.test", hostile, "2001:db8::1", helo="h\r\n", problem="p)(")
    for text in (result.authentication_results(), result.received_spf("mx.test")):
        assert "\r" not in text and "\n" not in text
    assert 'envelope-from="a\\"b\\\\(c)??X-Injected: yes@example.test"' in result.received_spf("mx.test")
    assert 'client-ip="2001:db8::1"' in result.received_spf("mx.test")
    assert "p\\)\\(" in result.authentication_results()


# --- RFC 7208 §7.4: the published macro examples ------------------------------------------------


VALUES4 = MacroValues(
    "strong-bad@email.example.com", "strong-bad", "email.example.com", "email.example.com",
    ipaddress.ip_address("192.0.2.3"), "mx.example.org", "receiver.example",
)  # fmt: skip


@pytest.mark.parametrize(
    ("macro", "expansion"),
    [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ],
)
def test_rfc7208_macro_examples(macro: str, expansion: str) -> None:
    assert expand(parse_macro_string(macro), VALUES4) == expansion


def test_rfc7208_ipv6_macro_example() -> None:
    values = MacroValues(
        "strong-bad@email.example.com", "strong-bad", "email.example.com", "email.example.com",
        ipaddress.ip_address("2001:db8::cb01"), "mx.example.org", "receiver.example",
    )  # fmt: skip
    expanded = expand(parse_macro_string("%{ir}.%{v}._spf.%{d2}"), values)
    assert expanded.lower() == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


def test_explanation_only_letters_and_url_escaping() -> None:
    text = parse_macro_string("%{c} via %{r} for %{L}", explanation=True)
    assert expand(text, VALUES4) == "192.0.2.3 via receiver.example for strong-bad"
    assert expand(parse_macro_string("%{S}"), VALUES4) == "strong-bad%40email.example.com"
    with pytest.raises(SpfPermError, match="letter 'c' not allowed"):
        parse_macro_string("%{c}.example.com")


def test_expanded_domains_lose_labels_on_the_left_past_253_characters() -> None:
    long_domain = ".".join(["a" * 60] * 4) + ".example"  # 252 characters
    values = MacroValues("x@y.test", "x", "y.test", long_domain, ipaddress.ip_address(CLIENT), "h", "r")
    name = expand_domain(parse_domain_spec("%{d}.suffix.test."), values)
    assert len(name) <= 253 and name.endswith(".example.suffix.test") and not name.endswith(".")


# --- hostile input: bounded, never a crash -------------------------------------------------------


async def test_include_loop_stops_at_the_lookup_limit(dns: ZoneServer) -> None:
    dns.zone.txt("loop.test", "v=spf1 include:loop.test -all")
    result = await mail_from(dns, "a@loop.test")
    assert result.result == "permerror" and "more than 10 DNS lookups" in (result.problem or "")
    assert len(dns.zone.queries) == 11  # the record, then 10 includes of it


async def test_long_include_chain_stops_at_the_lookup_limit(dns: ZoneServer) -> None:
    for i in range(30):
        dns.zone.txt(f"d{i}.test", f"v=spf1 include:d{i + 1}.test")
    assert (await mail_from(dns, "a@d0.test")).result == "permerror"
    assert len(dns.zone.queries) <= 11


async def test_huge_record_of_lookups_is_cut_off_after_ten(dns: ZoneServer) -> None:
    terms = " ".join(f"a:host{i}.example.test" for i in range(2000))  # about 45 KB
    dns.zone.txt("example.test", *_strings(f"v=spf1 {terms} -all"))
    for i in range(12):
        dns.zone.a(f"host{i}.example.test", "203.0.113.1")
    started = time.monotonic()
    result = await mail_from(dns, "a@example.test")
    assert result.result == "permerror" and len(result.problem or "") <= 200
    assert len(dns.zone.queries) == 11 and time.monotonic() - started < 5


async def test_huge_record_without_lookups_is_evaluated(dns: ZoneServer) -> None:
    terms = " ".join(f"ip4:10.{i // 256}.{i % 256}.0/24" for i in range(2500))  # about 50 KB
    dns.zone.txt("example.test", *_strings(f"v=spf1 {terms} -all"))
    result = await mail_from(dns, "a@example.test", ip="10.9.195.7")  # the last network
    assert (result.result, result.mechanism) == ("pass", "ip4:10.9.195.0/24")


async def test_void_lookups_are_limited(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 a:n1.test a:n2.test a:n3.test ip4:192.0.2.10")
    assert (await mail_from(dns, "a@example.test")).result == "permerror"
    assert (await mail_from(dns, "a@example.test", max_void_lookups=3)).result == "pass"


async def test_mx_with_more_than_ten_hosts_is_a_permerror(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 mx ?all")
    for i in range(11):
        dns.zone.mx("example.test", i, f"mx{i}.example.test")
    assert (await mail_from(dns, "a@example.test")).result == "permerror"


async def test_macro_expansion_bomb_is_a_permerror(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", *_strings("v=spf1 exists:" + "%{s}" * 3000 + ".test -all"))
    result = await mail_from(dns, "x" * 60 + "@example.test")
    assert result.result == "permerror" and f"longer than {MAX_EXPANSION}" in (result.problem or "")


@pytest.mark.parametrize(
    "record",
    [
        b"v=spf1 a:\x00.test -all",
        b"v=spf1 \xff\xfe -all",
        b"v=spf1 ip4:192.0.2.10\r\n -all",
        b"v=spf1 " + bytes(range(1, 32)) + b" -all",
        b"v=spf1 redirect=a.test redirect=b.test",
        b"v=spf1 ip4:999.1.1.1",
    ],
)
async def test_garbage_records_are_permerrors(dns: ZoneServer, record: bytes) -> None:
    dns.zone.txt("example.test", record)
    result = await mail_from(dns, "a@example.test")
    assert result.result == "permerror"
    assert result.problem is not None and result.problem.isprintable()


async def test_two_spf_records_are_a_permerror(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 +all")
    dns.zone.txt("example.test", "V=SPF1 -all")
    result = await mail_from(dns, "a@example.test")
    assert result.result == "permerror" and "2 SPF records" in (result.problem or "")


async def test_dns_failures_are_temperrors(dns: ZoneServer) -> None:
    dns.zone.rcode("broken.test", "SERVFAIL")
    dns.zone.timeout("silent.test")
    dns.zone.txt("inc.test", "v=spf1 include:silent.test -all")
    for domain in ("broken.test", "silent.test", "inc.test"):
        result = await mail_from(dns, f"a@{domain}")
        assert result.result == "temperror", domain
    assert "timed out" in str((await mail_from(dns, "a@silent.test")).problem)


async def test_the_whole_check_has_a_time_limit(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 " + " ".join(f"a:slow{i}.test" for i in range(9)) + " -all")
    for i in range(9):
        dns.zone.timeout(f"slow{i}.test")
    started = time.monotonic()
    result = await check_mail_from(
        CLIENT, "a@example.test", "h", resolver=dns.resolver(5.0), options=SpfOptions(time_limit=0.5)
    )
    assert (result.result, result.problem) == ("temperror", "no result within 0.5 s")
    assert time.monotonic() - started < 2.0


async def test_checks_run_concurrently_on_one_resolver(dns: ZoneServer) -> None:
    dns.zone.txt("example.test", "v=spf1 a -all")
    dns.zone.a("example.test", CLIENT)
    resolver = dns.resolver(1.0)
    results = await asyncio.gather(
        *(
            check_mail_from(CLIENT if i % 2 else "192.0.2.11", "a@example.test", "h", resolver=resolver)
            for i in range(20)
        )
    )
    assert [r.result for r in results] == ["fail", "pass"] * 10


# --- fuzzing -----------------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOCABULARY = [
    "v=spf1", " ", "  ", "+", "-", "~", "?", "all", "a", "mx", "ptr", "ip4", "ip6", "include", "exists",
    "redirect", "exp", "=", ":", "/", "//", "%", "%{", "}", "%%", "%_", "%-", "d", "s", "l", "o", "i",
    "p", "h", "v", "c", "r", "t", "L", "D", "2", "r", "0", "32", "128", "129", "1.2.3.4", "::1",
    "example.com", ".", "-", "+", ",", "_", "\x00", "\r", "é", "ÿ", "xn--zckzah", "foo", "=", "0000",
]  # fmt: skip
# Records built from the grammar's pieces, right and wrong, so that most parse and evaluate.
qualifiers = st.sampled_from(["", "+", "-", "~", "?"])
macros = st.builds(
    "%{{{}{}{}{}}}".format,
    st.sampled_from("slodiphvSLDI" * 3 + "crtx"),
    st.sampled_from(["", "", "", "1", "2", "0", "99999"]),
    st.sampled_from(["", "r"]),
    st.sampled_from(["", ".", "-", "+=", "/_,"]),
)
labels = st.sampled_from(["example", "com", "test", "x", "mail"] * 3 + ["%%", "%_", "", "-", "123", "a" * 64])
domain_specs = st.lists(st.one_of(macros, labels), min_size=1, max_size=6).map(".".join)
cidrs = st.sampled_from(["", "", "", "/0", "/24", "/32", "//64", "/24//64", "/33", "//129", "/032"])
terms = st.one_of(
    st.builds(
        "{}{}:{}{}".format,
        qualifiers,
        st.sampled_from(["a", "mx", "ptr", "include", "exists"]),
        domain_specs,
        cidrs,
    ),
    st.builds("{}{}{}".format, qualifiers, st.sampled_from(["a", "mx", "ptr", "all"]), cidrs),
    st.builds(
        "{}ip4:{}".format,
        qualifiers,
        st.sampled_from(["192.0.2.10", "192.0.2.0/24", "256.1.1.1", "1.2.3", "0.0.0.0/0"]),
    ),
    st.builds(
        "{}ip6:{}".format, qualifiers, st.sampled_from(["::1", "2001:db8::/32", "::ffff:192.0.2.10", ":::"])
    ),
    st.builds("{}={}".format, st.sampled_from(["redirect", "exp", "foo", "1x"]), domain_specs),
)
records = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(VOCABULARY), max_size=40).map("".join),
    st.lists(st.sampled_from(VOCABULARY), max_size=40).map(lambda parts: "v=spf1 " + "".join(parts)),
    st.lists(terms, max_size=8).map(lambda parts: "v=spf1 " + " ".join(parts)),
)


@FUZZ
@given(records)
def test_record_parser_parses_or_raises_a_permerror(text: str) -> None:
    try:
        record = parse_record(text)
    except SpfPermError as exc:
        assert str(exc)
    else:
        assert isinstance(record, Record) and is_spf_record(text.encode())


@FUZZ
@given(records, st.booleans())
def test_macro_parser_and_expansion_parse_or_raise_a_permerror(text: str, explanation: bool) -> None:
    values = MacroValues(
        "l-p@s.test", "l-p", "s.test", "d.test", ipaddress.ip_address("2001:db8::1"), "h", "r"
    )
    try:
        parsed = parse_macro_string(text, explanation=explanation)
        expanded = expand(parsed, values)
        domain = expand_domain(parse_domain_spec(text), values)
    except SpfPermError as exc:
        assert str(exc)
    else:
        assert isinstance(expanded, str) and (len(domain) <= 253 or "." not in domain)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(records, st.lists(terms, max_size=3).map(lambda parts: "v=spf1 " + " ".join(parts))),
    st.sampled_from([CLIENT, "2001:db8::7", "::ffff:192.0.2.10"]),
)
def test_any_published_record_gives_one_of_the_seven_results(server: ZoneServer, text: str, ip: str) -> None:
    zone = DnsZone()
    zone.txt("example.test", *_strings(text.encode("utf-8", "surrogatepass")))
    zone.a("example.com", "192.0.2.10", "2001:db8::7")
    zone.txt("example.com", "v=spf1 a -all")
    zone.ptr("10.2.0.192.in-addr.arpa", "example.com")
    server.serve(zone)
    started = time.monotonic()
    result = asyncio.run(check_mail_from(ip, "l-p@example.test", "h.test", resolver=server.resolver(1.0)))
    assert result.result in RESULTS and time.monotonic() - started < 10


def _strings(text: str | bytes) -> list[bytes]:
    """A record as the 255-octet character-strings one TXT record carries (RFC 1035 §3.3)."""
    data = text.encode() if isinstance(text, str) else text
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
