"""Submitting one message from the command line, and the exit status that reports how it went.

Untrusted input seen here: the server's replies, through :class:`SmtpClient`; they reach the
person as one line each, with control characters escaped.

Exit statuses are the BSD ``sysexits.h`` values, as sendmail, mailx and Postfix use them:

- 0 (``EX_OK``): every recipient accepted the message.
- 75 (``EX_TEMPFAIL``): a 4xx reply, no connection, a timeout, or a garbled reply; try later.
- 65 (``EX_DATAERR``): a 5xx reply to what we sent, the sender, a recipient or the message
  (``sendmail`` says 67, ``EX_NOUSER``, when it is the recipients).
- 69 (``EX_UNAVAILABLE``): a 5xx reply to the session itself, the greeting, EHLO, STARTTLS or
  AUTH, a TLS failure, or an extension the message needs and the server lacks: the server
  will not take mail from us as we are set up.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from postoffice.cli.transcript import terminal_safe
from postoffice.client.connection import SendResult, SmtpClient, TlsMode, TranscriptHook
from postoffice.config import DEFAULT_SMTP_LISTENER, parse_hostport
from postoffice.errors import (
    ConfigError,
    SmtpClientError,
    SmtpDataRefused,
    SmtpMessageTooBigError,
    SmtpRecipientsRefused,
    SmtpReplyError,
    SmtpSenderRefused,
)
from postoffice.net.local_socket import reachable
from postoffice.smtp.replies import Reply

EX_OK = os.EX_OK
EX_USAGE = os.EX_USAGE
EX_DATAERR = os.EX_DATAERR
EX_NOINPUT = os.EX_NOINPUT
EX_NOUSER = os.EX_NOUSER
EX_UNAVAILABLE = os.EX_UNAVAILABLE
EX_TEMPFAIL = os.EX_TEMPFAIL
EX_CONFIG = os.EX_CONFIG

# Where `postoffice serve` listens by default.
DEFAULT_SERVER = (DEFAULT_SMTP_LISTENER.host, DEFAULT_SMTP_LISTENER.port)
SMTP_PORT = 25  # the well-known SMTP port, when --server names only a host
SUBMISSIONS_PORT = 465  # RFC 8314 §7.3: submission over implicit TLS


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Where and how to submit: the parts of :class:`SmtpClient` a command line chooses."""

    host: str = DEFAULT_SERVER[0]
    port: int = DEFAULT_SERVER[1]
    tls: TlsMode = TlsMode.PLAIN
    verify: bool = True  # check the certificate and the host name (off: --insecure)
    cafile: Path | None = None
    ehlo: str | None = None
    credentials: tuple[str, str] | None = None
    timeout: float = 60.0
    # The server's local socket (net.local_socket), tried first; host and port when it cannot
    # be opened (no server, or one this user may not reach).
    local_socket: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is TlsMode.PLAIN:
            return None
        context = ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def client(self, transcript: TranscriptHook | None) -> SmtpClient:
        return SmtpClient(
            self.host,
            self.port,
            tls=self.tls,
            ssl_context=self.ssl_context(),
            ehlo_name=self.ehlo,
            credentials=self.credentials,
            timeout=self.timeout,
            transcript=transcript,
        )


def parse_server(text: str, *, key: str) -> tuple[str, int | None]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or a bare ``HOST`` (port None); :class:`ConfigError` if not."""
    if text.startswith("[") and text.endswith("]"):
        host, _ = parse_hostport(f"{text}:0", key=key)
        return host, None
    if ":" not in text:
        host, _ = parse_hostport(f"{text}:0", key=key)
        return host, None
    host, port = parse_hostport(text, key=key)
    if port == 0:
        raise ConfigError(f"{text!r}: port 0 is for listening, not for connecting", key=key)
    return host, port


def connectable(host: str) -> str:
    """A listener's address as a client can reach it: the wildcard means this very host."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def open_local(path: Path) -> socket.socket | None:
    """A connection to the server's local socket at ``path``; None when there is none to
    reach (no such file, no permission, nobody listening), so the caller uses TCP."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with reachable(path) as name:
            sock.connect(name)
    except OSError:
        sock.close()
        return None
    return sock


async def _submit(
    options: ServerOptions,
    sender: str,
    recipients: tuple[str, ...],
    data: bytes,
    transcript: TranscriptHook | None,
) -> SendResult:
    local = open_local(options.local_socket) if options.local_socket is not None else None
    if local is None:
        async with options.client(transcript) as client:
            return await client.send(sender, recipients, data)
    client = options.client(transcript)
    await client.connect(local)
    try:
        result = await client.send(sender, recipients, data)
    except SmtpReplyError:
        await client.quit()  # as SmtpClient's own context does after a refusal
        raise
    except BaseException:
        client.close()
        raise
    await client.quit()
    return result


def submit(
    options: ServerOptions,
    sender: str,
    recipients: tuple[str, ...],
    data: bytes,
    transcript: TranscriptHook | None = None,
) -> SendResult:
    """Connect, send one message, QUIT. Raises :class:`SmtpClientError` on failure."""
    return asyncio.run(_submit(options, sender, recipients, data, transcript))


def exit_status(error: SmtpClientError, *, recipients_refused: int = EX_DATAERR) -> int:
    """The sysexits status for ``error`` (see the module docstring)."""
    if error.temporary:
        return EX_TEMPFAIL
    if isinstance(error, SmtpRecipientsRefused):
        return recipients_refused
    if isinstance(error, (SmtpSenderRefused, SmtpDataRefused, SmtpMessageTooBigError)):
        return EX_DATAERR
    return EX_UNAVAILABLE


def partial_status(refused: dict[str, Reply], *, recipients_refused: int = EX_DATAERR) -> int:
    """The status when the message went to some recipients and not to others.

    Not 0: the caller must learn that someone did not get it. A permanent refusal wins over a
    temporary one, since sending the whole message again would not reach that recipient and
    would repeat it for the others.
    """
    if not refused:
        return EX_OK
    return recipients_refused if any(reply.permanent for reply in refused.values()) else EX_TEMPFAIL


def describe(error: SmtpClientError) -> str:
    """One line for a person: what failed, quoting the server's reply."""
    return terminal_safe(" ".join(str(error).split()))


def describe_refused(address: str, reply: Reply) -> str:
    return terminal_safe(f"recipient <{address}> refused: {reply}")
