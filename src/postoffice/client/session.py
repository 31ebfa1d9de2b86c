"""Opening a session of the asyncio SMTP client: connecting (implicit TLS too), the greeting,
EHLO or HELO (RFC 5321 §4.1.1.1), STARTTLS (RFC 3207) and AUTH (RFC 4954).

Part of :mod:`postoffice.client.connection`. Our own secrets (the AUTH password) go on the
wire only inside TLS or to a loopback address, and never into a transcript.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl

from postoffice.client.transport import ClientTransport, TlsMode
from postoffice.errors import (
    SmtpAuthError,
    SmtpConnectError,
    SmtpProtocolError,
    SmtpReplyError,
    SmtpTimeoutError,
    SmtpTlsError,
)
from postoffice.smtp import client as core
from postoffice.smtp.grammar import is_helo_name

# Reply codes the session acts on (RFC 5321 §4.2.2-3, RFC 3207, RFC 4954).
_SERVICE_READY = 220
_AUTH_SUCCEEDED = 235
_AUTH_CHALLENGE = 334


class ClientSession(ClientTransport):
    """Opening an SMTP session: connect, greeting, EHLO (or HELO), STARTTLS and AUTH."""

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
