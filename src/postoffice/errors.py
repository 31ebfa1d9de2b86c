"""The one exception tree of postoffice.

Untrusted input seen here: the replies of remote servers, carried by the ``SmtpClientError``
family to our own user (the sender), never to an SMTP client. Errors the server side raises carry
replies chosen by our own code, never exception text, so nothing here can leak internals to a
client.

::

    PostofficeError
    ├── ConfigError                  a setting is wrong; names the key and the file
    ├── ListenError                  a listener cannot be opened (port taken, name does not resolve)
    ├── AccountError                 a user/alias operation failed (exists, unknown, bad address)
    ├── ProtocolError                an SMTP exchange went wrong; may carry a Reply
    │   ├── LocalProtocolError       we tried to do something the protocol forbids (a bug)
    │   └── RemoteProtocolError      the peer broke the protocol; ``reply`` answers it
    ├── MessageError                 a message to send cannot be built (a bad address, header or file)
    ├── SmtpClientError              sending to an SMTP server failed; ``temporary`` says if a retry may help
    │   ├── SmtpConnectError         no connection, a timeout, or the server hung up
    │   │   └── SmtpTimeoutError     the server went quiet: no reply (or no reading) in the time allowed
    │   ├── SmtpProtocolError        the server's replies broke RFC 5321 (garbled, or data after STARTTLS)
    │   ├── SmtpTlsError             TLS was required but not offered, or the handshake/certificate failed
    │   ├── SmtpUnsupportedError     the message needs an extension the server lacks (SMTPUTF8)
    │   ├── SmtpMessageTooBigError   the message is larger than the server's SIZE (RFC 1870)
    │   ├── SmtpAuthError            AUTH refused (``reply``), or impossible: no mechanism in common, no TLS
    │   └── SmtpReplyError           the server refused a step; ``reply`` is its answer
    │       ├── SmtpSenderRefused    MAIL FROM refused
    │       ├── SmtpRecipientsRefused every RCPT TO refused; ``results`` has each reply
    │       └── SmtpDataRefused      DATA or the message itself refused
    ├── SpoolError                   the queue could not store or read a message
    │   └── StorageFullError         out of space or read-only: a temporary condition
    ├── DeliveryError                a delivery agent failed outside its per-recipient results
    ├── DkimError                    a DKIM key cannot be made or read, or a message cannot be signed
    └── MessageGone                  a stored message is no longer where it was (moved or removed)

The local/remote split follows h11: a remote error is the peer's fault and is answered on the
wire, a local error is ours and must never be shown to a client.
"""

from __future__ import annotations

import os
import socket
from typing import ClassVar

from postoffice.smtp.replies import Reply


class PostofficeError(Exception):
    """Base of every error postoffice raises on purpose."""


class ConfigError(PostofficeError):
    """A configuration value is wrong.

    ``str()`` is one line a person can act on: ``FILE: KEY: what is wrong``.
    """

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        self.key = key
        self.path = path
        self.detail = message
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ListenError(PostofficeError):
    """A listener of ``kind`` (smtp, submission, smtps, http) cannot listen on ``host``:``port``.

    ``str()`` is ``cannot listen on KIND HOST:PORT: REASON``, the address written as in the
    configuration; the command line adds which option sets it.
    """

    def __init__(self, kind: str, host: str, port: int, reason: str) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.reason = reason
        shown = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot listen on {kind} {shown}:{port}: {reason}")

    @classmethod
    def from_os_error(cls, kind: str, host: str, port: int, exc: OSError) -> ListenError:
        if isinstance(exc, socket.gaierror):
            # getaddrinfo's codes are negative; os.strerror() calls -2 "Unknown error -2".
            reason = f"the name {host} does not resolve to an address"
        elif exc.errno is not None and exc.errno > 0:
            # The system's words alone: asyncio's text repeats the address as a tuple.
            reason = os.strerror(exc.errno)
        else:
            reason = exc.strerror or str(exc)
        return cls(kind, host, port, reason)


class AccountError(PostofficeError):
    """A user or alias operation cannot be done (unknown user, duplicate, invalid address)."""


