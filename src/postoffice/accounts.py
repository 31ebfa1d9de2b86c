"""Users, aliases and password hashes: the only module that holds secrets.

Where they are kept is a seam (:class:`AccountsBackend`): the JSON file below for one machine,
or a cluster's database (:mod:`postoffice.pgstore.accounts`); every rule (canonical addresses,
alias expansion, argon2 and its rehash) is here, the same for both.

Untrusted input seen here: addresses and passwords a client sends (AUTH, RCPT), passed on by the
server; addresses and passwords from the command line; and the accounts file, which another
process (``postoffice user add``) may replace at any moment. Passwords are only ever handed to
argon2; neither they nor their hashes appear in a ``repr``, a log line or an exception.

The file is JSON (``version`` 1)::

    {"version": 1,
     "users": {"alice@example.com": {"password": "$argon2id$...", "admin": false}},
     "aliases": {"sales@example.com": ["alice@example.com", "bob@elsewhere.test"],
                 "@example.com": ["alice@example.com"]}}

An alias key ``@domain`` is a catch-all for local parts of that domain that are neither a user
nor an alias. Addresses are compared in their canonical form (:mod:`postoffice.addresses`: both
parts lower-cased and NFC): RFC 5321 §2.4 lets a server treat its own local parts
case-insensitively, and every mail provider does.

Writers take an exclusive ``flock`` on ``accounts.json.lock``, re-read, change, and replace the
file atomically (write a temporary file, fsync it, rename it over the old one, fsync the
directory: the Maildir specification's recipe for messages), so concurrent ``user add`` runs
never lose a write and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from postoffice.addresses import canonical_or_none, fold, normalize_address, normalize_domain
from postoffice.durable import replace_file
from postoffice.errors import AccountError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Postfix virtual_alias_recursion_limit is 1000; ten levels is more nesting than anyone writes
# on purpose, and deep chains are almost always a mistake.
MAX_ALIAS_DEPTH = 10


@dataclass(frozen=True, slots=True)
class UserInfo:
    """What may be shown about a user: never the password hash."""

    address: str
    admin: bool


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as stored: the argon2 hash (never in a repr) and the admin flag."""

    password: str = field(repr=False)
    admin: bool = False


@dataclass(frozen=True, slots=True)
class AccountsData:
    """Every user and alias, as one backend version holds them (never changed in place)."""

    users: Mapping[str, UserRecord] = field(default_factory=dict)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# What identifies one version of the file: a rename gives a new inode, an in-place edit a new
# size or mtime. ctime is included because mtime can be set back by a careful editor.
_Stamp = tuple[int, int, int, int, int]


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _canonical(address: str) -> str:
    """A valid address in its canonical (lookup) form; AccountError if it is not valid."""
    try:
        return normalize_address(address, fold_local=True)
    except ValueError as exc:
        raise AccountError(str(exc)) from None


def _user_address(address: str) -> str:
    normal = _canonical(address)
    # The local part names the user's mailbox directory under the mail root: keep path
    # separators out here too, not only in maildir.names (defence in depth).
    if "/" in normal.rpartition("@")[0]:
        raise AccountError(f"{address!r}: a user's local part cannot contain '/'")
    return normal


def _alias_key(alias: str) -> str:
    if not alias.startswith("@"):
        return _canonical(alias)
    try:
        return "@" + fold(normalize_domain(alias[1:]))
    except ValueError as exc:
        raise AccountError(str(exc)) from None


class AccountsBackend(Protocol):
    """Where the users and aliases are kept: the JSON file here (:class:`AccountsFile`), or a
    cluster's database (:mod:`postoffice.pgstore.accounts`). ``load`` is called for every
    lookup and must be cheap while nothing changed; ``update`` applies ``change`` to exactly
    the latest data, atomically, so concurrent writers (other processes, other nodes) never
    lose a write. ``change`` may raise AccountError (nothing is written) or return its
    argument unchanged (nothing to write)."""

    where: str

    def load(self) -> AccountsData: ...

    def update(self, change: Callable[[AccountsData], AccountsData]) -> None: ...


