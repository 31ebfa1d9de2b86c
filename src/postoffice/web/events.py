"""Live events for the UI and for scripts: new, changed and deleted messages.

Untrusted input seen here: none from the network; events are made by our own code from index
rows. Each subscriber gets a bounded queue: a client that stops reading loses its stream
(it reconnects and reloads) instead of making the server hold events for it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Events a subscriber may fall behind by before it is dropped.
QUEUE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """``kind`` is the SSE event name; ``mailbox`` decides who may see it."""

    kind: str
    mailbox: str
    data: dict[str, Any] = field(default_factory=dict)


_CLOSED = Event("closed", "")


class EventHub:
    """Fan-out of events to every open stream."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event]] = set()
        self._closed = False

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber; call on the event loop."""
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # Too slow a reader: end its stream (the client reconnects and reloads).
                self._queues.discard(queue)
                _end(queue)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """A subscription to every event; ends when the block does. The reader decides what
        its client may see (it may change while the stream is open)."""
        subscription = Subscription(asyncio.Queue(QUEUE_SIZE))
        if self._closed:
            _end(subscription.queue)
        else:
            self._queues.add(subscription.queue)
        try:
            yield subscription
        finally:
            self._queues.discard(subscription.queue)

    def close(self) -> None:
        """End every stream (at shutdown, so HTTP connections can close)."""
        self._closed = True
        for queue in list(self._queues):
            _end(queue)
        self._queues.clear()


def _end(queue: asyncio.Queue[Event]) -> None:
    with contextlib.suppress(asyncio.QueueEmpty):
        while queue.full():
            queue.get_nowait()
    queue.put_nowait(_CLOSED)


@dataclass(slots=True)
class Subscription:
    queue: asyncio.Queue[Event]
    ended: bool = False

    async def next(self, timeout: float) -> Event | None:
        """The next event; None after ``timeout`` seconds of silence or once ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ended:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                event = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                return None
            if event is _CLOSED:
                self.ended = True
            else:
                return event
        return None
