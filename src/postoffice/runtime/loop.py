"""The event loop a server process runs on, and what becomes of asyncio's own errors.

Untrusted input seen here: none directly; an error asyncio reports may carry text a client
sent (an exception's message), so it is logged with ``%r``, on one line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("postoffice")


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (``pip install 'postoffice[fast]'``).

    Its transports do the socket work of a session in C; the server behaves the same on
    either loop, and the test suite runs on the standard one.
    """
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: what asyncio catches itself (a callback that raised, a
    task's exception nobody retrieved, a transport's fatal error) is one log line.

    asyncio's default handler logs to the ``asyncio`` logger with the traceback, which no
    handler of ours formats: it would reach standard error as many lines. A traceback never
    reaches a log (ARCHITECTURE.md); the server goes on.
    """
    exception = context.get("exception")
    if isinstance(exception, BaseException):
        error = f"{type(exception).__name__}: {exception}"
    else:
        error = str(context.get("message") or "unknown error")
    log.error("event=internal-error where=asyncio error=%r", " ".join(error.split()))
