"""Serving the HTTP application with uvicorn inside the server's own event loop.

Untrusted input seen here: HTTP connections, parsed by uvicorn (h11) before they reach
:mod:`postoffice.web.site`.

We bind the sockets ourselves: a busy port is then a ``ListenError`` the caller reports in one
line (uvicorn would ``sys.exit``), and port 0 tells us which port it got. Signals stay with
the application: uvicorn's own handlers are not installed.

HTTPS listeners (``[listen] https``) are served by a second uvicorn server with the SMTP
listeners' own ``ssl.SSLContext`` (:class:`postoffice.net.tls.ServerTls`): its servername
callback moves each handshake onto the newest certificate, so an ACME renewal or a SIGHUP
reaches HTTPS without a restart, as it reaches SMTP. (uvicorn would build a context of its own
from files, read once.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
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
    scheme: str = "http"  # or "https"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme} {host}:{self.port}"


def address_of(sock: socket.socket, scheme: str = "http") -> HttpAddress:
    name = sock.getsockname()
    return HttpAddress(str(name[0]), int(name[1]), scheme)


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
        secure: Sequence[bool] = (),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``sockets``: listening already (made by :func:`bind_http` in a parent process),
        served instead of binding ``addresses``; ``kind`` names the listener in errors.
        ``secure``: which of the addresses (or sockets), in order, serve HTTPS with ``tls``."""
        self._kind = kind
        self._app = app
        self._addresses = addresses
        self._sockets = sockets
        self._secure = secure
        self._tls = tls
        self._servers: list[tuple[_Server, asyncio.Task[None]]] = []
        self.bound: list[HttpAddress] = []

    async def start(self) -> list[HttpAddress]:
        sockets: list[socket.socket] = list(self._sockets or ())
        try:
            if self._sockets is None:
                for number, (host, port) in enumerate(self._addresses):
                    kind = "https" if self._is_secure(number) else self._kind
                    sockets.append(bind_http(host, port, kind=kind))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        plain = [sock for number, sock in enumerate(sockets) if not self._is_secure(number)]
        secure = [sock for number, sock in enumerate(sockets) if self._is_secure(number)]
        self.bound = [address_of(sock) for sock in plain] + [address_of(sock, "https") for sock in secure]
        try:
            for group, tls in ((plain, None), (secure, self._tls)):
                if group:
                    await self._serve(group, tls)
        except BaseException:
            await self.stop()
            raise
        return self.bound

    def _is_secure(self, number: int) -> bool:
        return number < len(self._secure) and self._secure[number]

    async def _serve(self, sockets: list[socket.socket], tls: ssl.SSLContext | None) -> None:
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
            ws="none",
        )
        if tls is not None:
            config.load()  # serve() loads only an unloaded config: the shared context stays
            config.ssl = tls
        server = _Server(config)
        name = "postoffice-https" if tls is not None else "postoffice-http"
        task = asyncio.create_task(server.serve(sockets=sockets), name=name)
        self._servers.append((server, task))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()  # raises what went wrong

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server, _ in servers:
            server.should_exit = True
        for server, task in servers:
            try:
                await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_GRACE * 2)
            except TimeoutError:
                server.force_exit = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:  # a server that failed to start has said so already
                continue
