"""The PROXY protocol in front of an SMTP session: believe the header only from trusted proxies.

Untrusted input seen here: the first bytes of each connection on a listener that expects a
PROXY header (HAProxy, cloud load balancers), and the connecting address. A connection from an
address outside ``proxy_protocol.trusted`` is closed without a greeting: a direct client could
otherwise claim any address it likes. A trusted proxy must send a valid header within the
command timeout; a broken one closes the connection (the specification forbids guessing).

The gate stands between asyncio and :class:`~postoffice.net.session.SmtpSession`: once the
header is read it hands the session the real client address, starts it (greeting, limits per
client) and forwards every later callback, including bytes that followed the header.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from postoffice import metrics
from postoffice.config import ProxyProtocol
from postoffice.net import proxy_protocol
from postoffice.net.session import SmtpSession

log = logging.getLogger("postoffice.net")

# §2.2 of the specification: a version 2 header with TLVs can reach 16 + 65535 octets, but
# nothing we use needs more than the addresses; a proxy sending more is refused.
_MAX_HEADER = 4096


class ProxyGate(asyncio.Protocol):
    def __init__(self, session: SmtpSession, settings: ProxyProtocol, timeout: float) -> None:
        self._session = session
        self._settings = settings
        self._timeout = timeout
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._started = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        if not self._settings.is_trusted(address):
            log.warning(
                "session=%s event=proxy-refused client=%s reason=untrusted", self._session.id, address
            )
            metrics.current().proxy_refused()
            self._transport.abort()
            return
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self._started:
            self._session.data_received(data)
            return
        self._buffer += data
        try:
            header = proxy_protocol.parse(self._buffer[:_MAX_HEADER])
        except proxy_protocol.ProxyProtocolError as exc:
            self._refuse(str(exc))
            return
        if header is None:
            if len(self._buffer) >= _MAX_HEADER:
                self._refuse("header too long")
            return
        rest, self._buffer = self._buffer[header.length :], b""
        self._start(header.source[0] if header.source is not None else None)
        if rest:
            self._session.data_received(rest)

    def _start(self, client: str | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._transport is not None
        self._started = True
        # LOCAL and UNKNOWN: the proxy speaks for itself (health checks); keep its address.
        self._session.proxied_peer = client
        self._session.connection_made(self._transport)

    def _refuse(self, reason: str) -> None:
        peer = self._transport.get_extra_info("peername") if self._transport else None
        log.warning(
            "session=%s event=proxy-refused client=%s reason=%r",
            self._session.id,
            peer[0] if peer else "",
            reason,
        )
        metrics.current().proxy_refused()
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.abort()

    def _expire(self) -> None:
        if not self._started:
            self._refuse("no PROXY header before the timeout")

    def eof_received(self) -> bool | None:
        if self._started:
            return self._session.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._started:
            self._session.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._started:
            self._session.pause_writing()

    def resume_writing(self) -> None:
        if self._started:
            self._session.resume_writing()
