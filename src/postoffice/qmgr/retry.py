"""When a deferred message is tried again, when it is given up, and when its sender is warned.

Untrusted input seen here: none; times come from the clock and from the spool's own records.

After Postfix qmgr(8): when a round ends with temporary failures the message is deferred, the
first retry after ``retry_base`` seconds (Postfix ``minimal_backoff_time``, 300 s), the delay
doubling up to ``retry_max`` (``maximal_backoff_time``, 4000 s). RFC 5321 §4.5.4.1: "the retry
interval SHOULD be at least 30 minutes", which the doubling reaches by the fourth retry. After
``lifetime`` (``maximal_queue_lifetime``, 5 days; §4.5.4.1 "at least 4-5 days") the remaining
recipients fail. The optional delay warning (Postfix ``delay_warning_time``) is due once a
message has waited ``delay_warning`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from postoffice import defaults


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_base: float = defaults.MINIMAL_BACKOFF_TIME
    retry_max: float = defaults.MAXIMAL_BACKOFF_TIME
    lifetime: float = defaults.MAXIMAL_QUEUE_LIFETIME
    delay_warning: float = defaults.DELAY_WARNING_TIME  # 0: no delay warning

    def __post_init__(self) -> None:
        if not 0 < self.retry_base <= self.retry_max:
            raise ValueError("retry delays must satisfy 0 < retry_base <= retry_max")
        if self.lifetime <= 0 or self.delay_warning < 0:
            raise ValueError("lifetime must be positive and delay_warning not negative")

    def expires(self, received_at: float) -> float:
        """When a message received at ``received_at`` is given up (its last try is then)."""
        return received_at + self.lifetime

    def next_attempt(self, attempts: int, now: float, received_at: float) -> float:
        """When the next try is due, ``attempts`` tries having failed (the last one ``now``)."""
        due = now + min(self.retry_max, self.retry_base * 2.0 ** (attempts - 1))
        # The last try comes at the end of the lifetime, not up to retry_max after it.
        expires = self.expires(received_at)
        if now < expires < due:
            due = expires
        return due

    def warning_due(self, received_at: float, now: float) -> bool:
        """Whether a message still waiting ``now`` has waited long enough for a warning."""
        return bool(self.delay_warning) and now - received_at >= self.delay_warning
