"""Checking AUTH credentials: the password check in a worker thread, throttling, log lines.

Untrusted input seen here: user names, passwords and authorization identities from SASL
exchanges (:mod:`postoffice.smtp.sasl`). The password is handed to
:meth:`postoffice.accounts.Accounts.verify` and nowhere else; log lines name the user name the
client gave (printable, bounded), never the password.

Every failure gets the same ``535 5.7.8`` after the same work (Accounts.verify hashes against
a dummy for unknown users), so replies never tell whether a user exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from postoffice import metrics
from postoffice.accounts import Accounts
from postoffice.addresses import fold
from postoffice.errors import AccountError
from postoffice.net.login_throttle import LoginThrottle
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtp.sasl import Credentials

log = logging.getLogger("postoffice.auth")


@dataclass(frozen=True, slots=True)
class LoginResult:
    reply: Reply
    user: str | None = None  # the authenticated address, on success
    disconnect: bool = False  # the reply is a 421: close the session after it


def _identity(name: str) -> str:
    # Accounts compare addresses in their canonical form (lower case, NFC); so do we.
    return fold(name)


class Authenticator:
    def __init__(
        self,
        accounts: Accounts,
        throttle: LoginThrottle,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._accounts = accounts
        self._throttle = throttle
        self._sleep = sleep

    def refusal(self, session_id: str, client: str) -> Reply | None:
        """The refusal (a 421) before any exchange when ``client`` is locked out; None to go on."""
        if self._throttle.locked_out(client):
            log.warning(
                "session=%s event=auth-refused reason=too-many-failures client=%s", session_id, client
            )
            return replies.TOO_MANY_AUTH_FAILURES
        return None

    async def login(
        self, credentials: Credentials, *, mechanism: str, session_id: str, client: str
    ) -> LoginResult:
        try:
            # argon2 is slow on purpose (tens of milliseconds): off the event loop.
            verified = await asyncio.to_thread(
                self._accounts.verify, credentials.authcid, credentials.password
            )
        except (AccountError, OSError) as exc:  # the accounts file is unreadable or broken
            log.error("session=%s event=auth-error client=%s reason=%s", session_id, client, exc)
            return LoginResult(replies.AUTH_TEMPORARY_FAILURE)
        # RFC 4616 §2: an authorization identity other than the user's own asks to act as
        # someone else; nobody may, so it fails like a wrong password (same reply, same work).
        authzid = credentials.authzid
        authorized = not authzid or _identity(authzid) == _identity(credentials.authcid)
        user_text = replies.printable(credentials.authcid, 100)
        if verified and authorized:
            resolved = self._accounts.resolve(credentials.authcid)
            user = resolved[0] if resolved else _identity(credentials.authcid)
            log.info(
                "session=%s event=auth-ok client=%s mechanism=%s user=<%s>",
                session_id,
                client,
                mechanism,
                user,
            )
            metrics.current().auth_attempt(mechanism, "ok")
            return LoginResult(replies.AUTH_SUCCESSFUL, user=user)
        metrics.current().auth_attempt(mechanism, "failed")
        failures = self._throttle.record_failure(client)
        delay = self._throttle.delay_for(failures)
        log.warning(
            "session=%s event=auth-failed client=%s mechanism=%s user=<%s> failures=%d delay=%.2fs",
            session_id,
            client,
            mechanism,
            user_text,
            failures,
            delay,
        )
        if delay > 0:
            await self._sleep(delay)
        if failures >= self._throttle.max_failures:
            log.warning("session=%s event=auth-lockout client=%s failures=%d", session_id, client, failures)
            return LoginResult(replies.TOO_MANY_AUTH_FAILURES, disconnect=True)
        return LoginResult(replies.AUTH_FAILED)
