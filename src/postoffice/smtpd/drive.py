"""Running coroutines without a task until they really wait for something.

Untrusted input seen here: none.

Every command runs through its stage's checks, which are coroutines; nearly all of them never
suspend (a policy lookup, a counter). An asyncio task per command would cost more than the
checks themselves (creating, scheduling and finishing a task is several microseconds, and one
more trip through the event loop before the reply). So the transaction layer starts each
command's handler with ``coro.send(None)`` itself: one that finishes there has cost one
coroutine object. Only one that suspends, because it awaits a commit's fsync, a password check
in a worker thread or a check's DNS lookup, is handed to the transport as a :class:`Suspended`,
which the transport awaits in a task; that resumes the coroutine exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any


class Suspended:
    """A coroutine stopped at its first real wait; awaiting this resumes and finishes it.

    Awaited once, in a task: the object the coroutine waits on (an asyncio future) is handed
    up to the task as if the coroutine had been awaited from the start, and whatever the task
    sends or throws back (a result, a cancellation) goes on into the coroutine.
    """

    __slots__ = ("_coroutine", "_waiting_on")

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self._coroutine = coroutine
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting_on = self._coroutine, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # a cancellation, or the future's own exception
                try:
                    waiting_on = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = coroutine.send(sent)
                except StopIteration:
                    return

    def close(self) -> None:
        """Abandon the coroutine (nothing will await it)."""
        self._coroutine.close()


def drive(coroutine: Coroutine[Any, Any, None]) -> Suspended | None:
    """Run ``coroutine`` until it finishes (None) or first waits (the :class:`Suspended` rest).

    Exceptions it raises before waiting propagate to the caller, as a plain call's would.
    """
    try:
        waiting_on = coroutine.send(None)
    except StopIteration:
        return None
    return Suspended(coroutine, waiting_on)
