"""Listening sockets bound before the server gives up root (:mod:`postoffice.runtime.privileges`).

Untrusted input seen here: none; nothing here accepts a connection.

Port 25 takes root to bind and the server must not keep root, so when it is to become another
user, every listener is bound first, here, and then handed to the part that serves it: the
SMTP sockets of each process and the HTTP sockets (served by one process). With ``--workers N``
each worker gets a set of its own, bound with SO_REUSEPORT to the same addresses as the
workers would bind them themselves, so the kernel goes on spreading connections among them
(Linux lets sockets share a port only when one user made them all: here, root). Without a
user to become nothing is bound early and each part binds its own, as it always has.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from postoffice.config import Config
from postoffice.net.server import BoundSocket
from postoffice.runtime import privileges
from postoffice.runtime.workers import reserve_listeners
from postoffice.web.server import bind_http


@dataclass(frozen=True)
class Prebound:
    """Sockets bound as root: ``smtp`` holds one set per process, ``http`` and ``acme`` (the
    HTTP-01 responder on port 80, served by the process that orders certificates) listen already,
    ``pop3`` and ``imap`` are the one process's that serves POP3 and IMAP (the only one, or
    worker 0; see docs/pop3.md, docs/imap.md)."""

    smtp: tuple[tuple[BoundSocket, ...], ...]
    http: tuple[socket.socket, ...]
    acme: tuple[socket.socket, ...] = ()
    pop3: tuple[BoundSocket, ...] = ()
    imap: tuple[BoundSocket, ...] = ()

    def close(self) -> None:
        """Close this process's copies (a server listening on one keeps its own)."""
        pop3 = [sock for _, sock in (*self.pop3, *self.imap)]
        for sock in [sock for own in self.smtp for _, sock in own] + list(self.http) + list(self.acme) + pop3:
            with contextlib.suppress(OSError):
                sock.close()


def bind(config: Config) -> Prebound:
    """Bind every listener of ``config``, once for each of its ``workers``; OSError names the
    listener that could not be bound, with nothing left open."""
    count = config.worker_count
    smtp: list[tuple[BoundSocket, ...]] = []
    http: list[socket.socket] = []
    acme: list[socket.socket] = []
    pop3: tuple[BoundSocket, ...] = ()
    imap: tuple[BoundSocket, ...] = ()
    try:
        listeners = config.listeners
        for index in range(count):
            # The first set turns port 0 into a port; the others bind that same port.
            sockets, listeners = reserve_listeners(listeners, reuse_port=count > 1, first=index == 0)
            smtp.append(tuple(zip(listeners, sockets, strict=True)))
        for listener in config.http_listeners:
            http.append(bind_http(listener.host, listener.port, kind=listener.kind))
        for listener in config.acme_listeners:
            acme.append(bind_http(listener.host, listener.port, kind="acme_http"))
        if config.pop3_listeners:
            sockets, pop3_listeners = reserve_listeners(config.pop3_listeners, reuse_port=False)
            pop3 = tuple(zip(pop3_listeners, sockets, strict=True))
        if config.imap_listeners:
            sockets, imap_listeners = reserve_listeners(config.imap_listeners, reuse_port=False)
            imap = tuple(zip(imap_listeners, sockets, strict=True))
    except BaseException:
        Prebound(tuple(smtp), tuple(http), tuple(acme), pop3, imap).close()
        raise
    return Prebound(tuple(smtp), tuple(http), tuple(acme), pop3, imap)


def bind_then_drop(config: Config) -> Prebound | None:
    """Started as root with ``user`` set: bind every listener, then become that user. None:
    nothing was bound, as nothing needed to be. Raises ConfigError, PrivilegeError or OSError,
    one line."""
    identity = privileges.target(config)
    if identity is None:
        return None
    prebound = bind(config)
    try:
        privileges.become(identity, config)
    except BaseException:
        prebound.close()
        raise
    return prebound
