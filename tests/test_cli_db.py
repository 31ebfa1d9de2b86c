"""``postoffice db init|migrate|status|forget`` as real processes against a throwaway PostgreSQL
(tests/pg_server.py): a run twice is a no-op, two at once wait on the advisory lock, a bad URL or
password is one line and exit 1, status lists the schema and the nodes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg

from pg_server import PostgresServer
from postoffice.pg.migrate import LOCK_KEY, known


def db(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postoffice", "db", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def start_db(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "postoffice", "db", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


NEWEST = known()[-1].version


def test_init_makes_the_schema_and_a_second_run_does_nothing(pg_url: str) -> None:
    first = db("init", "--database", pg_url)
    assert first.returncode == 0, first.stderr
    assert f"now at version {NEWEST}" in first.stdout
    second = db("migrate", "--database", pg_url)
    assert second.returncode == 0, second.stderr
    assert f"is at schema version {NEWEST}: nothing to do" in second.stdout
    with psycopg.connect(pg_url) as connection:
        rows = connection.execute("SELECT version FROM postoffice_schema ORDER BY version").fetchall()
    assert [row[0] for row in rows] == [m.version for m in known()]


def test_status_of_an_empty_database_lists_every_version_as_pending(pg_url: str) -> None:
    shown = db("status", "--database", pg_url)
    assert shown.returncode == 0, shown.stderr
    assert "schema: none (an empty database: run postoffice db init)" in shown.stdout
    assert "pending: 1 (nodes)" in shown.stdout


def test_status_shows_the_version_and_each_node_up_or_gone(pg_url: str) -> None:
    assert db("init", "--database", pg_url).returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO nodes (name, version, started, seen) VALUES"
            " ('node-a', '1.2.3', now() - interval '1 hour', now()),"
            " ('node-b', '1.2.3', now() - interval '2 hours', now() - interval '10 minutes')"
        )
    shown = db("status", "--database", pg_url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"schema version {NEWEST} " in shown.stdout and "pending: none" in lines
    assert "nodes: 2" in lines
    node_a = next(line for line in lines if "node-a" in line)
    node_b = next(line for line in lines if "node-b" in line)
    assert " up " in node_a and "version 1.2.3" in node_a
    assert " GONE " in node_b and re.search(r"\(6\d\ds ago\)$", node_b)


def test_forget_removes_a_node_and_names_one_that_is_not_there(pg_url: str) -> None:
    assert db("init", "--database", pg_url).returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("INSERT INTO nodes (name, version) VALUES ('old-node', '1')")
    assert db("forget", "--database", pg_url, "old-node").returncode == 0
    again = db("forget", "--database", pg_url, "old-node")
    assert again.returncode == 1
    assert again.stderr.strip().endswith("has no node named 'old-node'")
    assert "nodes: 0 (none has started yet)" in db("status", "--database", pg_url).stdout


def test_migrations_started_together_wait_on_the_lock_and_apply_once(pg_url: str) -> None:
    holder = psycopg.connect(pg_url, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))  # a node migrating, slowly
        runs = [start_db("migrate", "--database", pg_url) for _ in range(2)]
        _wait_for_waiters(holder, 2)
        time.sleep(0.5)
        assert all(run.poll() is None for run in runs)  # both wait, neither applied anything
        assert holder.execute("SELECT to_regclass('nodes')").fetchone() == (None,)
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        results = [run.communicate(timeout=60) for run in runs]
    finally:
        holder.close()
    assert [run.returncode for run in runs] == [0, 0]
    for _, stderr in results:
        assert "another node is migrating the database" in stderr and "waiting for it" in stderr
    outputs = sorted(stdout for stdout, _ in results)
    assert "nothing to do" in outputs[0] and "applied schema version 1 (nodes)" in outputs[1]


def _wait_for_waiters(connection: psycopg.Connection[tuple[object, ...]], count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = connection.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
        if row is not None and row[0] >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the migrations never waited on the advisory lock")


def test_a_wrong_password_is_one_line_and_exit_1(postgres: PostgresServer) -> None:
    name = postgres.create_database()
    failed = db("status", "--database", postgres.tcp_url(name, password="wrong-secret"))
    assert failed.returncode == 1
    assert failed.stdout == ""
    line = failed.stderr.strip()
    assert "\n" not in line and line.startswith(
        "postoffice: cannot connect to the database postoffice@127.0.0.1"
    )
    assert "password authentication failed" in line and "wrong-secret" not in line


def test_an_unknown_database_or_a_malformed_url_is_one_line(postgres: PostgresServer) -> None:
    unknown = db("init", "--database", postgres.url("no_such_database"))
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert 'database "no_such_database" does not exist' in unknown.stderr
    malformed = db("init", "--database", "postgresql://[::1")
    assert malformed.returncode == 1
    assert malformed.stderr.startswith("postoffice: the database URL is not valid")


def test_the_database_comes_from_the_configuration_or_the_pg_environment(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    name = postgres.create_database()
    config = tmp_path / "postoffice.toml"
    config.write_text(f'[storage]\nbackend = "postgresql"\ndatabase = "{postgres.url(name)}"\n')
    assert "applied schema version" in db("init", "--config", str(config)).stdout
    url = urlsplit(postgres.url(name))
    query = parse_qs(url.query)
    env = {"PGHOST": query["host"][0], "PGPORT": query["port"][0], "PGUSER": "postoffice", "PGDATABASE": name}
    shown = db("status", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"/{name}" in shown.stdout.splitlines()[0] and "pending: none" in shown.stdout
