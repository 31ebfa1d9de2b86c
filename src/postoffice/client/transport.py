"""The transport of the asyncio SMTP client: the protocol that feeds the server's bytes to a
:class:`~postoffice.smtp.client.ReplyReader`, writing with flow control, reading each reply
within its timeout, the transcript, and closing.

Part of :mod:`postoffice.client.connection`. Untrusted input seen here: everything the server
sends; a reply that breaks the protocol ends the connection with
:class:`~postoffice.errors.SmtpProtocolError`. AUTH secrets never go into the transcript.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from postoffice.errors import (
    LocalProtocolError,
    SmtpClientError,
    SmtpConnectError,
    SmtpProtocolError,
    SmtpTimeoutError,
)
from postoffice.smtp import client as core
from postoffice.smtp.replies import Reply

# RFC 5321 §4.5.3.2 gives per-command client timeouts of 2 to 10 minutes; a person at a
# terminal will not wait that long, so the command timeout is shorter and the caller's choice.
DEFAULT_TIMEOUT = 60.0
# §4.5.3.2.6 "DATA Termination: 10 minutes": the server may be scanning or storing the message.
DEFAULT_DATA_TIMEOUT = 600.0


class TlsMode(enum.Enum):
    """How the connection is protected."""

    PLAIN = "plain"  # never TLS
    STARTTLS_IF_OFFERED = "opportunistic"  # RFC 3207 when the server offers it, else plain
    STARTTLS = "starttls"  # RFC 3207, required: fail if the server does not offer it
    IMPLICIT = "implicit"  # TLS from the first byte (RFC 8314 §3, port 465)


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    """One line of the conversation: ``C`` what we sent, ``S`` what the server said.

    ``content`` marks a line of the message itself (after ``354``, before the final ``.``), so
    a transcript can shorten the message. AUTH secrets arrive already replaced by ``***``.
    """

    direction: Literal["C", "S"]
    text: str
    content: bool = False

    def __str__(self) -> str:
        return f"{self.direction}: {self.text}"


TranscriptHook = Callable[[TranscriptLine], None]


class _Protocol(asyncio.Protocol):
    """Feeds the server's bytes into a ReplyReader and wakes whoever waits for a reply."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.reader = core.ReplyReader(on_line)
        self.transport: asyncio.Transport | None = None
        self.error: SmtpClientError | None = None
        self.closed = False
        self.wakeup = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except SmtpProtocolError as exc:
            self.error = exc
            if self.transport is not None:
                self.transport.abort()
        self.wakeup.set()

    def eof_received(self) -> bool:
        try:
            self.reader.end_of_input()
        except SmtpProtocolError as exc:
            self.error = exc
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()
        self.wakeup.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()


class ClientTransport:
    """The plumbing of an :class:`~postoffice.client.connection.SmtpClient`: its settings and
    state, writing commands, reading replies within a timeout, the transcript, closing."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: TlsMode = TlsMode.PLAIN,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        ehlo_name: str | None = None,
        credentials: tuple[str, str] | None = None,
        allow_plaintext_auth: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        data_timeout: float = DEFAULT_DATA_TIMEOUT,
        transcript: TranscriptHook | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls_mode = tls
        self._ssl_context = ssl_context
        self._server_name = server_name or host
        self._ehlo_name = ehlo_name
        self._credentials = credentials
        self._allow_plaintext_auth = allow_plaintext_auth
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.data_timeout = data_timeout
        self._transcript = transcript
        self._protocol: _Protocol | None = None
        self.greeting: Reply | None = None
        self.extensions = core.Extensions()
        self.esmtp = False
        self.tls_active = False
        self.authenticated = False
        # What the connection is doing, for an error report: "waiting for the reply to EHLO".
        self.activity = "connecting"

    def _new_protocol(self) -> _Protocol:
        return _Protocol(self._server_line)

    @property
    def _where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_connected(self) -> bool:
        """The connection is open and has not broken the protocol."""
        protocol = self._protocol
        return protocol is not None and not protocol.closed and protocol.error is None

    def peer_certificate(self) -> bytes | None:
        """The server's certificate (DER) once TLS is up, verified or not; None before."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None or not self.tls_active:
            return None
        ssl_object = protocol.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        der: bytes | None = ssl_object.getpeercert(binary_form=True)
        return der

    # --- the end ------------------------------------------------------------------------------

    async def quit(self, *, timeout: float | None = None) -> None:
        """Say QUIT (§4.1.1.10), read the 221 if it comes (within ``timeout``), and close."""
        protocol = self._protocol
        if protocol is None:
            return
        try:
            if not protocol.closed:
                await self._command(core.QUIT, "QUIT", timeout=timeout)
        except SmtpClientError:
            pass  # the message is already sent or refused; a sloppy goodbye changes nothing
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection at once."""
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        self._protocol = None

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def _proto(self) -> _Protocol:
        if self._protocol is None:
            raise LocalProtocolError("not connected")
        return self._protocol

    @property
    def _transport(self) -> asyncio.Transport:
        transport = self._proto.transport
        assert transport is not None
        return transport

    def _write(self, data: bytes) -> None:
        protocol = self._proto
        if protocol.closed or protocol.transport is None:
            raise SmtpConnectError(f"{self._where} closed the connection")
        protocol.transport.write(data)

    async def _drain(self) -> None:
        protocol = self._proto
        await protocol.drain()
        if protocol.closed:
            raise protocol.error or SmtpConnectError(
                f"{self._where} closed the connection while we were sending"
            )

    async def _command(
        self, line: bytes, what: str, *, secret: bool = False, timeout: float | None = None
    ) -> Reply:
        self._client_line(line, secret=secret)
        self._write(line)
        return await self._reply(what, timeout=timeout)

    async def _reply(self, what: str, *, timeout: float | None = None) -> Reply:
        protocol = self._proto
        limit = self.timeout if timeout is None else timeout
        self.activity = f"waiting for the reply to {what}"
        try:
            async with asyncio.timeout(limit):
                while True:
                    reply = protocol.reader.next_reply()
                    if reply is not None:
                        return reply
                    if protocol.error is not None:
                        raise protocol.error
                    if protocol.closed:
                        raise SmtpConnectError(
                            f"{self._where} closed the connection (waiting for the reply to {what})"
                        )
                    protocol.wakeup.clear()
                    await protocol.wakeup.wait()
        except TimeoutError:
            self.close()
            raise SmtpTimeoutError(f"no reply from {self._where} to {what} within {limit:g}s") from None

    def _client_line(self, line: bytes, *, secret: bool = False) -> None:
        if self._transcript is not None:
            self._transcript(TranscriptLine("C", "***" if secret else core.redacted(line)))

    def _server_line(self, text: str) -> None:
        if self._transcript is not None:
            self._transcript(TranscriptLine("S", text))
