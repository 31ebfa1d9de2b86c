"""The scheduler: delivery, completion, retries with backoff, waiting routes and recovery.

The agent here is a scripted test double (the scheduler is what is under test), except in the
recovery tests at the end, which run the real Maildir agent against a real spool, including
one where the delivering process is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from postoffice.delivery.agent import Delivered, DeliveryAgent, DeliveryResult, PermFail, TempFail
from postoffice.delivery.local import LocalAgent
from postoffice.maildir.store import MaildirStore
from postoffice.qmgr import scheduler as qmgr_scheduler
from postoffice.qmgr.bounce import ReportItem
from postoffice.qmgr.removal import Remover
from postoffice.qmgr.scheduler import Scheduler
from postoffice.smtp import replies
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool

Script = Callable[[Recipient, int], DeliveryResult]
T = TypeVar("T")


def deliver_all(recipient: Recipient, attempt: int) -> DeliveryResult:
    return Delivered(recipient)


class ScriptedAgent:
    """Answers each recipient with ``script(recipient, attempt number for this message)``."""

    def __init__(self, script: Script = deliver_all, *, pause: float = 0.0) -> None:
        self.script = script
        self.pause = pause
        self.calls: list[tuple[str, list[str], bool]] = []
        self.active = 0
        self.most_active = 0

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
    ) -> list[DeliveryResult]:
        attempt = sum(1 for queue_id, _, _ in self.calls if queue_id == message.queue_id)
        self.calls.append((message.queue_id, [r.address for r in recipients], recovering))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(self.pause)
        finally:
            self.active -= 1
        return [self.script(recipient, attempt) for recipient in recipients]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def queue(spool: FileSpool, *recipients: Recipient) -> QueuedMessage:
    envelope = Envelope("from@example.org", recipients, received_at=time.time())
    writer = spool.put(envelope)
    writer.write(b"Subject: test\r\n\r\nhello\r\n")
    return await writer.commit()


def local(address: str) -> Recipient:
    return Recipient(address, address, Route.LOCAL)


def remote(address: str) -> Recipient:
    return Recipient(address, address, Route.REMOTE)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.fixture
def spool(tmp_path: Path) -> FileSpool:
    return FileSpool(tmp_path / "spool")


async def test_delivers_and_completes(spool: FileSpool, caplog: pytest.LogCaptureFixture) -> None:
    agent = ScriptedAgent()
    scheduler = Scheduler(spool, {Route.LOCAL: agent})
    message = await queue(spool, local("a@example.com"), local("b@example.com"))

    with caplog.at_level(logging.INFO, logger="postoffice.spool"):
        scheduler.submit(message)
        await scheduler.wait_idle()

    assert agent.calls == [(message.queue_id, ["a@example.com", "b@example.com"], False)]
    assert spool.pending() == [] and scheduler.known() == []
    lines = [record.getMessage() for record in caplog.records]
    assert any(f"queue_id={message.queue_id} to=<a@example.com> status=delivered" in line for line in lines)
    await scheduler.stop()


async def test_temporary_failure_is_retried_for_the_failed_recipients_only(spool: FileSpool) -> None:
    def fail_b_once(recipient: Recipient, attempt: int) -> DeliveryResult:
        if recipient.address == "b@example.com" and attempt == 0:
            return TempFail(recipient, replies.INSUFFICIENT_STORAGE)
        return Delivered(recipient)

    agent = ScriptedAgent(fail_b_once)
    scheduler = Scheduler(spool, {Route.LOCAL: agent}, retry_base=0.02, retry_max=1.0)
    message = await queue(spool, local("a@example.com"), local("b@example.com"))

    scheduler.submit(message)
    await scheduler.wait_idle()
    assert spool.pending() == [message.queue_id]
    assert message.queue_id in scheduler.deferred()

    await until(lambda: not spool.pending())  # the retry timer fires
    assert agent.calls == [
        (message.queue_id, ["a@example.com", "b@example.com"], False),
        (message.queue_id, ["b@example.com"], True),
    ]
    await scheduler.stop()


async def test_backoff_doubles_up_to_the_maximum(spool: FileSpool) -> None:
    clock = FakeClock()
    agent = ScriptedAgent(lambda r, attempt: TempFail(r, replies.LOCAL_ERROR))
    scheduler = Scheduler(spool, {Route.LOCAL: agent}, retry_base=60, retry_max=200, clock=clock)
    message = await queue(spool, local("a@example.com"))

    scheduler.submit(message)
    delays = []
    for _ in range(4):
        await scheduler.wait_idle()
        delays.append(scheduler.deferred()[message.queue_id] - clock.now)
        clock.now += 1
        scheduler.flush()  # as `postqueue -f`: retry now
    await scheduler.wait_idle()

    assert delays == [60, 120, 200, 200]
    assert len(agent.calls) == 5 and all(recovering for _, _, recovering in agent.calls[1:])
    assert spool.pending() == [message.queue_id]
    await scheduler.stop()


async def test_permanent_failure_is_final(spool: FileSpool, caplog: pytest.LogCaptureFixture) -> None:
    agent = ScriptedAgent(lambda r, attempt: PermFail(r, replies.BAD_DESTINATION_MAILBOX))
    scheduler = Scheduler(spool, {Route.LOCAL: agent})
    message = await queue(spool, local("a@example.com"))
    with caplog.at_level(logging.INFO, logger="postoffice.spool"):
        scheduler.submit(message)
        await scheduler.wait_idle()
    assert spool.pending() == [] and len(agent.calls) == 1
    assert any("status=bounced" in record.getMessage() for record in caplog.records)
    await scheduler.stop()


async def test_recipients_without_an_agent_wait_in_the_spool(
    spool: FileSpool, caplog: pytest.LogCaptureFixture
) -> None:
    agent = ScriptedAgent()
    scheduler = Scheduler(spool, {Route.LOCAL: agent}, retry_base=0.01)
    mixed = await queue(spool, local("a@example.com"), remote("far@example.net"))
    remote_only = await queue(spool, remote("far@example.net"))

    with caplog.at_level(logging.INFO, logger="postoffice.spool"):
        scheduler.submit(mixed)
        scheduler.submit(remote_only)
        await scheduler.wait_idle()
        await asyncio.sleep(0.1)  # no timer, no spinning
        scheduler.flush()
        await scheduler.wait_idle()

    assert agent.calls == [(mixed.queue_id, ["a@example.com"], False)]
    assert spool.pending() == sorted([mixed.queue_id, remote_only.queue_id])
    assert scheduler.deferred() == {}
    waiting = [r.getMessage() for r in caplog.records if "reason=no-agent" in r.getMessage()]
    assert len(waiting) == 2  # once per message

    # Once an agent for the route exists (a restart with outbound delivery), they go out.
    await scheduler.stop()
    outbound = ScriptedAgent()
    restarted = Scheduler(spool, {Route.LOCAL: agent, Route.REMOTE: outbound})
    await restarted.start()
    await restarted.wait_idle()
    assert sorted(outbound.calls) == sorted(
        [(mixed.queue_id, ["far@example.net"], True), (remote_only.queue_id, ["far@example.net"], True)]
    )
    # Progress is recorded in the spool: after a restart the local recipient, already
    # delivered, is not asked for again.
    assert agent.calls[1:] == []
    assert spool.pending() == []
    await restarted.stop()


async def test_start_recovers_pending_messages_oldest_first(spool: FileSpool) -> None:
    messages = [await queue(spool, local(f"u{i}@example.com")) for i in range(5)]
    agent = ScriptedAgent()
    scheduler = Scheduler(spool, {Route.LOCAL: agent}, concurrency=1)

    await scheduler.start()
    await scheduler.wait_idle()

    assert [call[0] for call in agent.calls] == [m.queue_id for m in messages]
    assert all(recovering for _, _, recovering in agent.calls)
    assert spool.pending() == []
    await scheduler.stop()


async def test_begin_loads_a_big_queue_in_batches_while_the_first_ones_are_delivered(
    spool: FileSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qmgr_scheduler, "ADOPT_BATCH", 4)  # ten messages are a big queue
    messages = [await queue(spool, local(f"u{i}@example.com")) for i in range(10)]
    events: list[str] = []

    async def blocking(call: Callable[[], T]) -> T:
        if isinstance(call, functools.partial) and call.func.__name__ == "load_all":
            events.append("load")
        return await asyncio.to_thread(call)

    class Noting(ScriptedAgent):
        async def deliver(
            self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
        ) -> list[DeliveryResult]:
            events.append("deliver")
            return await super().deliver(message, recipients, recovering=recovering)

    agent = Noting()
    scheduler = Scheduler(spool, {Route.LOCAL: agent}, recovers_copies=(Route.LOCAL,), blocking=blocking)
    scheduler.begin()  # returns at once: the server listens meanwhile
    assert events == [] and agent.calls == []
    await scheduler.wait_idle()  # busy until every message is scheduled and delivered
    assert events.count("load") == 3  # one call off the loop per batch, not two per message
    assert events.index("deliver") < len(events) - 1 - events[::-1].index("load")
    assert sorted(call[0] for call in agent.calls) == sorted(m.queue_id for m in messages)
    assert spool.pending() == []
    await scheduler.stop()


async def test_start_skips_a_corrupt_entry(spool: FileSpool, caplog: pytest.LogCaptureFixture) -> None:
    good = await queue(spool, local("a@example.com"))
    bad = await queue(spool, local("b@example.com"))
    (spool.queue_dir / bad.queue_id).write_bytes(b"garbage")
    agent = ScriptedAgent()
    scheduler = Scheduler(spool, {Route.LOCAL: agent})

    with caplog.at_level(logging.WARNING):
        await scheduler.start()
        await scheduler.wait_idle()

    assert [call[0] for call in agent.calls] == [good.queue_id]
    assert (spool.corrupt_dir / bad.queue_id).exists() and spool.pending() == []
    assert any(bad.queue_id in record.getMessage() for record in caplog.records)
    await scheduler.stop()


async def test_concurrency_is_bounded(spool: FileSpool) -> None:
    agent = ScriptedAgent(pause=0.02)
    scheduler = Scheduler(spool, {Route.LOCAL: agent}, concurrency=3)
    for i in range(12):
        scheduler.submit(await queue(spool, local(f"u{i}@example.com")))
    await scheduler.wait_idle()
    assert agent.most_active == 3 and len(agent.calls) == 12
    assert spool.pending() == []
    await scheduler.stop()


async def test_an_agent_that_raises_is_a_temporary_failure(spool: FileSpool) -> None:
    class BrokenAgent:
        async def deliver(
            self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
        ) -> list[DeliveryResult]:
            raise RuntimeError("agent bug")

    clock = FakeClock()
    scheduler = Scheduler(spool, {Route.LOCAL: BrokenAgent()}, clock=clock)
    message = await queue(spool, local("a@example.com"))
    scheduler.submit(message)
    await scheduler.wait_idle()
    assert scheduler.deferred() == {message.queue_id: clock.now + 300}
    assert spool.pending() == [message.queue_id]
    await scheduler.stop()


async def test_stop_waits_for_running_deliveries(spool: FileSpool) -> None:
    agent = ScriptedAgent(pause=0.1)
    scheduler = Scheduler(spool, {Route.LOCAL: agent})
    scheduler.submit(await queue(spool, local("a@example.com")))
    await asyncio.sleep(0.01)
    await scheduler.stop()
    assert spool.pending() == [] and len(agent.calls) == 1


async def test_stop_cancels_deliveries_that_overrun_and_keeps_them_queued(spool: FileSpool) -> None:
    agent = ScriptedAgent(pause=60)
    scheduler = Scheduler(spool, {Route.LOCAL: agent})
    message = await queue(spool, local("a@example.com"))
    scheduler.submit(message)
    await asyncio.sleep(0.01)
    await scheduler.stop(timeout=0.05)
    assert spool.pending() == [message.queue_id]
    scheduler.submit(message)  # after stop: left for the next start
    await scheduler.wait_idle()
    assert len(agent.calls) == 1


# --- recovery with the real Maildir agent -------------------------------------------------------


def copies(mail_root: Path, queue_id: str) -> dict[str, int]:
    """How many files in new/ or cur/ each recipient index of ``queue_id`` has."""
    found: dict[str, int] = {}
    for directory in mail_root.glob("*/*/*"):
        if directory.name in ("new", "cur"):
            for name in os.listdir(directory):
                if f".{queue_id}_" in name:
                    index = name.split(f".{queue_id}_", 1)[1].split(".", 1)[0]
                    found[index] = found.get(index, 0) + 1
    return found


async def test_restart_after_partial_delivery_delivers_each_recipient_once(
    spool: FileSpool, tmp_path: Path
) -> None:
    mail_root = tmp_path / "mail"
    message = await queue(spool, local("a@example.com"), local("b@example.com"), local("c@example.com"))
    # The first run delivered to a, then died before anything was recorded.
    first = LocalAgent(MaildirStore(mail_root, "mx.example.com"), spool)
    await first.deliver(message, message.envelope.recipients[:1])

    scheduler: Scheduler = Scheduler(
        spool, {Route.LOCAL: LocalAgent(MaildirStore(mail_root, "mx.example.com"), spool)}
    )
    await scheduler.start()
    await scheduler.wait_idle()

    assert copies(mail_root, message.queue_id) == {"0": 1, "1": 1, "2": 1}
    assert spool.pending() == []
    await scheduler.stop()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from postoffice.delivery.local import LocalAgent
    from postoffice.maildir.store import MaildirStore
    from postoffice.spool.envelope import Envelope, Recipient, Route
    from postoffice.spool.files import FileSpool
    from postoffice.qmgr.scheduler import Scheduler

    async def main(root):
        spool = FileSpool(root / "spool")
        agents = {Route.LOCAL: LocalAgent(MaildirStore(root / "mail", "mx.example.com"), spool, io=spool.io)}
        # As the server runs it: Maildir results that end a message are not logged.
        scheduler = Scheduler(spool, agents, recovers_copies=(Route.LOCAL,), blocking=spool.io.run)
        await scheduler.start()
        recipients = tuple(Recipient(f"u{i}@example.com", f"u{i}@example.com", Route.LOCAL) for i in range(3))
        n = 0
        while True:
            writer = spool.put(Envelope("s@example.org", recipients, received_at=1.0))
            writer.write(b"Subject: %d\\r\\n\\r\\n" % n + b"x" * 20_000)
            queued = await writer.commit()
            print(queued.queue_id, flush=True)  # acknowledged: from here on it must not be lost
            scheduler.submit(queued)
            n += 1

    asyncio.run(main(Path(sys.argv[1])))
    """
)


