"""The queue manager: hands spooled messages to delivery agents and retries what failed.

Untrusted input seen here: envelopes of accepted messages (addresses from SMTP clients),
used to group recipients by destination and to write log lines, and delivery results whose
reply texts may come from remote servers; nothing here interprets either.

After Postfix qmgr(8):

* A message is delivered in *rounds*. A round splits the recipients that have no final result
  yet into *jobs*, one per destination (the local mailboxes, or one remote domain, or the
  relay host), and hands each job to the agent for its route.
* Jobs wait in one queue per destination and are started round-robin across destinations,
  at most ``concurrency`` at once and ``destination_concurrency`` per remote destination, so a
  slow or dead site cannot hold up mail for the others (qmgr's per-destination queues).
* Every final result (delivered, relayed, failed) is appended to the message's state log and
  fsync'd as soon as its job ends (:mod:`postoffice.spool.state`), so a restart redoes only
  what has no result, and a recipient already done is never delivered to again. One exception:
  when the last job of a message ends with every recipient delivered by an agent that finds
  its own earlier copies on a retry (``recovers_copies``: the Maildir agent names a copy the
  same on every attempt), the message leaves the spool at once and its log is never written.
  A crash before the removal is durable delivers the message again with ``recovering=True``,
  and the agent finds those copies, so the log would only have saved that look, at the price
  of creating, syncing and removing a file per message: about as much file-system work as
  storing the copy.
* When a round ends with temporary failures, the message is deferred: the first retry after
  ``retry_base`` seconds (Postfix ``minimal_backoff_time``, 300 s), the delay doubling up to
  ``retry_max`` (``maximal_backoff_time``, 4000 s). RFC 5321 §4.5.4.1: "the retry interval
  SHOULD be at least 30 minutes", which the doubling reaches by the fourth retry. The retry
  time is recorded, so a restart keeps the schedule.
* After ``lifetime`` (``maximal_queue_lifetime``, 5 days; §4.5.4.1 "at least 4-5 days") the
  remaining recipients fail. Failures and, on request (RFC 3461 NOTIFY), successes and delays
  are reported to the sender by the notifier (:mod:`postoffice.spool.bounce`).
* A message leaves the spool only when every recipient has a final result and every report
  owed about them is queued.

Time comes from ``clock`` (wall-clock seconds, since retry times outlive the process). Tests
pass their own and call :meth:`Scheduler.run_due` after moving it forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from postoffice.delivery.agent import Delivered, DeliveryAgent, DeliveryResult, PermFail, TempFail
from postoffice.errors import SpoolError
from postoffice.smtp import replies
from postoffice.spool import state as records
from postoffice.spool.base import Spool
from postoffice.spool.bounce import Notifier, ReportItem, wants_report
from postoffice.spool.envelope import QueuedMessage, Recipient, Route
from postoffice.spool.state import Action, Deferral, Outcome, QueueState

log = logging.getLogger("postoffice.spool")

# Postfix default_process_limit is 100 processes in all; a job here is a coroutine and at most
# one connection. Local deliveries running together flush side by side, and the file system
# commits their flushes together, so under load this is also how many one disk flush covers.
DEFAULT_CONCURRENCY = 64
# Postfix initial_destination_concurrency = 5: no site gets more parallel connections.
DEFAULT_DESTINATION_CONCURRENCY = 5
# Postfix minimal_backoff_time, maximal_backoff_time, maximal_queue_lifetime.
DEFAULT_RETRY_BASE = 300.0
DEFAULT_RETRY_MAX = 4000.0
DEFAULT_LIFETIME = 5 * 86400.0
# How long stop() lets running deliveries finish before cancelling them (they are redone,
# with recovering=True, at the next start).
DEFAULT_STOP_TIMEOUT = 30.0

T = TypeVar("T")


class Blocking(Protocol):
    """Runs a blocking spool call off the event loop (``asyncio.to_thread``, ``IoPool.run``)."""

    def __call__(self, call: Callable[[], T], /) -> Awaitable[T]: ...


def destination_of(recipient: Recipient) -> str:
    """The default grouping: all local mailboxes together, remote mail by domain."""
    if recipient.route is Route.LOCAL:
        return "local"
    return "remote:" + recipient.address.rpartition("@")[2].lower()


@dataclass(slots=True)
class _Entry:
    """What the scheduler knows about one message between and during rounds."""

    message: QueuedMessage
    state: QueueState
    recovering: bool
    due: float | None = None  # clock() time of the next round, when deferred
    jobs_left: int = 0  # jobs of the current round not yet finished
    in_round: bool = False
    temporary: dict[int, TempFail] = field(default_factory=dict)  # this round's
    unrouted: set[Route] = field(default_factory=set)  # routes already reported as waiting


@dataclass(slots=True)
class _Removals:
    """Messages to remove from the spool together, and what went wrong for which."""

    queue_ids: list[str]
    errors: asyncio.Future[dict[str, SpoolError]]


@dataclass(slots=True)
class _Job:
    entry: _Entry
    route: Route
    destination: str
    indices: list[int]


class Scheduler:
    """Delivers every spooled message through the agent for each recipient's route."""

    def __init__(
        self,
        spool: Spool,
        agents: Mapping[Route, DeliveryAgent],
        *,
        retry_base: float = DEFAULT_RETRY_BASE,
        retry_max: float = DEFAULT_RETRY_MAX,
        lifetime: float = DEFAULT_LIFETIME,
        delay_warning: float = 0.0,
        clock: Callable[[], float] = time.time,
        concurrency: int = DEFAULT_CONCURRENCY,
        destination_concurrency: int = DEFAULT_DESTINATION_CONCURRENCY,
        destination: Callable[[Recipient], str] = destination_of,
        notifier: Notifier | None = None,
        on_result: Callable[[QueuedMessage, Recipient, DeliveryResult], None] | None = None,
        recovers_copies: Collection[Route] = (),
        blocking: Blocking = asyncio.to_thread,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        """``owns``: with several processes on one spool, whether a queue ID found in it is
        this one's to schedule (None: every message is)."""
        if concurrency < 1 or destination_concurrency < 1:
            raise ValueError("concurrency limits must be at least 1")
        if not 0 < retry_base <= retry_max:
            raise ValueError("retry delays must satisfy 0 < retry_base <= retry_max")
        if lifetime <= 0 or delay_warning < 0:
            raise ValueError("lifetime must be positive and delay_warning not negative")
        self._spool = spool
        self._owns = owns
        self._agents = dict(agents)
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._lifetime = lifetime
        self._delay_warning = delay_warning
        self._clock = clock
        self._concurrency = concurrency
        self._destination_concurrency = destination_concurrency
        self._destination = destination
        self._notifier = notifier
        self._on_result = on_result  # metrics: every per-recipient result, as it happens
        # Routes whose agent, given recovering=True, finds the copies an earlier attempt stored
        # (see the module docstring): their results need no log when the message leaves at once.
        self._recovers_copies = frozenset(recovers_copies)
        # Where spool calls run: the server passes the spool's IoPool, which wakes the loop once
        # for a batch of finished calls where asyncio.to_thread wakes it once per call.
        self._blocking = blocking
        self._entries: dict[str, _Entry] = {}
        # Ready jobs, one FIFO per destination; destinations are served round-robin.
        self._ready: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._running = 0
        self._running_by_destination: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._removals: _Removals | None = None  # the group of removals being gathered
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._started = False  # stop() says "stopped" only of a scheduler that said "started"

    # --- feeding the queue --------------------------------------------------------------------

    async def start(self, queue_ids: Sequence[str] | None = None) -> None:
        """Schedule every message left in the spool (by a crash or a stop), oldest first.

        Messages keep the schedule recorded in their state: one deferred until later waits
        until then, a held one stays held. ``queue_ids``, when given, are the ones to recover
        instead: with several server processes on one spool, one process lists the queue
        before any of them receives, and only the process given that list delivers it (the
        others start with none).
        """
        self._stopping = False
        if queue_ids is None:
            queue_ids = await self._blocking(self._spool.pending)
        added = await self._adopt(queue_ids)
        self._started = True
        log.info("status=started pending=%d scheduled=%d", len(queue_ids), added)

    def submit(self, message: QueuedMessage) -> None:
        """Schedule a message just committed to the spool: its first round starts now."""
        if message.delivered:
            return  # delivered before its 250: nothing is queued
        if self._stopping:
            # Still safe in the spool: the next start() picks it up.
            log.info("queue_id=%s status=held reason=stopping", message.queue_id)
            return
        if message.queue_id in self._entries:
            return
        entry = _Entry(message, QueueState(), recovering=False)
        self._entries[message.queue_id] = entry
        self._begin_round(entry)
        self._pump()

    def flush(self) -> None:
        """Retry every deferred message now (Postfix ``postqueue -f``)."""
        for entry in list(self._entries.values()):
            if entry.due is not None:
                entry.due = None
                self._spawn(self._resume(entry))
        self._arm_timer()
        self._update_idle()

    def run_due(self) -> None:
        """Start the rounds that are due by ``clock()`` (the timer calls this too)."""
        self._timer = None
        now = self._clock()
        for entry in list(self._entries.values()):
            if entry.due is not None and entry.due <= now:
                entry.due = None
                self._spawn(self._resume(entry))
        self._arm_timer()
        self._update_idle()

    async def rescan(self, *, flush: bool = False) -> None:
        """Look at the spool again, after the ``queue`` command changed it.

        Messages released from hold (or otherwise unknown) are scheduled; deferred ones that
        were deleted or held are forgotten. With ``flush``, every deferred message is retried
        now.
        """
        if self._stopping:
            return
        queue_ids = await self._blocking(self._spool.pending)
        present = set(queue_ids)
        for queue_id, entry in list(self._entries.items()):
            if entry.in_round or entry.due is None:
                continue
            if queue_id not in present:
                self._forget(queue_id, "deleted")
                continue
            state = await self._read_state(queue_id)
            if state is not None and state.held:
                self._forget(queue_id, "held")
            elif state is not None and state.next_attempt is None:
                # Held and released again before its retry came: released mail goes now.
                entry.due = None
                self._spawn(self._resume(entry))
        owns = self._owns
        await self._adopt(
            [
                queue_id
                for queue_id in queue_ids
                if queue_id not in self._entries and (owns is None or owns(queue_id))
            ]
        )
        if flush:
            self.flush()

    async def _adopt(self, queue_ids: Sequence[str]) -> int:
        """Load messages from the spool with their recorded state and schedule them."""
        added = 0
        for queue_id in queue_ids:
            if queue_id in self._entries:
                continue
            try:
                message = await self._blocking(functools.partial(self._spool.load, queue_id))
                state = await self._blocking(functools.partial(self._spool.read_state, queue_id))
            except SpoolError as exc:
                # load() has moved a corrupt file aside and logged it; nothing to deliver.
                log.error("queue_id=%s status=unloadable error=%r", queue_id, str(exc))
                continue
            if state.held:
                continue
            entry = _Entry(message, state, recovering=True)
            self._entries[queue_id] = entry
            added += 1
            if state.next_attempt is not None and state.next_attempt > self._clock():
                entry.due = state.next_attempt
            else:
                self._begin_round(entry)
        self._arm_timer()
        self._pump()
        return added

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
        running = list(self._tasks)
        interrupted = 0
        if running:
            _, late = await asyncio.wait(running, timeout=timeout)
            interrupted = len(late)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._entries.clear()
        self._idle.set()
        if self._started:
            self._started = False
            log.info("status=stopped interrupted=%d", interrupted)

    # --- rounds -------------------------------------------------------------------------------

    async def _resume(self, entry: _Entry) -> None:
        """A deferred message is due: check the spool (deleted? held?) and start a round."""
        queue_id = entry.message.queue_id
        exists = await self._blocking(functools.partial(self._spool.exists, queue_id))
        if not exists:
            self._forget(queue_id, "deleted")
            return
        state = await self._read_state(queue_id)
        if state is None:
            # Unreadable now; try again on the normal schedule rather than lose track.
            self._defer(entry, {}, self._clock())
            return
        if state.held:
            self._forget(queue_id, "held")
            return
        entry.state = state
        self._begin_round(entry)
        self._pump()

    def _begin_round(self, entry: _Entry) -> None:
        """Queue one job per destination for the recipients that have no final result yet."""
        if self._stopping or entry.message.queue_id not in self._entries:
            return
        entry.in_round = True
        entry.temporary = {}
        jobs: dict[tuple[Route, str], _Job] = {}
        for index, recipient in enumerate(entry.message.envelope.recipients):
            if index in entry.state.outcomes:
                continue
            route = recipient.route
            if route not in self._agents:
                if route not in entry.unrouted:
                    entry.unrouted.add(route)
                    log.info(
                        "queue_id=%s route=%s to=<%s> status=waiting reason=no-agent",
                        entry.message.queue_id,
                        route.value,
                        recipient.address,
                    )
                continue
            destination = self._destination(recipient)
            job = jobs.get((route, destination))
            if job is None:
                job = jobs[(route, destination)] = _Job(entry, route, destination, [])
            job.indices.append(index)
        entry.jobs_left = len(jobs)
        for job in jobs.values():
            self._ready.setdefault(job.destination, deque()).append(job)
        if not jobs:
            # Nothing to deliver now: every recipient is final (a restart after the last
            # result was recorded) or waits for an agent. Finish the round to settle it.
            self._spawn(self._finish_round(entry))

    def _pump(self) -> None:
        """Start ready jobs, round-robin over destinations, within both concurrency limits."""
        while self._running < self._concurrency and not self._stopping:
            job = self._next_job()
            if job is None:
                break
            self._running += 1
            self._running_by_destination[job.destination] = (
                self._running_by_destination.get(job.destination, 0) + 1
            )
            self._spawn(self._run_job(job))
        self._update_idle()

    def _next_job(self) -> _Job | None:
        for destination, queue in list(self._ready.items()):
            # The per-destination limit protects remote sites; local mailboxes share only the
            # total (Postfix limits local delivery per recipient, which one job here is not).
            limit = self._destination_concurrency if queue[0].route is Route.REMOTE else self._concurrency
            if self._running_by_destination.get(destination, 0) >= limit:
                continue
            queue = self._ready.pop(destination)
            job = queue.popleft()
            if queue:
                self._ready[destination] = queue  # to the back: the next one gets a turn
            return job
        return None

    async def _run_job(self, job: _Job) -> None:
        entry = job.entry
        try:
            agent = self._agents[job.route]
            recipients = [entry.message.envelope.recipients[index] for index in job.indices]
            results = await self._deliver(agent, entry, recipients)
            await self._record(entry, job.indices, results, logged=job.route not in self._recovers_copies)
        finally:
            self._running -= 1
            left = self._running_by_destination.get(job.destination, 1) - 1
            if left:
                self._running_by_destination[job.destination] = left
            else:
                self._running_by_destination.pop(job.destination, None)
            entry.jobs_left -= 1
            self._pump()
        if entry.jobs_left == 0:
            await self._finish_round(entry)

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

    async def _record(
        self, entry: _Entry, indices: Sequence[int], results: Sequence[DeliveryResult], *, logged: bool = True
    ) -> None:
        """Log each result; make the final ones durable before anything relies on them.

        ``logged=False``: the agent finds its own copies again on a retry, so the results need
        no state log if they end the message (see the module docstring).
        """
        queue_id = entry.message.queue_id
        sender = entry.message.envelope.mail_from
        now = self._clock()
        outcomes: list[Outcome] = []
        for index, result in zip(indices, results, strict=True):
            address = result.recipient.address
            if self._on_result is not None:
                self._on_result(entry.message, result.recipient, result)  # metrics
            if isinstance(result, Delivered):
                action = Action.DELIVERED if result.remote_mta is None else Action.RELAYED
                report = bool(sender) and wants_report(result.recipient, "delivered")
                outcomes.append(
                    Outcome(
                        index,
                        action,
                        result.reply or replies.OK,
                        now,
                        result.remote_mta,
                        report=report and not result.dsn_passed_on,
                    )
                )
                log.info("queue_id=%s to=<%s> status=delivered detail=%r", queue_id, address, result.detail)
            elif isinstance(result, PermFail):
                report = bool(sender) and wants_report(result.recipient, "failed")
                outcomes.append(Outcome(index, Action.FAILED, result.reply, now, result.remote_mta, report))
                log.warning(
                    "queue_id=%s to=<%s> status=bounced reply=%r relay=%s",
                    queue_id,
                    address,
                    str(result.reply),
                    result.remote_mta or "local",
                )
            else:
                entry.temporary[index] = result
                log.info(
                    "queue_id=%s to=<%s> status=deferred reply=%r relay=%s",
                    queue_id,
                    address,
                    str(result.reply),
                    result.remote_mta or "local",
                )
        await self._save_outcomes(entry, outcomes, logged=logged)

    async def _save_outcomes(
        self, entry: _Entry, outcomes: Sequence[Outcome], *, logged: bool = True
    ) -> None:
        if not outcomes:
            return
        state = entry.state
        for outcome in outcomes:
            state.outcomes[outcome.index] = outcome
            state.deferrals.pop(outcome.index, None)
        # The last job of the round (this one, still counted), every recipient final and no
        # report owed: _finish_round removes the message without waiting for anything else.
        leaves_now = (
            entry.jobs_left == 1
            and len(state.outcomes) == len(entry.message.envelope.recipients)
            and not state.unreported()
        )
        if logged or not leaves_now:
            await self._append(entry, [records.outcome_record(outcome) for outcome in outcomes])

    async def _append(self, entry: _Entry, lines: Sequence[Mapping[str, Any]]) -> bool:
        try:
            await self._blocking(functools.partial(self._spool.append_state, entry.message.queue_id, lines))
        except SpoolError as exc:
            # The results stand in memory; if the process dies before the log can be written,
            # the next start redoes those recipients (with recovering=True): a duplicate at
            # worst, which RFC 5321 §6.1 prefers to a loss.
            log.error("queue_id=%s status=state-unrecorded error=%r", entry.message.queue_id, str(exc))
            return False
        return True

    async def _finish_round(self, entry: _Entry) -> None:
        """Every job of the round has ended: expire, report, then complete or defer."""
        queue_id = entry.message.queue_id
        entry.in_round = False
        entry.recovering = True
        temporary, entry.temporary = entry.temporary, {}
        if queue_id not in self._entries:
            return
        now = self._clock()
        expires = entry.message.envelope.received_at + self._lifetime
        if temporary and now >= expires:
            await self._expire(entry, temporary, now)
            temporary = {}
        if not await self._report(entry):
            # The report could not be queued: keep the message and its unreported results,
            # and try again on the retry schedule.
            self._defer(entry, temporary, now)
            return
        if len(entry.state.outcomes) == len(entry.message.envelope.recipients):
            await self._complete(queue_id)
        elif temporary:
            due = self._defer(entry, temporary, now, arm=False)
            await self._save_deferral(entry, temporary, now)
            await self._warn_if_late(entry, temporary, now)
            entry.due = due
            self._arm_timer()
        # Otherwise only recipients without an agent remain: the message waits in the spool,
        # with no timer, until a start() with that agent; retrying now could not help.
        self._update_idle()

    async def _expire(self, entry: _Entry, temporary: Mapping[int, TempFail], now: float) -> None:
        """Past the queue lifetime: the remaining recipients fail with their last reply."""
        sender = entry.message.envelope.mail_from
        outcomes = []
        for index, result in sorted(temporary.items()):
            report = bool(sender) and wants_report(result.recipient, "failed")
            outcomes.append(Outcome(index, Action.FAILED, result.reply, now, result.remote_mta, report))
            log.warning(
                "queue_id=%s to=<%s> status=expired reply=%r",
                entry.message.queue_id,
                result.recipient.address,
                str(result.reply),
            )
        await self._save_outcomes(entry, outcomes)

    async def _report(self, entry: _Entry) -> bool:
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
        # A crash between queuing the report and this record sends the report twice; the
        # other order could lose it.
        await self._append(entry, [records.notified_record(indices, report.queue_id if report else None)])
        if report is not None:
            self.submit(report)
        return True

    async def _warn_if_late(self, entry: _Entry, temporary: Mapping[int, TempFail], now: float) -> None:
        """The optional delay warning (Postfix delay_warning_time), once per message."""
        envelope = entry.message.envelope
        if (
            not self._delay_warning
            or entry.state.warned
            or not envelope.mail_from
            or now - envelope.received_at < self._delay_warning
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
                    entry.message, items, will_retry_until=envelope.received_at + self._lifetime
                )
            except (SpoolError, OSError) as exc:
                log.error("queue_id=%s status=warning-failed error=%r", entry.message.queue_id, str(exc))
                entry.state.warned = False
                return
        await self._append(entry, [records.WARNED])
        if report is not None:
            self.submit(report)

    async def _complete(self, queue_id: str) -> None:
        # Messages whose rounds end in the same pass of the loop leave the spool in one call off
        # the loop (one thread hand-off and one wake-up for the group, not one per message).
        removals = self._removals
        if removals is None:
            removals = self._removals = _Removals([], asyncio.get_running_loop().create_future())
            self._spawn(self._remove(removals))
        removals.queue_ids.append(queue_id)
        errors = await asyncio.shield(removals.errors)
        error = errors.get(queue_id)
        if error is not None:
            # Every recipient has its result recorded, or was delivered by an agent that finds
            # its copy again: the next start delivers nothing twice.
            log.error("queue_id=%s status=uncompleted error=%r", queue_id, str(error))
        else:
            log.info("queue_id=%s status=removed", queue_id)
        self._entries.pop(queue_id, None)

    async def _remove(self, removals: _Removals) -> None:
        try:
            await asyncio.sleep(0)  # the rounds ending in this pass join the group meanwhile
            if self._removals is removals:
                self._removals = None
            errors = await self._blocking(functools.partial(self._remove_all, removals.queue_ids))
        except asyncio.CancelledError:
            # Stopping: the messages stay in the spool, and the next start finds them done.
            if self._removals is removals:
                self._removals = None
            removals.errors.cancel()
            raise
        except Exception as exc:
            removals.errors.set_exception(exc)
            raise
        removals.errors.set_result(errors)

    def _remove_all(self, queue_ids: Sequence[str]) -> dict[str, SpoolError]:
        """Blocking: complete each message in the spool; the ones that failed, and why."""
        errors: dict[str, SpoolError] = {}
        for queue_id in queue_ids:
            try:
                self._spool.complete(queue_id)
            except SpoolError as exc:
                errors[queue_id] = exc
        return errors

    def _defer(
        self, entry: _Entry, temporary: Mapping[int, TempFail], now: float, *, arm: bool = True
    ) -> float:
        """Count a failed attempt and compute the next one; with ``arm``, schedule it now."""
        state = entry.state
        state.attempts += 1
        delay = min(self._retry_max, self._retry_base * 2.0 ** (state.attempts - 1))
        due = now + delay
        # The last try comes at the end of the lifetime, not up to retry_max after it.
        expires = entry.message.envelope.received_at + self._lifetime
        if now < expires < due:
            due = expires
        state.next_attempt = due
        state.last_attempt = now
        for index, result in temporary.items():
            state.deferrals[index] = Deferral(result.reply, result.remote_mta)
        log.info(
            "queue_id=%s status=deferred attempts=%d retry_in=%.1fs",
            entry.message.queue_id,
            state.attempts,
            due - now,
        )
        if arm:
            entry.due = due
            self._arm_timer()
        return due

    async def _save_deferral(self, entry: _Entry, temporary: Mapping[int, TempFail], now: float) -> None:
        state = entry.state
        assert state.next_attempt is not None
        current = {index: state.deferrals[index] for index in temporary if index in state.deferrals}
        await self._append(entry, [records.deferred_record(state.attempts, state.next_attempt, now, current)])

    def _forget(self, queue_id: str, reason: str) -> None:
        if self._entries.pop(queue_id, None) is not None:
            log.info("queue_id=%s status=%s", queue_id, reason)
        self._arm_timer()
        self._update_idle()

    async def _read_state(self, queue_id: str) -> QueueState | None:
        try:
            return await self._blocking(functools.partial(self._spool.read_state, queue_id))
        except SpoolError as exc:
            log.error("queue_id=%s status=state-unreadable error=%r", queue_id, str(exc))
            return None

    # --- tasks and timers ---------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        self._idle.clear()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Every expected failure is handled inside; this is a bug. The message stays in
            # the spool for the next start.
            log.error("status=error task=%s", task.get_name(), exc_info=task.exception())
        self._pump()

    def _update_idle(self) -> None:
        if self._tasks or self._ready:
            self._idle.clear()
        else:
            self._idle.set()

    def _arm_timer(self) -> None:
        """One timer, for the earliest due message (qmgr scans its deferred queue the same way)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = [entry.due for entry in self._entries.values() if entry.due is not None]
        if not due or self._stopping:
            return
        delay = max(0.0, min(due) - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self.run_due)
