"""IoPool: blocking calls in worker threads, side by side up to the thread limit."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from postoffice.spool.durability import IoPool


async def test_results_and_exceptions_reach_the_caller() -> None:
    pool = IoPool(threads=2)

    def fail() -> None:
        raise OSError("disk gone")

    assert await pool.run(lambda: 42) == 42
    with pytest.raises(OSError, match="disk gone"):
        await pool.run(fail)
    await asyncio.to_thread(pool.close)


async def test_calls_run_side_by_side_up_to_the_limit() -> None:
    pool = IoPool(threads=4)
    together = threading.Barrier(4, timeout=5)  # passes only with four calls running at once
    running: list[int] = []
    lock = threading.Lock()
    most = [0]

    def call() -> None:
        with lock:
            running.append(1)
            most[0] = max(most[0], len(running))
        together.wait()
        time.sleep(0.01)
        with lock:
            running.pop()

    await asyncio.gather(*(pool.run(call) for _ in range(8)))
    assert most[0] == 4
    await asyncio.to_thread(pool.close)


async def test_close_waits_for_the_calls_handed_over() -> None:
    pool = IoPool(threads=1)
    done: list[int] = []
    waiting = [
        asyncio.ensure_future(pool.run(lambda n=n: (time.sleep(0.01), done.append(n)))) for n in range(3)
    ]
    await asyncio.sleep(0)
    await asyncio.to_thread(pool.close)
    assert done == [0, 1, 2]
    await asyncio.gather(*waiting)
