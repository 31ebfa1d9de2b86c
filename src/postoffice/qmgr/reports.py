"""The reports a queued message owes its sender: DSNs about final results, one delay warning.

Untrusted input seen here: recipients (from SMTP clients) and reply texts (from remote
servers), handed to the notifier as data; it is the one that writes them into a message
(:mod:`postoffice.qmgr.bounce`).

Failures and, on request (RFC 3461 NOTIFY), successes and delays are reported to the sender by
the notifier. Each report is recorded in the message's state log only after the notifier has
queued it: a crash in between sends the report twice, where the other order could lose it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from postoffice.delivery.agent import TempFail
from postoffice.errors import SpoolError
from postoffice.qmgr.bounce import Notifier, ReportItem, wants_report
from postoffice.qmgr.entry import Entry
from postoffice.qmgr.retry import RetryPolicy
from postoffice.spool import state as records
from postoffice.spool.envelope import QueuedMessage

# The queue's log channel (see postoffice.qmgr.scheduler).
log = logging.getLogger("postoffice.spool")

# Appends records to a message's state log; False when they could not be written.
AppendState = Callable[[Entry, Sequence[Mapping[str, Any]]], Awaitable[bool]]


class Reporter:
    """Asks the notifier for the reports owed, records them, and hands them on for delivery.

    ``notifier`` None: nobody is told, but results are still marked as reported, so that the
    message can leave the queue. ``submit`` schedules a queued report like any message.
    """

    def __init__(
        self,
        notifier: Notifier | None,
        retry: RetryPolicy,
        *,
        append: AppendState,
        submit: Callable[[QueuedMessage], None],
    ) -> None:
        self._notifier = notifier
        self._retry = retry
        self._append = append
        self._submit = submit

    async def report(self, entry: Entry) -> bool:
        """Queue the report owed for this message's final results, if any; False on failure."""
        owed = entry.state.unreported()
        if not owed:
            return True
        indices = [outcome.index for outcome in owed]
        report: QueuedMessage | None = None
        if self._notifier is not None:
            recipients = entry.message.envelope.recipients
            items = [
                ReportItem(
                    recipient=recipients[outcome.index],
                    action=outcome.action.value,
                    reply=outcome.reply,
                    at=outcome.at,
                    remote_mta=outcome.remote_mta,
                )
                for outcome in owed
            ]
            try:
                report = await self._notifier.notify(entry.message, items)
            except (SpoolError, OSError) as exc:
                log.error("queue_id=%s status=report-failed error=%r", entry.message.queue_id, str(exc))
                return False
        entry.state.notified.update(indices)
        await self._append(entry, [records.notified_record(indices, report.queue_id if report else None)])
        if report is not None:
            self._submit(report)
        return True

    async def warn_if_late(self, entry: Entry, temporary: Mapping[int, TempFail], now: float) -> None:
        """The optional delay warning (Postfix delay_warning_time), once per message."""
        envelope = entry.message.envelope
        if (
            not self._retry.warning_due(envelope.received_at, now)
            or entry.state.warned
            or not envelope.mail_from
            or self._notifier is None
        ):
            return
        items = [
            ReportItem(result.recipient, "delayed", result.reply, now, result.remote_mta)
            for _, result in sorted(temporary.items())
            if wants_report(result.recipient, "delayed")
        ]
        entry.state.warned = True
        report = None
        if items:
            try:
                report = await self._notifier.notify(
                    entry.message, items, will_retry_until=self._retry.expires(envelope.received_at)
                )
            except (SpoolError, OSError) as exc:
                log.error("queue_id=%s status=warning-failed error=%r", entry.message.queue_id, str(exc))
                entry.state.warned = False
                return
        await self._append(entry, [records.WARNED])
        if report is not None:
            self._submit(report)
