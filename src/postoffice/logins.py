"""What the nodes of a cluster share about people logging in: web sessions and failed logins.

Untrusted input seen here: session tokens from cookies (looked up, never trusted as data) and
the keys of failed logins (client addresses, typed account names), bounded by the throttles.

One machine keeps both in memory (:class:`LocalLogins`), as it always did: nothing here costs
it a system call. A cluster (:mod:`postoffice.pgstore.logins`) keeps the sessions in the
database, so a load balancer may send any request to any node, and tells every node of each
failed login, so a guesser counts against one limit wherever their attempts land. The
throttles themselves stay in memory on every node (a lockout check never waits): what other
nodes report comes in through :class:`RemoteFailures`, on another thread, and is applied by
the throttle's own thread when it next looks.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

# Sessions kept at once in memory; the least recently used goes first beyond this.
MAX_SESSIONS = 10_000
# Reports from other nodes waiting for a throttle to look: beyond this the oldest are dropped
# (memory stays bounded whatever a botnet does; the throttle's own key limit drops them anyway).
MAX_WAITING = 100_000

# A failed login ("fail"), or a success that clears the account's count ("clear").
FAIL, CLEAR = "fail", "clear"


@dataclass(slots=True)
class SessionRecord:
    """A web session as kept: whose, its CSRF token, and when it was made and last used."""

    address: str
    csrf_token: str = field(repr=False)
    created: float
    last_used: float


class SessionStore(Protocol):
    """Where web sessions live, by the cookie's token."""

    async def get(self, token: str) -> SessionRecord | None: ...

    async def put(self, token: str, record: SessionRecord) -> None: ...

    async def touch(self, token: str, now: float) -> None:
        """The session was used at ``now`` (the idle timeout starts again)."""
        ...

    async def drop(self, token: str) -> None: ...


class MemorySessions:
    """One process's sessions (a restart logs everyone out), at most :data:`MAX_SESSIONS`."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self._limit = limit
        self._sessions: OrderedDict[str, SessionRecord] = OrderedDict()

    async def get(self, token: str) -> SessionRecord | None:
        return self._sessions.get(token)

    async def put(self, token: str, record: SessionRecord) -> None:
        self._sessions[token] = record
        while len(self._sessions) > self._limit:
            self._sessions.popitem(last=False)

    async def touch(self, token: str, now: float) -> None:
        record = self._sessions.get(token)
        if record is not None:
            record.last_used = now
            self._sessions.move_to_end(token)

    async def drop(self, token: str) -> None:
        self._sessions.pop(token, None)


FailureListener = Callable[[str, str], None]  # (FAIL or CLEAR, key), on another thread


class FailureFeed(Protocol):
    """Failed logins of one kind (one throttle), told to and heard from the other nodes."""

    def publish(self, op: str, key: str) -> None:
        """Tell the others of this node's FAIL or CLEAR of ``key`` (never waits)."""
        ...

    def subscribe(self, listener: FailureListener) -> None:
        """``listener`` hears the other nodes' reports, on another thread."""
        ...

    def recent(self) -> list[tuple[str, float]]:
        """The failures still within the window: (key, seconds ago), oldest first."""
        ...


class Logins(Protocol):
    """Where a server keeps its web sessions, and how its throttles hear of other nodes."""

    def sessions(self) -> SessionStore: ...

    def failures(self, kind: str, window: float) -> FailureFeed | None:
        """The feed of throttle ``kind`` (None: this server is alone)."""
        ...


class LocalLogins:
    """One server: sessions in memory, throttles alone."""

    def sessions(self) -> SessionStore:
        return MemorySessions()

    def failures(self, kind: str, window: float) -> FailureFeed | None:
        return None


class RemoteFailures:
    """What other nodes reported to one throttle, waiting for that throttle's thread.

    The feed's thread appends (a deque's append and popleft are atomic), stamped with the
    throttle's own clock on arrival; the throttle drains them at its next look, so its own
    structures are only ever touched by its own thread.
    """

    def __init__(self, feed: FailureFeed, clock: Callable[[], float]) -> None:
        self.feed = feed
        self._clock = clock
        self._waiting: deque[tuple[str, str, float]] = deque(maxlen=MAX_WAITING)
        now = clock()
        for key, age in feed.recent():  # a node that starts knows the window's failures
            self._waiting.append((FAIL, key, now - age))
        feed.subscribe(self._heard)

    def _heard(self, op: str, key: str) -> None:
        self._waiting.append((op, key, self._clock()))

    def drain(self) -> Iterator[tuple[str, str, float]]:
        """(op, key, when) of each report not applied yet, oldest first."""
        waiting = self._waiting
        while waiting:
            yield waiting.popleft()


def merged(times: deque[float], at: float, limit: int) -> deque[float]:
    """``times`` (oldest first, at most ``limit``) with ``at`` in its place."""
    if not times or at >= times[-1]:
        times.append(at)
        return times
    return deque(sorted([*times, at])[-limit:], maxlen=limit)
