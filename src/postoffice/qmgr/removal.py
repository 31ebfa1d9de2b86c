"""Taking finished messages out of the spool, a group at a time.

Untrusted input seen here: none; queue IDs are the spool's own.

Messages whose rounds end in the same pass of the event loop leave the spool in one call off
the loop: one thread hand-off and one wake-up for the group, not one per message.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from postoffice.errors import SpoolError
from postoffice.storage import Blocking, MessageStore


@dataclass(slots=True)
class _Group:
    """Messages to remove from the spool together, and what went wrong for which."""

    queue_ids: list[str]
    errors: asyncio.Future[dict[str, SpoolError]]


class Remover:
    """Completes messages in the spool; ``spawn`` runs (and tracks) the task that does it."""

    def __init__(
        self, spool: MessageStore, blocking: Blocking, spawn: Callable[[Coroutine[Any, Any, None]], None]
    ) -> None:
        self._spool = spool
        self._blocking = blocking
        self._spawn = spawn
        self._group: _Group | None = None  # the group being gathered

    async def remove(self, queue_id: str) -> SpoolError | None:
        """Complete the message in the spool; what went wrong, if anything."""
        group = self._group
        if group is None:
            group = self._group = _Group([], asyncio.get_running_loop().create_future())
            self._spawn(self._remove(group))
        group.queue_ids.append(queue_id)
        errors = await asyncio.shield(group.errors)
        return errors.get(queue_id)

    async def _remove(self, group: _Group) -> None:
        try:
            await asyncio.sleep(0)  # the rounds ending in this pass join the group meanwhile
            if self._group is group:
                self._group = None
            errors = await self._blocking(functools.partial(self._remove_all, group.queue_ids))
        except asyncio.CancelledError:
            # Stopping: the messages stay in the spool, and the next start finds them done.
            if self._group is group:
                self._group = None
            group.errors.cancel()
            raise
        except Exception as exc:
            group.errors.set_exception(exc)
            raise
        group.errors.set_result(errors)

    def _remove_all(self, queue_ids: Sequence[str]) -> dict[str, SpoolError]:
        """Blocking: complete each message in the spool; the ones that failed, and why."""
        errors: dict[str, SpoolError] = {}
        for queue_id in queue_ids:
            try:
                self._spool.complete(queue_id)
            except SpoolError as exc:
                errors[queue_id] = exc
        return errors
