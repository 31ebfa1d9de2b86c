"""A cluster's users and aliases in a real, throwaway PostgreSQL: what one node writes, every
node sees (at once when it asks the version, within the watch's interval when it listens)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from argon2 import PasswordHasher

from pg_server import PostgresServer
from postoffice.accounts import Accounts, UserInfo
from postoffice.errors import AccountError
from postoffice.pg.database import Database
from postoffice.pg.migrate import migrate
from postoffice.pgstore.accounts import PgAccounts
from postoffice.pgstore.watch import SharedWatch


def cheap_hasher(time_cost: int = 1) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=8, parallelism=1)


@pytest.fixture
def node(pg_url: str) -> Iterator[Callable[..., Accounts]]:
    """``node()``: the accounts of one more node of the cluster (its own pool, maybe a watch)."""
    opened: list[Database] = []
    watches: list[SharedWatch] = []
    migrate_db = Database(pg_url)
    migrate(migrate_db)
    migrate_db.close()

    def make(*, watched: bool = False, time_cost: int = 1) -> Accounts:
        database = Database(pg_url, pool_size=2)
        database.open()  # before threads share it (Database.open is not guarded)
        opened.append(database)
        watch = None
        if watched:
            watch = SharedWatch(database, interval=0.2)
            watches.append(watch)
            watch.start()
        return Accounts(PgAccounts(database, watch), hasher=cheap_hasher(time_cost))

    yield make
    for watch in watches:
        watch.stop()
    for database in opened:
        database.close()


def eventually(check: Callable[[], bool], within: float = 2.0) -> float:
    """Seconds until ``check()`` held; fails the test after ``within``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, "not seen in time"
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_user_added_on_one_node_logs_in_on_another(node: Callable[..., Accounts]) -> None:
    node_a, node_b = node(), node()
    assert not node_a.verify("alice@example.com", "pw")
    assert node_b.add_user("Alice@Example.com", "pw", admin=True) == "alice@example.com"
    assert node_a.verify("ALICE@example.com", "pw")
    assert not node_a.verify("alice@example.com", "wrong")
    assert node_a.users() == [UserInfo("alice@example.com", True)]
    assert node_a.user("alice@EXAMPLE.com") == UserInfo("alice@example.com", True)
    node_a.remove_user("alice@example.com")
    assert not node_b.has_user("alice@example.com")
    assert not node_b.verify("alice@example.com", "pw")


def test_a_listening_node_sees_a_change_within_a_second(node: Callable[..., Accounts]) -> None:
    server, command = node(watched=True), node()
    assert server.users() == []
    command.add_user("bob@example.com", "pw")
    assert eventually(lambda: server.has_user("bob@example.com")) < 1.0
    assert server.verify("bob@example.com", "pw")
    command.add_alias("team@example.com", ["bob@example.com"])
    eventually(lambda: server.resolve("team@example.com") == ["bob@example.com"])


def test_the_same_user_added_on_two_nodes_is_added_once(node: Callable[..., Accounts]) -> None:
    node_a, node_b = node(), node()
    node_a.add_user("carol@example.com", "one")
    with pytest.raises(AccountError, match="already exists"):
        node_b.add_user("carol@example.com", "two")
    assert node_b.verify("carol@example.com", "one")


def test_an_outdated_hash_is_upgraded_on_login_for_every_node(node: Callable[..., Accounts]) -> None:
    weak, strong = node(time_cost=1), node(time_cost=2)
    weak.add_user("dave@example.com", "pw")
    assert "t=1" in weak._load().users["dave@example.com"].password
    assert strong.verify("dave@example.com", "pw")
    assert "t=2" in weak._load().users["dave@example.com"].password  # the other node sees the new hash
    assert weak.verify("dave@example.com", "pw")
    assert not strong.verify("dave@example.com", "wrong")


def test_aliases_and_catch_alls_resolve_on_every_node(node: Callable[..., Accounts]) -> None:
    node_a, node_b = node(), node()
    node_a.add_user("erin@example.com", "pw")
    node_a.add_alias("sales@example.com", ["erin@example.com", "out@elsewhere.test"])
    node_b.add_alias("sales@example.com", ["frank@example.com"])  # appends
    node_b.add_alias("@example.com", ["erin@example.com"])
    assert node_a.aliases() == {
        "@example.com": ["erin@example.com"],
        "sales@example.com": ["erin@example.com", "out@elsewhere.test", "frank@example.com"],
    }
    # frank@ is nobody, so the domain's catch-all takes him: to erin@, who is there already.
    assert node_a.resolve("sales@example.com") == ["erin@example.com", "out@elsewhere.test"]
    assert node_a.resolve("anyone@example.com") == ["erin@example.com"]
    with pytest.raises(AccountError, match="is a user"):
        node_b.add_alias("erin@example.com", ["x@example.com"])
    node_b.remove_alias("@example.com")
    assert node_a.resolve("anyone@example.com") is None


def test_no_hash_in_any_repr(node: Callable[..., Accounts]) -> None:
    accounts = node()
    accounts.add_user("gina@example.com", "hunter2")
    for text in (repr(accounts), repr(accounts.backend), repr(accounts._load()), repr(accounts.users())):
        assert "argon2" not in text and "hunter2" not in text


def test_an_unreachable_database_is_one_account_error_line(postgres: object) -> None:
    database = Database("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", pool_size=1)
    accounts = Accounts(PgAccounts(database), hasher=cheap_hasher())
    with pytest.raises(AccountError) as raised:
        accounts.users()
    assert "\n" not in str(raised.value) and "127.0.0.1" in str(raised.value)


def test_a_listening_node_answers_while_the_database_is_down_and_catches_up(
    node: Callable[..., Accounts], postgres: PostgresServer
) -> None:
    server, command = node(watched=True), node()
    command.add_user("hank@example.com", "pw")
    eventually(lambda: server.has_user("hank@example.com"))
    postgres.stop()
    try:
        # Nobody can change the accounts now: what the node has is what there is.
        assert server.verify("hank@example.com", "pw")
        assert server.resolve("hank@example.com") == ["hank@example.com"]
        with pytest.raises(AccountError, match="accounts in database"):
            command.add_user("ivy@example.com", "pw")
    finally:
        postgres.start()
    eventually(lambda: _added(command, "ivy@example.com"), within=15.0)
    eventually(lambda: server.has_user("ivy@example.com"), within=5.0)  # the watch reconnected


def _added(accounts: Accounts, address: str) -> bool:
    """Add ``address`` once the database takes writes again (the pool reconnects)."""
    try:
        accounts.add_user(address, "pw")
    except AccountError as error:
        return "already exists" in str(error)
    return True
