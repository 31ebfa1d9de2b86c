"""Who is asking: sessions, CSRF tokens, login throttling and what each person may see.

Untrusted input seen here: login requests (address and password), session cookies, CSRF
headers and client addresses. Passwords go only to :meth:`Accounts.verify` (argon2id, run in
a worker thread: it is slow on purpose) and are never logged or kept.

Two modes:

* **open**: capture mode with every HTTP listener on loopback. No login; whoever reaches
  the port is the developer at this machine and sees every mailbox. The API still wants the
  CSRF token for changes, and only loopback ``Host`` names are served, so a web page the
  developer visits can neither send changes (no token) nor read mail through DNS rebinding.
* **accounts**: people log in with their mail account and password and see only their own
  mailbox; an account with the admin flag sees all.

Sessions live in a :class:`~postoffice.logins.SessionStore`: in memory on one machine (a
restart logs everyone out), in the database for a cluster (any node takes any request, and
failed logins count on every node: :mod:`postoffice.logins`). The cookie is a 256-bit random token,
``HttpOnly`` and ``SameSite=Strict`` (RFC 6265bis §5.4.7), and each session has its own CSRF
token, sent back in the ``X-CSRF-Token`` header of every state-changing call (OWASP CSRF
Prevention Cheat Sheet, "synchronizer token pattern").
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from postoffice.accounts import Accounts
from postoffice.addresses import fold
from postoffice.logins import (
    CLEAR,
    FAIL,
    LocalLogins,
    Logins,
    RemoteFailures,
    SessionRecord,
    merged,
)
from postoffice.storage import MailboxStore

SESSION_COOKIE = "postoffice_session"
CSRF_HEADER = "x-csrf-token"
# A session ends after this long without a request, and in any case after SESSION_LIFETIME.
SESSION_IDLE = 8 * 3600.0
SESSION_LIFETIME = 7 * 24 * 3600.0
# Failed logins allowed per client address and per account in LOGIN_WINDOW before further
# attempts are refused (429) until the oldest failure ages out (OWASP: throttle by account and
# by source, so neither a spread-out nor a focused guesser gets far).
LOGIN_FAILURES = 5
LOGIN_WINDOW = 15 * 60.0
# Throttle records kept at once, so a flood of addresses cannot grow memory without bound.
MAX_THROTTLE_KEYS = 10_000
# argon2 computations at once: each takes ~50 ms of a core and 64 MiB of memory.
CONCURRENT_VERIFICATIONS = 2


@dataclass(frozen=True, slots=True)
class Principal:
    """A person allowed in: ``address`` None in open mode; ``mailbox`` is theirs."""

    address: str | None
    mailbox: str | None
    admin: bool
    csrf_token: str
    session: str | None = None

    def can_see(self, mailbox: str) -> bool:
        return self.admin or mailbox == self.mailbox

    def visible(self) -> list[str] | None:
        """The mailboxes this person may see; None means all."""
        if self.admin:
            return None
        return [self.mailbox] if self.mailbox else []

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf_token.encode())


@dataclass(slots=True)
class Throttle:
    """Failures per key in a sliding window, with a bounded number of keys; ``remote``: what
    the other nodes of a cluster report, and where this one's failures are told."""

    limit: int = LOGIN_FAILURES
    window: float = LOGIN_WINDOW
    max_keys: int = MAX_THROTTLE_KEYS
    remote: RemoteFailures | None = None
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        if self.remote is not None:
            self._apply(self.remote)
        failures = self._failures.get(key)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return 0.0
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window - now

    def fail(self, key: str, now: float) -> None:
        self._add(key, now)
        if self.remote is not None:
            self.remote.feed.publish(FAIL, key)

    def _add(self, key: str, now: float) -> None:
        failures = self._failures.setdefault(key, deque(maxlen=self.limit))
        self._failures[key] = merged(failures, now, self.limit)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)
        if self.remote is not None:
            self.remote.feed.publish(CLEAR, key)

    def _apply(self, remote: RemoteFailures) -> None:
        for op, key, at in remote.drain():
            if op == FAIL:
                self._add(key, at)
            else:
                self._failures.pop(key, None)


class LoginRefused(Exception):
    """Wrong address or password (which of the two is never said)."""


class LoginThrottled(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; try again in {int(retry_after) + 1} seconds")
        self.retry_after = retry_after


class Authenticator:
    """Decides who a request comes from, and logs people in and out."""

    def __init__(
        self, accounts: Accounts, mailboxes: MailboxStore, *, open_access: bool, logins: Logins | None = None
    ) -> None:
        """``logins``: where sessions are kept and failures told (default: this process alone)."""
        self.accounts = accounts
        self.mailboxes = mailboxes
        self.open_access = open_access
        # In open mode one CSRF token serves the process: only pages of this origin can read it.
        self._open_principal = Principal(None, None, True, secrets.token_urlsafe(32))
        logins = logins or LocalLogins()
        self._sessions = logins.sessions()
        self._by_client = _throttle(logins, "web-client")
        self._by_account = _throttle(logins, "web-account")
        self._verifying = asyncio.Semaphore(CONCURRENT_VERIFICATIONS)

    async def principal(self, session_token: str | None, now: float | None = None) -> Principal | None:
        if self.open_access:
            return self._open_principal
        if not session_token:
            return None
        now = time.time() if now is None else now
        session = await self._sessions.get(session_token)
        if session is None:
            return None
        if now - session.last_used > SESSION_IDLE or now - session.created > SESSION_LIFETIME:
            await self._sessions.drop(session_token)
            return None
        # The account is read again on every request (from memory while it is unchanged):
        # removing a user or their admin flag takes effect at once.
        user = self.accounts.user(session.address)
        if user is None:
            await self._sessions.drop(session_token)
            return None
        await self._sessions.touch(session_token, now)
        return Principal(
            user.address, self._mailbox_of(user.address), user.admin, session.csrf_token, session_token
        )

    def _mailbox_of(self, address: str) -> str | None:
        return self.mailboxes.mailbox_name(address)

    async def login(self, address: str, password: str, client: str) -> Principal:
        """A new session for ``address``; LoginRefused or LoginThrottled otherwise."""
        now = time.time()
        account_key = fold(address.strip())
        wait = max(self._by_client.retry_after(client, now), self._by_account.retry_after(account_key, now))
        if wait > 0:
            raise LoginThrottled(wait)
        async with self._verifying:
            ok = await asyncio.to_thread(self.accounts.verify, address, password)
        user = self.accounts.user(account_key) if ok else None
        if user is None:
            now = time.time()
            self._by_client.fail(client, now)
            self._by_account.fail(account_key, now)
            raise LoginRefused("wrong address or password")
        self._by_account.clear(account_key)
        token = secrets.token_urlsafe(32)
        record = SessionRecord(user.address, secrets.token_urlsafe(32), now, now)
        await self._sessions.put(token, record)
        return Principal(user.address, self._mailbox_of(user.address), user.admin, record.csrf_token, token)

    async def logout(self, session_token: str | None) -> None:
        if session_token:
            await self._sessions.drop(session_token)


def _throttle(logins: Logins, kind: str) -> Throttle:
    feed = logins.failures(kind, LOGIN_WINDOW)
    return Throttle(remote=RemoteFailures(feed, time.time) if feed is not None else None)
