"""A cluster node's life: start-up against a wrong, missing or absent database, the wait with
``/readyz`` 503, the heartbeat in ``nodes`` and what status and /metrics show of the cluster.
Real ``postoffice serve`` processes (tests/cluster_support.py) on a throwaway PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cluster_support import Cluster, require_cluster_stores
from conftest import RunningServer, wait_until
from pg_server import PostgresServer
from postoffice.pg.database import Database
from postoffice.pg.heartbeat import Heartbeat
from postoffice.pg.migrate import migrate
from postoffice.pg.migrations import v0001_nodes as nodes_schema
from postoffice.pg.nodes import list_nodes, queue_size


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(pg_url, tmp_path) as nodes:
        yield nodes


@pytest.fixture
def database_down(postgres: PostgresServer) -> Iterator[PostgresServer]:
    """The session's PostgreSQL stopped for the test, and started again whatever happens."""
    postgres.stop()
    try:
        yield postgres
    finally:
        if not (postgres.data / "postmaster.pid").exists():  # the test may have started it
            postgres.start()


def _one_line_exit(cluster: Cluster, url: str) -> str:
    node = cluster.spawn(url=url)
    assert node.process.wait(30) == 1
    time.sleep(0.1)
    lines = node.text.splitlines()
    assert len(lines) == 1, node.text
    return lines[0]


