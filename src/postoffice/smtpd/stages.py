"""The named stages a conversation passes through, and the checks each one runs.

Untrusted input seen here: none directly; checks read the client's input through the
:class:`~postoffice.smtpd.context.Context`.

==========  ===================================  ============================================
stage       runs when                            what a refusal does
==========  ===================================  ============================================
connect     a connection is admitted             replaces the 220 greeting (554 or 421, §3.1)
helo        HELO/EHLO                            answers it instead of 250
auth        AUTH, before the SASL exchange       answers it (a 421 ends the session)
mail        MAIL FROM                            answers it; the transaction does not start
rcpt        RCPT TO                              answers it; the recipient is not added
data-start  DATA's 354, or BDAT's first chunk    answers DATA (or that chunk's BDAT)
data-end    the whole message is in              answers the message; nothing is stored
replied     a command the core answered itself   ends the session (a 421)
            (NOOP, RSET, VRFY, HELP, errors)
==========  ===================================  ============================================

A stage asks its checks in order; the first that does not accept decides (see
:mod:`postoffice.smtpd.verdict`). Checks that deferred earlier in the transaction are asked at
data-end before that stage's own. A check that raises is a temporary failure (451) of what it
was deciding, and one log line; it never ends the session.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from postoffice.errors import StorageFullError
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtpd.context import Context
from postoffice.smtpd.verdict import ACCEPT, DEFER, Verdict

log = logging.getLogger("postoffice.smtp")


class Stage(enum.Enum):
    CONNECT = "connect"
    HELO = "helo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA_START = "data-start"
    DATA_END = "data-end"
    REPLIED = "replied"


# Where DEFER means "ask me again at the end of the message"; elsewhere there is no message yet.
_IN_TRANSACTION = frozenset({Stage.MAIL, Stage.RCPT, Stage.DATA_START})


class Check(Protocol):
    """One small decision; the same method serves every stage the check is listed in."""

    async def check(self, ctx: Context) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class Stages:
    """The checks of each stage, in the order they are asked."""

    connect: tuple[Check, ...] = ()
    helo: tuple[Check, ...] = ()
    auth: tuple[Check, ...] = ()
    mail: tuple[Check, ...] = ()
    rcpt: tuple[Check, ...] = ()
    data_start: tuple[Check, ...] = ()
    data_end: tuple[Check, ...] = ()
    replied: tuple[Check, ...] = ()


async def run_checks(stage: Stage, checks: Iterable[Check], ctx: Context) -> Reply | None:
    """Ask ``checks`` at ``stage``: the refusal of the first that refuses, or None.

    Awaited inside a command's handler, which the conversation runs with drive(): checks that
    never suspend cost no task (see :mod:`postoffice.smtpd.drive`).
    """
    ctx.stage = stage
    for check in checks:
        try:
            verdict = await check.check(ctx)
        except StorageFullError:
            return replies.INSUFFICIENT_STORAGE
        except Exception as exc:
            _failed(ctx, check, f"{type(exc).__name__}: {exc}")
            return replies.LOCAL_ERROR
        if verdict is ACCEPT:
            continue
        if verdict is DEFER:
            if stage in _IN_TRANSACTION:
                ctx.transaction.defer(check)
            continue
        if isinstance(verdict, Reply):
            return verdict
        _failed(ctx, check, f"not a verdict: {verdict!r}")
        return replies.LOCAL_ERROR
    return None


def _failed(ctx: Context, check: Check, error: str) -> None:
    log.error(
        "session=%s event=check-error stage=%s check=%s error=%r",
        ctx.client.id,
        ctx.stage.value,
        type(check).__name__,
        error,
    )
