"""``/mcp`` on the web listener: the MCP tools of :mod:`postoffice.web.mcp_tools` over the
streamable-HTTP transport of the official SDK (stateless: each request stands alone).

Untrusted input seen here: MCP requests from whoever reaches the web listener. They are
answered only where the API needs no login (capture mode with every web listener on
loopback, :func:`postoffice.web.service.open_access`; the SDK checks Host and Origin against
loopback names too, against DNS rebinding); elsewhere ``/mcp`` is 403 and ``postoffice mcp``,
which logs in like any API client, is the way. Without the ``mcp`` package it is 404.

The tools call the server's own API over loopback, so they see what the API shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger("postoffice.web")


class McpEndpoint:
    """An ASGI app for the ``/mcp`` route; :meth:`start` once the listener's address is known."""

    def __init__(self, *, open_access: bool) -> None:
        self.open_access = open_access
        self._manager: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._starting = asyncio.Lock()
        self._base_url = ""
        self._missing = False

    async def start(self, base_url: str) -> None:
        """Note where the API answers. The SDK (and pydantic under it: some 35 MB) is imported
        and its session manager started only when the first ``/mcp`` request comes."""
        self._base_url = base_url

    async def _ensure(self) -> bool:
        """The session manager, started on first use; False without the ``mcp`` package."""
        async with self._starting:
            if self._manager is None and not self._missing:
                await self._start_manager()
        return self._manager is not None

    async def _start_manager(self) -> None:
        try:
            from postoffice.client.api import ApiClient
            from postoffice.web.mcp_tools import build
        except ImportError:  # the mcp package is an extra: pip install 'postoffice[mcp]'
            self._missing = True
            return
        server = build(ApiClient(self._base_url))
        server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True)
        manager = server.session_manager
        running = asyncio.Event()

        async def hold() -> None:
            # The manager's task group is entered and left in this one task (anyio's rule).
            async with manager.run():
                running.set()
                await self._stopping.wait()

        self._task = asyncio.create_task(hold(), name="postoffice-mcp")
        await running.wait()
        self._manager = manager

    async def stop(self) -> None:
        self._stopping.set()
        self._manager = None
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.open_access:
            answer = JSONResponse(
                {
                    "error": "/mcp needs no login only in capture mode on loopback; use postoffice mcp, which logs in"
                },
                status_code=403,
            )
        elif not self._base_url or not await self._ensure():
            answer = JSONResponse(
                {"error": "the MCP server needs the mcp package: pip install 'postoffice[mcp]'"}, 404
            )
        else:
            await self._manager.handle_request(scope, receive, send)
            return
        await answer(scope, receive, send)
