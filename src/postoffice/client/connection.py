"""An asyncio SMTP client: one connection to one server, one or more mail transactions on it.

Untrusted input seen here: everything the server sends, parsed by
:class:`~postoffice.smtp.client.ReplyReader`; a reply that breaks the protocol ends the
connection with :class:`~postoffice.errors.SmtpProtocolError`. Our own secrets (the AUTH
password) go on the wire only inside TLS or to a loopback address, and never into a transcript.

Usage::

    async with SmtpClient("mx.example", 25, tls=TlsMode.STARTTLS) as client:
        result = await client.send("me@example.org", ["you@example.com"], message_bytes)
    result.refused   # {recipient: Reply} for every RCPT TO the server refused

Every failure is one exception of the :class:`~postoffice.errors.SmtpClientError` family,
carrying the server's :class:`Reply` when there is one and saying whether a retry may help
(``temporary``). A recipient refused while others were accepted is not an exception: it is in
:attr:`SendResult.refused`.

An MTA that decides per recipient (the remote delivery agent) uses the layer below
:meth:`SmtpClient.send`: :meth:`SmtpClient.transact` runs one :class:`Transaction` and records
every reply, refusals included, raising only when the conversation itself breaks. With
PIPELINING (RFC 2920) MAIL, every RCPT and DATA go in one write and the replies are read in
order; without it, one command at a time.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import os
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, cast

from postoffice.errors import (
    LocalProtocolError,
    SmtpAuthError,
    SmtpClientError,
    SmtpConnectError,
    SmtpDataRefused,
    SmtpMessageTooBigError,
    SmtpProtocolError,
    SmtpRecipientsRefused,
    SmtpReplyError,
    SmtpSenderRefused,
    SmtpTimeoutError,
    SmtpTlsError,
    SmtpUnsupportedError,
)
from postoffice.smtp import client as core
from postoffice.smtp.grammar import is_helo_name
from postoffice.smtp.replies import Reply

# Reply codes the client acts on (RFC 5321 §4.2.2-3, RFC 3207, RFC 4954).
_SERVICE_READY = 220
_CLOSING_CHANNEL = 421
_AUTH_SUCCEEDED = 235
_AUTH_CHALLENGE = 334
_START_MAIL_INPUT = 354

# RFC 5321 §4.5.3.2 gives per-command client timeouts of 2 to 10 minutes; a person at a
# terminal will not wait that long, so the command timeout is shorter and the caller's choice.
DEFAULT_TIMEOUT = 60.0
# §4.5.3.2.6 "DATA Termination: 10 minutes": the server may be scanning or storing the message.
DEFAULT_DATA_TIMEOUT = 600.0
# Octets handed to the transport per write while streaming the message; writing waits whenever
# the transport's buffer is full, so a large message never piles up in memory twice.
_CONTENT_CHUNK = 64 * 1024


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

# The message content: the whole of it, or its chunks (a file read in blocks, maybe off the loop).
Content = bytes | Iterable[bytes] | AsyncIterable[bytes]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one message: the reply to each RCPT TO and the final reply."""

    accepted: dict[str, Reply]
    refused: dict[str, Reply]
    reply: Reply  # the reply to the end of the data: "250 ... queued as ..."


