"""The fault-injection check: the rules of :mod:`postoffice.smtpd.chaos` put into the stages.

Untrusted input seen here: none besides what every check sees (the client's commands, through
the :class:`~postoffice.smtpd.context.Context`); the rules were checked when they were set.

It lives beside the transport rather than in :mod:`postoffice.smtpd` because a rule's delay is
a real wait on the event loop (a tarpit), which the sans-I/O transaction layer does not own.
Listed first in every stage it serves, so a rule decides before the policy does; with no rules
it costs one attribute look per stage, and one ``stat`` per connection (the rules file).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from postoffice import metrics
from postoffice.smtp import replies
from postoffice.smtpd.chaos import ChaosRules
from postoffice.smtpd.context import Context
from postoffice.smtpd.stages import Stage
from postoffice.smtpd.verdict import ACCEPT, Verdict

log = logging.getLogger("postoffice.smtp")


class ChaosCheck:
    """Every stage a rule can name: the first matching rule of the stage whose dice say so."""

    def __init__(self, rules: ChaosRules, dice: Callable[[], float] = random.random) -> None:
        self._rules = rules
        self._dice = dice

    async def check(self, ctx: Context) -> Verdict:
        if ctx.stage is Stage.CONNECT:
            self._rules.refresh()  # another process may have changed them (smtpd/chaos.py)
        rules = self._rules.rules
        if not rules:
            return ACCEPT
        for rule in rules:
            if rule.at is not ctx.stage or not rule.matches(ctx):
                continue
            if rule.probability < 1.0 and self._dice() >= rule.probability:
                continue
            reply = rule.reply
            log.info(
                "session=%s event=chaos stage=%s delay=%g reply=%r",
                ctx.client.id,
                rule.stage,
                rule.delay,
                "disconnect" if reply is replies.DROP else reply.text if reply is not None else "none",
            )
            metrics.current().chaos_injected(rule.stage)
            if rule.delay:
                await asyncio.sleep(rule.delay)
            return ACCEPT if reply is None else reply
        return ACCEPT