class Accounts:
    """The users and aliases of a backend (by default the JSON file at a path), read again
    whenever it changes.

    ``verify`` costs one argon2 computation (tens of milliseconds by design): async callers
    should run it in a worker thread.
    """

    def __init__(self, source: Path | AccountsBackend, *, hasher: PasswordHasher | None = None) -> None:
        self._backend = AccountsFile(source) if isinstance(source, Path) else source
        # argon2-cffi's defaults are RFC 9106's second recommended option, argon2id.
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None

    def __repr__(self) -> str:
        return f"Accounts({self._backend.where!r})"

    @property
    def backend(self) -> AccountsBackend:
        return self._backend

    def _load(self) -> AccountsData:
        return self._backend.load()

    def _update(self, change: Callable[[AccountsData], AccountsData]) -> None:
        self._backend.update(change)

    # -- users ---------------------------------------------------------------------------

    def add_user(self, address: str, password: str, *, admin: bool = False) -> str:
        """Add a user; returns the address as stored (lower-cased)."""
        normal = _user_address(address)
        if not password:
            raise AccountError("the password is empty")
        hashed = self._hasher.hash(password)  # slow on purpose: outside the lock

        def change(data: AccountsData) -> AccountsData:
            if normal in data.users:
                raise AccountError(f"user {normal} already exists")
            if normal in data.aliases:
                raise AccountError(f"{normal} is an alias; remove the alias first")
            users = dict(data.users)
            users[normal] = UserRecord(hashed, admin)
            return AccountsData(users, data.aliases)

        self._update(change)
        return normal

    def remove_user(self, address: str) -> str:
        """Remove a user; returns the address as stored. Their mail is left alone."""
        normal = canonical_or_none(address) or address

        def change(data: AccountsData) -> AccountsData:
            if normal not in data.users:
                raise AccountError(f"no user {normal}")
            users = {name: user for name, user in data.users.items() if name != normal}
            return AccountsData(users, data.aliases)

        self._update(change)
        return normal

    def users(self) -> list[UserInfo]:
        data = self._load()
        return [UserInfo(name, data.users[name].admin) for name in sorted(data.users)]

    def user(self, address: str) -> UserInfo | None:
        """The user at ``address`` (any case), or None."""
        normal = canonical_or_none(address)
        found = self._load().users.get(normal) if normal is not None else None
        return UserInfo(normal, found.admin) if found is not None and normal is not None else None

    def user_records(self) -> dict[str, UserRecord]:
        """Every user as stored, password hash included: what ``migrate-store`` moves to
        another store (the hash, never a password, which nobody knows)."""
        return dict(self._load().users)

    def restore_user(self, address: str, record: UserRecord) -> None:
        """Make the user at ``address`` exactly ``record`` (hash and admin flag), adding it
        if need be: moving a user again changes nothing."""
        normal = _user_address(address)
        if not record.password.startswith("$"):
            raise AccountError(f"user {normal}: not a password hash")  # PHC strings start so

        def change(data: AccountsData) -> AccountsData:
            if normal in data.aliases:
                raise AccountError(f"{normal} is an alias; remove the alias first")
            if data.users.get(normal) == record:
                return data
            users = dict(data.users)
            users[normal] = record
            return AccountsData(users, data.aliases)

        self._update(change)

    def has_user(self, address: str) -> bool:
        normal = canonical_or_none(address)
        return normal is not None and normal in self._load().users

    def verify(self, address: str, password: str) -> bool:
        """True if ``password`` is the user's; the same work is done for unknown users."""
        normal = canonical_or_none(address)
        user = self._load().users.get(normal) if normal else None
        if user is None:
            # Verify against a hash nobody knows the password of, so that the reply time does
            # not tell a guesser which addresses exist (OWASP authentication cheat sheet).
            self._check(self._dummy(), password)
            return False
        if not self._check(user.password, password):
            return False
        if normal is not None and self._hasher.check_needs_rehash(user.password):
            self._rehash(normal, user.password, password)
        return True

    def _check(self, hashed: str, password: str) -> bool:
        try:
            return self._hasher.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False

    def _dummy(self) -> str:
        # Made on first use with the current parameters, so it costs what a real user's does.
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))
        return self._dummy_hash

    def _rehash(self, address: str, old_hash: str, password: str) -> None:
        """Store a hash with today's parameters (argon2-cffi ``check_needs_rehash`` advice)."""
        new_hash = self._hasher.hash(password)

        def change(data: AccountsData) -> AccountsData:
            user = data.users.get(address)
            if user is None or user.password != old_hash:
                return data  # changed meanwhile by someone else: theirs wins
            users = dict(data.users)
            users[address] = UserRecord(new_hash, user.admin)
            return AccountsData(users, data.aliases)

        try:
            self._update(change)
        except (OSError, AccountError) as exc:
            # The login itself succeeded; upgrading the hash can wait for the next one.
            log.warning("could not upgrade the password hash of %s: %s", address, exc)

    # -- aliases -------------------------------------------------------------------------

    def add_alias(self, alias: str, targets: Sequence[str]) -> str:
        """Point ``alias`` (an address, or ``@domain`` for a catch-all) at ``targets``.

        Adding to an existing alias appends the targets it does not have yet.
        Returns the alias as stored.
        """
        key = _alias_key(alias)
        if not targets:
            raise AccountError(f"alias {key} needs at least one target")
        new_targets: list[str] = []
        for target in targets:
            normal = _canonical(target)
            if normal == key:
                raise AccountError(f"alias {key} cannot point at itself")
            if normal not in new_targets:
                new_targets.append(normal)

        def change(data: AccountsData) -> AccountsData:
            if key in data.users:
                raise AccountError(f"{key} is a user; an address is either a user or an alias")
            merged = list(data.aliases.get(key, ()))
            merged.extend(target for target in new_targets if target not in merged)
            aliases = dict(data.aliases)
            aliases[key] = tuple(merged)
            return AccountsData(data.users, aliases)

        self._update(change)
        return key

    def remove_alias(self, alias: str) -> str:
        key = fold(alias) if alias.startswith("@") else (canonical_or_none(alias) or alias)

        def change(data: AccountsData) -> AccountsData:
            if key not in data.aliases:
                raise AccountError(f"no alias {key}")
            aliases = {name: targets for name, targets in data.aliases.items() if name != key}
            return AccountsData(data.users, aliases)

        self._update(change)
        return key

    def aliases(self) -> dict[str, list[str]]:
        data = self._load()
        return {name: list(data.aliases[name]) for name in sorted(data.aliases)}

    def resolve(self, address: str) -> list[str] | None:
        """Where mail for ``address`` goes: ``[address]`` for a user, the expanded targets of an
        alias (users and addresses that are not aliases), or None if nobody is there.

        Expansion is depth-first, keeps the first occurrence of each target, skips loops and
        stops at :data:`MAX_ALIAS_DEPTH`; an alias that expands to nothing resolves to None.
        """
        normal = canonical_or_none(address)
        if normal is None:
            return None
        data = self._load()
        if normal in data.users:
            return [normal]
        if _alias_targets(data, normal) is None:
            return None
        found: list[str] = []
        _expand(data, normal, (normal,), found)
        return found or None