def test_a_wrong_password_stops_the_node_at_start_with_one_line(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    line = _one_line_exit(cluster, postgres.tcp_url(postgres.create_database(), password="nope-secret"))
    assert line.startswith("postoffice: cannot connect to the database postoffice@127.0.0.1:")
    assert "password authentication failed" in line and "nope-secret" not in line


def test_an_unknown_database_or_a_malformed_url_stops_the_node_with_one_line(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    assert 'database "missing_db" does not exist' in _one_line_exit(cluster, postgres.url("missing_db"))
    assert _one_line_exit(cluster, "postgresql://[::1").startswith(
        "postoffice: the database URL is not valid"
    )


def test_a_node_waits_for_an_absent_database_and_its_readyz_says_503(
    cluster: Cluster, database_down: PostgresServer
) -> None:
    node = cluster.spawn().wait_waiting()
    assert "waiting for it (retrying, at most every 10s; /readyz answers 503 until it answers)" in node.text
    assert node.get("/readyz")[0] == 503
    assert node.get("/livez") == (200, b"ok\n")  # alive: an orchestrator must not restart it
    status = node.status()
    assert status["ready"] is False and status["node"] == "node-a"
    assert status["cluster"]["database"] == "unreachable"
    assert "cannot connect to the database" in status["recent_errors"][0]["message"]
    shown = subprocess.run(
        [sys.executable, "-m", "postoffice", "status", "--http", f"127.0.0.1:{node.http_port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "NOT READY" in shown.stdout and "node node-a of a cluster; database unreachable" in shown.stdout
    assert "  queue:" not in shown.stdout  # none yet: no empty line for it
    assert not re.search(r"^listening smtp", node.text, re.MULTILINE)  # no mail taken meanwhile
    assert node.stop() == 0  # SIGTERM ends the wait


def test_a_node_started_before_its_database_serves_once_it_answers(
    cluster: Cluster, database_down: PostgresServer
) -> None:
    require_cluster_stores()
    node = cluster.spawn().wait_waiting()
    waiting_port = node.http_port
    database_down.start()
    node.wait_listening(timeout=60)
    assert node.http_port == waiting_port  # the web listener was handed on, not rebound
    wait_until(node.ready, 20, "the node ready")


def test_a_running_node_is_not_ready_while_its_database_is_down_and_recovers(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    require_cluster_stores()
    [node] = cluster.start(1)
    wait_until(node.ready, 20, "the node ready")
    postgres.stop()
    try:
        wait_until(lambda: not node.ready(), 20, "503 without the database")
        assert node.status()["cluster"]["database"] == "unreachable"
    finally:
        postgres.start()
    wait_until(node.ready, 60, "ready again by itself")
    assert node.process.poll() is None
    assert "event=database-unreachable" in node.text
    # Its log line may follow the first 200 (log lines are written together, up to 20 ms late).
    wait_until(lambda: "event=database-reachable" in node.text, 10, "the node saying so")


def test_three_nodes_see_each_other_in_status_metrics_and_db_status(cluster: Cluster, pg_url: str) -> None:
    require_cluster_stores()
    nodes = cluster.start(3)
    for node in nodes:
        wait_until(lambda node=node: len(node.status()["cluster"]["nodes"]) == 3, 20, "three nodes listed")
    status = nodes[0].status()
    assert status["node"] == "node-a" and [n["name"] for n in status["cluster"]["nodes"]] == [
        "node-a",
        "node-b",
        "node-c",
    ]
    assert b'postoffice_node_info{node="node-b"} 1.0' in nodes[1].get("/metrics")[1]
    shown = subprocess.run(
        [sys.executable, "-m", "postoffice", "db", "status", "--database", pg_url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "nodes: 3" in shown.stdout and shown.stdout.count("  up  ") == 3


@pytest.fixture
def database(pg_url: str) -> Iterator[Database]:
    db = Database(pg_url)
    migrate(db)
    yield db
    db.close()


def _get(server: RunningServer, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"{server.base_url}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_heartbeat_shows_the_cluster_in_status_metrics_and_readyz(
    server: RunningServer, database: Database, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    heartbeat = Heartbeat(database, "node-x", "9.9", interval=0.3)
    server.call(heartbeat.start())
    server.app.operations.cluster = heartbeat
    try:
        status = json.loads(_get(server, "/api/v1/status")[1])
        assert status["node"] == "node-x" and status["cluster"]["database"] == "up"
        assert [n["name"] for n in status["cluster"]["nodes"]] == ["node-x"]
        with database.connection() as connection:  # two messages in the shared queue
            connection.execute(
                "CREATE TABLE IF NOT EXISTS queue_messages (queue_id text, envelope text, size bigint, node text)"
            )
            connection.execute(
                "INSERT INTO queue_messages (queue_id, envelope, size, node) VALUES ('q1', '', 1, 'node-x'),"
                " ('q2', '', 1, 'node-x')"
            )
        wait_until(
            lambda: b"postoffice_cluster_queue_messages 2.0" in _get(server, "/metrics")[1], 10, "queue"
        )
        metrics = _get(server, "/metrics")[1]
        assert (
            b'postoffice_node_info{node="node-x"} 1.0' in metrics and b"postoffice_database_up 1.0" in metrics
        )
        shown = subprocess.run(
            [sys.executable, "-m", "postoffice", "status", "--http", f"127.0.0.1:{server.http_port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "node node-x of a cluster; database up; cluster queue: 2 messages" in shown.stdout
        assert re.search(r"^    node-x: up, 9\.9, started \S+, seen [\d.]+s ago$", shown.stdout, re.MULTILINE)
        assert _get(server, "/readyz")[0] == 200
        with caplog.at_level(logging.INFO, logger="postoffice"):
            postgres.stop()
            try:
                wait_until(lambda: _get(server, "/readyz")[0] == 503, 20, "not ready without the database")
                assert b"postoffice_database_up 0.0" in _get(server, "/metrics")[1]
                time.sleep(1)  # more failed beats: still one line
            finally:
                postgres.start()
            wait_until(lambda: _get(server, "/readyz")[0] == 200, 30, "ready again")
        events = [r.getMessage().split()[0] for r in caplog.records if "node=node-x" in r.getMessage()]
        assert events == ["event=database-unreachable", "event=database-reachable"]
    finally:
        server.call(heartbeat.stop())
        server.app.operations.cluster = None
        server.call(database.aclose())  # its async pool lives on the server's loop


def test_two_nodes_under_one_name_are_told_so(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    async def beat_both() -> None:
        first = Heartbeat(database, "same-name", "1", interval=0.1)
        second = Heartbeat(database, "same-name", "1", interval=0.1)
        second.started = first.started.replace(microsecond=(first.started.microsecond + 1) % 1_000_000)
        for _ in range(3):
            await first.beat()
            await second.beat()
        await database.aclose()

    with caplog.at_level(logging.WARNING, logger="postoffice"):
        asyncio.run(beat_both())
    warnings = [r.getMessage() for r in caplog.records if "event=node-name-in-use" in r.getMessage()]
    assert len(warnings) == 2 and "give each node its own [storage] node_name" in warnings[0]
    with psycopg.connect(database.url) as connection:
        assert connection.execute("SELECT count(*) FROM nodes").fetchone() == (1,)


def test_the_cluster_queue_is_not_counted_before_its_table_exists(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(nodes_schema.SQL.encode())  # schema version 1 alone: no queue yet
        connection.execute("INSERT INTO nodes (name, version) VALUES ('node-y', '1')")
        assert queue_size(connection) is None
        assert [(row.name, row.up) for row in list_nodes(connection)] == [("node-y", True)]