@pytest.mark.parametrize("kill_after", [3, 17, 40])
async def test_sigkill_loses_no_acknowledged_message_and_duplicates_none(
    tmp_path: Path, kill_after: int
) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acknowledged = [child.stdout.readline().strip() for _ in range(kill_after)]
    child.send_signal(signal.SIGKILL)
    acknowledged += [line.strip() for line in child.stdout.readlines() if line.strip()]
    child.wait()
    assert child.returncode == -signal.SIGKILL

    spool = FileSpool(tmp_path / "spool")  # the restart: tmp/ debris goes
    mail_root = tmp_path / "mail"
    agent: DeliveryAgent = LocalAgent(MaildirStore(mail_root, "mx.example.com"), spool)
    scheduler = Scheduler(spool, {Route.LOCAL: agent})
    await scheduler.start()
    await scheduler.wait_idle()
    await scheduler.stop()

    assert spool.pending() == []
    for queue_id in acknowledged:
        assert copies(mail_root, queue_id) == {"0": 1, "1": 1, "2": 1}, queue_id
    for maildir in mail_root.glob("*/*"):
        for name in os.listdir(maildir / "new"):
            body = (maildir / "new" / name).read_bytes()
            assert name.endswith(f",S={len(body)}") and body.endswith(b"x" * 20_000)


