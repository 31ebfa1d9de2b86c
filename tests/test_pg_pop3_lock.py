"""POP3's maildrop lock (RFC 1939 §8) in a cluster: held in the shared database
(pgstore/maildrop_locks.py), so a second session for the same mailbox on another node hears
``-ERR [IN-USE]`` (RFC 2449 §8.1.1), and the lock goes when the first session QUITs, when its
client drops the connection, or when the database loses the holder's connection."""

from __future__ import annotations

import asyncio
import poplib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from conftest import wait_until
from postoffice.config import Limits, Listener, load_config
from postoffice.errors import DatabaseError
from postoffice.maildir.store import MaildirStore
from postoffice.net.listeners import Security
from postoffice.net.pop3_server import Pop3Server
from postoffice.pg.database import Database
from postoffice.pg.migrate import migrate
from postoffice.pgstore.mailboxes import PgMailboxStore
from postoffice.pgstore.maildrop_locks import PgMaildropLocks
from postoffice.stores import open_stores

pytestmark = pytest.mark.timeout(60)

ADDRESS = "ann@example.test"


@pytest.fixture
def nodes(pg_url: str) -> Iterator[Callable[[], Database]]:
    """Each call: another node's connection to the one database."""
    opened: list[Database] = []

    def node() -> Database:
        database = Database(pg_url, pool_size=2, name=f"node{len(opened)}")
        database.open()
        migrate(database)
        opened.append(database)
        return database

    yield node
    for database in opened:
        database.close()


def test_a_second_node_cannot_take_a_held_maildrop(nodes: Callable[[], Database]) -> None:
    first, second = PgMaildropLocks(nodes()), PgMaildropLocks(nodes())
    held = first.acquire(ADDRESS)
    assert held is not None
    assert second.acquire(ADDRESS) is None
    assert first.acquire(ADDRESS) is None  # another session on the same node, too
    other = second.acquire("bob@example.test")  # another mailbox is free
    assert other is not None
    other.release()
    held.release()
    again = second.acquire(ADDRESS)
    assert again is not None
    again.release()


def test_the_lock_goes_with_the_holders_database_connection(nodes: Callable[[], Database]) -> None:
    database = nodes()
    locks = PgMaildropLocks(database)
    held = locks.acquire(ADDRESS)  # never released: its connection is cut below
    assert held is not None
    assert locks.acquire(ADDRESS) is None
    with database.connection() as connection:
        # The lock's holder (pg_stat_activity may still list the connection that was refused).
        cut = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    assert cut == [(True,)]
    wait_until(lambda: _free(locks), what="the lock of a dropped connection to go")
    held.release()  # closing a connection already gone is harmless


def _free(locks: PgMaildropLocks) -> bool:
    held = locks.acquire(ADDRESS)
    if held is None:
        return False
    held.release()
    return True


@pytest.fixture
async def servers(nodes: Callable[[], Database]) -> AsyncIterator[list[int]]:
    """Two nodes' POP3 servers (capture mode: any password from loopback), one database."""
    running = []
    for _ in range(2):
        database = nodes()
        running.append(
            Pop3Server(
                hostname="mx.test",
                listeners=(Listener("pop3", "127.0.0.1", 0),),
                security=Security(),
                store=PgMailboxStore(database),
                locks=PgMaildropLocks(database),
                limits=Limits(),
                capture=True,
            )
        )
    ports = [(await server.start())[0].port for server in running]
    yield ports
    for server in running:
        await server.stop(grace=1)


def login(port: int) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    client.user(ADDRESS)
    client.pass_("any")
    return client


def refused(port: int) -> str:
    with pytest.raises(poplib.error_proto) as refusal:
        login(port)
    return str(refusal.value)


async def test_a_second_pop3_session_on_another_node_is_in_use(servers: list[int]) -> None:
    first_port, second_port = servers
    first = await asyncio.to_thread(login, first_port)
    assert "-ERR [IN-USE]" in await asyncio.to_thread(refused, second_port)
    await asyncio.to_thread(first.quit)
    second = await asyncio.to_thread(login, second_port)  # QUIT let it go
    assert "-ERR [IN-USE]" in await asyncio.to_thread(refused, first_port)
    # The client vanishes without QUIT: the session ends and its lock with it.
    second.sock.shutdown(socket.SHUT_RDWR)
    second.close()

    def taken() -> bool:
        try:
            login(first_port).quit()
        except poplib.error_proto:
            return False
        return True

    for _ in range(100):
        if await asyncio.to_thread(taken):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the dropped session's lock was never let go")


async def test_a_database_out_of_reach_is_a_temporary_failure(tmp_path: Path) -> None:
    unreachable = Database("postgresql://po:s3cret@127.0.0.1:1/mail", name="node9")
    with pytest.raises(DatabaseError, match=r"^cannot lock the maildrop in po@127.0.0.1:1/mail: ") as error:
        PgMaildropLocks(unreachable).acquire(ADDRESS)
    assert "s3cret" not in str(error.value) and "\n" not in str(error.value)
    server = Pop3Server(
        hostname="mx.test",
        listeners=(Listener("pop3", "127.0.0.1", 0),),
        security=Security(),
        store=MaildirStore(tmp_path / "mail", "mx.test"),
        locks=PgMaildropLocks(unreachable),
        limits=Limits(),
        capture=True,
    )
    port = (await server.start())[0].port
    try:
        assert "-ERR [SYS/TEMP]" in await asyncio.to_thread(refused, port)
    finally:
        await server.stop(grace=1)


async def test_a_cluster_nodes_stores_lock_maildrops_in_the_database(pg_url: str, tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text(f'[storage]\nbackend = "postgresql"\ndatabase = "{pg_url}"\nnode_name = "mx1"\n')
    stores = open_stores(load_config(path, data_dir=tmp_path / "data"))
    try:
        held = stores.maildrop_locks.acquire(ADDRESS)
        assert held is not None
        assert PgMaildropLocks(stores.database or Database()).acquire(ADDRESS) is None
        held.release()
    finally:
        await stores.aclose()
    assert not (tmp_path / "data" / "pop3-locks").exists()
