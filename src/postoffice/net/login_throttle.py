"""Failed-login throttling per client address: a growing delay, then a lockout.

Untrusted input seen here: client addresses of failed AUTH attempts. Memory stays bounded
whatever a client does: at most ``max_failures`` times per address are kept, addresses whose
failures are all older than the window are forgotten, and the number of addresses tracked is
capped (:data:`MAX_CLIENTS`).

The policy (Dovecot's ``auth_failure_delay`` combined with fail2ban's ``maxretry``/``findtime``):
the n-th failure from an address within ``window`` seconds waits ``n × delay`` before its 535,
and at ``max_failures`` the client gets 421 and is disconnected; until the oldest of those
failures leaves the window, AUTH from that address is refused at once without trying a
password. A success does not clear the count, so one valid account cannot be used to reset it.
In a cluster every node counts every node's failures (:class:`~postoffice.logins.RemoteFailures`).
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable

from postoffice.config.tables import AuthConfig
from postoffice.logins import FAIL, FailureFeed, Logins, RemoteFailures, merged

# Beyond this many addresses with recent failures, the least recently failing are dropped: a
# botnet of that size is not slowed per address anyway, and memory must stay bounded.
MAX_CLIENTS = 100_000


def client_key(address: str) -> str:
    """The unit throttled: an IPv4 address, or an IPv6 /64 (one customer's usual allocation,
    RFC 6177), since one host can take any address of its /64 at will."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    def __init__(
        self,
        *,
        max_failures: int,
        window: float,
        delay: float,
        clock: Callable[[], float] = time.monotonic,
        feed: FailureFeed | None = None,
    ) -> None:
        """``feed``: the other nodes of a cluster, told of each failure and heard from."""
        self.max_failures = max_failures
        self.window = window
        self.delay = delay
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._remote = RemoteFailures(feed, clock) if feed is not None else None

    @classmethod
    def configured(cls, auth: AuthConfig, logins: Logins | None = None) -> LoginThrottle:
        """The throttle ``[auth]`` describes, told of other nodes' failures by ``logins`` (a
        cluster's: :meth:`~postoffice.logins.Logins.failures` of kind "auth")."""
        feed = logins.failures("auth", auth.failure_window) if logins is not None else None
        return cls(
            max_failures=auth.max_failures, window=auth.failure_window, delay=auth.failure_delay, feed=feed
        )

    def locked_out(self, address: str) -> bool:
        """The address reached ``max_failures`` within the window: refuse AUTH without trying."""
        return self._recent(client_key(address)) >= self.max_failures

    def record_failure(self, address: str) -> int:
        """Count one failed login; the number of failures within the window, this one included."""
        key = client_key(address)
        self._recent(key)
        count = self._add(key, self._clock())
        if self._remote is not None:
            self._remote.feed.publish(FAIL, key)
        return count

    def _add(self, key: str, at: float) -> int:
        times = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
        times = merged(times, at, self.max_failures)
        self._failures[key] = times  # re-inserted: dict order is least recently failing first
        if len(self._failures) > MAX_CLIENTS:
            del self._failures[next(iter(self._failures))]
        return len(times)

    def delay_for(self, failures: int) -> float:
        """Seconds to wait before answering the ``failures``-th failure."""
        return self.delay * failures

    def _recent(self, key: str) -> int:
        if self._remote is not None:
            for op, remote_key, at in self._remote.drain():
                if op == FAIL:  # a success never clears this count (see above)
                    self._add(remote_key, at)
        times = self._failures.get(key)
        if times is None:
            return 0
        horizon = self._clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)
