"""Which ready delivery job starts next: one queue per destination, served round-robin.

Untrusted input seen here: destination names made from recipient domains (addresses from SMTP
clients), used only as keys.

After Postfix qmgr(8)'s per-destination queues: jobs wait in one queue per destination and
are started round-robin across destinations, at most ``concurrency`` at once and a window
per remote destination, so a slow or dead site cannot hold up mail for the others. The window
is Postfix's slow start: it opens at ``destination_concurrency``, grows by one with each
delivery that reached the destination, up to ``destination_limit``, and closes back to where it
began when one could not (a connection refused, a timeout: no answer from the site at all).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from postoffice import defaults
from postoffice.qmgr.entry import Job
from postoffice.spool.envelope import Recipient, Route


def destination_of(recipient: Recipient) -> str:
    """The default grouping: all local mailboxes together, all forwarded copies together (they
    are written into the queue, not sent), remote mail by domain."""
    if recipient.route is not Route.REMOTE:
        return str(recipient.route.value)
    return "remote:" + recipient.address.rpartition("@")[2].lower()


class Dispatcher:
    """Ready jobs by destination, and how many run, in all and per destination."""

    def __init__(
        self,
        concurrency: int = defaults.CONCURRENCY,
        destination_concurrency: int = defaults.DESTINATION_CONCURRENCY,
        destination_limit: int = defaults.DESTINATION_CONCURRENCY_LIMIT,
    ) -> None:
        if concurrency < 1 or destination_concurrency < 1 or destination_limit < 1:
            raise ValueError("concurrency limits must be at least 1")
        self._concurrency = concurrency
        self._destination_concurrency = destination_concurrency
        self._destination_limit = max(destination_limit, destination_concurrency)
        # Remote destinations' windows where they differ from the first one.
        self._windows: dict[str, int] = {}
        # Ready jobs, one FIFO per destination; destinations are served round-robin.
        self._ready: OrderedDict[str, deque[Job]] = OrderedDict()
        self._running = 0
        self._running_by_destination: dict[str, int] = {}

    def has_ready(self) -> bool:
        return bool(self._ready)

    def add(self, job: Job) -> None:
        self._ready.setdefault(job.destination, deque()).append(job)

    def clear(self) -> None:
        """Drop every ready job (when stopping: their messages stay in the spool)."""
        self._ready.clear()

    def start_next(self) -> Job | None:
        """The next job both concurrency limits let start, counted as running; None if none."""
        if self._running >= self._concurrency:
            return None
        job = self._next_job()
        if job is None:
            return None
        self._running += 1
        self._running_by_destination[job.destination] = (
            self._running_by_destination.get(job.destination, 0) + 1
        )
        return job

    def finished(self, job: Job, reached: bool | None = None) -> None:
        """A job that :meth:`start_next` returned has ended; ``reached``: whether its delivery
        got an answer from the remote destination (None: not a remote job)."""
        self._running -= 1
        left = self._running_by_destination.get(job.destination, 1) - 1
        if left:
            self._running_by_destination[job.destination] = left
        else:
            self._running_by_destination.pop(job.destination, None)
        if reached is not None:
            self._feedback(job.destination, reached)
        if not left and job.destination not in self._ready:
            self._windows.pop(job.destination, None)  # idle: the next burst starts slowly again

    def window(self, destination: str) -> int:
        """How many deliveries to ``destination`` (a remote one) may run at once now."""
        return self._windows.get(destination, self._destination_concurrency)

    def _feedback(self, destination: str, reached: bool) -> None:
        if reached:
            self._windows[destination] = min(self.window(destination) + 1, self._destination_limit)
        else:
            self._windows.pop(destination, None)

    def _next_job(self) -> Job | None:
        for destination, queue in list(self._ready.items()):
            # The per-destination limit protects remote sites; local mailboxes share only the
            # total (Postfix limits local delivery per recipient, which one job here is not).
            limit = self.window(destination) if queue[0].route is Route.REMOTE else self._concurrency
            if self._running_by_destination.get(destination, 0) >= limit:
                continue
            queue = self._ready.pop(destination)
            job = queue.popleft()
            if queue:
                self._ready[destination] = queue  # to the back: the next one gets a turn
            return job
        return None
