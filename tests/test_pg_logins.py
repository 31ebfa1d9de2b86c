"""A cluster's web sessions and failed logins in a real, throwaway PostgreSQL: a session made
on one node is good on another (real HTTP against two web servers), and failed logins count
on every node, for the web login and for SMTP/IMAP/POP3 AUTH alike."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from argon2 import PasswordHasher

from conftest import make_config
from postoffice.accounts import Accounts
from postoffice.maildir.store import MaildirStore
from postoffice.net.login_throttle import LoginThrottle
from postoffice.pg.database import Database
from postoffice.pg.migrate import migrate
from postoffice.pgstore.accounts import PgAccounts
from postoffice.pgstore.logins import PgLogins
from postoffice.pgstore.watch import SharedWatch
from postoffice.web.auth import LOGIN_FAILURES, SESSION_COOKIE, Authenticator, LoginRefused, LoginThrottled
from postoffice.web.service import WebService

_T = TypeVar("_T")


@dataclass
class Node:
    """One node's view of the shared database: its own pools, watch, accounts and logins."""

    database: Database
    watch: SharedWatch
    accounts: Accounts
    logins: PgLogins

    def close(self) -> None:
        self.logins.close()
        self.watch.stop()
        self.database.close()


@pytest.fixture
def nodes(pg_url: str) -> Iterator[Callable[[], Node]]:
    made: list[Node] = []
    first = Database(pg_url, pool_size=1)
    migrate(first)
    first.close()

    def make() -> Node:
        database = Database(pg_url, pool_size=2)
        database.open()  # before threads share it (Database.open is not guarded)
        watch = SharedWatch(database, interval=0.2)
        watch.start()
        accounts = Accounts(
            PgAccounts(database, watch), hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        )
        node = Node(database, watch, accounts, PgLogins(database, watch))
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def eventually(check: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not seen within a second"
        time.sleep(0.01)


class LoopThread:
    """An event loop in a thread: a web node serving while the test talks to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def authenticator(node: Node, tmp_path: Path) -> Authenticator:
    mailboxes = MaildirStore.from_config(make_config(tmp_path, domains=("example.com",)))
    return Authenticator(node.accounts, mailboxes, open_access=False, logins=node.logins)


def test_a_session_made_on_one_node_is_good_on_another(nodes: Callable[[], Node], tmp_path: Path) -> None:
    node_a, node_c = nodes(), nodes()
    node_a.accounts.add_user("alice@example.com", "pw")
    auth_a, auth_c = authenticator(node_a, tmp_path / "a"), authenticator(node_c, tmp_path / "c")
    loop = LoopThread()
    try:
        made = loop.run(auth_a.login("alice@example.com", "pw", "192.0.2.1"))
        seen = loop.run(auth_c.principal(made.session))
        assert seen is not None and seen.address == "alice@example.com" and seen.csrf_token == made.csrf_token
        assert loop.run(auth_c.principal("not-a-session")) is None
        node_a.accounts.add_user("bob@example.com", "pw", admin=True)
        loop.run(auth_c.logout(made.session))  # logged out on C: gone on A too
        assert loop.run(auth_a.principal(made.session)) is None
        # The table keeps the token's SHA-256, never the token.
        with node_a.database.connection() as conn:
            stored = [bytes(row[0]) for row in conn.execute("SELECT token_hash FROM web_sessions")]
        assert all(made.session is not None and made.session.encode() not in value for value in stored)
        with pytest.raises(LoginRefused):
            loop.run(auth_c.login("alice@example.com", "wrong", "192.0.2.1"))
    finally:
        loop.run(node_a.database.aclose())
        loop.run(node_c.database.aclose())
        loop.close()


def test_web_login_failures_count_on_every_node(nodes: Callable[[], Node], tmp_path: Path) -> None:
    node_a, node_b = nodes(), nodes()
    node_a.accounts.add_user("carol@example.com", "pw")
    auth_a, auth_b = authenticator(node_a, tmp_path / "a"), authenticator(node_b, tmp_path / "b")
    loop = LoopThread()
    try:
        for attempt in range(LOGIN_FAILURES):
            # Spread over both nodes, from addresses of their own: only the account's count adds up.
            auth = auth_a if attempt % 2 else auth_b
            with pytest.raises(LoginRefused):
                loop.run(auth.login("carol@example.com", "guess", f"192.0.2.{attempt}"))

        # A saw two of the five itself; the other three it hears of from B.
        eventually(lambda: auth_a._by_account.retry_after("carol@example.com", time.time()) > 0)
        with pytest.raises(LoginThrottled):  # even with the right password, on either node
            loop.run(auth_a.login("carol@example.com", "pw", "198.51.100.7"))
        # A node started now knows the window's failures from the table.
        late = authenticator(nodes(), tmp_path / "late")
        with pytest.raises(LoginThrottled):
            loop.run(late.login("carol@example.com", "pw", "198.51.100.8"))
    finally:
        loop.run(node_a.database.aclose())
        loop.close()


def test_auth_failures_lock_a_client_out_on_every_node(nodes: Callable[[], Node]) -> None:
    node_a, node_b = nodes(), nodes()

    def throttle(node: Node) -> LoginThrottle:
        feed = node.logins.failures("auth", 600)
        return LoginThrottle(max_failures=3, window=600, delay=0, feed=feed)

    smtp_a, imap_b = throttle(node_a), throttle(node_b)
    assert smtp_a.record_failure("203.0.113.5") == 1
    assert imap_b.record_failure("203.0.113.5") in (1, 2)  # 2 if B heard of A's already
    eventually(lambda: smtp_a._recent("203.0.113.5") == 2)
    smtp_a.record_failure("203.0.113.5")
    eventually(lambda: imap_b.locked_out("203.0.113.5"))
    assert not imap_b.locked_out("203.0.113.6")
    assert throttle(nodes()).locked_out("203.0.113.5")  # a node that starts later knows too


def test_a_session_is_good_over_http_on_another_web_server(nodes: Callable[[], Node], tmp_path: Path) -> None:
    servers: list[tuple[LoopThread, WebService, Node]] = []
    try:
        for name in ("a", "c"):
            node = nodes()
            config = replace(make_config(tmp_path / name, domains=("example.com",)))
            loop = LoopThread()
            web = WebService(config, node.accounts, MaildirStore.from_config(config), logins=node.logins)
            loop.run(web.start())
            servers.append((loop, web, node))
        servers[0][2].accounts.add_user("dave@example.com", "pw")
        url_a, url_c = (f"http://127.0.0.1:{web.addresses[0].port}" for _, web, _ in servers)
        login = httpx.post(f"{url_a}/api/v1/login", json={"address": "dave@example.com", "password": "pw"})
        assert login.status_code == 200, login.text
        token = login.cookies[SESSION_COOKIE]
        on_c = httpx.get(f"{url_c}/api/v1/session", cookies={SESSION_COOKIE: token})
        assert on_c.status_code == 200 and on_c.json()["address"] == "dave@example.com"
        assert on_c.json()["csrf_token"] == login.json()["csrf_token"]
        headers = {"X-CSRF-Token": login.json()["csrf_token"]}
        assert (
            httpx.post(f"{url_c}/api/v1/logout", cookies={SESSION_COOKIE: token}, headers=headers).status_code
            == 204
        )
        assert httpx.get(f"{url_a}/api/v1/session", cookies={SESSION_COOKIE: token}).status_code == 401
    finally:
        for loop, web, node in servers:
            loop.run(web.stop())
            loop.run(node.database.aclose())
            loop.close()
