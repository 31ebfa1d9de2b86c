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

from types import TracebackType

from postoffice.client.transaction import ClientTransactions, Content, SendResult, Transaction
from postoffice.client.transport import (
    DEFAULT_DATA_TIMEOUT,
    DEFAULT_TIMEOUT,
    TlsMode,
    TranscriptHook,
    TranscriptLine,
)
from postoffice.errors import SmtpReplyError

__all__ = [
    "DEFAULT_DATA_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "Content",
    "SendResult",
    "SmtpClient",
    "TlsMode",
    "Transaction",
    "TranscriptHook",
    "TranscriptLine",
]


class SmtpClient(ClientTransactions):
    """A connection to an SMTP server; see the module docstring for an example.

    ``credentials`` is ``(user, password)`` for AUTH (PLAIN preferred, else LOGIN); it is used
    only over TLS or to a loopback address unless ``allow_plaintext_auth``. ``ssl_context``
    defaults to :func:`ssl.create_default_context` (certificates and host name verified);
    ``server_name`` is the name the certificate must carry (default ``host``). ``timeout``
    bounds each reply, ``connect_timeout`` (default ``timeout``) the connection and TLS
    handshake, ``data_timeout`` sending the content and the reply to its end.

    The parts: :mod:`~postoffice.client.transport` (the connection's plumbing),
    :mod:`~postoffice.client.session` (connect, EHLO, STARTTLS, AUTH) and
    :mod:`~postoffice.client.transaction` (the mail transactions).
    """

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