async def test_results_that_end_a_message_are_not_logged_for_an_agent_that_recovers_copies(
    spool: FileSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged: list[str] = []
    append = spool.append_state

    def recording_append(queue_id: str, lines: Sequence[Mapping[str, Any]]) -> None:
        logged.append(queue_id)
        append(queue_id, lines)

    monkeypatch.setattr(spool, "append_state", recording_append)

    def b_fails_once(recipient: Recipient, attempt: int) -> DeliveryResult:
        if recipient.address.startswith("b") and attempt == 0:
            return TempFail(recipient, replies.LOCAL_ERROR)
        return Delivered(recipient)

    scheduler = Scheduler(
        # The retry comes late enough for the deferral to be seen however loaded the machine is.
        spool,
        {Route.LOCAL: ScriptedAgent(b_fails_once)},
        recovers_copies=(Route.LOCAL,),
        retry_base=0.5,
    )
    done = await queue(spool, local("a@example.com"))
    retried = await queue(spool, local("a@example.com"), local("b@example.com"))
    scheduler.submit(done)
    scheduler.submit(retried)
    await until(lambda: retried.queue_id in scheduler.deferred())
    # The deferred message keeps its delivered recipient on record; the finished one left none.
    assert list(spool.read_state(retried.queue_id).outcomes) == [0]
    assert done.queue_id not in logged and spool.pending() == [retried.queue_id]
    await until(lambda: spool.pending() == [])
    await scheduler.stop()


async def test_messages_finishing_together_leave_the_spool_in_one_call(spool: FileSpool) -> None:
    calls: list[str] = []

    async def blocking(call: Callable[[], T]) -> T:
        calls.append(getattr(call, "func", call).__name__)
        return await asyncio.to_thread(call)

    release = asyncio.Event()

    class Held(ScriptedAgent):
        async def deliver(
            self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
        ) -> list[DeliveryResult]:
            await release.wait()
            return await super().deliver(message, recipients, recovering=recovering)

    agent = Held()
    scheduler = Scheduler(spool, {Route.LOCAL: agent}, recovers_copies=(Route.LOCAL,), blocking=blocking)
    for n in range(5):
        scheduler.submit(await queue(spool, local(f"u{n}@example.com")))
    release.set()  # all five deliveries end in the same pass of the loop
    await scheduler.wait_idle()
    assert spool.pending() == [] and calls == ["_remove_all"]
    await scheduler.stop()


async def test_relayed_results_that_end_a_message_are_recorded_by_a_flushed_removal(
    spool: FileSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged: list[str] = []
    flushes: list[list[str]] = []
    append = spool.append_state
    flush = spool.flush_removals

    def recording_append(queue_id: str, lines: Sequence[Mapping[str, Any]]) -> None:
        logged.append(queue_id)
        append(queue_id, lines)

    def recording_flush() -> None:
        flushes.append(spool.pending())  # what is still queued when the flush comes
        flush()

    monkeypatch.setattr(spool, "append_state", recording_append)
    monkeypatch.setattr(spool, "flush_removals", recording_flush)
    agents: dict[Route, DeliveryAgent] = {Route.REMOTE: ScriptedAgent(), Route.LOCAL: ScriptedAgent()}
    scheduler = Scheduler(spool, agents, recovers_copies=(Route.LOCAL,))
    relayed = await queue(spool, remote("a@remote.example"))
    scheduler.submit(relayed)
    await scheduler.wait_idle()
    # No state log: the removal is the record, and it was flushed once it was made.
    assert logged == [] and flushes == [[]] and spool.pending() == []
    stored = await queue(spool, local("b@example.com"))
    scheduler.submit(stored)
    await scheduler.wait_idle()
    # A Maildir copy is found again after a crash: its removal needs no flush.
    assert logged == [] and flushes == [[]] and spool.pending() == []
    await scheduler.stop()


async def test_removals_ending_while_the_groups_are_busy_gather_into_the_next(spool: FileSpool) -> None:
    messages = [await queue(spool, remote(f"u{n}@remote.example")) for n in range(6)]
    groups: list[list[str]] = []
    release = asyncio.Event()

    async def blocking(call: Callable[[], T]) -> T:
        assert isinstance(call, functools.partial)
        groups.append(list(call.args[0]))
        await release.wait()  # the flushes take a while
        return await asyncio.to_thread(call)

    tasks: set[asyncio.Task[None]] = set()
    remover = Remover(spool, blocking, lambda work: tasks.add(asyncio.create_task(work)), in_flight=2)
    removals = []
    for message in messages:  # each ends in its own pass of the loop
        removals.append(asyncio.create_task(remover.remove(message.queue_id, durable=True)))
        await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*removals) == [None] * 6
    # Two groups in the spool's hands at once; the four ending meanwhile went as one.
    ids = [message.queue_id for message in messages]
    assert groups == [ids[:1], ids[1:2], ids[2:]]
    assert spool.pending() == []


# --- destinations, recorded progress and reports -------------------------------------------------


async def test_a_slow_destination_does_not_hold_up_the_others(spool: FileSpool) -> None:
    class PerDomain(ScriptedAgent):
        async def deliver(
            self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
        ) -> list[DeliveryResult]:
            self.pause = 30 if recipients[0].address.endswith("@slow.test") else 0
            return await super().deliver(message, recipients, recovering=recovering)

    agent = PerDomain()
    scheduler = Scheduler(spool, {Route.REMOTE: agent}, concurrency=3, destination_concurrency=2)
    for n in range(4):
        scheduler.submit(await queue(spool, remote(f"u{n}@slow.test")))
    fast = await queue(spool, remote("x@fast.test"))
    scheduler.submit(fast)
    # Two slow deliveries run (the per-destination limit), the fast one takes the third slot.
    await until(lambda: fast.queue_id not in spool.pending())
    assert agent.active == 2 and agent.most_active == 3
    await scheduler.stop(timeout=0.01)


def _answered(recipient: Recipient, attempt: int) -> DeliveryResult:
    return Delivered(recipient, remote_mta="mx.busy.test")


def _unreachable(recipient: Recipient, attempt: int) -> DeliveryResult:
    return TempFail(recipient, replies.cannot_connect("mx.busy.test", "refused"))


@pytest.mark.parametrize(("script", "most"), [(_answered, 6), (_unreachable, 2)])
async def test_a_destination_that_answers_gets_more_sessions_one_at_a_time(
    spool: FileSpool, script: Script, most: int
) -> None:
    # Postfix's slow start: the window opens at destination_concurrency and grows by one with
    # each delivery the destination answered, up to the limit; one that got no answer at all
    # (nothing from the remote server, remote_mta None) closes it back.
    agent = ScriptedAgent(script, pause=0.02)
    scheduler = Scheduler(
        spool, {Route.REMOTE: agent}, concurrency=50, destination_concurrency=2, destination_limit=6
    )
    for n in range(40):
        scheduler.submit(await queue(spool, remote(f"u{n}@busy.test")))
    await scheduler.wait_idle()
    assert agent.most_active == most
    await scheduler.stop()


async def test_results_are_recorded_so_a_restart_keeps_them_and_the_schedule(spool: FileSpool) -> None:
    clock = FakeClock()
    clock.now = time.time()

    def b_fails(recipient: Recipient, attempt: int) -> DeliveryResult:
        if recipient.address.startswith("b"):
            return TempFail(recipient, replies.LOCAL_ERROR)
        return Delivered(recipient)

    first_agent = ScriptedAgent(b_fails)
    scheduler = Scheduler(spool, {Route.LOCAL: first_agent}, clock=clock)
    message = await queue(spool, local("a@example.com"), local("b@example.com"))
    scheduler.submit(message)
    await scheduler.wait_idle()
    due = scheduler.deferred()[message.queue_id]
    await scheduler.stop()

    state = spool.read_state(message.queue_id)
    assert list(state.outcomes) == [0] and state.attempts == 1 and state.next_attempt == due
    assert state.deferrals[1].reply == replies.LOCAL_ERROR

    second_agent = ScriptedAgent()
    restarted = Scheduler(spool, {Route.LOCAL: second_agent}, clock=clock)
    await restarted.start()
    await restarted.wait_idle()
    assert restarted.deferred() == {message.queue_id: due} and second_agent.calls == []
    clock.now = due
    restarted.run_due()
    await restarted.wait_idle()
    assert second_agent.calls == [(message.queue_id, ["b@example.com"], True)]
    assert spool.pending() == []
    await restarted.stop()


class RecordingNotifier:
    def __init__(self, spool: FileSpool) -> None:
        self.spool = spool
        self.reports: list[tuple[str, list[tuple[str, str]]]] = []

    async def notify(
        self, message: QueuedMessage, items: Sequence[ReportItem], *, will_retry_until: float | None = None
    ) -> QueuedMessage | None:
        self.reports.append((message.queue_id, [(item.recipient.address, item.action) for item in items]))
        return None


async def test_failures_are_reported_once_before_the_message_leaves(spool: FileSpool) -> None:
    notifier = RecordingNotifier(spool)
    agent = ScriptedAgent(
        lambda r, attempt: PermFail(r, replies.USER_UNKNOWN) if r.address[0] == "b" else Delivered(r)
    )
    scheduler = Scheduler(spool, {Route.LOCAL: agent}, notifier=notifier)
    message = await queue(
        spool,
        local("a@example.com"),
        local("b@example.com"),
        Recipient("bn@example.com", "bn@example.com", Route.LOCAL, notify=("NEVER",)),
    )
    scheduler.submit(message)
    await scheduler.wait_idle()
    assert notifier.reports == [(message.queue_id, [("b@example.com", "failed")])]
    assert spool.pending() == []
    await scheduler.stop()


async def test_a_report_owed_when_the_process_died_is_sent_at_start(spool: FileSpool) -> None:
    from postoffice.spool import state as records
    from postoffice.spool.state import Action, Outcome

    message = await queue(spool, local("a@example.com"))
    # The result was recorded, the process died before the report was queued.
    failed = Outcome(0, Action.FAILED, replies.USER_UNKNOWN, time.time(), None, report=True)
    spool.append_state(message.queue_id, [records.outcome_record(failed)])
    notifier = RecordingNotifier(spool)
    agent = ScriptedAgent()
    scheduler = Scheduler(spool, {Route.LOCAL: agent}, notifier=notifier)
    await scheduler.start()
    await scheduler.wait_idle()
    assert agent.calls == []  # the recipient is done
    assert notifier.reports == [(message.queue_id, [("a@example.com", "failed")])]
    assert spool.pending() == []
    await scheduler.stop()


async def test_a_held_message_is_not_delivered_until_released(spool: FileSpool) -> None:
    from postoffice.qmgr import admin

    message = await queue(spool, local("a@example.com"))
    admin.hold(spool, message.queue_id)
    agent = ScriptedAgent()
    scheduler = Scheduler(spool, {Route.LOCAL: agent})
    await scheduler.start()
    await scheduler.wait_idle()
    assert agent.calls == [] and scheduler.known() == []
    admin.release(spool, message.queue_id)
    await scheduler.rescan()
    await scheduler.wait_idle()
    assert len(agent.calls) == 1 and spool.pending() == []
    await scheduler.stop()
