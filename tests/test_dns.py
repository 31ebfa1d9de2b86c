"""MX routing (RFC 5321 §5.1, RFC 7505) against a real DNS server on loopback (dnslib)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from mail_peers import Dns, dns_server
from postoffice.delivery.dns import Endpoint, MxResolver, RouteError, address_literal, order_hosts


@pytest.fixture
def dns() -> Iterator[Dns]:
    with dns_server() as server:
        yield server


def resolver(dns: Dns, seed: int = 0, timeout: float = 5.0) -> MxResolver:
    return MxResolver(dns.address, timeout=timeout, rng=random.Random(seed))


async def test_mx_records_are_tried_by_preference_with_their_addresses(dns: Dns) -> None:
    dns.zone.mx("example.test", (20, "backup.example.test"), (10, "mx.example.test"))
    dns.zone.a("mx.example.test", "127.0.0.2", "::1")
    dns.zone.a("backup.example.test", "127.0.0.3")

    endpoints = await resolver(dns).endpoints("example.test", 2525)

    assert endpoints == [
        Endpoint("mx.example.test", "127.0.0.2", 2525),
        Endpoint("mx.example.test", "::1", 2525),
        Endpoint("backup.example.test", "127.0.0.3", 2525),
    ]
    assert str(endpoints[0]) == "mx.example.test[127.0.0.2]:2525"
    assert str(endpoints[1]) == "mx.example.test[IPv6:::1]:2525"


async def test_equal_preferences_are_shuffled(dns: Dns) -> None:
    hosts = [f"mx{i}.example.test" for i in range(6)]
    dns.zone.mx("example.test", *((10, host) for host in hosts), (5, "first.example.test"))
    orders = {tuple(await resolver(dns, seed).mail_exchangers("example.test")) for seed in range(8)}
    assert len(orders) > 1  # RFC 5321 §5.1: randomised to spread the load
    for order in orders:
        assert order[0] == "first.example.test" and sorted(order[1:]) == hosts


def test_order_hosts_keeps_each_host_once_at_its_best_preference() -> None:
    ordered = order_hosts([(20, "b"), (10, "a"), (30, "b"), (10, "a")], random.Random(1))
    assert ordered == ["a", "b"]


async def test_no_mx_means_the_domain_itself(dns: Dns) -> None:
    dns.zone.a("plain.test", "127.0.0.4")  # RFC 5321 §5.1 implicit MX
    assert await resolver(dns).endpoints("plain.test", 25) == [Endpoint("plain.test", "127.0.0.4", 25)]


async def test_null_mx_is_a_permanent_failure(dns: Dns) -> None:
    dns.zone.mx("nomail.test", (0, "."))
    dns.zone.a("nomail.test", "127.0.0.5")  # the A record must not be used as implicit MX
    with pytest.raises(RouteError) as failure:
        await resolver(dns).endpoints("nomail.test", 25)
    assert (failure.value.reply.code, failure.value.reply.enhanced) == (556, "5.1.10")


async def test_a_null_mx_among_real_ones_is_ignored(dns: Dns) -> None:
    dns.zone.mx("mixed.test", (0, "."), (10, "mx.mixed.test"))
    dns.zone.a("mx.mixed.test", "127.0.0.6")
    assert await resolver(dns).mail_exchangers("mixed.test") == ["mx.mixed.test"]


async def test_a_domain_that_does_not_exist_is_a_permanent_failure(dns: Dns) -> None:
    with pytest.raises(RouteError) as failure:
        await resolver(dns).endpoints("nowhere.test", 25)
    assert failure.value.reply.permanent and failure.value.reply.enhanced == "5.1.2"


async def test_server_failure_is_temporary(dns: Dns) -> None:
    dns.zone.servfail.add("broken.test.")
    with pytest.raises(RouteError) as failure:
        await resolver(dns).endpoints("broken.test", 25)
    assert failure.value.reply.transient and failure.value.reply.enhanced == "4.4.3"


async def test_a_timeout_is_temporary(dns: Dns) -> None:
    dns.zone.slow.add("slow.test.")
    with pytest.raises(RouteError) as failure:
        await resolver(dns, timeout=0.5).endpoints("slow.test", 25)
    assert failure.value.reply.transient


async def test_mx_hosts_without_addresses_are_skipped(dns: Dns) -> None:
    dns.zone.mx("example.test", (10, "gone.example.test"), (20, "mx.example.test"))
    dns.zone.a("mx.example.test", "127.0.0.2")
    assert await resolver(dns).endpoints("example.test", 25) == [Endpoint("mx.example.test", "127.0.0.2", 25)]


async def test_mx_hosts_none_of_which_has_an_address_are_a_permanent_failure(dns: Dns) -> None:
    dns.zone.mx("example.test", (10, "gone.example.test"))
    dns.zone.exists("gone.example.test")
    with pytest.raises(RouteError) as failure:
        await resolver(dns).endpoints("example.test", 25)
    assert failure.value.reply.permanent and failure.value.reply.enhanced == "5.4.4"


async def test_an_mx_host_whose_lookup_fails_makes_the_failure_temporary(dns: Dns) -> None:
    dns.zone.mx("example.test", (10, "flaky.example.test"))
    dns.zone.servfail.add("flaky.example.test.")
    with pytest.raises(RouteError) as failure:
        await resolver(dns).endpoints("example.test", 25)
    assert failure.value.reply.transient


async def test_address_literals_need_no_dns(dns: Dns) -> None:
    assert await resolver(dns).endpoints("[127.0.0.9]", 25) == [Endpoint("[127.0.0.9]", "127.0.0.9", 25)]
    assert address_literal("[IPv6:::1]") == "::1"
    assert address_literal("example.test") is None
    assert dns.zone.queries == []


async def test_internationalised_domains_are_looked_up_as_a_labels(dns: Dns) -> None:
    dns.zone.a("xn--bcher-kva.test", "127.0.0.7")
    assert await resolver(dns).endpoints("bücher.test", 25) == [Endpoint("bücher.test", "127.0.0.7", 25)]
