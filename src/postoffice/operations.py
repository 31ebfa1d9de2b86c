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
from postoffice.acme.certificate import CertificateInfo
from postoffice.delivery.agent import Delivered, DeliveryResult, PermFail
from postoffice.metrics import ClusterFigures
from postoffice.pg.heartbeat import Heartbeat
from postoffice.qmgr.scheduler import Scheduler
from postoffice.spool.envelope import QueuedMessage, Recipient, Route
from postoffice.worker_reports import WorkerReport, merge_expositions

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
    """Implements :class:`postoffice.web.ops.OpsState` over the application's parts.

    With ``serve --workers N`` the process serving these endpoints is given ``peers``, the
    fresh reports of the other workers (:mod:`postoffice.worker_reports`), and adds their
    figures to its own so that the endpoints describe the whole server. Without it they
    describe this process, which is then the whole server.
    """

    def __init__(
        self,
        *,
        hostname: str,
        spool_root: Path,
        scheduler: Scheduler,
        listeners: Callable[[], Sequence[object]],
        sessions: Callable[[], int],
        peers: Callable[[], Sequence[WorkerReport]] | None = None,
        certificates: Callable[[], Sequence[CertificateInfo]] = tuple,
        extra_status: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.hostname = hostname
        self.spool_root = spool_root
        self.scheduler = scheduler
        self._listeners = listeners
        self._sessions = sessions
        self._peers = peers
        self._certificates = certificates
        self._extra_status = extra_status  # the testing toolkit's (web/toolkit.py)
        self.started_at = time.time()
        self.running = False
        # A cluster node's heartbeat (set by postoffice.runtime when the node serves): its
        # view of the cluster, and whether the database answers, which readiness includes.
        self.cluster: Heartbeat | None = None
        self.errors = RecentErrors()
        self.metrics = metrics.current()
        self.metrics.watch_queue(self.queue_counts)
        self.metrics.watch_cluster(self.cluster_figures)
        self.metrics.watch_certificates(lambda: [(info.source, info.not_after) for info in certificates()])

    def _peer_reports(self) -> Sequence[WorkerReport]:
        return () if self._peers is None else self._peers()

    def queue_counts(self) -> dict[str, int]:
        return self._queue_counts(self._peer_reports())

    def _queue_counts(self, peers: Sequence[WorkerReport]) -> dict[str, int]:
        # Files are the truth (what survives a crash); the schedulers know which wait for a
        # retry. The spool is shared by all workers, so its files are counted once, here.
        queued = _count_files(self.spool_root / "queue")
        held = len(self.scheduler.deferred()) + sum(peer.deferred for peer in peers)
        deferred = min(held, queued)
        return {
            "active": queued - deferred,
            "deferred": deferred,
            "receiving": _count_files(self.spool_root / "tmp"),
            "corrupt": _count_files(self.spool_root / "corrupt"),
        }

    def on_delivery_result(
        self, message: QueuedMessage, recipient: Recipient, result: DeliveryResult
    ) -> None:
        if recipient.route is Route.FORWARD and isinstance(result, Delivered):
            return  # queued as a forwarded copy, whose own delivery is counted
        if isinstance(result, Delivered):
            self.metrics.delivered(recipient.route.value, time.time() - message.envelope.received_at)
        elif isinstance(result, PermFail):
            self.metrics.bounced()
        else:
            self.metrics.deferred()

    def report(self, index: int) -> WorkerReport:
        """This process's own figures, for the worker serving the endpoints to add up."""
        return WorkerReport(
            index=index,
            pid=os.getpid(),
            written_at=time.time(),
            metrics=self.metrics.exposition().decode(),
            sessions=self._sessions(),
            deferred=len(self.scheduler.deferred()),
            recent_errors=list(self.errors.lines),
        )

    # --- OpsState -----------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        if self._peers is None:
            return self.metrics.exposition()
        # The own exposition's queue gauge already counts the peers' deferred messages.
        own = self.metrics.exposition().decode()
        return merge_expositions(own, [peer.metrics for peer in self._peers()])

    def ready(self) -> bool:
        return self.running and (self.cluster is None or self.cluster.reachable)

    def cluster_figures(self) -> ClusterFigures | None:
        cluster = self.cluster
        if cluster is None:
            return None
        view = cluster.view
        nodes = [(row.name, row.age) for row in view.nodes] if view is not None else []
        return ClusterFigures(cluster.name, cluster.reachable, nodes, view.queue if view else None)

    def cluster_status(self) -> dict[str, Any]:
        """The node's name and its view of the cluster (nothing for a server that is not one)."""
        cluster = self.cluster
        if cluster is None:
            return {}
        view = cluster.view
        shown: dict[str, Any] = {
            "database": "up" if cluster.reachable else "unreachable",
            "nodes": [row.as_json() for row in view.nodes] if view is not None else [],
            "queue": view.queue if view is not None else None,
        }
        return {"node": cluster.name, "cluster": shown}

    def status(self) -> dict[str, Any]:
        peers = self._peer_reports()
        errors = list(self.errors.lines)
        for peer in peers:
            errors += peer.recent_errors
        # Times are ISO 8601 UTC, so text order is time order; the sort is stable.
        errors.sort(key=lambda line: line.get("time", ""))
        return {
            "version": __version__,
            "hostname": self.hostname,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "ready": self.ready(),
            "listeners": [str(listener) for listener in self._listeners()],
            "workers": 1 + len(peers),
            "sessions": self._sessions() + sum(peer.sessions for peer in peers),
            "queue": self._queue_counts(peers),
            "certificates": [info.as_json() for info in self._certificates()],
            "recent_errors": errors[-RECENT_ERRORS:],
            **self.cluster_status(),
            **self._extra_status(),
        }
