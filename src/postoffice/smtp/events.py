"""Events the sans-I/O server core hands to the code that drives it.

Untrusted input seen here: events carry parsed client input (commands, message bytes); they
are plain frozen data.

Two kinds: a *decision* event needs exactly one ``ServerConnection.send(reply)`` before the
core goes on (the application decides: policy, spool commit). An *information* event needs
nothing; the core has already queued whatever reply was due.
"""

from __future__ import annotations

from dataclasses import dataclass

from postoffice.smtp import commands as c
from postoffice.smtp.replies import Reply

# --- decision events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloReceived:
    command: c.Helo | c.Ehlo
    line: str


@dataclass(frozen=True, slots=True)
class MailReceived:
    command: c.Mail
    line: str


@dataclass(frozen=True, slots=True)
class RcptReceived:
    command: c.Rcpt
    line: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    """DATA with at least one accepted recipient: answer 354 to start the content, or refuse."""

    line: str


@dataclass(frozen=True, slots=True)
class ChunkReceived:
    """A non-final BDAT chunk has been read completely (RFC 3030): acknowledge or refuse it."""

    size: int
    line: str


@dataclass(frozen=True, slots=True)
class MessageComplete:
    """The whole message has arrived (end of DATA or BDAT LAST): make it durable, then 250."""

    size: int


@dataclass(frozen=True, slots=True)
class StartTlsRequested:
    """STARTTLS: answer 220 and then call ``start_tls()`` after the handshake, or refuse."""

    line: str


@dataclass(frozen=True, slots=True)
class AuthRequested:
    """AUTH: answer 334 with a challenge, 235 on success, or an error (RFC 4954)."""

    command: c.Auth
    line: str


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A client line answering our 334 challenge (base64, or ``*`` to cancel)."""

    data: str


# --- information events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageStart:
    """Message content begins (after our 354, or with the first BDAT chunk)."""


@dataclass(frozen=True, slots=True)
class MessageData:
    """A piece of message content, unstuffed, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """The core refused the message at its end (size, bare line endings...); discard it."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Replied:
    """The core answered a command by itself (NOOP, syntax and sequence errors...)."""

    line: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class Closing:
    """The session is over (QUIT, too many errors, EOF): flush what is queued and close."""

    reply: Reply | None


class NeedData:
    """Nothing more can be done until more bytes arrive."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()

Decision = (
    HelloReceived
    | MailReceived
    | RcptReceived
    | DataReceived
    | ChunkReceived
    | MessageComplete
    | StartTlsRequested
    | AuthRequested
    | AuthResponse
)
Information = MessageStart | MessageData | MessageRejected | Replied | Closing
Event = Decision | Information
