"""The queue manager: hands spooled messages to delivery agents and retries what failed.

Untrusted input seen here: envelopes of accepted messages (addresses from SMTP clients),
used only to group recipients by route and to write log lines, and delivery results whose
reply texts may come from remote servers; nothing here interprets either.

After Postfix qmgr(8): at most ``concurrency`` messages are in delivery at once; a temporary
failure defers the message with exponential backoff (RFC 5321 §4.5.4.1: retry, and "the
retry interval SHOULD be at least 30 minutes" for remote mail; local trouble such as a full
disk is retried sooner, from ``retry_base``); a message leaves the spool only when every
recipient is final, delivered or permanently failed. Which recipients are final is kept in
memory, so a retry redoes only the rest. After a restart nothing is known, so every pending
message is delivered with ``recovering=True`` and the agents skip copies they already made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from postoffice.delivery.agent import Delivered, DeliveryAgent, DeliveryResult, PermFail, TempFail
from postoffice.errors import SpoolError
from postoffice.smtp import replies
from postoffice.spool.base import Spool
from postoffice.spool.envelope import QueuedMessage, Recipient, Route

log = logging.getLogger("postoffice.spool")

# Postfix default_process_limit is 100 processes in all; one agent call here delivers a whole
# message. Deliveries running together flush side by side, and the file system commits their
# flushes together, so under load this is also about how many one disk flush can cover.
DEFAULT_CONCURRENCY = 64
# How long stop() lets running deliveries finish before cancelling them (they are redone,
# with recovering=True, at the next start).
DEFAULT_STOP_TIMEOUT = 30.0


@dataclass(slots=True)
class _Entry:
    """What the scheduler knows about one message between attempts."""

    message: QueuedMessage
    recovering: bool
    final: set[int] = field(default_factory=set)  # indices into envelope.recipients
    attempts: int = 0  # attempts that ended with a temporary failure
    due: float | None = None  # clock() time of the next attempt, when deferred
    unrouted: set[Route] = field(default_factory=set)  # routes already reported as waiting


class Scheduler:
    """Delivers every spooled message through the agent for each recipient's route."""

    def __init__(
        self,
        spool: Spool,
        agents: Mapping[Route, DeliveryAgent],
        *,
        retry_base: float = 60.0,
        retry_max: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 < retry_base <= retry_max:
            raise ValueError("retry delays must satisfy 0 < retry_base <= retry_max")
        self._spool = spool
        self._agents = dict(agents)
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._clock = clock
        self._concurrency = concurrency
        self._entries: dict[str, _Entry] = {}
        self._ready: deque[str] = deque()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    # --- feeding the queue --------------------------------------------------------------------

    async def start(self, queue_ids: Sequence[str] | None = None) -> None:
        """Schedule every message left in the spool (by a crash or a stop), oldest first.

        ``queue_ids``, when given, are the ones to recover instead: with several server
        processes on one spool, one process lists the queue before any of them receives, and
        only the process given that list delivers it (the others start with none).
        """
        self._stopping = False
        if queue_ids is None:
            queue_ids = await asyncio.to_thread(self._spool.pending)
        for queue_id in queue_ids:
            if queue_id in self._entries:
                continue
            try:
                message = await asyncio.to_thread(self._spool.load, queue_id)
            except SpoolError as exc:
                # load() has moved a corrupt file aside and logged it; nothing to deliver.
                log.error("queue_id=%s status=unloadable error=%r", queue_id, str(exc))
                continue
            self._add(message, recovering=True)
        log.info("status=started pending=%d", len(queue_ids))

    def submit(self, message: QueuedMessage) -> None:
        """Schedule a message just committed to the spool."""
        if self._stopping:
            # Still safe in the spool: the next start() picks it up.
            log.info("queue_id=%s status=held reason=stopping", message.queue_id)
            return
        if message.queue_id in self._entries:
            return
        self._add(message, recovering=False)

    def flush(self) -> None:
        """Retry every deferred message now (Postfix ``postqueue -f``)."""
        for queue_id, entry in self._entries.items():
            if entry.due is not None:
                entry.due = None
                self._ready.append(queue_id)
        self._arm_timer()
        self._pump()

    def _add(self, message: QueuedMessage, *, recovering: bool) -> None:
        self._entries[message.queue_id] = _Entry(message, recovering)
        self._ready.append(message.queue_id)
        self._pump()

    # --- introspection ------------------------------------------------------------------------

    def deferred(self) -> dict[str, float]:
        """Queue IDs waiting for a retry, with the ``clock()`` time it is due."""
        return {qid: entry.due for qid, entry in self._entries.items() if entry.due is not None}

    def known(self) -> list[str]:
        """Queue IDs this scheduler holds: running, ready, deferred or waiting for an agent."""
        return list(self._entries)

    async def wait_idle(self) -> None:
        """Return once no delivery is running or ready to run (deferred ones may remain)."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop starting deliveries, let running ones finish for ``timeout`` seconds, cancel the rest."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ready.clear()
        running = list(self._running.values())
        if running:
            _, late = await asyncio.wait(running, timeout=timeout)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._entries.clear()
        self._idle.set()
        log.info("status=stopped interrupted=%d", sum(1 for task in running if task.cancelled()))

    # --- running deliveries -------------------------------------------------------------------

    def _pump(self) -> None:
        while self._ready and len(self._running) < self._concurrency and not self._stopping:
            queue_id = self._ready.popleft()
            entry = self._entries.get(queue_id)
            if entry is None or queue_id in self._running:
                continue
            task = asyncio.create_task(self._attempt(entry), name=f"deliver {queue_id}")
            self._running[queue_id] = task
            task.add_done_callback(functools.partial(self._finished, queue_id))
        if self._ready or self._running:
            self._idle.clear()
        else:
            self._idle.set()

    def _finished(self, queue_id: str, task: asyncio.Task[None]) -> None:
        self._running.pop(queue_id, None)
        if not task.cancelled() and task.exception() is not None:
            # _attempt handles every expected failure; this is a bug, and the message stays in
            # the spool for the next start.
            log.error("queue_id=%s status=error", queue_id, exc_info=task.exception())
            self._entries.pop(queue_id, None)
        self._pump()

    async def _attempt(self, entry: _Entry) -> None:
        message = entry.message
        queue_id = message.queue_id
        deferred = False
        for route, batch in self._unfinished_by_route(entry).items():
            agent = self._agents.get(route)
            if agent is None:
                if route not in entry.unrouted:
                    entry.unrouted.add(route)
                    log.info(
                        "queue_id=%s route=%s recipients=%d status=waiting reason=no-agent",
                        queue_id,
                        route.value,
                        len(batch),
                    )
                continue
            results = await self._deliver(agent, entry, [recipient for _, recipient in batch])
            for (index, recipient), result in zip(batch, results, strict=True):
                deferred |= self._record(entry, index, recipient, result)
        if len(entry.final) == len(message.envelope.recipients):
            await self._complete(queue_id)
        elif deferred:
            self._defer(entry)
        # Otherwise only recipients without an agent remain: the message waits in the spool,
        # with no timer, until a start() with that agent; retrying now could not help.
        entry.recovering = True

    def _unfinished_by_route(self, entry: _Entry) -> dict[Route, list[tuple[int, Recipient]]]:
        groups: dict[Route, list[tuple[int, Recipient]]] = {}
        for index, recipient in enumerate(entry.message.envelope.recipients):
            if index not in entry.final:
                groups.setdefault(recipient.route, []).append((index, recipient))
        return groups

    async def _deliver(
        self, agent: DeliveryAgent, entry: _Entry, recipients: Sequence[Recipient]
    ) -> list[DeliveryResult]:
        queue_id = entry.message.queue_id
        try:
            results = await agent.deliver(entry.message, recipients, recovering=entry.recovering)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("queue_id=%s status=deferred reason=agent-failed", queue_id)
            return [TempFail(recipient, replies.LOCAL_ERROR) for recipient in recipients]
        if len(results) != len(recipients):
            log.error(
                "queue_id=%s status=deferred reason=agent-returned-%d-results-for-%d",
                queue_id,
                len(results),
                len(recipients),
            )
            return [TempFail(recipient, replies.LOCAL_ERROR) for recipient in recipients]
        return results

    def _record(self, entry: _Entry, index: int, recipient: Recipient, result: DeliveryResult) -> bool:
        """Note one result; True when it asks for a retry."""
        queue_id = entry.message.queue_id
        if isinstance(result, Delivered):
            entry.final.add(index)
            log.info(
                "queue_id=%s to=<%s> status=delivered detail=%r", queue_id, recipient.address, result.detail
            )
            return False
        if isinstance(result, PermFail):
            # Final: the non-delivery report to the sender is the bounce module's job.
            entry.final.add(index)
            log.warning(
                "queue_id=%s to=<%s> status=bounced reply=%r", queue_id, recipient.address, str(result.reply)
            )
            return False
        log.info(
            "queue_id=%s to=<%s> status=deferred reply=%r", queue_id, recipient.address, str(result.reply)
        )
        return True

    async def _complete(self, queue_id: str) -> None:
        try:
            await asyncio.to_thread(self._spool.complete, queue_id)
        except SpoolError as exc:
            # Every recipient has its copy; at the next start recovering=True finds them.
            log.error("queue_id=%s status=uncompleted error=%r", queue_id, str(exc))
        else:
            log.info("queue_id=%s status=removed", queue_id)
        self._entries.pop(queue_id, None)

    def _defer(self, entry: _Entry) -> None:
        entry.attempts += 1
        delay = min(self._retry_max, self._retry_base * 2 ** (entry.attempts - 1))
        entry.due = self._clock() + delay
        log.info(
            "queue_id=%s status=deferred attempts=%d retry_in=%.1fs",
            entry.message.queue_id,
            entry.attempts,
            delay,
        )
        self._arm_timer()

    def _arm_timer(self) -> None:
        """One timer, for the earliest due message (qmgr scans its deferred queue the same way)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = [entry.due for entry in self._entries.values() if entry.due is not None]
        if not due or self._stopping:
            return
        delay = max(0.0, min(due) - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._release_due)

    def _release_due(self) -> None:
        self._timer = None
        now = self._clock()
        for queue_id, entry in self._entries.items():
            if entry.due is not None and entry.due <= now:
                entry.due = None
                self._ready.append(queue_id)
        self._arm_timer()
        self._pump()
