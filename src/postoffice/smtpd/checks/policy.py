"""Who may send, and to whom: :class:`~postoffice.policy.Policy`'s decisions as checks.

Untrusted input seen here: the MAIL and RCPT paths (parsed by the SMTP grammar) and whether the
session authenticated. The rules themselves (relay, local domains, sender ownership,
submission) are the policy module's; these checks only ask it.
"""

from __future__ import annotations

from postoffice.policy import Policy
from postoffice.smtpd.context import Context
from postoffice.smtpd.verdict import ACCEPT, Verdict


class SenderPolicy:
    """Mail stage: the sender is one this session may use (RFC 6409 §4.3, §6.1)."""

    def __init__(self, policy: Policy, *, submission: bool) -> None:
        self._policy = policy
        self._submission = submission  # RFC 6409: MAIL needs AUTH on this listener

    async def check(self, ctx: Context) -> Verdict:
        client = ctx.client
        reply = self._policy.check_sender(
            ctx.mail.path,
            authenticated_user=client.user,
            submission=self._submission,
            local=client.local is not None,
        )
        return ACCEPT if reply.positive else reply


class RecipientPolicy:
    """Rcpt stage: a local mailbox or alias, or a relay this session may use; routes it."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    async def check(self, ctx: Context) -> Verdict:
        client = ctx.client
        verdict = self._policy.check_recipient(
            ctx.rcpt.path, authenticated_user=client.user, local=client.local is not None
        )
        if not verdict.reply.positive:
            return verdict.reply
        ctx.route(local=verdict.local, remote=verdict.remote, forward=verdict.forward)
        return ACCEPT
