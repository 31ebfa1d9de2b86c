"""Making files durable off the event loop, many at once.

Untrusted input seen here: none; callers hand over functions that write, flush and rename files
they made.

Every accepted message needs the same steps before its 250 (Postfix ``mail_stream.c``, the
Maildir recipe): its data on disk, then its name moved into place, then that name on disk. Each
flush waits for the disk. Done one message after another, a server cannot pass a few hundred
messages a second; done side by side, the flushes are shared: a journaling file system commits
the fsyncs that arrive together in one journal transaction (ext4's jbd2 and XFS's log both
batch concurrent fsyncs), so many messages cost about one disk flush.

:class:`IoPool` therefore runs each message's steps in one of many worker threads, in order for
that message and side by side with the others, and reports completions to the event loop in
batches: one wake-up of the loop for every commit that finished meanwhile, not one each. The
steps themselves are :mod:`postoffice.durable`'s.

(Grouping in user space, one thread flushing every file of a batch and then every directory,
was measured slower on ext4: a commit waited for the slowest flush of its batch and then for a
second round, where the file system's own grouping makes it wait for one journal commit.
Group commit, :mod:`postoffice.spool.group_commit` (``[queue] group_commit``), goes further: one
``syncfs(2)`` for all the commits of a moment, made by a thread of its own while these threads
wait for it; it wins where the file system is otherwise quiet, and loses where other programs
keep it busy, since a ``syncfs`` waits for them too.)
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Flushes in flight at once: enough for the file system to group the commits of many sessions
# (and of deliveries) into one journal transaction; each waiting thread costs only its stack.
DEFAULT_THREADS = 32


class _Workers:
    """Threads taking calls from one queue, started while no thread is idle, up to ``limit``.

    What :class:`IoPool` needs of ``concurrent.futures.ThreadPoolExecutor``, without the
    future, condition variable and semaphore that executor makes and signals for every call
    (about 15 µs of CPU each, three times per message). Daemon threads: a call stopped
    half-way by the interpreter's exit leaves what a crash leaves (a message without its 250,
    or one still in the spool for the next start); :meth:`IoPool.close` lets them finish first.
    """

    def __init__(self, limit: int, name: str) -> None:
        self._limit = limit
        self._name = name
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Threads waiting for a call that no submit() has counted on yet. A thread that takes a
        # call queued while every thread was busy counts itself idle anyway, so this can run
        # high; that happens only at the limit, where no thread could be started regardless.
        self._idle = 0
        self._closed = False

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker threads are shut down")
            self._calls.put(call)
            if self._idle:
                self._idle -= 1  # that thread takes this call
                return
            if len(self._threads) >= self._limit:
                return  # the call waits for the first thread to finish
            thread = threading.Thread(
                target=self._run, name=f"{self._name}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def shutdown(self) -> None:
        """Run the calls already submitted, then end every thread."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._calls.put(None)
        for thread in threads:
            thread.join()

    def _run(self) -> None:
        calls = self._calls
        while (call := calls.get()) is not None:
            call()  # IoPool._work: never raises
            with self._lock:
                self._idle += 1


class IoPool:
    """Worker threads for blocking file work, reporting to the event loop in batches."""

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        self._threads = threads
        self._workers: _Workers | None = None
        self._lock = threading.Lock()
        # Finished calls not yet reported, per event loop; a loop is woken once per batch.
        self._finished: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` in a worker thread; its result or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pool().submit(functools.partial(self._work, call, loop, future))
        return await future

    def close(self) -> None:
        """Wait for the calls handed over, then stop the threads."""
        with self._lock:
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown()

    def _pool(self) -> _Workers:
        workers = self._workers
        if workers is None:
            with self._lock:
                if self._workers is None:
                    self._workers = _Workers(self._threads, "postoffice-io")
                workers = self._workers
        return workers

    def _work(
        self, call: Callable[[], Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ) -> None:
        try:
            outcome: tuple[asyncio.Future[Any], bool, Any] = (future, True, call())
        except BaseException as exc:  # handed to the awaiting coroutine, which decides
            outcome = (future, False, exc)
        with self._lock:
            waiting = self._finished.get(loop)
            if waiting is not None:
                waiting.append(outcome)  # a wake-up is already on its way
                return
            self._finished[loop] = [outcome]
        try:
            loop.call_soon_threadsafe(self._settle, loop)
        except RuntimeError:  # the loop is closed: nobody waits any more
            with self._lock:
                self._finished.pop(loop, None)

    def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            outcomes = self._finished.pop(loop, [])
        for future, ok, value in outcomes:
            if future.done():
                continue  # the caller was cancelled
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
