"""A delivery agent's per-recipient result as the queue records it and logs it.

Untrusted input seen here: recipient addresses (from SMTP clients) and reply texts (from remote
servers); they go into log lines quoted with ``%r`` and into records as data.

A final result (delivered, relayed, failed) becomes an :class:`~postoffice.spool.state.Outcome`,
which says too whether the sender is owed a report about it (RFC 3461 NOTIFY,
:func:`~postoffice.qmgr.bounce.wants_report`); a temporary failure stays with the scheduler
until its round ends.
"""

from __future__ import annotations

import logging

from postoffice.delivery.agent import Delivered, DeliveryResult, PermFail, TempFail
from postoffice.qmgr.bounce import wants_report
from postoffice.smtp import replies
from postoffice.spool.state import Action, Outcome

# The queue's log channel (see postoffice.qmgr.scheduler).
log = logging.getLogger("postoffice.spool")


def final_outcome(index: int, result: Delivered | PermFail, sender: str, now: float) -> Outcome:
    """The record of recipient ``index``'s final result, got at ``now``."""
    if isinstance(result, PermFail):
        return failed_outcome(index, result, sender, now)
    action = Action.DELIVERED if result.remote_mta is None else Action.RELAYED
    report = bool(sender) and wants_report(result.recipient, "delivered")
    return Outcome(
        index,
        action,
        result.reply or replies.OK,
        now,
        result.remote_mta,
        # RFC 3461 §5.2.2: a server that took NOTIFY from us reports success itself.
        report=report and not result.dsn_passed_on,
    )


def failed_outcome(index: int, result: PermFail | TempFail, sender: str, now: float) -> Outcome:
    """Recipient ``index`` fails with ``result``'s reply: a permanent failure, or the last
    temporary one once the queue lifetime is over."""
    report = bool(sender) and wants_report(result.recipient, "failed")
    return Outcome(index, Action.FAILED, result.reply, now, result.remote_mta, report)


def log_result(queue_id: str, result: DeliveryResult) -> None:
    address = result.recipient.address
    if isinstance(result, Delivered):
        log.info("queue_id=%s to=<%s> status=delivered detail=%r", queue_id, address, result.detail)
    elif isinstance(result, PermFail):
        log.warning(
            "queue_id=%s to=<%s> status=bounced reply=%r relay=%s",
            queue_id,
            address,
            str(result.reply),
            result.remote_mta or "local",
        )
    else:
        log.info(
            "queue_id=%s to=<%s> status=deferred reply=%r relay=%s",
            queue_id,
            address,
            str(result.reply),
            result.remote_mta or "local",
        )


def log_expired(queue_id: str, result: TempFail) -> None:
    log.warning(
        "queue_id=%s to=<%s> status=expired reply=%r",
        queue_id,
        result.recipient.address,
        str(result.reply),
    )
