"""The shared database's foundation against a real, throwaway PostgreSQL (tests/pg_server.py):
connecting, one-line failures that say whether to retry, and versioned migrations under an
advisory lock."""

from __future__ import annotations

import threading

import pytest

from pg_server import PostgresServer
from postoffice.errors import DatabaseError
from postoffice.pg.database import Database, describe
from postoffice.pg.migrate import known, migrate, status


def test_migrating_twice_is_a_no_op(pg_url: str) -> None:
    database = Database(pg_url)
    try:
        assert [m.version for m in migrate(database)] == [m.version for m in known()]
        assert migrate(database) == []
        state = status(database)
        assert state.pending == [] and state.version == known()[-1].version
    finally:
        database.close()


def test_two_nodes_migrating_at_once_apply_each_version_once(pg_url: str) -> None:
    results: list[list[int]] = []

    def node() -> None:
        database = Database(pg_url)
        try:
            results.append([m.version for m in migrate(database)])
        finally:
            database.close()

    threads = [threading.Thread(target=node) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # One applied everything; the others waited on the lock and found nothing left.
    assert sorted(results, key=len) == [[], [], [m.version for m in known()]]


def test_a_schema_newer_than_this_postoffice_is_refused(pg_url: str) -> None:
    database = Database(pg_url)
    try:
        migrate(database)
        with database.connection() as connection:
            connection.execute("INSERT INTO postoffice_schema (version, name) VALUES (9999, 'future')")
        with pytest.raises(DatabaseError, match="schema version 9999, newer") as raised:
            migrate(database)
        assert raised.value.permanent
    finally:
        database.close()


def test_a_wrong_password_is_one_line_and_permanent(postgres: PostgresServer) -> None:
    url = postgres.tcp_url(password="not-the-password")
    with pytest.raises(DatabaseError) as raised:
        Database(url).check(timeout=5)
    message = str(raised.value)
    assert "password authentication failed" in message and "\n" not in message
    assert "not-the-password" not in message
    assert raised.value.permanent


def test_a_server_that_is_not_there_is_worth_retrying(postgres: PostgresServer) -> None:
    with pytest.raises(DatabaseError, match="cannot connect") as raised:
        Database(f"postgresql://postoffice@127.0.0.1:{_closed_port()}/x").check(timeout=2)
    assert not raised.value.permanent


def test_a_malformed_url_is_named_and_its_password_never_shown() -> None:
    with pytest.raises(DatabaseError, match="URL is not valid"):
        Database("postgresql://[broken")
    assert describe("postgresql://me:secret@db.example:6543/mail") == "me@db.example:6543/mail"


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_database_flag_means_the_postgresql_backend() -> None:
    from postoffice.config import load_config

    config = load_config(database="postgresql://mail@db.example/mail")
    assert config.clustered and config.storage.database == "postgresql://mail@db.example/mail"
    assert not load_config().clustered


def test_a_pooled_connection_survives_the_database_restarting(postgres: PostgresServer) -> None:
    database = Database(postgres.url(postgres.create_database()))
    try:
        with database.connection() as connection:
            connection.execute("SELECT 1")
        postgres.restart()
        # The pool's connection died with the server; the next caller is given a new one.
        with database.connection() as connection:
            assert connection.execute("SELECT 2").fetchone() == (2,)
    finally:
        database.close()


async def test_the_heartbeat_says_when_the_database_answers_again(postgres: PostgresServer) -> None:
    from postoffice.pg.heartbeat import Heartbeat

    database = Database(postgres.url(postgres.create_database()))
    migrate(database)
    back: list[bool] = []
    heartbeat = Heartbeat(database, "node-a", "test", interval=0.2, on_reachable=lambda: back.append(True))
    try:
        await heartbeat.beat()
        assert heartbeat.reachable and back == []  # reachable from the start: nothing to retry
        postgres.stop()
        await heartbeat.beat()
        assert not heartbeat.reachable
        postgres.start()
        await heartbeat.beat()
        assert heartbeat.reachable and back == [True]  # the node retries what it deferred
    finally:
        await database.aclose()
