"""Serving the HTTP application with uvicorn inside the server's own event loop.

Untrusted input seen here: HTTP connections, parsed by uvicorn (h11) before they reach
:mod:`postoffice.web.site`.

We bind the sockets ourselves: a busy port is then a ``ListenError`` the caller reports in one
line (uvicorn would ``sys.exit``), and port 0 tells us which port it got. Signals stay with
the application: uvicorn's own handlers are not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from postoffice.errors import ListenError

# Requests may take this long to finish at shutdown before their connections are closed.
SHUTDOWN_GRACE = 5


@dataclass(frozen=True, slots=True)
class HttpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http {host}:{self.port}"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The application handles SIGTERM/SIGINT and stops us; uvicorn must not take them.
        yield


def bind_http(host: str, port: int, *, kind: str = "http") -> socket.socket:
    """A listening, non-blocking socket for ``host``:``port``; ListenError names the address
    (and ``kind``, the listener's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it a response written in two parts waits out the peer's delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError.from_os_error(kind, host, port, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn serving ``app`` on the given addresses, as a task of the running loop."""

    def __init__(
        self,
        app: ASGIApp,
        addresses: Sequence[tuple[str, int]],
        *,
        sockets: Sequence[socket.socket] | None = None,
        kind: str = "http",
    ) -> None:
        """``sockets``: listening already (made by :func:`bind_http` in a parent process),
        served instead of binding ``addresses``; ``kind`` names the listener in errors."""
        self._kind = kind
        self._app = app
        self._addresses = addresses
        self._sockets = sockets
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.bound: list[HttpAddress] = []

    async def start(self) -> list[HttpAddress]:
        sockets: list[socket.socket] = list(self._sockets or ())
        try:
            if self._sockets is None:
                for host, port in self._addresses:
                    sockets.append(bind_http(host, port, kind=self._kind))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self.bound = [HttpAddress(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in sockets]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
            ws="none",
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=sockets), name="postoffice-http")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what went wrong
        return self.bound

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), SHUTDOWN_GRACE * 2)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = None
