"""Taking finished messages out of the spool, a group at a time.

Untrusted input seen here: none; queue IDs are the spool's own.

Messages whose rounds end in the same pass of the event loop, or while the groups before them
are still being removed, leave the spool in one call off the loop: one thread hand-off and one
wake-up for the group, not one per message. A removal that is the only record of its message's
results (a relayed message leaves without a state log, see :mod:`postoffice.qmgr.scheduler`) is
made durable with the rest of its group by one flush
(:meth:`~postoffice.storage.MessageStore.flush_removals`), as a journal's group commit does: a
few groups are in the spool's hands at once, and the next gathers meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from postoffice.errors import SpoolError
from postoffice.storage import Blocking, MessageStore

log = logging.getLogger("postoffice.spool")

# Groups handed to the spool at once. Removing a file waits for the file system's journal when
# other programs flush theirs, so one group at a time left the queue behind the deliveries on a
# busy disk (outbound benchmark, median of six: 870 msg/s with one, 1,370 with four, 1,340 with
# 32); beyond a few, more groups only mean more flushes.
GROUPS_IN_FLIGHT = 4


@dataclass(slots=True, eq=False)
class _Group:
    """Messages to remove from the spool together, and what went wrong for which."""

    queue_ids: list[str]
    errors: asyncio.Future[dict[str, SpoolError]]
    durable: bool = False  # some removal in it must be flushed before it counts as done


class Remover:
    """Completes messages in the spool; ``spawn`` runs (and tracks) the task that does it."""

    def __init__(
        self,
        spool: MessageStore,
        blocking: Blocking,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        *,
        in_flight: int = GROUPS_IN_FLIGHT,
    ) -> None:
        self._spool = spool
        self._blocking = blocking
        self._spawn = spawn
        self._group: _Group | None = None  # the group being gathered
        self._removing: set[_Group] = set()  # the groups in the spool's hands
        self._in_flight = in_flight

    async def remove(self, queue_id: str, *, durable: bool = False) -> SpoolError | None:
        """Complete the message in the spool; what went wrong, if anything. ``durable``: return
        only once the removal is on disk."""
        group = self._group
        if group is None:
            group = self._group = _Group([], asyncio.get_running_loop().create_future())
            self._spawn(self._remove(group))
        group.queue_ids.append(queue_id)
        group.durable = group.durable or durable
        errors = await asyncio.shield(group.errors)
        return errors.get(queue_id)

    async def _remove(self, group: _Group) -> None:
        try:
            await asyncio.sleep(0)  # the rounds ending in this pass join the group meanwhile
            while len(self._removing) >= self._in_flight:
                # The rounds ending meanwhile join this one.
                await asyncio.wait(
                    [removing.errors for removing in self._removing], return_when=asyncio.FIRST_COMPLETED
                )
            if self._group is group:
                self._group = None
            self._removing.add(group)
            call = functools.partial(self._remove_all, group.queue_ids, durable=group.durable)
            errors = await self._blocking(call)
        except asyncio.CancelledError:
            # Stopping: the messages stay in the spool, and the next start finds them done.
            self._forget(group)
            group.errors.cancel()
            raise
        except Exception as exc:
            self._forget(group)
            group.errors.set_exception(exc)
            raise
        self._forget(group)
        group.errors.set_result(errors)

    def _forget(self, group: _Group) -> None:
        if self._group is group:
            self._group = None
        self._removing.discard(group)

    def _remove_all(self, queue_ids: Sequence[str], *, durable: bool) -> dict[str, SpoolError]:
        """Blocking: complete each message in the spool, then flush when asked; the ones that
        failed, and why."""
        errors: dict[str, SpoolError] = {}
        for queue_id in queue_ids:
            try:
                self._spool.complete(queue_id)
            except SpoolError as exc:
                errors[queue_id] = exc
        if durable and len(errors) < len(queue_ids):
            try:
                self._spool.flush_removals()
            except SpoolError as exc:
                # Removed, maybe not durably: a crash now would send these again (a duplicate,
                # never a loss). Nothing is left to undo, so one line says so.
                log.error("status=removal-unflushed messages=%d error=%r", len(queue_ids), str(exc))
        return errors
