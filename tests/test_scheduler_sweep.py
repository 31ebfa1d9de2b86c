"""The scheduler's sweep of a queue shared by several nodes (Scheduler.sweep, sweep_every):
what the store gives this process now is scheduled, deferred messages it no longer gives are
forgotten, and a message submitted while a sweep is loading it is delivered once. The store
here is the file spool (which gives every message); tests/test_pg_queue.py has the shared one's
leases and tests/test_pg_queue_nodes.py the nodes as processes."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from postoffice.delivery.agent import TempFail
from postoffice.qmgr.loading import load_all
from postoffice.qmgr.scheduler import Scheduler
from postoffice.smtp import replies
from postoffice.spool.envelope import Route
from postoffice.spool.files import FileSpool
from test_scheduler import ScriptedAgent, queue, remote, until

T = TypeVar("T")


@pytest.fixture
def spool(tmp_path: Path) -> FileSpool:
    return FileSpool(tmp_path / "spool")


async def test_a_message_submitted_while_a_sweep_loads_it_is_delivered_once(spool: FileSpool) -> None:
    loading = asyncio.Event()
    go_on = asyncio.Event()

    async def blocking(call: Callable[[], T]) -> T:
        if isinstance(call, functools.partial) and call.func is load_all:
            loading.set()
            await go_on.wait()  # the session's submit comes meanwhile
        return call()

    agent = ScriptedAgent()
    scheduler = Scheduler(spool, {Route.REMOTE: agent}, blocking=blocking, sweep_every=3600)
    message = await queue(spool, remote("far@example.net"))
    sweep = asyncio.create_task(scheduler.sweep())
    await loading.wait()
    scheduler.submit(message)
    go_on.set()
    await sweep
    await scheduler.wait_idle()
    assert [queue_id for queue_id, _, _ in agent.calls] == [message.queue_id]
    await scheduler.stop()


async def test_the_sweep_takes_up_new_work_and_forgets_what_the_store_no_longer_gives(
    spool: FileSpool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice.spool")
    agent = ScriptedAgent(lambda recipient, attempt: TempFail(recipient, replies.LOCAL_ERROR))
    scheduler = Scheduler(spool, {Route.REMOTE: agent}, sweep_every=0.05)
    await scheduler.start()
    # Another node's message (or one whose lease lapsed): nobody submits it here.
    message = await queue(spool, remote("far@example.net"))
    await until(lambda: message.queue_id in scheduler.deferred())
    assert agent.calls == [(message.queue_id, ["far@example.net"], True)]
    spool.complete(message.queue_id)  # another node took it over (or an operator deleted it)
    await until(lambda: scheduler.known() == [])
    assert f"queue_id={message.queue_id} status=gone" in caplog.text
    await scheduler.stop()