@dataclass(slots=True)
class Transaction:
    """One mail transaction: its command lines, and the server's replies as they arrive.

    :meth:`SmtpClient.transact` records the replies in order (MAIL, each RCPT, DATA, the end of
    the content), so after an exception it still says how far the transaction got. A reply
    that was never asked for stays None (no RCPT after a refused MAIL without PIPELINING).
    """

    mail: bytes  # the MAIL FROM line (core.mail)
    recipients: Sequence[bytes]  # one RCPT TO line each (core.rcpt)
    mail_reply: Reply | None = None
    rcpt_replies: list[Reply] = field(default_factory=list)
    data_reply: Reply | None = None
    final_reply: Reply | None = None  # the reply to the end of the content

    @property
    def accepted(self) -> list[int]:
        """Positions of the recipients whose RCPT was accepted."""
        return [position for position, reply in enumerate(self.rcpt_replies) if reply.positive]

    @property
    def ready_for_content(self) -> bool:
        """MAIL, at least one RCPT and DATA accepted: the server waits for the message."""
        mail, data = self.mail_reply, self.data_reply
        return (
            mail is not None
            and mail.positive
            and bool(self.accepted)
            and data is not None
            and data.code == _START_MAIL_INPUT
        )

    def record(self, reply: Reply) -> None:
        """The next reply, in the order the commands went out."""
        if self.mail_reply is None:
            self.mail_reply = reply
        elif len(self.rcpt_replies) < len(self.recipients):
            self.rcpt_replies.append(reply)
        elif self.data_reply is None:
            self.data_reply = reply
        else:
            self.final_reply = reply


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