class AccountsFile:
    """The embedded backend: one JSON file, parsed again only when its stat stamp changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._lock_path = path.with_name(path.name + ".lock")
        self._cache: tuple[_Stamp, AccountsData] | None = None

    def load(self) -> AccountsData:
        """The current data: one ``stat`` when the file has not changed since the last read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._cache = None
            return AccountsData()
        cached = self._cache
        if cached is not None and cached[0] == _stamp(st):
            return cached[1]
        return self._read()

    def _read(self) -> AccountsData:
        try:
            with open(self.path, "rb") as stream:
                # fstat of the descriptor we read from: the stamp matches exactly this content.
                stamp = _stamp(os.fstat(stream.fileno()))
                raw = stream.read()
        except FileNotFoundError:
            self._cache = None
            return AccountsData()
        data = _decode(raw, self.path)
        self._cache = (stamp, data)
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def update(self, change: Callable[[AccountsData], AccountsData]) -> None:
        with self._locked():
            # Always re-read under the lock: the stat stamp is good enough for lookups, but a
            # write must start from exactly what the previous writer left.
            current = self._read()
            new = change(current)
            if new is not current:
                self._write(new)

    def _write(self, data: AccountsData) -> None:
        text = json.dumps(_encode(data), indent=2, ensure_ascii=False) + "\n"
        # We hold the lock, so a leftover temporary file is from a writer that crashed. 0600
        # whatever the umask: only the owner reads hashes.
        status = replace_file(self.path, text.encode("utf-8"), mode=0o600)
        self._cache = (_stamp(status), data)


def _alias_targets(data: AccountsData, address: str) -> tuple[str, ...] | None:
    """The targets of ``address`` as an alias, or of its domain's catch-all; None if neither."""
    targets = data.aliases.get(address)
    if targets is not None:
        return targets
    if address in data.users:
        return None
    return data.aliases.get("@" + address.rpartition("@")[2])


def _expand(data: AccountsData, address: str, path: tuple[str, ...], found: list[str]) -> None:
    for target in _alias_targets(data, address) or ():
        if target in data.users or _alias_targets(data, target) is None:
            if target not in found:
                found.append(target)
        elif target in path:
            log.warning("alias loop: %s", " -> ".join((*path, target)))
        elif len(path) >= MAX_ALIAS_DEPTH:
            log.warning("aliases nested deeper than %d at %s", MAX_ALIAS_DEPTH, target)
        else:
            _expand(data, target, (*path, target), found)


def _decode(raw: bytes, path: Path) -> AccountsData:
    """Parse the file, checking its shape; errors name the file but never quote a hash."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AccountError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise AccountError(f"{path}: not an accounts file of version {FORMAT_VERSION}")
    users: dict[str, UserRecord] = {}
    for name, entry in _mapping(doc, "users", path).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("password"), str):
            raise AccountError(f"{path}: user {name!r} has no password hash")
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            raise AccountError(f"{path}: user {name!r}: admin must be true or false")
        users[canonical_or_none(name) or name] = UserRecord(entry["password"], admin)
    aliases: dict[str, tuple[str, ...]] = {}
    for name, targets in _mapping(doc, "aliases", path).items():
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise AccountError(f"{path}: alias {name!r} must be a list of addresses")
        key = fold(name) if name.startswith("@") else (canonical_or_none(name) or name)
        aliases[key] = tuple(dict.fromkeys(canonical_or_none(t) or t for t in targets))
    return AccountsData(users, aliases)


def _mapping(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise AccountError(f"{path}: {key!r} must be an object")
    return value


def _encode(data: AccountsData) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "users": {
            name: {"password": data.users[name].password, "admin": data.users[name].admin}
            for name in sorted(data.users)
        },
        "aliases": {name: list(data.aliases[name]) for name in sorted(data.aliases)},
    }
