"""A cluster node whose database does not answer when it starts: it waits, and says so.

Untrusted input seen here: HTTP requests to the waiting web side (no parameters are read), and
the database's error messages (shown on one line, never the password).

A refused login, an unknown database or a malformed URL cannot get better by waiting: one
line and exit 1 (:attr:`~postoffice.errors.DatabaseError.permanent`). A database that is down
or restarting (a whole cluster rebooting at once, PostgreSQL coming up after the nodes) is
waited for: one line saying so, then a try every second, backing off to every
:data:`RETRY_MAX` seconds, until it answers; then the node starts as usual.

While it waits, the node takes no mail: its SMTP, IMAP and POP3 listeners are not open, so a
sender's connection is refused and it tries the next MX host at once (RFC 5321 §5.1) instead of
waiting out a timeout, and a load balancer's TCP check sees the node down. Its web listeners
are open (bound now and handed to the server later, so a port 0 keeps its port) and answer
``/livez`` 200 (the process is alive: an orchestrator must not restart it for waiting),
``/readyz`` 503 and ``/api/v1/status`` (not ready, and why). SIGTERM or SIGINT ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from postoffice import __version__
from postoffice.config import Config
from postoffice.errors import DatabaseError
from postoffice.pg.database import Database
from postoffice.runtime.banner import say
from postoffice.web.server import HttpServer, bind_http

log = logging.getLogger("postoffice")

RETRY_MIN = 1.0
RETRY_MAX = 10.0
CHECK_TIMEOUT = 5.0


@dataclass
class Waited:
    """How the wait ended: ``exit`` set (stopped, or a permanent failure: said already), or the
    database answers and ``http`` holds the web listeners bound while waiting (None: none were)."""

    exit: int | None = None
    http: tuple[socket.socket, ...] | None = None

    def close(self) -> None:
        for sock in self.http or ():
            with contextlib.suppress(OSError):
                sock.close()


def cluster_database(config: Config) -> Database:
    """The node's database as configured (a malformed URL: a permanent DatabaseError)."""
    storage = config.storage
    return Database(
        storage.database or "", pool_size=storage.pool_size, name=f"postoffice {config.node_name}"
    )


def wait_for_database(config: Config, http: Sequence[socket.socket] | None = None) -> Waited:
    """Return once ``config``'s database answers; ``http``: the web listeners, bound already
    (as root), else they are bound here if the wait is needed. Prints the one line."""
    try:
        database = cluster_database(config)
        database.check(CHECK_TIMEOUT)
        return Waited()
    except DatabaseError as error:
        if error.permanent:
            print(f"postoffice: {error}", file=sys.stderr)
            return Waited(exit=1)
        first = error
    print(
        f"postoffice: {first}; waiting for it (retrying, at most every {RETRY_MAX:.0f}s;"
        " /readyz answers 503 until it answers)",
        file=sys.stderr,
        flush=True,
    )
    sockets = tuple(http) if http is not None else _bind_web(config)
    waited = Waited(http=None if http is not None else sockets)
    with contextlib.suppress(KeyboardInterrupt):
        waited.exit = asyncio.run(_wait(config, database, sockets, str(first)))
        return waited
    waited.exit = 130
    return waited


def _bind_web(config: Config) -> tuple[socket.socket, ...]:
    bound: list[socket.socket] = []
    try:
        for listener in config.http_listeners:
            bound.append(bind_http(listener.host, listener.port, kind=listener.kind))
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return tuple(bound)


async def _wait(
    config: Config, database: Database, sockets: Sequence[socket.socket], reason: str
) -> int | None:
    """The exit status (stopped, or a permanent failure), or None once the database answers."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    state = {"reason": reason}
    server = await _serve_waiting(config, sockets, state)
    try:
        return await _retry(database, stop, state)
    finally:
        if server is not None:
            await server.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _retry(database: Database, stop: asyncio.Event, state: dict[str, str]) -> int | None:
    delay, began = RETRY_MIN, time.monotonic()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            log.info("event=stopped-waiting-for-database")
            return 0
        try:
            await asyncio.to_thread(database.check, CHECK_TIMEOUT)
        except DatabaseError as error:
            if error.permanent:
                print(f"postoffice: {error}", file=sys.stderr)
                return 1
            if str(error) != state["reason"]:
                log.warning("event=database-waiting error=%r", str(error))
            state["reason"] = str(error)
            delay = min(delay * 2, RETRY_MAX)
            continue
        log.info("event=database-answers waited=%.1fs", time.monotonic() - began)
        return None  # the node starts


async def _serve_waiting(
    config: Config, sockets: Sequence[socket.socket], state: dict[str, str]
) -> HttpServer | None:
    """The plain-HTTP listeners answer as a node that waits (HTTPS ones are left unanswered:
    their certificate is loaded when the server starts)."""
    plain = [
        sock.dup()
        for sock, listener in zip(sockets, config.http_listeners, strict=True)
        if listener.kind == "http"
    ]
    if not plain:
        return None
    server = HttpServer(_waiting_app(config, state), [], sockets=plain)
    for address in await server.start():
        say(f"waiting {address} (/readyz answers 503 until the database answers)")
    return server


def _waiting_app(config: Config, state: dict[str, str]) -> Starlette:
    started = time.time()

    async def livez(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        return PlainTextResponse("not ready: waiting for the database\n", status_code=503)

    async def status(request: Request) -> Response:
        return JSONResponse(
            {
                "version": __version__,
                "hostname": config.hostname,
                "node": config.node_name,
                "pid": os.getpid(),
                "uptime_seconds": round(time.time() - started, 1),
                "ready": False,
                "listeners": [],
                "queue": {},
                "cluster": {"database": "unreachable", "nodes": [], "queue": None},
                "recent_errors": [{"time": "", "level": "WARNING", "message": state["reason"]}],
            }
        )

    routes = [Route("/livez", livez), Route("/readyz", readyz), Route("/api/v1/status", status)]
    return Starlette(routes=routes)