class SmtpClient:
    """A connection to an SMTP server; see the module docstring for an example.

    ``credentials`` is ``(user, password)`` for AUTH (PLAIN preferred, else LOGIN); it is used
    only over TLS or to a loopback address unless ``allow_plaintext_auth``. ``ssl_context``
    defaults to :func:`ssl.create_default_context` (certificates and host name verified);
    ``server_name`` is the name the certificate must carry (default ``host``). ``timeout``
    bounds each reply, ``connect_timeout`` (default ``timeout``) the connection and TLS
    handshake, ``data_timeout`` sending the content and the reply to its end.
    """

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

    # --- connection ---------------------------------------------------------------------------

    async def __aenter__(self) -> SmtpClient:
        await self.connect()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, SmtpReplyError):
            await self.quit()  # the connection is in order after a refusal: say goodbye
        else:
            self.close()

    async def connect(self, sock: socket.socket | None = None) -> None:
        """Connect, read the greeting, EHLO (or HELO), STARTTLS and AUTH as configured.

        ``sock`` is a socket the caller already connected (to an address it chose itself);
        without one, ``host`` and ``port`` are connected to.
        """
        loop = asyncio.get_running_loop()
        implicit = self.tls_mode is TlsMode.IMPLICIT
        context = self._context() if implicit else None
        server_name = self._server_name if implicit else None
        self.activity = "connecting"
        try:
            async with asyncio.timeout(self.connect_timeout):
                if sock is None:
                    _, protocol = await loop.create_connection(
                        self._new_protocol, self.host, self.port, ssl=context, server_hostname=server_name
                    )
                else:
                    _, protocol = await loop.create_connection(
                        self._new_protocol, sock=sock, ssl=context, server_hostname=server_name
                    )
        except TimeoutError:
            raise SmtpTimeoutError(
                f"cannot connect to {self._where}: timed out after {self.connect_timeout:g}s"
            ) from None
        except ssl.SSLError as exc:
            raise _tls_error(exc) from None
        except OSError as exc:
            raise SmtpConnectError(f"cannot connect to {self._where}: {_reason(exc)}") from None
        self._protocol = protocol
        self.tls_active = implicit
        try:
            await self._open_session()
        except BaseException:
            self.close()
            raise

    def _new_protocol(self) -> _Protocol:
        return _Protocol(self._server_line)

    async def _open_session(self) -> None:
        greeting = await self._reply("the greeting")
        self.greeting = greeting
        if greeting.code != _SERVICE_READY:
            if greeting.positive:
                raise SmtpProtocolError(f"{self._where} greeted with {greeting}, not 220", greeting)
            raise SmtpReplyError(
                f"{self._where} refused the connection: {greeting}", greeting, command="greeting"
            )
        await self._hello()
        if self.tls_mode in (TlsMode.STARTTLS, TlsMode.STARTTLS_IF_OFFERED) and not self.tls_active:
            await self._starttls()
        if self._credentials is not None:
            await self._authenticate(*self._credentials)

    @property
    def _where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _hello_name(self) -> str:
        """Our name for EHLO: the caller's, our host name if qualified, else our address literal.

        RFC 5321 §4.1.4: "If [a fully qualified name] is not available, the client SHOULD send
        an address literal" — better than an unqualified name a strict server refuses.
        """
        if self._ehlo_name:
            return self._ehlo_name
        name = socket.gethostname()
        if "." in name and is_helo_name(name):
            return name
        local = self._transport.get_extra_info("sockname")
        address = ipaddress.ip_address(str(local[0]).split("%", 1)[0]) if local else None
        if isinstance(address, ipaddress.IPv6Address):
            return f"[IPv6:{address}]"
        return f"[{address}]" if address is not None else "[127.0.0.1]"

    async def _hello(self) -> None:
        name = self._hello_name()
        reply = await self._command(core.ehlo(name), "EHLO")
        if reply.positive:
            self.esmtp = True
            self.extensions = core.Extensions.from_ehlo(reply)
            return
        if reply.transient:
            raise SmtpReplyError(f"EHLO refused: {reply}", reply, command="EHLO")
        # §4.1.4 / §3.2: a server that does not know EHLO answers 5xx; fall back to HELO.
        reply = await self._command(core.helo(name), "HELO")
        if not reply.positive:
            raise SmtpReplyError(f"HELO refused: {reply}", reply, command="HELO")
        self.esmtp = False
        self.extensions = core.Extensions()

    async def _starttls(self) -> None:
        if "STARTTLS" not in self.extensions:
            if self.tls_mode is TlsMode.STARTTLS:
                raise SmtpTlsError(f"{self._where} does not offer STARTTLS")
            return
        reply = await self._command(core.STARTTLS, "STARTTLS")
        if reply.code != _SERVICE_READY:
            if self.tls_mode is TlsMode.STARTTLS:
                raise SmtpTlsError(f"STARTTLS refused: {reply}", reply)
            return
        protocol = self._proto
        if protocol.reader.has_unread:
            # Anything after "220 Ready to start TLS" came in plaintext and could be a reply
            # injected by a machine in the middle (the client side of CVE-2011-0411).
            raise SmtpProtocolError("the server sent data after its STARTTLS reply, before TLS started")
        loop = asyncio.get_running_loop()
        self.activity = "starting TLS"
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport = await loop.start_tls(
                    self._transport, protocol, self._context(), server_hostname=self._server_name
                )
        except TimeoutError:
            raise SmtpTlsError(
                f"TLS handshake with {self._where} timed out after {self.connect_timeout:g}s"
            ) from None
        except ssl.SSLError as exc:
            raise _tls_error(exc) from None
        except (OSError, RuntimeError) as exc:
            raise SmtpConnectError(f"TLS handshake with {self._where} failed: {_reason(exc)}") from None
        if transport is None:
            raise SmtpConnectError(f"{self._where} closed the connection during the TLS handshake")
        protocol.transport = transport
        self.tls_active = True
        # RFC 3207 §4.2: forget what the server said in plaintext and ask again.
        self.extensions = core.Extensions()
        await self._hello()

    # --- AUTH (RFC 4954) ----------------------------------------------------------------------

    async def _authenticate(self, user: str, password: str) -> None:
        if not (self.tls_active or self._allow_plaintext_auth or self._peer_is_loopback()):
            raise SmtpAuthError(
                f"not sending a password to {self._where} without TLS (use STARTTLS or implicit TLS)"
            )
        offered = self.extensions.auth_mechanisms
        if "PLAIN" in offered:
            first, later = core.auth_plain(user, password)
            reply = await self._command(first, "AUTH")
            if reply.code == _AUTH_CHALLENGE and later is not None:
                reply = await self._command(later, "AUTH", secret=True)
        elif "LOGIN" in offered:
            reply = await self._command(core.auth_login(), "AUTH")
            for value in (user, password):
                if reply.code != _AUTH_CHALLENGE:
                    break
                reply = await self._command(core.login_response(value), "AUTH", secret=True)
        else:
            what = f"offers {' '.join(offered)}" if offered else "offers no AUTH"
            raise SmtpAuthError(f"{self._where} {what}; PLAIN or LOGIN is needed")
        if reply.code == _AUTH_CHALLENGE:
            # A challenge we have no answer for: cancel the exchange (RFC 4954 §4).
            reply = await self._command(core.SASL_CANCEL, "AUTH")
        if reply.code != _AUTH_SUCCEEDED:
            raise SmtpAuthError(f"authentication failed: {reply}", reply)
        self.authenticated = True

    def _peer_is_loopback(self) -> bool:
        peer = self._transport.get_extra_info("peername")
        try:
            return peer is not None and ipaddress.ip_address(str(peer[0]).split("%", 1)[0]).is_loopback
        except ValueError:
            return False

    # --- the mail transaction -----------------------------------------------------------------

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: Content,
        *,
        size: int | None = None,
        eight_bit: bool | None = None,
        smtputf8: bool | None = None,
    ) -> SendResult:
        """Send one message: MAIL, RCPT for each recipient, DATA and the dot-stuffed content.

        ``message`` is the whole message or an iterable of its chunks (a file read in blocks);
        for chunks, give ``size`` (for RFC 1870 SIZE) and say whether it has 8-bit octets
        (``eight_bit``, RFC 6152) or UTF-8 headers (``smtputf8``, RFC 6531). For bytes, all
        three are worked out. Line endings become CRLF on the way out. A non-ASCII address
        needs the server's SMTPUTF8; UTF-8 in the headers asks for it when offered.

        Raises :class:`SmtpSenderRefused`, :class:`SmtpRecipientsRefused` (every recipient
        refused), :class:`SmtpDataRefused`, or another :class:`SmtpClientError`; after a refusal
        the connection is reset (RSET) and can carry the next message.
        """
        unique = list(dict.fromkeys(recipients))
        if not unique:
            raise LocalProtocolError("a message needs at least one recipient")
        for address in unique:
            core.check_address(address)
        if isinstance(message, bytes):
            size = _wire_size(message) if size is None else size
            eight_bit = not message.isascii() if eight_bit is None else eight_bit
            head = core.header_section(message)
        else:
            head = b""
        utf8 = core.needs_smtputf8([], head) if smtputf8 is None else smtputf8
        utf8_addresses = core.needs_smtputf8([sender, *unique])
        params = self.mail_parameters(
            size, eight_bit=bool(eight_bit), smtputf8=utf8 or utf8_addresses, smtputf8_required=utf8_addresses
        )
        transaction = Transaction(core.mail(sender, params), [core.rcpt(address) for address in unique])
        await self.transact(transaction, message)
        try:
            return _send_result(sender, unique, transaction)
        except SmtpReplyError:
            await self.reset()
            raise

    def mail_parameters(
        self, size: int | None, *, eight_bit: bool, smtputf8: bool, smtputf8_required: bool
    ) -> dict[str, str | None]:
        """The MAIL parameters this server takes for a message; refuses what it cannot take.

        Raises :class:`SmtpMessageTooBigError` when ``size`` is over the server's SIZE and
        :class:`SmtpUnsupportedError` when SMTPUTF8 is required and not offered: both before
        anything is sent.
        """
        params: dict[str, str | None] = {}
        ext = self.extensions
        limit = ext.size_limit
        if size is not None and limit is not None and size > limit:
            raise SmtpMessageTooBigError(
                f"the message is {size} octets; {self._where} takes at most {limit} (SIZE)",
                size=size,
                limit=limit,
            )
        if size is not None and "SIZE" in ext:
            params["SIZE"] = str(size)  # RFC 1870 §6.1
        # RFC 6531 §3.4: a non-ASCII address cannot be sent without SMTPUTF8. UTF-8 only in the
        # headers is sent anyway when the server does not offer it, as Postfix does: it is a
        # request to preserve them, and the server that cannot will still deliver the message.
        if smtputf8 and "SMTPUTF8" in ext:
            params["SMTPUTF8"] = None
        elif smtputf8_required:
            raise SmtpUnsupportedError(
                f"a non-ASCII address needs SMTPUTF8 and {self._where} does not offer it"
            )
        # RFC 6152 §3: BODY=8BITMIME tells the server the content has 8-bit octets. A server
        # without 8BITMIME gets the message as it is, as Postfix does by default: rewriting
        # it as 7-bit would break signatures, and nearly every server accepts it.
        if eight_bit and "8BITMIME" in ext:
            params["BODY"] = "8BITMIME"
        return params

    async def transact(self, transaction: Transaction, content: Content) -> Transaction:
        """Run one mail transaction, recording every reply in ``transaction``.

        Refusals are recorded, not raised: the caller reads them per recipient. The content is
        sent only when MAIL, at least one RCPT and DATA were accepted
        (:attr:`Transaction.ready_for_content`); after a refusal the caller says RSET
        (:meth:`reset`) to use the connection again. Raises :class:`SmtpClientError` only when
        the conversation breaks: a lost connection, a timeout, a garbled reply.
        """
        if "PIPELINING" in self.extensions:
            await self._envelope_pipelined(transaction)
        else:
            await self._envelope_one_by_one(transaction)
        if transaction.ready_for_content:
            await self._send_content(content)
            transaction.record(await self._reply("the end of the message", timeout=self.data_timeout))
        return transaction

    async def _envelope_pipelined(self, transaction: Transaction) -> None:
        # RFC 2920 §3.1: MAIL and the RCPTs may go anywhere in a group, DATA only last; the
        # client "MUST check ALL statuses associated with each command in a group".
        lines = [transaction.mail, *transaction.recipients, core.DATA]
        for line in lines:
            self._client_line(line)
        self._write(b"".join(lines))
        for line in lines:
            try:
                transaction.record(await self._reply(core.redacted(line)))
            except SmtpConnectError:
                # A 421 comes just before the server hangs up (§3.8): the rest go unanswered.
                last = (
                    transaction.mail_reply if not transaction.rcpt_replies else transaction.rcpt_replies[-1]
                )
                if last is None or last.code != _CLOSING_CHANNEL:
                    raise
                while transaction.data_reply is None:
                    transaction.record(last)
                return
        data = transaction.data_reply
        if data is not None and data.code == _START_MAIL_INPUT and not transaction.ready_for_content:
            # §3.1: "if the DATA command was accepted the client SMTP should send a single
            # dot": an empty message, ended, so the RSET that follows is read as a command.
            await self._finish_empty_data()

    async def _envelope_one_by_one(self, transaction: Transaction) -> None:
        mail = await self._command(transaction.mail, "MAIL")
        transaction.record(mail)
        if not mail.positive:
            return
        for line in transaction.recipients:
            transaction.record(await self._command(line, "RCPT"))
        if transaction.accepted:
            transaction.record(await self._command(core.DATA, "DATA"))

    async def _finish_empty_data(self) -> None:
        self._client_line(core.END_OF_DATA)
        self._write(core.END_OF_DATA)
        await self._reply("the end of an empty message", timeout=self.data_timeout)

    async def _send_content(self, content: Content) -> None:
        """The content, dot-stuffed, then ``.``; a server that stops reading times out."""
        self.activity = "sending the message"
        try:
            async with asyncio.timeout(self.data_timeout):
                await self._stream(_chunks(content))
        except TimeoutError:
            self.close()
            raise SmtpTimeoutError(
                f"{self._where} took no more of the message within {self.data_timeout:g}s"
            ) from None

    async def _stream(self, chunks: AsyncIterator[bytes]) -> None:
        stuffer = core.DotStuffer()
        partial = bytearray()  # a line split across writes, kept for the transcript only
        async for chunk in chunks:
            data = stuffer.feed(chunk)
            if data:
                self._write(data)
                self._content_lines(partial, data)
                await self._drain()
        tail = stuffer.finish()
        self._content_lines(partial, tail[: -len(core.END_OF_DATA)])
        self._client_line(core.END_OF_DATA)
        self._write(tail)
        await self._drain()

    def _content_lines(self, partial: bytearray, data: bytes) -> None:
        if self._transcript is None:
            return
        partial += data
        *lines, rest = bytes(partial).split(b"\r\n")
        partial[:] = rest
        for line in lines:
            self._transcript(TranscriptLine("C", line.decode("utf-8", "replace"), content=True))

    async def reset(self, *, timeout: float | None = None) -> bool:
        """RSET (§4.1.1.5): end a refused transaction, or check that an idle connection works.

        True when the server answered 250; otherwise the connection is closed.
        """
        if self.is_connected:
            try:
                if (await self._command(core.RSET, "RSET", timeout=timeout)).positive:
                    return True
            except SmtpClientError:
                pass
        self.close()
        return False

    @property
    def is_connected(self) -> bool:
        """The connection is open and has not broken the protocol."""
        protocol = self._protocol
        return protocol is not None and not protocol.closed and protocol.error is None

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


