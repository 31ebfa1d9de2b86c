"""Taking messages from the store into the queue manager: at start, after a rescan, and from a
queue shared with other nodes, swept again and again.

Untrusted input seen here: envelopes and state logs as the store gives them (its own parsing
rejects damaged ones, which are logged and left out).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from postoffice.errors import SpoolError
from postoffice.spool.envelope import QueuedMessage
from postoffice.spool.state import QueueState
from postoffice.storage import MessageStore

log = logging.getLogger("postoffice.spool")


def load_all(spool: MessageStore, queue_ids: Sequence[str]) -> list[tuple[QueuedMessage, QueueState]]:
    """Blocking: each message's envelope and recorded state; those that cannot be read are
    logged and left out."""
    loaded = []
    for queue_id in queue_ids:
        try:
            loaded.append((spool.load(queue_id), spool.read_state(queue_id)))
        except SpoolError as exc:
            # load() has moved a corrupt file aside and logged it; nothing to deliver.
            log.error("queue_id=%s status=unloadable error=%r", queue_id, str(exc))
    return loaded


async def sweep_forever(sweep: Callable[[], Awaitable[None]], interval: float) -> None:
    """``sweep`` every ``interval`` seconds until cancelled; an outage of the store is one
    line when it begins and one when it ends, not one per sweep."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep()
        except SpoolError as exc:
            if not failing:
                log.warning("status=sweep-failed error=%r", str(exc))
            failing = True
        else:
            if failing:
                log.info("status=sweep-recovered")
            failing = False
