"""Waiting for a message: the newest match of a search above an id, now or when it arrives.

Untrusted input seen here: none directly; the query arrives compiled by
:mod:`postoffice.web.search` (every value bound) and the id and timeout checked by the API.

A test takes the highest id it knows first and waits "after" it. Ids only grow (SQLite gives
them inside the writer's transaction), so a message indexed while the wait is set up is found by
the first look, and pruning older mail never makes a wait miss one. The wait subscribes to the
event stream before that first look and looks again at every event, and at least every
:data:`LOOK_INTERVAL` seconds: another process may have indexed it (``serve --workers``), or a
sync found a file dropped into a Maildir.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from postoffice.web.events import EventHub
from postoffice.web.index_rows import Row
from postoffice.web.search import Compiled

# The longest a request may hold (the bound; a bigger timeout is cut to it).
MAX_WAIT = 300.0
DEFAULT_WAIT = 30.0
# Looks without an event, at most this far apart.
LOOK_INTERVAL = 1.0


class WaitEnded(Exception):
    """The server is stopping: the event stream ended before a match or the timeout."""


def after_id(query: Compiled, after: int) -> Compiled:
    """``query`` limited to ids above ``after``."""
    return Compiled(query.match, (*query.conditions, "id > ?"), (*query.params, after))


async def wait_for_row(
    find: Callable[[], Awaitable[Row | None]], hub: EventHub, timeout: float
) -> Row | None:
    """The first row ``find`` gives within ``timeout`` seconds; None when time is up, WaitEnded
    when the server stops first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with hub.subscribe() as subscription:
        while True:
            row = await find()
            if row is not None:
                return row
            remaining = deadline - loop.time()
            if subscription.ended:
                raise WaitEnded
            if remaining <= 0:
                return None
            await subscription.next(min(remaining, LOOK_INTERVAL))