def _wire_size(message: bytes) -> int:
    """The size after line endings become CRLF (RFC 1870 §6.1 asks for an estimate at least)."""
    return len(message) + message.count(b"\n") - message.count(b"\r\n")


async def _chunks(content: Content) -> AsyncIterator[bytes]:
    """The content in chunks: bytes cut to size, an iterable's chunks as they come."""
    if isinstance(content, bytes):
        for start in range(0, len(content), _CONTENT_CHUNK):
            yield content[start : start + _CONTENT_CHUNK]
    elif isinstance(content, AsyncIterable):
        async for chunk in content:
            yield chunk
    else:
        for chunk in content:
            yield chunk


def _send_result(sender: str, recipients: list[str], transaction: Transaction) -> SendResult:
    """What :meth:`SmtpClient.send` returns for a transaction, or the refusal it raises."""
    mail = transaction.mail_reply
    if mail is not None and not mail.positive:
        raise SmtpSenderRefused(f"sender <{sender}> refused: {mail}", mail, command="MAIL")
    accepted, refused = _split(recipients, transaction.rcpt_replies)
    if not accepted:
        raise _all_refused(refused)
    data = transaction.data_reply
    if data is not None and data.code != _START_MAIL_INPUT:
        raise SmtpDataRefused(f"DATA refused: {data}", data, command="DATA")
    reply = transaction.final_reply
    assert reply is not None  # transact() returns with one once the content went
    if not reply.positive:
        raise SmtpDataRefused(f"message refused: {reply}", reply, command="DATA")
    return SendResult(accepted, refused, reply)


def _split(recipients: list[str], replies: list[Reply]) -> tuple[dict[str, Reply], dict[str, Reply]]:
    accepted: dict[str, Reply] = {}
    refused: dict[str, Reply] = {}
    for address, reply in zip(recipients, replies, strict=True):
        (accepted if reply.positive else refused)[address] = reply
    return accepted, refused


def _all_refused(refused: dict[str, Reply]) -> SmtpRecipientsRefused:
    first_address, first = next(iter(refused.items()))
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    return SmtpRecipientsRefused(
        f"recipient <{first_address}> refused: {first}{more}", first, results=dict(refused)
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"host not found ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno:
        # asyncio words it "Connect call failed (address)"; the address is already in our line.
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _tls_error(exc: ssl.SSLError) -> SmtpTlsError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return SmtpTlsError(f"the server's certificate was not accepted: {detail}")
    return SmtpTlsError(f"TLS failed: {exc.reason or exc}")
