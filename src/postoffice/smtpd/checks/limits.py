"""Limits on what a session may do besides sending mail.

Untrusted input seen here: the verbs of the commands the core answered by itself.
"""

from __future__ import annotations

import logging

from postoffice.smtp import replies
from postoffice.smtpd.auth import Authenticator
from postoffice.smtpd.context import Context
from postoffice.smtpd.verdict import ACCEPT, Verdict

log = logging.getLogger("postoffice.smtp")

# Postfix smtpd_junk_command_limit: commands that move no mail forward. A client that sends
# nothing else is probing or holding a slot, not delivering.
_JUNK_VERBS = frozenset({"NOOP", "VRFY", "EXPN", "ETRN", "RSET"})


class JunkCommands:
    """Replied stage: after ``limit`` such commands without a message queued, 421 and close."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    async def check(self, ctx: Context) -> Verdict:
        if ctx.line.split(" ", 1)[0].upper() not in _JUNK_VERBS:
            return ACCEPT
        client = ctx.client
        count, queued = client.notes.get(self, (0, 0))
        if queued != client.queued:
            count = 0  # a message was queued since: the count starts again
        count += 1
        client.notes[self] = (count, client.queued)
        if count < self._limit:
            return ACCEPT
        log.info("session=%s event=junk-limit client=%s count=%d", client.id, client.address, count)
        return replies.TOO_MANY_JUNK_COMMANDS


class LoginThrottle:
    """Auth stage: a client locked out after too many failed logins hears 421 before any
    exchange (net.login_throttle keeps the counts)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def check(self, ctx: Context) -> Verdict:
        client = ctx.client
        return self._authenticator.refusal(client.id, client.address) or ACCEPT
