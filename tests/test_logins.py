"""The throttles hearing other nodes (postoffice.logins.RemoteFailures) without a database: a
feed that keeps what is published and hands the test's reports over on another thread, as the
cluster's watch thread does."""

from __future__ import annotations

import asyncio
import threading

from postoffice.logins import CLEAR, FAIL, FailureListener, MemorySessions, RemoteFailures, SessionRecord
from postoffice.net.login_throttle import LoginThrottle
from postoffice.web.auth import Throttle


class Feed:
    def __init__(self, recent: list[tuple[str, float]] | None = None) -> None:
        self.published: list[tuple[str, str]] = []
        self.listeners: list[FailureListener] = []
        self._recent = recent or []

    def publish(self, op: str, key: str) -> None:
        self.published.append((op, key))

    def subscribe(self, listener: FailureListener) -> None:
        self.listeners.append(listener)

    def recent(self) -> list[tuple[str, float]]:
        return self._recent

    def hear(self, op: str, key: str) -> None:
        """Another node's report, delivered on another thread."""
        thread = threading.Thread(target=lambda: [listener(op, key) for listener in self.listeners])
        thread.start()
        thread.join()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_auth_failures_of_other_nodes_count_and_a_success_clears_nothing() -> None:
    clock, feed = Clock(), Feed(recent=[("192.0.2.9", 30.0)])
    throttle = LoginThrottle(max_failures=3, window=600, delay=0, clock=clock, feed=feed)
    assert throttle.record_failure("192.0.2.1") == 1
    assert feed.published == [(FAIL, "192.0.2.1")]
    feed.hear(FAIL, "192.0.2.1")
    feed.hear(CLEAR, "192.0.2.1")  # an AUTH count is never cleared by a success
    assert not throttle.locked_out("192.0.2.1")
    feed.hear(FAIL, "192.0.2.1")
    assert throttle.locked_out("192.0.2.1")
    assert throttle.record_failure("192.0.2.9") == 2  # the one before this node started counts
    clock.now += 571  # the failure heard at start (30 s old then) leaves the window first
    assert throttle.record_failure("192.0.2.9") == 2


def test_an_older_report_takes_its_place_in_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(
        max_failures=2, window=100, delay=0, clock=clock, feed=Feed(recent=[("x", 90.0)])
    )
    clock.now += 5
    assert throttle.record_failure("x") == 2
    clock.now += 6  # the one from before the start is 101 s old now: out; ours is not
    assert not throttle.locked_out("x")
    assert throttle.record_failure("x") == 2


def test_web_failures_and_clears_of_other_nodes() -> None:
    feed = Feed()
    throttle = Throttle(limit=2, window=100, remote=RemoteFailures(feed, lambda: 50.0))
    feed.hear(FAIL, "alice@example.com")
    throttle.fail("alice@example.com", 50.0)
    assert feed.published == [(FAIL, "alice@example.com")]
    assert throttle.retry_after("alice@example.com", 51.0) == 99.0
    feed.hear(CLEAR, "alice@example.com")  # she logged in on another node
    assert throttle.retry_after("alice@example.com", 51.0) == 0.0
    throttle.clear("bob@example.com")
    assert feed.published[-1] == (CLEAR, "bob@example.com")


def test_memory_sessions_keep_the_most_recently_used() -> None:
    async def run() -> None:
        sessions = MemorySessions(limit=2)
        for token in ("a", "b"):
            await sessions.put(token, SessionRecord(f"{token}@example.com", "csrf", 1.0, 1.0))
        await sessions.touch("a", 5.0)
        await sessions.put("c", SessionRecord("c@example.com", "csrf", 6.0, 6.0))
        assert await sessions.get("b") is None  # the least recently used went
        record = await sessions.get("a")
        assert record is not None and record.last_used == 5.0 and "csrf" not in repr(record)
        await sessions.drop("a")
        assert await sessions.get("a") is None

    asyncio.run(run())
