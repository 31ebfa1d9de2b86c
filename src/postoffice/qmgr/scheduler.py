"""The queue manager: hands spooled messages to delivery agents and retries what failed.

Untrusted input seen here: envelopes of accepted messages (addresses from SMTP clients),
used to group recipients by destination and to write log lines, and delivery results whose
reply texts may come from remote servers; nothing here interprets either.

After Postfix qmgr(8):

* A message is delivered in *rounds*. A round splits the recipients that have no final result
  yet into *jobs*, one per destination (the local mailboxes, or one remote domain, or the
  relay host), and hands each job to the agent for its route.
* Jobs wait in one queue per destination and are started round-robin across destinations
  within two concurrency limits (:mod:`postoffice.qmgr.dispatch`).
* Every final result (delivered, relayed, failed) is appended to the message's state log and
  fsync'd as soon as its job ends (:mod:`postoffice.spool.state`), so a restart redoes only
  what has no result, and a recipient already done is never delivered to again. One exception:
  when the last job of a message ends with every recipient final and no report owed, the
  message leaves the spool at once and its log is never written: the removal records the
  results. For an agent that finds its own earlier copies on a retry (``recovers_copies``:
  the Maildir agent names a copy the same on every attempt) a crash before the removal is
  durable only makes the next start find those copies again. For the others (the relay, an
  MX) the removals are flushed a group at a time (:mod:`postoffice.qmgr.removal`), and a
  crash in between sends those messages again: the duplicate RFC 5321 §6.1 prefers to a loss,
  and what Postfix risks too (it marks a recipient done without a flush). The log would cost
  a file created, flushed and removed per message: more file-system work than relaying it.
* When a round ends with temporary failures, the message is deferred, with a delay that
  doubles from try to try; after the queue lifetime the remaining recipients fail
  (:mod:`postoffice.qmgr.retry`). The retry time is recorded, so a restart keeps the schedule.
* Failures and, on request (RFC 3461 NOTIFY), successes and delays are reported to the sender
  (:mod:`postoffice.qmgr.reports`, by the notifier of :mod:`postoffice.qmgr.bounce`).
* A message leaves the spool only when every recipient has a final result and every report
  owed about them is queued (:mod:`postoffice.qmgr.removal`).

Time comes from ``clock`` (wall-clock seconds, since retry times outlive the process). Tests
pass their own and call :meth:`Scheduler.run_due` after moving it forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from typing import Any

from postoffice import defaults
from postoffice.delivery.agent import Delivered, DeliveryAgent, DeliveryResult, PermFail, TempFail
from postoffice.errors import SpoolError
from postoffice.qmgr.bounce import Notifier
from postoffice.qmgr.dispatch import Dispatcher, destination_of
from postoffice.qmgr.entry import Entry, Job
from postoffice.qmgr.loading import load_all, sweep_forever
from postoffice.qmgr.outcomes import failed_outcome, final_outcome, log_expired, log_result
from postoffice.qmgr.removal import Remover
from postoffice.qmgr.reports import Reporter
from postoffice.qmgr.retry import RetryPolicy
from postoffice.smtp import replies
from postoffice.spool import state as records
from postoffice.spool.envelope import QueuedMessage, Recipient, Route
from postoffice.spool.state import Deferral, Outcome, QueueState
from postoffice.storage import Blocking, MessageStore

# Still the queue's log channel, as before qmgr/ split off from spool/: every log line names
# its logger, and operators filter on this one (the README's delivery log examples).
log = logging.getLogger("postoffice.spool")

# Messages loaded from the spool per call off the event loop when the scheduler starts: one
# thread hand-off for a batch rather than two per message (10,000 queued messages took 3.8 s to
# load one at a time on a busy 2-core machine), small enough that delivery starts at once.
ADOPT_BATCH = 128

# How long stop() lets running deliveries finish before cancelling them (they are redone,
# with recovering=True, at the next start).
DEFAULT_STOP_TIMEOUT = 30.0


class Scheduler:
    """Delivers every spooled message through the agent for each recipient's route."""

    def __init__(
        self,
        spool: MessageStore,
        agents: Mapping[Route, DeliveryAgent],
        *,
        retry_base: float = defaults.MINIMAL_BACKOFF_TIME,
        retry_max: float = defaults.MAXIMAL_BACKOFF_TIME,
        lifetime: float = defaults.MAXIMAL_QUEUE_LIFETIME,
        delay_warning: float = defaults.DELAY_WARNING_TIME,
        clock: Callable[[], float] = time.time,
        concurrency: int = defaults.CONCURRENCY,
        destination_concurrency: int = defaults.DESTINATION_CONCURRENCY,
        destination_limit: int = defaults.DESTINATION_CONCURRENCY_LIMIT,
        destination: Callable[[Recipient], str] = destination_of,
        notifier: Notifier | None = None,
        on_result: Callable[[QueuedMessage, Recipient, DeliveryResult], None] | None = None,
        recovers_copies: Collection[Route] = (),
        blocking: Blocking = asyncio.to_thread,
        owns: Callable[[str], bool] | None = None,
        sweep_every: float | None = None,
    ) -> None:
        """``owns``: with several processes on one spool, whether a queue ID found in it is
        this one's to schedule (None: every message is). ``sweep_every``: a queue shared by
        several nodes; :meth:`sweep` every so many seconds (None: the queue is this host's)."""
        self._dispatch = Dispatcher(concurrency, destination_concurrency, destination_limit)
        self._retry = RetryPolicy(retry_base, retry_max, lifetime, delay_warning)
        self._spool = spool
        self._owns = owns
        self._agents = dict(agents)
        self._clock = clock
        self._destination = destination
        self._reports = Reporter(notifier, self._retry, append=self._append, submit=self.submit)
        self._on_result = on_result  # metrics: every per-recipient result, as it happens
        # Routes whose agent, given recovering=True, finds the copies an earlier attempt stored
        # (see the module docstring): their results need no log when the message leaves at once.
        self._recovers_copies = frozenset(recovers_copies)
        # Where spool calls run: the server passes the spool's IoPool, which wakes the loop once
        # for a batch of finished calls where asyncio.to_thread wakes it once per call.
        self._blocking = blocking
        self._remover = Remover(spool, blocking, self._spawn)
        self._entries: dict[str, Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._sweep_every = sweep_every
        self._sweeper: asyncio.Task[None] | None = None
        # Completed since the last sweep began: a sweep's listing may still name them.
        self._done: set[str] = set()
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
        await self._recover(queue_ids)

    def begin(self, queue_ids: Sequence[str] | None = None) -> None:
        """:meth:`start` in the background: returns at once, and the scheduler counts as busy
        (:meth:`wait_idle`) until every message is scheduled. The server listens meanwhile, so a
        big queue left by the last run keeps it from taking mail no longer than a moment, and
        delivery starts with the first batch loaded."""
        self._stopping = False
        self._spawn(self._recover(queue_ids))

    async def _recover(self, queue_ids: Sequence[str] | None) -> None:
        if queue_ids is None:
            queue_ids = await self._blocking(self._spool.pending)
        added = await self._adopt(queue_ids)
        self._started = True
        if self._sweep_every is not None and self._sweeper is None:
            self._sweeper = asyncio.create_task(
                sweep_forever(self.sweep, self._sweep_every), name="queue-sweep"
            )
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
        entry = Entry(message, QueueState(), recovering=False)
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

    async def sweep(self) -> None:
        """A queue shared with other nodes: schedule what the store now gives this process (new
        work, a dead node's messages) and forget deferred ones it no longer gives (another node
        took them over, or an operator deleted them); the store decides which are whose."""
        if self._stopping:
            return
        self._done.clear()
        queue_ids = await self._blocking(self._spool.pending)
        present = set(queue_ids)
        for queue_id, entry in list(self._entries.items()):
            if not entry.in_round and entry.due is not None and queue_id not in present:
                self._forget(queue_id, "gone")
        await self._adopt([queue_id for queue_id in queue_ids if queue_id not in self._entries])

    async def _adopt(self, queue_ids: Sequence[str]) -> int:
        """Load messages from the spool with their recorded state and schedule them, a batch
        per call off the loop; the first deliveries start while later batches load."""
        added = 0
        for start in range(0, len(queue_ids), ADOPT_BATCH):
            if self._stopping:
                break  # what is left stays in the spool for the next start
            batch = [
                queue_id
                for queue_id in queue_ids[start : start + ADOPT_BATCH]
                if queue_id not in self._entries and queue_id not in self._done
            ]
            for message, state in await self._blocking(functools.partial(load_all, self._spool, batch)):
                if state.held or message.queue_id in self._entries or message.queue_id in self._done:
                    continue  # held; or submitted (or done) while it was being loaded
                entry = Entry(message, state, recovering=True)
                self._entries[message.queue_id] = entry
                added += 1
                if state.next_attempt is not None and state.next_attempt > self._clock():
                    entry.due = state.next_attempt
                else:
                    self._begin_round(entry)
            self._pump()
        self._arm_timer()
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
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._dispatch.clear()
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

    async def _resume(self, entry: Entry) -> None:
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

    def _begin_round(self, entry: Entry) -> None:
        """Queue one job per destination for the recipients that have no final result yet."""
        if self._stopping or entry.message.queue_id not in self._entries:
            return
        entry.in_round = True
        entry.temporary = {}
        jobs: dict[tuple[Route, str], Job] = {}
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
                job = jobs[(route, destination)] = Job(entry, route, destination, [])
            job.indices.append(index)
        entry.jobs_left = len(jobs)
        for job in jobs.values():
            self._dispatch.add(job)
        if not jobs:
            # Nothing to deliver now: every recipient is final (a restart after the last
            # result was recorded) or waits for an agent. Finish the round to settle it.
            self._spawn(self._finish_round(entry))

    def _pump(self) -> None:
        """Start ready jobs, round-robin over destinations, within both concurrency limits."""
        while not self._stopping:
            job = self._dispatch.start_next()
            if job is None:
                break
            self._spawn(self._run_job(job))
        self._update_idle()

    async def _run_job(self, job: Job) -> None:
        entry = job.entry
        reached: bool | None = None
        try:
            agent = self._agents[job.route]
            recipients = [entry.message.envelope.recipients[index] for index in job.indices]
            results = await self._deliver(agent, entry, recipients)
            if job.route is Route.REMOTE:  # the destination's window follows its answers
                reached = any(result.remote_mta is not None for result in results)
            await self._record(entry, job.indices, results, recovers=job.route in self._recovers_copies)
        finally:
            self._dispatch.finished(job, reached)
            entry.jobs_left -= 1
            self._pump()
        if entry.jobs_left == 0:
            await self._finish_round(entry)

    async def _deliver(
        self, agent: DeliveryAgent, entry: Entry, recipients: Sequence[Recipient]
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
        self, entry: Entry, indices: Sequence[int], results: Sequence[DeliveryResult], *, recovers: bool
    ) -> None:
        """Log each result; make the final ones durable before anything relies on them.

        ``recovers``: the agent finds its own copies again on a retry (see the module docstring).
        """
        queue_id = entry.message.queue_id
        sender = entry.message.envelope.mail_from
        now = self._clock()
        outcomes: list[Outcome] = []
        for index, result in zip(indices, results, strict=True):
            if self._on_result is not None:
                self._on_result(entry.message, result.recipient, result)  # metrics
            if isinstance(result, Delivered | PermFail):
                outcomes.append(final_outcome(index, result, sender, now))
            else:
                entry.temporary[index] = result
            log_result(queue_id, result)
        await self._save_outcomes(entry, outcomes, recovers=recovers)

    async def _save_outcomes(
        self, entry: Entry, outcomes: Sequence[Outcome], *, recovers: bool = False
    ) -> None:
        """Record final results: in the state log, or, when they end the message, by its removal
        (see the module docstring)."""
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
        if not leaves_now:
            await self._append(entry, [records.outcome_record(outcome) for outcome in outcomes])
        elif not recovers:
            entry.flush_removal = True  # the removal is their only record: flush it

    async def _append(self, entry: Entry, lines: Sequence[Mapping[str, Any]]) -> bool:
        try:
            await self._blocking(functools.partial(self._spool.append_state, entry.message.queue_id, lines))
        except SpoolError as exc:
            # The results stand in memory; if the process dies before the log can be written,
            # the next start redoes those recipients (with recovering=True): a duplicate at
            # worst, which RFC 5321 §6.1 prefers to a loss.
            log.error("queue_id=%s status=state-unrecorded error=%r", entry.message.queue_id, str(exc))
            return False
        return True

    async def _finish_round(self, entry: Entry) -> None:
        """Every job of the round has ended: expire, report, then complete or defer."""
        queue_id = entry.message.queue_id
        entry.in_round = False
        entry.recovering = True
        temporary, entry.temporary = entry.temporary, {}
        if queue_id not in self._entries:
            return
        now = self._clock()
        if temporary and now >= self._retry.expires(entry.message.envelope.received_at):
            await self._expire(entry, temporary, now)
            temporary = {}
        if not await self._reports.report(entry):
            # The report could not be queued: keep the message and its unreported results,
            # and try again on the retry schedule.
            self._defer(entry, temporary, now)
            return
        if len(entry.state.outcomes) == len(entry.message.envelope.recipients):
            await self._complete(queue_id, durable=entry.flush_removal)
        elif temporary:
            due = self._defer(entry, temporary, now, arm=False)
            await self._save_deferral(entry, temporary, now)
            await self._reports.warn_if_late(entry, temporary, now)
            entry.due = due
            self._arm_timer()
        # Otherwise only recipients without an agent remain: the message waits in the spool,
        # with no timer, until a start() with that agent; retrying now could not help.
        self._update_idle()

    async def _expire(self, entry: Entry, temporary: Mapping[int, TempFail], now: float) -> None:
        """Past the queue lifetime: the remaining recipients fail with their last reply."""
        sender = entry.message.envelope.mail_from
        outcomes = []
        for index, result in sorted(temporary.items()):
            outcomes.append(failed_outcome(index, result, sender, now))
            log_expired(entry.message.queue_id, result)
        await self._save_outcomes(entry, outcomes)

    async def _complete(self, queue_id: str, *, durable: bool = False) -> None:
        error = await self._remover.remove(queue_id, durable=durable)
        if error is not None:
            # Every recipient has its result recorded, was delivered by an agent that finds its
            # copy again, or is sent again by the next start (the duplicate RFC 5321 §6.1 allows).
            log.error("queue_id=%s status=uncompleted error=%r", queue_id, str(error))
        else:
            log.info("queue_id=%s status=removed", queue_id)
        if self._sweep_every is not None:
            self._done.add(queue_id)
        self._entries.pop(queue_id, None)

    def _defer(
        self, entry: Entry, temporary: Mapping[int, TempFail], now: float, *, arm: bool = True
    ) -> float:
        """Count a failed attempt and compute the next one; with ``arm``, schedule it now."""
        state = entry.state
        state.attempts += 1
        due = self._retry.next_attempt(state.attempts, now, entry.message.envelope.received_at)
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

    async def _save_deferral(self, entry: Entry, temporary: Mapping[int, TempFail], now: float) -> None:
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
        if self._tasks or self._dispatch.has_ready():
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
