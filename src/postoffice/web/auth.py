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

Sessions live in memory (a restart logs everyone out): the cookie is a 256-bit random token,
``HttpOnly`` and ``SameSite=Strict`` (RFC 6265bis §5.4.7), and each session has its own CSRF
token, sent back in the ``X-CSRF-Token`` header of every state-changing call (OWASP CSRF
Prevention Cheat Sheet, "synchronizer token pattern").
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from postoffice.accounts import Accounts
from postoffice.addresses import fold
from postoffice.storage import MailboxStore

SESSION_COOKIE = "postoffice_session"
CSRF_HEADER = "x-csrf-token"
# A session ends after this long without a request, and in any case after SESSION_LIFETIME.
SESSION_IDLE = 8 * 3600.0
SESSION_LIFETIME = 7 * 24 * 3600.0
# Sessions kept at once; the least recently used goes first beyond this.
MAX_SESSIONS = 10_000
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
class _Session:
    principal: Principal
    created: float
    last_used: float


@dataclass(slots=True)
class Throttle:
    """Failures per key in a sliding window, with a bounded number of keys."""

    limit: int = LOGIN_FAILURES
    window: float = LOGIN_WINDOW
    max_keys: int = MAX_THROTTLE_KEYS
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
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
        failures = self._failures.setdefault(key, deque(maxlen=self.limit))
        failures.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class LoginRefused(Exception):
    """Wrong address or password (which of the two is never said)."""


class LoginThrottled(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; try again in {int(retry_after) + 1} seconds")
        self.retry_after = retry_after


class Authenticator:
    """Decides who a request comes from, and logs people in and out."""

    def __init__(self, accounts: Accounts, mailboxes: MailboxStore, *, open_access: bool) -> None:
        self.accounts = accounts
        self.mailboxes = mailboxes
        self.open_access = open_access
        # In open mode one CSRF token serves the process: only pages of this origin can read it.
        self._open_principal = Principal(None, None, True, secrets.token_urlsafe(32))
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._by_client = Throttle()
        self._by_account = Throttle()
        self._verifying = asyncio.Semaphore(CONCURRENT_VERIFICATIONS)

    def principal(self, session_token: str | None, now: float | None = None) -> Principal | None:
        if self.open_access:
            return self._open_principal
        if not session_token:
            return None
        now = time.time() if now is None else now
        session = self._sessions.get(session_token)
        if session is None:
            return None
        if now - session.last_used > SESSION_IDLE or now - session.created > SESSION_LIFETIME:
            del self._sessions[session_token]
            return None
        session.last_used = now
        self._sessions.move_to_end(session_token)
        # The account is read again on every request (a stat while the file is unchanged):
        # removing a user or their admin flag takes effect at once.
        admin = self._admin_flag(session.principal.address)
        if admin is None:
            del self._sessions[session_token]
            return None
        if admin != session.principal.admin:
            session.principal = dataclasses.replace(session.principal, admin=admin)
        return session.principal

    def _admin_flag(self, address: str | None) -> bool | None:
        """The account's admin flag, or None if there is no such user."""
        for user in self.accounts.users():
            if user.address == address:
                return user.admin
        return None

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
        if not ok:
            now = time.time()
            self._by_client.fail(client, now)
            self._by_account.fail(account_key, now)
            raise LoginRefused("wrong address or password")
        self._by_account.clear(account_key)
        admin = bool(self._admin_flag(account_key))
        token = secrets.token_urlsafe(32)
        principal = Principal(
            account_key, self._mailbox_of(account_key), admin, secrets.token_urlsafe(32), token
        )
        self._sessions[token] = _Session(principal, now, now)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return principal

    def logout(self, session_token: str | None) -> None:
        if session_token:
            self._sessions.pop(session_token, None)
