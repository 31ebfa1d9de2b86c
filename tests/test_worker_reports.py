"""Worker reports: merging real expositions, the report files, the publisher, and Operations with peers.

The expositions come from real :class:`postoffice.metrics.Metrics` instances fed through their
hooks; the report files are real files (damaged ones written byte for byte); the publisher
runs on the test's event loop; Operations counts a real spool and a real scheduler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from postoffice import metrics
from postoffice.delivery.agent import DeliveryResult, TempFail
from postoffice.metrics import Metrics
from postoffice.operations import RECENT_ERRORS, Operations
from postoffice.qmgr.scheduler import Scheduler
from postoffice.smtp import replies
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool
from postoffice.worker_reports import (
    ReportPublisher,
    WorkerReport,
    merge_expositions,
    read_reports,
    report_path,
    write_report,
)

pytestmark = pytest.mark.timeout(30)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str | bytes) -> Samples:
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def family_names(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode()
    return [family.name for family in text_string_to_metric_families(text)]


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def two_workers() -> tuple[Metrics, Metrics]:
    first, second = Metrics(), Metrics()
    first.connection_opened("smtp")
    first.connection_opened("smtp")
    first.session_ended("quit")
    first.message_accepted(50)
    first.delivered("local", 0.02)
    first.auth_attempt("PLAIN", "ok")
    second.connection_opened("smtp")
    second.connection_opened("submission")
    second.message_accepted(100)
    second.message_accepted(7)
    second.delivered("local", 2.0)
    second.delivered("remote", 40.0)
    second.bounced()
    first.watch_queue(lambda: {"active": 5, "deferred": 1})
    second.watch_queue(lambda: {"active": 9, "deferred": 4})
    return first, second


# --- merge_expositions --------------------------------------------------------------------------


def test_merge_sums_every_sample_of_two_real_expositions() -> None:
    first, second = two_workers()
    own, other = first.exposition().decode(), second.exposition().decode()

    merged = merge_expositions(own, [other])

    found, mine, theirs = samples(merged), samples(own), samples(other)
    summed = [key for key in found if not key[0].endswith("_created") and "queue" not in key[0]]
    assert summed, "no additive samples"
    for key in summed:
        assert found[key] == mine.get(key, 0.0) + theirs.get(key, 0.0), key
    assert value(found, "postoffice_sessions_active") == 3  # 1 still open + 2
    assert value(found, "postoffice_connections_total", listener="smtp") == 3
    assert value(found, "postoffice_connections_total", listener="submission") == 1
    assert value(found, "postoffice_messages_total", outcome="accepted") == 3
    assert value(found, "postoffice_received_bytes_total") == 157
    assert value(found, "postoffice_messages_total", outcome="bounced") == 1
    assert value(found, "postoffice_auth_attempts_total", mechanism="PLAIN", outcome="ok") == 1
    latency = "postoffice_delivery_latency_seconds"
    assert value(found, f"{latency}_bucket", route="local", le="0.025") == 1
    assert value(found, f"{latency}_bucket", route="local", le="2.5") == 2
    assert value(found, f"{latency}_bucket", route="local", le="+Inf") == 2
    assert value(found, f"{latency}_count", route="local") == 2
    assert math.isclose(value(found, f"{latency}_sum", route="local"), 2.02)
    # A route only the other worker delivered to is there in full.
    assert value(found, f"{latency}_bucket", route="remote", le="60.0") == 1
    assert value(found, f"{latency}_count", route="remote") == 1


def test_merged_text_keeps_help_type_and_order() -> None:
    first, second = two_workers()
    own = first.exposition().decode()
    merged = merge_expositions(own, [second.exposition().decode()]).decode()
    assert "# HELP postoffice_connections_total SMTP connections accepted by the listeners" in merged
    assert "# TYPE postoffice_connections_total counter" in merged
    assert "# TYPE postoffice_delivery_latency_seconds histogram" in merged
    assert "# TYPE postoffice_sessions_active gauge" in merged
    assert family_names(merged) == family_names(own)
    # The same input gives the same text.
    assert merge_expositions(own, [second.exposition().decode()]).decode() == merged


def test_created_takes_the_earliest() -> None:
    first, second = two_workers()
    mine, theirs = samples(first.exposition()), samples(second.exposition())
    found = samples(merge_expositions(first.exposition().decode(), [second.exposition().decode()]))
    created = [key for key in found if key[0].endswith("_created")]
    assert created
    for key in created:
        if key in mine and key in theirs:
            assert found[key] == min(mine[key], theirs[key]), key
        else:
            assert found[key] == mine.get(key, theirs.get(key)), key
    # Series only the other worker has keep its creation time.
    remote = ("postoffice_delivery_latency_seconds_created", (("route", "remote"),))
    assert remote not in mine and found[remote] == theirs[remote]


def test_own_only_families_come_from_own_text() -> None:
    first, second = two_workers()
    second.watch_queue(lambda: {"active": 9, "deferred": 4, "corrupt": 2})
    found = samples(merge_expositions(first.exposition().decode(), [second.exposition().decode()]))
    assert value(found, "postoffice_queue_messages", state="active") == 5
    assert value(found, "postoffice_queue_messages", state="deferred") == 1
    assert ("postoffice_queue_messages", (("state", "corrupt"),)) not in found

    summed = samples(
        merge_expositions(first.exposition().decode(), [second.exposition().decode()], own_only=())
    )
    assert value(summed, "postoffice_queue_messages", state="active") == 14


def test_a_family_only_another_process_has_is_added_at_the_end() -> None:
    first, second = two_workers()
    registry = CollectorRegistry()
    Counter("postoffice_extra_things", "Things only this worker counts", ["kind"], registry=registry).labels(
        "a"
    ).inc(3)
    extra = generate_latest(registry).decode()
    own = first.exposition().decode()

    merged = merge_expositions(own, [extra, second.exposition().decode()]).decode()

    assert family_names(merged) == [
        *family_names(own),
        "postoffice_extra_things",
        "postoffice_extra_things_created",
    ]
    assert "# HELP postoffice_extra_things_total Things only this worker counts" in merged
    assert value(samples(merged), "postoffice_extra_things_total", kind="a") == 3
    assert value(samples(merged), "postoffice_sessions_active") == 3


def test_an_unparsable_other_text_is_left_out_whole() -> None:
    first, second = two_workers()
    own = first.exposition().decode()
    damaged = second.exposition().decode()[:-40] + '\npostoffice_sessions_active{le="1 2\n'
    with pytest.raises(ValueError):
        list(text_string_to_metric_families(damaged))
    assert merge_expositions(own, [damaged]) == merge_expositions(own, [])
    assert samples(merge_expositions(own, [])) == samples(own)


# --- report files -------------------------------------------------------------------------------


def a_report(index: int, **changes: object) -> WorkerReport:
    report = WorkerReport(
        index=index,
        pid=1000 + index,
        written_at=time.time(),
        metrics=Metrics().exposition().decode(),
        sessions=index,
        deferred=2 * index,
        recent_errors=[{"time": "2026-01-01T00:00:00Z", "level": "WARNING", "message": f"w{index}"}],
    )
    return replace(report, **changes)  # type: ignore[arg-type]


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    one, two = a_report(1), a_report(2)
    write_report(report_path(tmp_path, 2), two)
    write_report(report_path(tmp_path, 1), one)
    write_report(report_path(tmp_path, 1), one)  # replaced in place
    assert report_path(tmp_path, 1) == tmp_path / "worker-1.json"
    assert read_reports(tmp_path, exclude=0) == [one, two]
    assert read_reports(tmp_path, exclude=2) == [one]
    assert sorted(os.listdir(tmp_path)) == ["worker-1.json", "worker-2.json"]  # no temporaries left


def test_bad_stale_and_partial_reports_are_skipped(tmp_path: Path) -> None:
    now = time.time()
    good = a_report(1, written_at=now - 2)
    write_report(report_path(tmp_path, 1), good)
    write_report(report_path(tmp_path, 0), a_report(0, written_at=now))  # the reader's own
    write_report(report_path(tmp_path, 2), a_report(2, written_at=now - 60))  # stopped worker
    write_report(report_path(tmp_path, 3), a_report(3, written_at=now + 3600))  # clock stepped back
    whole = json.dumps(asdict(a_report(4, written_at=now))).encode()
    (tmp_path / "worker-4.json").write_bytes(whole[: len(whole) // 2])  # half written
    (tmp_path / "worker-5.json").write_bytes(b"")
    (tmp_path / "worker-6.json").write_bytes(b"\xff\xfe not utf-8")
    (tmp_path / "worker-7.json").write_text(json.dumps({**asdict(a_report(7)), "sessions": True}))
    (tmp_path / "worker-8.json").write_text(json.dumps({**asdict(a_report(8)), "pid": "8"}))
    (tmp_path / "worker-9.json").write_text(json.dumps({**asdict(a_report(9)), "recent_errors": [1]}))
    (tmp_path / "worker-10.json").write_text(json.dumps({**asdict(a_report(10)), "deferred": -1}))
    (tmp_path / "worker-11.json").write_text(json.dumps(asdict(a_report(12))))  # name and index differ
    (tmp_path / "worker-13.json").write_text(json.dumps([asdict(a_report(13))]))
    (tmp_path / "worker-14.json").write_text(json.dumps({**asdict(a_report(14)), "written_at": "NaN"}))
    (tmp_path / "worker-15.json").mkdir()
    (tmp_path / ".worker-16.json.x.tmp").write_text(json.dumps(asdict(a_report(16))))  # mid-replace
    (tmp_path / "worker-x.json").write_text(json.dumps(asdict(a_report(17))))

    assert read_reports(tmp_path, exclude=0, now=now) == [good]
    assert read_reports(tmp_path, exclude=0, now=now, max_age=1.0) == []
    assert read_reports(tmp_path / "missing", exclude=0) == []


# --- the publisher ------------------------------------------------------------------------------


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_publisher_writes_now_and_periodically_then_removes_its_file(tmp_path: Path) -> None:
    calls: list[int] = []

    def snapshot() -> WorkerReport:
        calls.append(1)
        return a_report(1, sessions=len(calls))

    path = report_path(tmp_path, 1)
    publisher = ReportPublisher(path, snapshot, interval=0.02)
    publisher.start()
    try:
        await until(lambda: read_reports(tmp_path, exclude=0))
        first = read_reports(tmp_path, exclude=0)[0].sessions
        await until(lambda: read_reports(tmp_path, exclude=0)[0].sessions > first)
    finally:
        await publisher.stop()
    assert not path.exists()


async def test_publisher_survives_write_errors_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def snapshot() -> WorkerReport:
        calls.append(1)
        return a_report(1)

    publisher = ReportPublisher(report_path(tmp_path / "missing", 1), snapshot, interval=0.01)
    with caplog.at_level(logging.WARNING, logger="postoffice.worker_reports"):
        publisher.start()
        try:
            await until(lambda: len(calls) >= 5)
        finally:
            await publisher.stop()
    failures = [r for r in caplog.records if "worker-report-failed" in r.getMessage()]
    assert len(failures) == 1
    assert "No such file or directory" in failures[0].getMessage()


# --- Operations with peers ----------------------------------------------------------------------


class AlwaysLater:
    """Answers every recipient with a temporary failure, so the scheduler defers the message."""

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
    ) -> list[DeliveryResult]:
        return [TempFail(recipient, replies.INSUFFICIENT_STORAGE) for recipient in recipients]


async def queued(spool: FileSpool) -> QueuedMessage:
    recipient = Recipient("a@example.com", "a@example.com", Route.LOCAL)
    writer = spool.put(Envelope("from@example.org", (recipient,), received_at=time.time()))
    writer.write(b"Subject: test\r\n\r\nhello\r\n")
    return await writer.commit()


async def test_operations_add_up_the_peers(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    scheduler = Scheduler(spool, {Route.LOCAL: AlwaysLater()}, retry_base=600, retry_max=600)
    own_message = await queued(spool)
    for _ in range(3):
        await queued(spool)  # held by other workers' schedulers
    scheduler.submit(own_message)
    await scheduler.wait_idle()
    assert len(scheduler.deferred()) == 1

    own_metrics = metrics.reset()
    own_metrics.connection_opened("smtp")
    peer_metrics = Metrics()
    for _ in range(4):
        peer_metrics.connection_opened("smtp")
    peers = [
        a_report(1, sessions=4, deferred=1, metrics=peer_metrics.exposition().decode()),
        a_report(2, sessions=0, deferred=1, recent_errors=[]),
    ]
    operations = Operations(
        hostname="mx.example.org",
        spool_root=spool.root,
        scheduler=scheduler,
        listeners=list,
        sessions=lambda: 1,
        peers=lambda: peers,
    )
    operations.errors.lines.append({"time": "2026-01-01T00:00:05Z", "level": "ERROR", "message": "own"})
    try:
        status = operations.status()
        assert status["workers"] == 3
        assert status["pid"] == os.getpid()
        assert status["sessions"] == 5
        assert status["queue"] == {"active": 1, "deferred": 3, "receiving": 0, "corrupt": 0}
        assert [line["message"] for line in status["recent_errors"]] == ["w1", "own"]  # newest last

        found = samples(operations.metrics_text())
        assert value(found, "postoffice_sessions_active") == 5
        assert value(found, "postoffice_connections_total", listener="smtp") == 5
        assert value(found, "postoffice_queue_messages", state="deferred") == 3
        assert value(found, "postoffice_queue_messages", state="active") == 1

        # Deferred is capped at what the shared spool holds.
        peers.append(a_report(3, deferred=10, recent_errors=[]))
        assert operations.queue_counts()["deferred"] == 4

        # Recent errors of all workers together stay at most RECENT_ERRORS, the newest kept.
        many = [
            {"time": f"2026-01-01T00:01:{second:02d}Z", "level": "WARNING", "message": f"m{second}"}
            for second in range(RECENT_ERRORS + 5)
        ]
        peers.append(a_report(4, recent_errors=many))
        errors = operations.status()["recent_errors"]
        assert len(errors) == RECENT_ERRORS
        assert errors[-1]["message"] == f"m{RECENT_ERRORS + 4}"

        report = operations.report(0)
        assert (report.index, report.pid, report.sessions, report.deferred) == (0, os.getpid(), 1, 1)
        assert report.recent_errors == list(operations.errors.lines)
        assert value(samples(report.metrics), "postoffice_sessions_active") == 1
    finally:
        await scheduler.stop()


async def test_operations_without_peers_describe_this_process(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    scheduler = Scheduler(spool, {Route.LOCAL: AlwaysLater()})
    own_metrics = metrics.reset()
    own_metrics.connection_opened("smtp")
    operations = Operations(
        hostname="mx.example.org",
        spool_root=spool.root,
        scheduler=scheduler,
        listeners=list,
        sessions=lambda: 1,
    )
    try:
        status = operations.status()
        assert status["workers"] == 1 and status["sessions"] == 1
        assert operations.metrics_text() == own_metrics.exposition()
    finally:
        await scheduler.stop()