class ProtocolError(PostofficeError):
    """An SMTP protocol violation; ``reply`` is what the peer should be told, if anything."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class LocalProtocolError(ProtocolError):
    """Our side tried something the protocol does not allow in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow; ``reply`` answers it."""


class MessageError(PostofficeError):
    """A message to send cannot be built from what was given; ``str()`` says what to fix."""


class SmtpClientError(PostofficeError):
    """Sending to an SMTP server failed.

    ``reply`` is the server's answer when there was one; ``temporary`` is True when the same
    attempt may succeed later (a 4xx reply, a network failure), as RFC 5321 §4.2.1 classes them.
    ``str()`` is one line for a person, quoting the server's reply.
    """

    _temporary: ClassVar[bool] = False

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply

    @property
    def temporary(self) -> bool:
        return self._temporary


class SmtpConnectError(SmtpClientError):
    """The connection could not be made or kept: refused, unreachable, timed out, closed."""

    _temporary = True


class SmtpTimeoutError(SmtpConnectError):
    """The server did not answer, or stopped reading, within the time allowed (RFC 5321 §4.5.3.2)."""


class SmtpProtocolError(SmtpClientError):
    """The server sent something RFC 5321 does not allow; trying again later may help."""

    _temporary = True


class SmtpTlsError(SmtpClientError):
    """TLS was asked for and could not be had: not offered, refused, or the certificate failed."""


class SmtpUnsupportedError(SmtpClientError):
    """The message cannot be sent to this server as it is (RFC 6531 §3.2: no SMTPUTF8)."""


class SmtpMessageTooBigError(SmtpClientError):
    """The message is larger than the SIZE the server announced (RFC 1870 §4)."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class SmtpAuthError(SmtpClientError):
    """Authentication failed (RFC 4954 §6: 535 bad credentials, 534/538 policy, 454 temporary).

    ``reply`` is None when we did not try: no mechanism in common, or no TLS to protect the
    password.
    """

    @property
    def temporary(self) -> bool:
        return self.reply is not None and self.reply.transient


class SmtpReplyError(SmtpClientError):
    """The server refused ``command`` (``"greeting"``, ``"EHLO"``, ``"MAIL"``...) with ``reply``."""

    reply: Reply

    def __init__(self, message: str, reply: Reply, *, command: str) -> None:
        super().__init__(message, reply)
        self.command = command

    @property
    def temporary(self) -> bool:
        return self.reply.transient


class SmtpSenderRefused(SmtpReplyError):
    """MAIL FROM was refused: nothing was sent."""


class SmtpRecipientsRefused(SmtpReplyError):
    """Every RCPT TO was refused; ``reply`` is the first refusal, ``results`` all of them."""

    def __init__(self, message: str, reply: Reply, *, results: dict[str, Reply]) -> None:
        super().__init__(message, reply, command="RCPT")
        self.results = results

    @property
    def temporary(self) -> bool:
        # Worth retrying if any recipient might be accepted later.
        return any(result.transient for result in self.results.values())


class SmtpDataRefused(SmtpReplyError):
    """DATA, or the message at its end, was refused."""


class SpoolError(PostofficeError):
    """The spool could not store or read a message."""


class StorageFullError(SpoolError):
    """No space left or read-only storage: the client should retry later (452 4.3.1)."""


class DeliveryError(PostofficeError):
    """A delivery agent failed as a whole (not a per-recipient result)."""


class DkimError(PostofficeError):
    """A DKIM key cannot be made, found or read, or a message cannot be signed (no From field,
    an oversized header section); ``str()`` names the domain, selector or file."""


class MessageGone(PostofficeError):
    """A message in a mailbox is no longer where it was: another program moved or removed it
    (find it again, or it is gone)."""


class DatabaseError(PostofficeError):
    """The shared database (``[storage] backend = "postgresql"``) cannot be used.

    ``str()`` is one line naming the database (never its password) and what is wrong;
    ``permanent`` says whether trying again can help (a wrong password cannot; a server that is
    down or restarting can)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent
