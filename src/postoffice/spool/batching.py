"""Blocking calls made in the same turn of the event loop run together, in one worker thread.

Untrusted input seen here: none; callers pass functions of their own.

Handing work to a thread costs a wake-up of the thread and one of the event loop for each call;
under load, when hundreds of messages a second each need a file written or removed, those
wake-ups cost more than the work. :class:`ThreadBatch` collects the calls submitted until the
loop next runs its callbacks and hands them over as one, so the cost is paid per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Outcome = tuple[bool, Any]  # (True, result) or (False, exception)


def _run_all(calls: list[Callable[[], Any]]) -> list[_Outcome]:
    outcomes: list[_Outcome] = []
    for call in calls:
        try:
            outcomes.append((True, call()))
        except Exception as exc:  # each caller gets its own exception back
            outcomes.append((False, exc))
    return outcomes


class ThreadBatch:
    """Runs blocking calls in the loop's default executor, many per thread hop."""

    def __init__(self) -> None:
        self._calls: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

    async def run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._calls:
            loop.call_soon(self._dispatch, loop)
        self._calls.append((call, future))
        return await future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._calls = self._calls, []
        if not batch:
            return
        work = loop.run_in_executor(None, _run_all, [call for call, _ in batch])

        def settle(done: asyncio.Future[list[_Outcome]]) -> None:
            if done.cancelled() or done.exception() is not None:
                error = done.exception() if not done.cancelled() else None
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error or asyncio.CancelledError())
                return
            for (_, future), (ok, value) in zip(batch, done.result(), strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

        work.add_done_callback(settle)
