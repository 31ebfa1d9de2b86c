"""What an operator sees of a running server: status summary, readiness, metrics, recent errors.

Untrusted input seen here: none; it reads the server's own state. Recent errors are log lines
at WARNING and above, which never hold secrets (see :mod:`postoffice.logs`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from postoffice import __version__, metrics
from postoffice.delivery.agent import Delivered, DeliveryResult, PermFail
from postoffice.spool.envelope import QueuedMessage, Recipient
from postoffice.spool.scheduler import Scheduler

RECENT_ERRORS = 20


class RecentErrors(logging.Handler):
    """Keeps the last few WARNING-and-worse log lines for ``/api/v1/status``."""

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[dict[str, str]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        message = " ".join(record.getMessage().splitlines())
        self.lines.append({"time": when, "level": record.levelname, "message": message[:500]})


def _count_files(directory: Path) -> int:
    try:
        return sum(1 for entry in os.scandir(directory) if entry.is_file())
    except OSError:
        return 0


class Operations:
    """Implements :class:`postoffice.web.ops.OpsState` over the application's parts."""

    def __init__(
        self,
        *,
        hostname: str,
        spool_root: Path,
        scheduler: Scheduler,
        listeners: Callable[[], Sequence[object]],
        sessions: Callable[[], int],
    ) -> None:
        self.hostname = hostname
        self.spool_root = spool_root
        self.scheduler = scheduler
        self._listeners = listeners
        self._sessions = sessions
        self.started_at = time.time()
        self.running = False
        self.errors = RecentErrors()
        self.metrics = metrics.current()
        self.metrics.watch_queue(self.queue_counts)

    def queue_counts(self) -> dict[str, int]:
        # Files are the truth (what survives a crash); the scheduler knows which wait for a retry.
        queued = _count_files(self.spool_root / "queue")
        deferred = min(len(self.scheduler.deferred()), queued)
        return {
            "active": queued - deferred,
            "deferred": deferred,
            "receiving": _count_files(self.spool_root / "tmp"),
            "corrupt": _count_files(self.spool_root / "corrupt"),
        }

    def on_delivery_result(
        self, message: QueuedMessage, recipient: Recipient, result: DeliveryResult
    ) -> None:
        if isinstance(result, Delivered):
            self.metrics.delivered(recipient.route.value, time.time() - message.envelope.received_at)
        elif isinstance(result, PermFail):
            self.metrics.bounced()
        else:
            self.metrics.deferred()

    # --- OpsState -----------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        return self.metrics.exposition()

    def ready(self) -> bool:
        return self.running

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "hostname": self.hostname,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "ready": self.running,
            "listeners": [str(listener) for listener in self._listeners()],
            "sessions": self._sessions(),
            "queue": self.queue_counts(),
            "recent_errors": list(self.errors.lines),
        }
