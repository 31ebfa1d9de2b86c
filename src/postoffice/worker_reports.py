"""What each worker process reports to the one serving the operations endpoints, and how reports combine.

Untrusted input seen here: the report files in ``<data_dir>/workers/``. The directory is the
server's own, but a file may be read while it is being replaced, be left over by a worker that
stopped, or be damaged (disk full, a crash): such a file is skipped, never trusted to be whole.

With ``serve --workers N`` every process counts only its own sessions and deliveries. Workers
1..N-1 each write a small JSON report about once a second; worker 0, which serves ``/metrics``
and ``/api/v1/status``, reads the fresh ones and adds them to its own figures. A file rather
than a socket: the processes already share the data directory, and a worker that dies simply
stops refreshing its file, which then ages out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from postoffice.config import Config

log = logging.getLogger(__name__)

REPORT_INTERVAL = 1.0
"""Seconds between two reports of one worker."""

REPORT_MAX_AGE = 10.0
"""A report older than this is from a worker that stopped (or hangs) and is left out."""

# How long stopping waits for a report write already under way (a hung disk must not hang it).
_STOP_WRITE_TIMEOUT = 5.0

_PREFIX = "worker-"
_SUFFIX = ".json"


@dataclass(frozen=True)
class WorkerReport:
    """One worker's figures at ``written_at`` (``time.time()``)."""

    index: int
    pid: int
    written_at: float
    metrics: str
    """The worker's Prometheus text exposition (format 0.0.4)."""
    sessions: int
    """SMTP sessions open in the worker."""
    deferred: int
    """Messages the worker's scheduler holds for a retry."""
    recent_errors: list[dict[str, str]]
    """The worker's last WARNING-and-worse log lines, oldest first."""


def report_path(directory: Path, index: int) -> Path:
    return directory / f"{_PREFIX}{index}{_SUFFIX}"


def write_report(path: Path, report: WorkerReport) -> None:
    """Replace ``path`` with ``report`` so that a reader sees the old file or the new one, whole.

    No fsync: after a crash a lost or empty status file only means the worker is left out
    until its next report, and the reader skips a damaged one.
    """
    data = json.dumps(asdict(report), separators=(",", ":")).encode()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _count(value: object) -> int | None:
    # bool is an int subclass; true/false in the JSON is damage, not a count.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _time(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _is_error_line(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(text, str) for key, text in value.items()
    )


def _parse_report(data: object) -> WorkerReport | None:
    if not isinstance(data, dict):
        return None
    index, pid = _count(data.get("index")), _count(data.get("pid"))
    sessions, deferred = _count(data.get("sessions")), _count(data.get("deferred"))
    written_at = _time(data.get("written_at"))
    metrics, errors = data.get("metrics"), data.get("recent_errors")
    if index is None or pid is None or sessions is None or deferred is None or written_at is None:
        return None
    if not isinstance(metrics, str) or not isinstance(errors, list):
        return None
    if not all(_is_error_line(line) for line in errors):
        return None
    return WorkerReport(
        index=index,
        pid=pid,
        written_at=written_at,
        metrics=metrics,
        sessions=sessions,
        deferred=deferred,
        recent_errors=errors,
    )


def _index_of(name: str) -> int | None:
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    digits = name[len(_PREFIX) : -len(_SUFFIX)]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def read_reports(
    directory: Path, *, exclude: int, now: float | None = None, max_age: float = REPORT_MAX_AGE
) -> list[WorkerReport]:
    """The fresh, well-formed reports in ``directory`` other than worker ``exclude``'s, by index.

    Never raises for a missing directory or a bad file: a file being replaced (the temporary
    ones are dot files and not read), a partial or damaged one, or one whose index differs from
    its name is skipped; so is one written more than ``max_age`` seconds from ``now`` either way
    (a worker that stopped; the absolute difference also drops an old file after the clock
    was stepped back).
    """
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        log.debug("event=worker-reports-unreadable directory=%s error=%s", directory, exc)
        return []
    reports: list[WorkerReport] = []
    for entry in entries:
        index = _index_of(entry.name)
        if index is None or index == exclude:
            continue
        try:
            with open(entry.path, "rb") as file:
                report = _parse_report(json.loads(file.read()))
        except (OSError, ValueError) as exc:
            # ValueError covers broken JSON and bytes that are not UTF-8.
            log.debug("event=worker-report-skipped file=%s error=%s", entry.path, exc)
            continue
        if report is None or report.index != index:
            log.debug("event=worker-report-skipped file=%s error=malformed", entry.path)
            continue
        if abs(now - report.written_at) > max_age:
            log.debug("event=worker-report-skipped file=%s error=stale", entry.path)
            continue
        reports.append(report)
    reports.sort(key=lambda report: report.index)
    return reports


