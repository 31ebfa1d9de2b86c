"""What the POP3 core asks of whoever drives it: the decisions it cannot make alone.

Untrusted input seen here: none of its own; the fields carry what the client sent (a user
name and password, a message number already checked against the maildrop).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of the maildrop as the core knows it: its unique id (UIDL, RFC 1939 §7)
    and its size as sent (octets, CRLF line ends)."""

    uid: str
    size: int


@dataclass(frozen=True, slots=True)
class Login:
    """Check these credentials (USER/PASS or AUTH PLAIN); answer with ``logged_in`` or
    ``login_failed``."""

    user: str
    password: str = field(repr=False)
    authzid: str = ""
    mechanism: str = "USER"


@dataclass(frozen=True, slots=True)
class StartTls:
    """The +OK to STLS is queued and every octet after it dropped: start the handshake, then
    call ``tls_started``."""


@dataclass(frozen=True, slots=True)
class Retrieve:
    """Send message ``number`` (1-based; ``uid`` names it): ``message_begins``, then its bytes
    through ``message_chunk``, then ``message_ends``; or ``message_unavailable``. ``lines``:
    TOP's count of body lines, None for RETR (which also marks the message seen)."""

    number: int
    uid: str
    lines: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """QUIT in the TRANSACTION state (RFC 1939 §6): remove the messages ``deleted`` names,
    then call ``updated``."""

    deleted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over: write what is left and close the connection."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()

Event = Login | StartTls | Retrieve | Update | Closed | _NeedData
