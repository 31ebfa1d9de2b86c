"""Serve the operations endpoints alone on the ``--http`` address, under uvicorn.

Untrusted input seen here: HTTP connections to the ``--http`` address, parsed by uvicorn.

This exists until the full web application serves the HTTP port: it then mounts
:func:`postoffice.web.ops.ops_routes` itself, and this module goes. uvicorn is driven through
``startup``/``main_loop``/``shutdown`` rather than ``serve()``, because ``serve()`` installs its
own SIGTERM/SIGINT handlers and the mail server owns the process's signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from starlette.applications import Starlette

from postoffice.web.ops import OpsState, ops_routes


class OpsHttpServer:
    def __init__(self, state: OpsState, host: str, port: int) -> None:
        self._app = Starlette(routes=ops_routes(state))
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> tuple[str, int]:
        """Bind and serve; the address actually bound (port 0 picks a free one)."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        config = uvicorn.Config(self._app, log_config=None, access_log=False, lifespan="off")
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._task = asyncio.create_task(server.main_loop())
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        server = self._server
        if server is None:
            return
        server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await server.shutdown(sockets=[self._socket] if self._socket else None)
        if self._socket is not None:
            self._socket.close()
