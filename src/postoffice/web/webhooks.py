"""Webhooks (``[[webhooks]]``): each event POSTed as JSON to the URLs that asked for it, signed,
queued on disk and retried, so a receiver that is down or failing loses nothing.

Untrusted input seen here: the receivers' answers (only their status is read) and what the
events carry (message summaries the index made from mail anyone may send: they travel as JSON
values, never as headers or URLs).

Each (event, webhook) pair is a file in ``webhooks/`` in the data directory, written durably
(:func:`postoffice.durable.replace_file`) before anything is sent, holding the exact body, so a
retry and a restart send the same octets with the same signature: ``X-Postoffice-Signature:
sha256=<hex HMAC-SHA256 of the body with the webhook's secret>``, with ``X-Postoffice-Event``
and ``X-Postoffice-Event-Id`` beside it. A 2xx answer removes the file; anything else (an
error, a timeout, a 500) is tried again after 2 s, then twice as long each time (at most
30 min), until a day has passed since the event; then it is dropped with one log line.

``message.received`` and ``message.deleted`` come from the event stream of the process serving
HTTP (so every worker's mail, with ``serve --workers``); ``delivery.failed`` (a recipient's
final failure) is queued by whichever process delivered. The process serving HTTP sends.
Sending runs in worker threads and never in the way of SMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postoffice import metrics
from postoffice.config import Webhook
from postoffice.durable import remove_quietly, replace_file
from postoffice.web.events import EventHub

log = logging.getLogger("postoffice.webhooks")

QUEUE_DIRECTORY = "webhooks"
FIRST_RETRY = 2.0
LONGEST_RETRY = 1800.0
GIVE_UP_AFTER = 86400.0
POST_TIMEOUT = 10.0
# How often the queue is looked at when nothing woke the sender.
LOOK_INTERVAL = 1.0
# The hub's event kinds that are webhook events.
FROM_HUB = {"new": "message.received", "deleted": "message.deleted"}
_names = itertools.count()


@dataclass(slots=True)
class Pending:
    """One queued delivery, as its file holds it."""

    path: Path
    url: str
    secret: str
    event: str
    event_id: str
    body: str
    created: float
    attempts: int
    next_try: float

    def save(self) -> None:
        fields = {name: getattr(self, name) for name in Pending.__slots__ if name != "path"}
        replace_file(self.path, json.dumps(fields).encode())


def _load(path: Path) -> Pending | None:
    try:
        fields = json.loads(path.read_bytes())
        return Pending(path=path, **fields)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("event=webhook-queue status=unreadable file=%s error=%r", path.name, str(exc))
        return None


class WebhookQueue:
    """The durable queue of deliveries under ``directory`` for ``hooks`` (thread-safe: each
    entry is its own file, named uniquely by the process that makes it)."""

    def __init__(self, directory: Path, hooks: tuple[Webhook, ...]) -> None:
        self.directory = directory
        self.hooks = hooks
        self.counts: Counter[str] = Counter()

    def enqueue(self, event: str, data: dict[str, Any], now: float | None = None) -> int:
        """Queue ``event`` for every webhook that wants it; how many were queued."""
        hooks = [hook for hook in self.hooks if event in hook.events]
        if not hooks:
            return 0
        when = time.time() if now is None else now
        event_id = str(uuid.uuid4())
        body = json.dumps({"id": event_id, "event": event, "time": when, "data": data}, separators=(",", ":"))
        self.directory.mkdir(mode=0o700, exist_ok=True)
        for hook in hooks:
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(_names)}.json"
            entry = Pending(
                self.directory / name, hook.url, hook.secret, event, event_id, body, when, 0, when
            )
            entry.save()
        return len(hooks)

    def entries(self) -> list[Path]:
        try:
            return sorted(path for path in self.directory.iterdir() if path.suffix == ".json")
        except FileNotFoundError:
            return []

    def due(self, now: float) -> list[Pending]:
        loaded = (_load(path) for path in self.entries())
        return [entry for entry in loaded if entry is not None and entry.next_try <= now]

    def deliver(self, entry: Pending, now: float) -> str:
        """Try ``entry`` once: "delivered", "retry" or "failed" (given up)."""
        error = post(entry)
        if error is None:
            remove_quietly(entry.path)
            return "delivered"
        entry.attempts += 1
        if now - entry.created >= GIVE_UP_AFTER:
            log.warning("event=webhook status=failed url=%s id=%s error=%r", entry.url, entry.event_id, error)
            remove_quietly(entry.path)
            return "failed"
        entry.next_try = now + min(FIRST_RETRY * 2 ** (entry.attempts - 1), LONGEST_RETRY)
        log.info("event=webhook status=retry url=%s attempts=%d error=%r", entry.url, entry.attempts, error)
        entry.save()
        return "retry"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(entry: Pending) -> str | None:
    """POST ``entry``'s body; None on a 2xx answer, else why not (one line)."""
    body = entry.body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "postoffice-webhooks",
        "X-Postoffice-Event": entry.event,
        "X-Postoffice-Event-Id": entry.event_id,
    }
    if entry.secret:
        headers["X-Postoffice-Signature"] = signature(entry.secret, body)
    request = urllib.request.Request(entry.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT) as response:
            response.read(65536)
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))[:200]


class WebhookSender:
    """In the process serving HTTP: queues the hub's events and sends what is due."""

    def __init__(self, queue: WebhookQueue, hub: EventHub) -> None:
        self.queue = queue
        self.hub = hub
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self.queue.hooks:
            self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._send())]

    async def _listen(self) -> None:
        while True:
            with self.hub.subscribe() as subscription:
                while not subscription.ended:
                    event = await subscription.next(3600.0)
                    if event is None or event.kind not in FROM_HUB:
                        continue
                    await asyncio.to_thread(self.queue.enqueue, FROM_HUB[event.kind], event.data)
                    self._wake.set()
            log.warning("event=webhook-listen status=resubscribed")  # fell behind, or stopping
            await asyncio.sleep(LOOK_INTERVAL)

    async def _send(self) -> None:
        while True:
            try:
                for entry in await asyncio.to_thread(self.queue.due, time.time()):
                    outcome = await asyncio.to_thread(self.queue.deliver, entry, time.time())
                    self.queue.counts[outcome] += 1
                    metrics.current().webhook_delivery(outcome)
            except Exception as exc:  # one line; the files are still there for the next look
                log.error("event=webhook-send status=error error=%r", str(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOOK_INTERVAL)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def state(self) -> dict[str, Any]:
        """For ``/api/v1/status``: the webhooks (secrets left out) and their deliveries."""
        return {
            "webhooks": [{"url": hook.url, "events": list(hook.events)} for hook in self.queue.hooks],
            "pending": len(self.queue.entries()),
            "delivered": self.queue.counts["delivered"],
            "retried": self.queue.counts["retry"],
            "failed": self.queue.counts["failed"],
        }
