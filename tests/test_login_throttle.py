"""Failed-login throttling per client address, with a clock the test moves."""

from __future__ import annotations

import pytest

from postoffice.net import login_throttle
from postoffice.net.login_throttle import LoginThrottle, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttle(
    clock: Clock, *, max_failures: int = 3, window: float = 60.0, delay: float = 2.0
) -> LoginThrottle:
    return LoginThrottle(max_failures=max_failures, window=window, delay=delay, clock=clock)


def test_delay_grows_with_each_failure(clock: Clock) -> None:
    limiter = throttle(clock, max_failures=5)
    counts = [limiter.record_failure("192.0.2.1") for _ in range(4)]
    assert counts == [1, 2, 3, 4]
    assert [limiter.delay_for(n) for n in counts] == [2.0, 4.0, 6.0, 8.0]


def test_lockout_after_max_failures_within_the_window(clock: Clock) -> None:
    limiter = throttle(clock)
    for _ in range(2):
        limiter.record_failure("192.0.2.1")
        assert not limiter.locked_out("192.0.2.1")
    assert limiter.record_failure("192.0.2.1") == 3
    assert limiter.locked_out("192.0.2.1")
    assert not limiter.locked_out("192.0.2.2")  # per address


def test_failures_leave_the_window(clock: Clock) -> None:
    limiter = throttle(clock)
    for _ in range(3):
        limiter.record_failure("192.0.2.1")
        clock.now += 10
    assert limiter.locked_out("192.0.2.1")
    clock.now = 1000.0 + 60.0  # the first failure (at 1000) is now exactly one window old
    assert not limiter.locked_out("192.0.2.1")
    assert limiter.record_failure("192.0.2.1") == 3  # the two newer ones still count


def test_all_failures_forgotten_after_the_window(clock: Clock) -> None:
    limiter = throttle(clock)
    limiter.record_failure("192.0.2.1")
    clock.now += 61
    assert limiter.record_failure("192.0.2.1") == 1


def test_ipv6_clients_are_throttled_per_64(clock: Clock) -> None:
    limiter = throttle(clock)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"):
        limiter.record_failure(host)
    assert limiter.locked_out("2001:db8:1:2::77")
    assert not limiter.locked_out("2001:db8:1:3::1")


def test_client_key() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8::1") == "2001:db8::/64"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("not an address") == "not an address"


def test_memory_stays_bounded(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(login_throttle, "MAX_CLIENTS", 10)
    limiter = throttle(clock, max_failures=1000)
    for n in range(50):
        limiter.record_failure(f"10.0.0.{n}")
    for _ in range(5000):
        limiter.record_failure("10.0.1.1")
    assert len(limiter._failures) == 10
    assert len(limiter._failures["10.0.1.1"]) == 1000  # at most max_failures times per address
    assert limiter.locked_out("10.0.1.1")
    assert not limiter.locked_out("10.0.0.0")  # the least recently failing went first
