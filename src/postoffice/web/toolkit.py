"""The testing toolkit's parts of one server process, as the composition root wires them:
fault injection's rules, the webhook queue and sender, and releasing a captured message
(docs/testing-toolkit.md).

Untrusted input seen here: none of its own; see the modules of each part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from postoffice.config import Config
from postoffice.delivery.agent import DeliveryResult, PermFail
from postoffice.metrics import Metrics
from postoffice.qmgr.release import queue_release
from postoffice.smtpd.chaos import ChaosRules
from postoffice.spool.envelope import QueuedMessage, Recipient
from postoffice.storage import MessageStore
from postoffice.web.events import EventHub
from postoffice.web.webhooks import QUEUE_DIRECTORY, WebhookQueue, WebhookSender


class Toolkit:
    """``submit``: the scheduler's, for a released message once it is in ``spool``."""

    def __init__(self, config: Config, spool: MessageStore, submit: Callable[[QueuedMessage], None]) -> None:
        # Fault injection (smtpd/chaos.py): rules shared by every worker through a file.
        self.chaos = ChaosRules(config.data_dir, enabled=config.chaos_allowed)
        # Webhooks (web/webhooks.py): any process queues; the one serving HTTP sends.
        self.webhook_queue = WebhookQueue(config.data_dir / QUEUE_DIRECTORY, config.webhooks)
        self.webhooks: WebhookSender | None = None
        self._spool = spool
        self._submit = submit

    def serve_metrics(self, metrics: Metrics, *, serves: bool) -> None:
        """``serves``: this process serves /metrics (the only one, or worker 0); its gauges
        say how many rules are in force and how many deliveries wait."""
        if not serves:
            return
        metrics.watch_chaos(self.chaos.count)
        metrics.webhook_pending.set_function(lambda: len(self.webhook_queue.entries()))

    def status(self) -> dict[str, Any]:
        """For /api/v1/status: ``chaos`` while rules are in force, ``webhooks`` where they are sent."""
        found: dict[str, Any] = {}
        if self.chaos.enabled:
            self.chaos.refresh()
            if self.chaos.rules:
                found["chaos"] = [rule.to_json() for rule in self.chaos.rules]
        if self.webhooks is not None:
            found["webhooks"] = self.webhooks.state()
        return found

    def delivery_result(self, message: QueuedMessage, recipient: Recipient, result: DeliveryResult) -> None:
        """A recipient's final failure is a ``delivery.failed`` event (on the event loop)."""
        if not isinstance(result, PermFail) or not self.webhook_queue.hooks:
            return
        failed = {
            "queue_id": message.queue_id,
            "sender": message.envelope.mail_from,
            "recipient": recipient.address,
            "reply": str(result.reply),
        }
        # Written and fsync'd in a worker thread: never on the loop that serves SMTP.
        asyncio.get_running_loop().run_in_executor(
            None, self.webhook_queue.enqueue, "delivery.failed", failed
        )

    async def release(self, content: bytes, mail_from: str, to: Sequence[str]) -> str:
        """Send a captured message on by the outbound route (POST .../release); its queue ID."""
        queued = await queue_release(self._spool, content, mail_from, to)
        self._submit(queued)
        return queued.queue_id

    def start(self, hub: EventHub | None) -> None:
        """``hub``: the event stream of the process serving HTTP (None elsewhere)."""
        if hub is not None:
            self.webhooks = WebhookSender(self.webhook_queue, hub)
            self.webhooks.start()

    async def stop(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.stop()
