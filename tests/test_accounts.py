"""Users, aliases and password hashes in accounts.json."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher

import postoffice.accounts
from postoffice.accounts import MAX_ALIAS_DEPTH, Accounts, UserInfo
from postoffice.errors import AccountError


def cheap_hasher(time_cost: int = 1) -> PasswordHasher:
    # The smallest argon2id parameters: tests check behaviour, not hash strength.
    return PasswordHasher(time_cost=time_cost, memory_cost=8, parallelism=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "accounts.json"


@pytest.fixture
def accounts(path: Path) -> Accounts:
    return Accounts(path, hasher=cheap_hasher())


# -- users ---------------------------------------------------------------------------------


def test_missing_file_means_no_accounts(accounts: Accounts, path: Path) -> None:
    assert accounts.users() == []
    assert accounts.aliases() == {}
    assert not accounts.has_user("alice@example.com")
    assert accounts.resolve("alice@example.com") is None
    assert not accounts.verify("alice@example.com", "pw")
    assert not path.exists()  # reading never creates it


def test_add_user_then_verify(accounts: Accounts) -> None:
    assert accounts.add_user("Alice@Example.COM", "correct horse") == "alice@example.com"
    assert accounts.has_user("ALICE@example.com")
    assert accounts.verify("alice@EXAMPLE.com", "correct horse")
    assert not accounts.verify("alice@example.com", "Correct horse")
    assert not accounts.verify("alice@example.com", "")
    assert not accounts.verify("bob@example.com", "correct horse")
    assert accounts.resolve("ALICE@example.com") == ["alice@example.com"]


def test_password_is_kept_byte_exact(accounts: Accounts) -> None:
    accounts.add_user("a@example.com", "  spaces and ünïcode\t")
    assert accounts.verify("a@example.com", "  spaces and ünïcode\t")
    assert not accounts.verify("a@example.com", "spaces and ünïcode")


def test_file_format_and_mode(accounts: Accounts, path: Path) -> None:
    accounts.add_user("alice@example.com", "s3cret", admin=True)
    accounts.add_alias("sales@example.com", ["alice@example.com", "bob@elsewhere.test"])
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["version"] == 1
    assert doc["users"]["alice@example.com"]["admin"] is True
    assert doc["users"]["alice@example.com"]["password"].startswith("$argon2id$")
    assert doc["aliases"] == {"sales@example.com": ["alice@example.com", "bob@elsewhere.test"]}
    assert "s3cret" not in path.read_text(encoding="utf-8")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lock = path.with_name("accounts.json.lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    # Nothing left behind by the atomic write.
    assert sorted(p.name for p in path.parent.iterdir()) == ["accounts.json", "accounts.json.lock"]


def test_default_hasher_is_argon2id(path: Path) -> None:
    accounts = Accounts(path)
    accounts.add_user("alice@example.com", "pw")
    stored = json.loads(path.read_text(encoding="utf-8"))["users"]["alice@example.com"]["password"]
    assert stored.startswith("$argon2id$")
    assert accounts.verify("alice@example.com", "pw")


def test_duplicate_user_is_an_error_whatever_the_case(accounts: Accounts) -> None:
    accounts.add_user("alice@example.com", "one")
    with pytest.raises(AccountError, match="already exists"):
        accounts.add_user("ALICE@Example.com", "two")
    assert accounts.verify("alice@example.com", "one")


@pytest.mark.parametrize(
    "address",
    ["alice", "alice@", "@example.com", "al ice@example.com", "alice@exa_mple.com", "a/b@example.com",
     "alice..x@example.com", "alice@192.0.2.1", "alice@[192.0.2.1]"],
)  # fmt: skip
def test_invalid_user_addresses(accounts: Accounts, address: str) -> None:
    with pytest.raises(AccountError):
        accounts.add_user(address, "pw")
    assert accounts.users() == []


def test_empty_password_is_rejected(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match="empty"):
        accounts.add_user("alice@example.com", "")
    assert not accounts.has_user("alice@example.com")


def test_users_are_listed_sorted_with_admin_flag(accounts: Accounts) -> None:
    accounts.add_user("zed@example.com", "pw")
    accounts.add_user("amy@example.com", "pw", admin=True)
    assert accounts.users() == [UserInfo("amy@example.com", True), UserInfo("zed@example.com", False)]


def test_remove_user(accounts: Accounts) -> None:
    accounts.add_user("alice@example.com", "pw")
    accounts.add_user("bob@example.com", "pw")
    assert accounts.remove_user("Alice@Example.com") == "alice@example.com"
    assert [u.address for u in accounts.users()] == ["bob@example.com"]
    assert not accounts.verify("alice@example.com", "pw")
    with pytest.raises(AccountError, match=r"no user alice@example\.com"):
        accounts.remove_user("alice@example.com")


def test_unicode_local_parts_are_one_user_in_either_normal_form(accounts: Accounts) -> None:
    composed, decomposed = "jos\u00e9@example.com", "jose\u0301@example.com"
    accounts.add_user(decomposed, "pw")
    assert accounts.has_user(composed)
    assert accounts.verify(composed.upper(), "pw")


# -- secrets stay secret -------------------------------------------------------------------


def test_no_hash_in_any_repr(accounts: Accounts) -> None:
    accounts.add_user("alice@example.com", "hunter2")
    data = accounts._load()
    for text in (repr(accounts), repr(data), repr(accounts.users()), str(data)):
        assert "argon2" not in text
        assert "hunter2" not in text


def test_unknown_user_still_costs_a_verification(path: Path) -> None:
    calls: list[str] = []

    class CountingHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            calls.append("verify")
            return super().verify(hash, password)

    accounts = Accounts(path, hasher=CountingHasher(time_cost=1, memory_cost=8, parallelism=1))
    accounts.add_user("alice@example.com", "pw")
    assert not accounts.verify("nobody@example.com", "pw")
    assert not accounts.verify("not an address", "pw")
    assert calls == ["verify", "verify"]


def test_corrupt_hash_does_not_verify(accounts: Accounts, path: Path) -> None:
    accounts.add_user("alice@example.com", "pw")
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["users"]["alice@example.com"]["password"] = "not-a-hash"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert not accounts.verify("alice@example.com", "pw")


def test_outdated_hash_is_upgraded_on_login(path: Path) -> None:
    Accounts(path, hasher=cheap_hasher(time_cost=1)).add_user("alice@example.com", "pw")
    before = json.loads(path.read_text(encoding="utf-8"))["users"]["alice@example.com"]["password"]
    stronger = Accounts(path, hasher=cheap_hasher(time_cost=2))
    assert stronger.verify("alice@example.com", "pw")
    after = json.loads(path.read_text(encoding="utf-8"))["users"]["alice@example.com"]["password"]
    assert "t=1" in before
    assert "t=2" in after
    assert stronger.verify("alice@example.com", "pw")
    assert not stronger.verify("alice@example.com", "wrong")


# -- the file changing underneath ----------------------------------------------------------


def test_a_second_instance_sees_changes(path: Path) -> None:
    server = Accounts(path, hasher=cheap_hasher())
    cli = Accounts(path, hasher=cheap_hasher())
    assert not server.has_user("alice@example.com")
    cli.add_user("alice@example.com", "pw")
    assert server.has_user("alice@example.com")
    cli.remove_user("alice@example.com")
    assert not server.has_user("alice@example.com")
    path.unlink()
    assert server.users() == []


def test_parsed_data_is_cached_until_the_file_changes(
    accounts: Accounts, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts.add_user("alice@example.com", "pw")
    decoded: list[Path] = []
    original = postoffice.accounts._decode

    def counting(raw: bytes, where: Path) -> postoffice.accounts.AccountsData:
        decoded.append(where)
        return original(raw, where)

    monkeypatch.setattr(postoffice.accounts, "_decode", counting)
    reader = Accounts(path, hasher=cheap_hasher())
    for _ in range(5):
        assert reader.has_user("alice@example.com")
    assert len(decoded) == 1
    accounts.add_user("bob@example.com", "pw")  # another writer replaces the file
    assert reader.has_user("bob@example.com")
    assert len(decoded) == 3  # the writer re-read under its lock, then the reader once


def _add_many(args: tuple[str, int]) -> None:
    where, worker = args
    accounts = Accounts(Path(where), hasher=cheap_hasher())
    for n in range(5):
        accounts.add_user(f"user{worker}-{n}@example.com", "pw")


def test_concurrent_writers_lose_nothing(path: Path) -> None:
    with ProcessPoolExecutor(max_workers=6) as pool:
        list(pool.map(_add_many, [(str(path), worker) for worker in range(6)]))
    users = Accounts(path, hasher=cheap_hasher()).users()
    assert len(users) == 30
    assert {u.address for u in users} == {f"user{w}-{n}@example.com" for w in range(6) for n in range(5)}


def test_corrupt_file_is_an_error_naming_it(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(AccountError) as info:
        Accounts(path).users()
    assert str(info.value).startswith(f"{path}: not valid JSON")


@pytest.mark.parametrize(
    "doc",
    [
        {"version": 2, "users": {}},
        [],
        {"version": 1, "users": []},
        {"version": 1, "users": {"a@example.com": {"admin": False}}},
        {"version": 1, "users": {"a@example.com": {"password": "x", "admin": "yes"}}},
        {"version": 1, "aliases": {"a@example.com": "b@example.com"}},
    ],
)
def test_wrong_shape_is_an_error(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(AccountError) as info:
        Accounts(path).has_user("a@example.com")
    assert str(info.value).startswith(f"{path}: ")


def test_hand_edited_capitals_are_folded(path: Path) -> None:
    path.parent.mkdir(parents=True)
    hashed = cheap_hasher().hash("pw")
    doc = {
        "version": 1,
        "users": {"Alice@Example.com": {"password": hashed, "admin": False}},
        "aliases": {"Sales@Example.com": ["ALICE@example.com"]},
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    accounts = Accounts(path, hasher=cheap_hasher())
    assert accounts.verify("alice@example.com", "pw")
    assert accounts.resolve("sales@example.com") == ["alice@example.com"]


# -- aliases -------------------------------------------------------------------------------


@pytest.fixture
def people(accounts: Accounts) -> Accounts:
    accounts.add_user("alice@example.com", "pw")
    accounts.add_user("bob@example.com", "pw")
    return accounts


def test_alias_to_users_and_remote_addresses(people: Accounts) -> None:
    assert people.add_alias("Sales@Example.com", ["alice@example.com", "Carol@Elsewhere.test"]) == (
        "sales@example.com"
    )
    assert people.resolve("SALES@example.com") == ["alice@example.com", "carol@elsewhere.test"]
    assert people.aliases() == {"sales@example.com": ["alice@example.com", "carol@elsewhere.test"]}


def test_aliases_of_aliases_expand_in_order_without_duplicates(people: Accounts) -> None:
    people.add_alias("team@example.com", ["bob@example.com", "alice@example.com"])
    people.add_alias("all@example.com", ["alice@example.com", "team@example.com", "x@remote.test"])
    assert people.resolve("all@example.com") == ["alice@example.com", "bob@example.com", "x@remote.test"]


def test_alias_loops_are_cut(people: Accounts) -> None:
    people.add_alias("a@example.com", ["b@example.com", "alice@example.com"])
    people.add_alias("b@example.com", ["a@example.com", "bob@example.com"])
    # Depth-first: a's first target b expands (its a is the loop, skipped) before a's alice.
    assert people.resolve("a@example.com") == ["bob@example.com", "alice@example.com"]
    assert people.resolve("b@example.com") == ["alice@example.com", "bob@example.com"]


def test_an_alias_that_only_loops_resolves_to_nothing(people: Accounts) -> None:
    people.add_alias("a@example.com", ["b@example.com"])
    people.add_alias("b@example.com", ["a@example.com"])
    assert people.resolve("a@example.com") is None


def test_alias_depth_is_limited(people: Accounts) -> None:
    def chain(name: str, length: int) -> None:
        # name0 -> name1 -> ... -> name<length-1> -> alice: <length> aliases deep.
        for n in range(length - 1):
            people.add_alias(f"{name}{n}@example.com", [f"{name}{n + 1}@example.com"])
        people.add_alias(f"{name}{length - 1}@example.com", ["alice@example.com"])

    chain("short", MAX_ALIAS_DEPTH)
    chain("long", MAX_ALIAS_DEPTH + 1)
    assert people.resolve("short0@example.com") == ["alice@example.com"]
    assert people.resolve("long0@example.com") is None
    assert people.resolve("long1@example.com") == ["alice@example.com"]


def test_catch_all(people: Accounts) -> None:
    people.add_alias("@Example.com", ["alice@example.com"])
    people.add_alias("sales@example.com", ["bob@example.com"])
    assert people.resolve("anything@example.com") == ["alice@example.com"]
    assert people.resolve("bob@example.com") == ["bob@example.com"]  # users win
    assert people.resolve("sales@example.com") == ["bob@example.com"]  # exact aliases win
    assert people.resolve("anything@other.example") is None


def test_alias_target_falling_into_a_catch_all(people: Accounts) -> None:
    people.add_alias("@example.com", ["bob@example.com"])
    people.add_alias("old@example.com", ["gone@example.com"])
    assert people.resolve("old@example.com") == ["bob@example.com"]


def test_catch_all_pointing_into_its_own_domain_at_unknown_address(people: Accounts) -> None:
    people.add_alias("@example.com", ["nobody@example.com"])
    assert people.resolve("someone@example.com") is None


def test_unknown_and_invalid_addresses_resolve_to_none(people: Accounts) -> None:
    assert people.resolve("carol@example.com") is None
    assert people.resolve("not an address") is None
    assert people.resolve("") is None


def test_adding_to_an_alias_appends_new_targets(people: Accounts) -> None:
    people.add_alias("sales@example.com", ["alice@example.com"])
    people.add_alias("sales@example.com", ["ALICE@example.com", "bob@example.com"])
    assert people.aliases()["sales@example.com"] == ["alice@example.com", "bob@example.com"]


def test_alias_errors(people: Accounts) -> None:
    with pytest.raises(AccountError, match="is a user"):
        people.add_alias("alice@example.com", ["bob@example.com"])
    with pytest.raises(AccountError, match="itself"):
        people.add_alias("loop@example.com", ["Loop@example.com"])
    with pytest.raises(AccountError, match="at least one target"):
        people.add_alias("empty@example.com", [])
    with pytest.raises(AccountError):
        people.add_alias("x@example.com", ["@example.com"])
    with pytest.raises(AccountError):
        people.add_alias("@bad_domain", ["alice@example.com"])
    with pytest.raises(AccountError):
        people.add_alias("no-domain", ["alice@example.com"])
    assert people.aliases() == {}


def test_user_cannot_shadow_an_alias(people: Accounts) -> None:
    people.add_alias("sales@example.com", ["alice@example.com"])
    with pytest.raises(AccountError, match="is an alias"):
        people.add_user("sales@example.com", "pw")


def test_remove_alias(people: Accounts) -> None:
    people.add_alias("sales@example.com", ["alice@example.com"])
    people.add_alias("@example.com", ["bob@example.com"])
    assert people.remove_alias("SALES@example.com") == "sales@example.com"
    assert people.remove_alias("@EXAMPLE.com") == "@example.com"
    assert people.aliases() == {}
    with pytest.raises(AccountError, match="no alias"):
        people.remove_alias("sales@example.com")


def test_no_temporary_file_survives_a_failed_write(
    people: Accounts, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        people.add_user("carol@example.com", "pw")
    monkeypatch.undo()
    assert not people.has_user("carol@example.com")
    assert people.has_user("alice@example.com")
    assert sorted(p.name for p in path.parent.iterdir()) == ["accounts.json", "accounts.json.lock"]