class ReportPublisher:
    """Writes ``snapshot()`` to ``path`` now and every ``interval`` seconds until stopped.

    The snapshot is taken on the event loop (it reads loop-owned state: sessions, the
    scheduler); the file is written in a thread with :func:`asyncio.to_thread`, because a
    rename in a file system that is busy committing the spool's fsyncs can wait for that
    journal commit, and every SMTP session of the worker would wait with it.
    """

    def __init__(
        self, path: Path, snapshot: Callable[[], WorkerReport], interval: float = REPORT_INTERVAL
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._failures_logged: set[tuple[str, int | None]] = set()

    def start(self) -> None:
        """Start publishing on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="worker-report")

    async def stop(self) -> None:
        """Stop publishing and remove the file, so the worker drops out of the totals at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A write already in its thread goes on after the cancel; removing the file before it
        # ends would leave a fresh report of a stopped worker behind.
        writing, self._writing = self._writing, None
        if writing is not None:
            await asyncio.wait({writing}, timeout=_STOP_WRITE_TIMEOUT)
            if writing.done() and not writing.cancelled():
                writing.exception()  # retrieved: the file is removed next either way
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("event=worker-report-remove-failed file=%s error=%s", self.path, exc)

    async def _run(self) -> None:
        while True:
            await self._publish_once()
            await asyncio.sleep(self._interval)

    async def _publish_once(self) -> None:
        try:
            report = self._snapshot()
            self._writing = asyncio.ensure_future(asyncio.to_thread(write_report, self.path, report))
            await asyncio.shield(self._writing)
        except Exception as exc:
            # A status file must never take the worker down. Disk full or a read-only data
            # directory would repeat every second: it is said once per kind.
            kind = (type(exc).__name__, getattr(exc, "errno", None))
            if kind not in self._failures_logged:
                self._failures_logged.add(kind)
                log.warning("event=worker-report-failed file=%s error=%s", self.path, exc)


# --- merging expositions --------------------------------------------------------------------------

_LabelKey = tuple[str, tuple[tuple[str, str], ...]]


class _MergedFamily:
    def __init__(self, family: Metric) -> None:
        self.family = Metric(family.name, family.documentation, family.type, family.unit)
        # Sample (name, labels) -> (labels as first seen, value); dicts keep first-seen order.
        self.samples: dict[_LabelKey, tuple[dict[str, str], float]] = {}

    def add(self, family: Metric) -> None:
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            previous = self.samples.get(key)
            if previous is None:
                self.samples[key] = (dict(sample.labels), sample.value)
            elif sample.name.endswith("_created"):
                # When the series was created: the earliest of the processes.
                self.samples[key] = (previous[0], min(previous[1], sample.value))
            else:
                self.samples[key] = (previous[0], previous[1] + sample.value)

    def build(self) -> Metric:
        for (name, _), (labels, value) in self.samples.items():
            self.family.add_sample(name, labels, value)
        return self.family


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def _parse_other(text: str) -> list[Metric] | None:
    try:
        return list(text_string_to_metric_families(text))
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        # Another process's text is data read from a file: a damaged one is left out whole,
        # never half-added.
        log.debug("event=worker-metrics-skipped error=%s", exc)
        return None


def merge_expositions(
    own: str,
    others: Sequence[str],
    *,
    own_only: Collection[str] = (
        "postoffice_queue_messages",
        "postoffice_certificate_expiry_timestamp_seconds",
    ),
) -> bytes:
    """One text exposition with every sample of the same name and labels summed across texts.

    Each process counts only its own events, so counters, histogram buckets, ``_sum`` and
    ``_count`` and gauges such as open sessions all add up; ``*_created`` samples take the
    earliest time. Families named in ``own_only`` come from ``own`` alone (the queue gauge is
    counted from the shared spool, once). Families keep ``own``'s order; a family only another
    process has follows, in the order first seen. A text of ``others`` that does not parse is
    left out. The certificate's expiry is worker 0's: it orders the certificate, the others
    follow it (a sum of timestamps would mean nothing).
    """
    merged: dict[str, _MergedFamily] = {}
    for family in text_string_to_metric_families(own):
        merged.setdefault(family.name, _MergedFamily(family)).add(family)
    for text in others:
        for family in _parse_other(text) or ():
            if family.name in own_only:
                continue
            merged.setdefault(family.name, _MergedFamily(family)).add(family)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(entry.build() for entry in merged.values()))
    return generate_latest(registry)


def workers_directory(config: Config) -> Path:
    """Where workers leave their reports for the one serving the operations endpoints."""
    return config.data_dir / "workers"
