"""The event loop a server process runs on.

Untrusted input seen here: none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


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
