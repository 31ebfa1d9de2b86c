"""The POP3 server protocol (RFC 1939), sans-I/O: bytes in, events out, responses to bytes.

Untrusted input seen here: every octet a client sends. Lines are framed here (a line longer
than :data:`~postoffice.pop3.commands.MAX_LINE` is refused whole), parsed by
:mod:`postoffice.pop3.commands`, and looked up against the state; what the core can answer
alone (CAPA, NOOP, STAT, LIST, UIDL, DELE, RSET, USER, syntax and sequence errors) it answers,
and what needs the world (a password check, a message's bytes, removing messages, the TLS
handshake) it hands out as one event (:mod:`postoffice.pop3.events`) and waits, reading no
further command, until the driver calls back. A bad command is ``-ERR`` and the session goes
on (RFC 1939 §3: "Responses ... consist of a status indicator").

States (RFC 1939 §3): AUTHORIZATION until a login succeeds; TRANSACTION with the maildrop
open; QUIT there enters UPDATE, where deletions are applied, and the session ends.

STLS (RFC 2595 §4): once its +OK is queued, every octet received after the command is
dropped, so nothing sent in plaintext is read as if it came inside TLS (CVE-2011-0411's POP3
kin, CVE-2011-1926).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from postoffice.pop3 import sasl
from postoffice.pop3.commands import MAX_LINE, Command, CommandError, number, parse
from postoffice.pop3.content import Normalizer
from postoffice.pop3.events import NEED_DATA, Closed, Entry, Event, Login, Retrieve, StartTls, Update


class State(Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    """``tls``: STLS may be offered (a certificate is loaded); ``tls_active``: the session is
    inside TLS already (implicit TLS, RFC 8314); ``login_in_clear``: USER/PASS and AUTH
    outside TLS (a loopback client: nobody can listen there)."""

    hostname: str = "localhost"
    tls: bool = False
    tls_active: bool = False
    login_in_clear: bool = False


class Pop3Connection:
    """One POP3 session's protocol state."""

    def __init__(self, settings: Pop3Settings) -> None:
        self.settings = settings
        self.state = State.AUTHORIZATION
        self.tls_active = settings.tls_active
        self._in = bytearray()
        self._out = bytearray()
        self._discarding = False  # inside an over-long line: dropped up to its end
        self._waiting = False  # an event is out; no command is read until it is answered
        self._user: str | None = None  # USER given, PASS awaited
        self._sasl = False  # AUTH PLAIN sent "+ ": the next line is the response
        self._entries: list[Entry] = []
        self._deleted: set[int] = set()  # 0-based indexes marked by DELE
        self._normalizer: Normalizer | None = None
        self._closed_sent = False
        self.handled = 0  # command lines read: activity, for the idle timeout
        self._reply(True, f"{settings.hostname} POP3 server ready")

    # --- bytes ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Octets from the client; ``b""`` is the end of its stream."""
        if not data:
            self.state = State.CLOSED
        self._in += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event:
        """The next decision the driver must make, NEED_DATA when more octets are needed (or
        an event is still being answered), or Closed."""
        while not self._waiting:
            if self.state is State.CLOSED:
                if self._closed_sent:
                    return NEED_DATA
                self._closed_sent = True
                return Closed()
            line = self._next_line()
            if line is None:
                return NEED_DATA
            event = self._handle(line)
            if event is not None:
                self._waiting = not isinstance(event, Closed)
                return event
        return NEED_DATA

    def _next_line(self) -> bytes | None:
        while True:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > MAX_LINE:
                    self._in.clear()
                    if not self._discarding:
                        self._discarding = True
                        self._reply(False, "line too long")
                return None
            line = bytes(self._in[:end]).rstrip(b"\r")
            del self._in[: end + 1]
            self.handled += 1
            if self._discarding:
                self._discarding = False  # the rest of the long line: already answered
                continue
            if end + 1 > MAX_LINE:
                self._reply(False, "line too long")
                continue
            return line

    def _reply(self, ok: bool, text: str, code: str | None = None) -> None:
        status = "+OK" if ok else "-ERR"
        coded = f"[{code}] {text}" if code else text
        self._out += f"{status} {coded}".rstrip().encode("utf-8") + b"\r\n"

    def _multiline(self, text: str, lines: Sequence[str]) -> None:
        self._reply(True, text)
        for line in lines:
            stuffed = f".{line}" if line.startswith(".") else line
            self._out += stuffed.encode("utf-8") + b"\r\n"
        self._out += b".\r\n"

    # --- commands -----------------------------------------------------------------------------

    def _handle(self, line: bytes) -> Event | None:
        if self._sasl:
            return self._sasl_response(line)
        try:
            command = parse(line)
        except CommandError as exc:
            self._reply(False, str(exc))
            return None
        keyword = command.keyword
        if keyword == "CAPA":
            self._multiline("capability list follows", self.capabilities())
        elif keyword == "NOOP":
            if self._no_arguments(command):
                self._reply(True, "")
        elif keyword == "QUIT":
            return self._quit(command)
        elif self.state is State.AUTHORIZATION:
            return self._authorization(command)
        else:
            return self._transaction(command)
        return None

    def capabilities(self) -> list[str]:
        """RFC 2449 §5 CAPA, as the session stands now."""
        found = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self.settings.tls and not self.tls_active:
                found.append("STLS")
            if self._login_allowed():
                found += ["USER", "SASL " + " ".join(sasl.MECHANISMS)]
        found.append("IMPLEMENTATION postoffice")
        return found

    def _login_allowed(self) -> bool:
        return self.tls_active or self.settings.login_in_clear

    def _no_arguments(self, command: Command) -> bool:
        if command.arguments:
            self._reply(False, f"{command.keyword} takes no arguments")
            return False
        return True

    def _quit(self, command: Command) -> Event | None:
        if not self._no_arguments(command):
            return None
        if self.state is State.TRANSACTION:
            # RFC 1939 §6: QUIT in TRANSACTION enters UPDATE; the +OK follows the removal.
            return Update(tuple(self._entries[index].uid for index in sorted(self._deleted)))
        self._reply(True, f"{self.settings.hostname} POP3 server signing off")
        self.state = State.CLOSED
        return None

    # --- AUTHORIZATION ------------------------------------------------------------------------

    def _authorization(self, command: Command) -> Event | None:
        keyword = command.keyword
        if keyword == "STLS":
            return self._stls(command)
        if keyword not in ("USER", "PASS", "AUTH"):
            self._reply(False, f"{keyword} needs a login first")
            return None
        if not self._login_allowed():
            # RFC 2595 §2.1: clear-text passwords only inside TLS.
            self._reply(False, "log in inside TLS: use STLS first", "AUTH")
            return None
        if keyword == "USER":
            if len(command.arguments) != 1:
                self._reply(False, "USER takes one name")
                return None
            self._user = command.arguments[0]
            self._reply(True, "send PASS")
            return None
        if keyword == "PASS":
            user, self._user = self._user, None
            if user is None or not command.rest:
                self._reply(False, "USER first, then PASS with the password")
                return None
            return Login(user, command.rest)
        return self._auth(command)

    def _stls(self, command: Command) -> Event | None:
        if not self._no_arguments(command):
            return None
        if not self.settings.tls or self.tls_active:
            self._reply(False, "STLS is not available")
            return None
        self._reply(True, "begin TLS negotiation")
        self._in.clear()  # RFC 2595 §4: nothing sent before the handshake counts after it
        return StartTls()

    def _auth(self, command: Command) -> Event | None:
        arguments = command.arguments
        if not arguments:
            # The mechanism list some clients ask for (RFC 1734's AUTH without an argument).
            self._multiline("", list(sasl.MECHANISMS))
            return None
        if arguments[0].upper() not in sasl.MECHANISMS or len(arguments) > 2:
            self._reply(False, "unsupported mechanism; PLAIN is offered")
            return None
        if len(arguments) == 1:
            self._sasl = True
            self._out += b"+ \r\n"  # RFC 5034 §4: an empty challenge
            return None
        return self._plain(arguments[1], initial=True)

    def _sasl_response(self, line: bytes) -> Event | None:
        self._sasl = False
        text = line.decode("ascii", "replace")
        if text == "*":
            self._reply(False, "authentication cancelled")  # RFC 5034 §4
            return None
        return self._plain(text, initial=False)

    def _plain(self, text: str, *, initial: bool) -> Event | None:
        try:
            authzid, user, password = sasl.plain(sasl.decode(text, initial=initial))
        except sasl.SaslError as exc:
            self._reply(False, str(exc))
            return None
        return Login(user, password, authzid, "PLAIN")

    # --- what the driver says about a login ---------------------------------------------------------

    def logged_in(self, entries: Sequence[Entry]) -> None:
        """The login succeeded and the maildrop is locked and listed: TRANSACTION (§4)."""
        self._waiting = False
        self._entries = list(entries)
        self._deleted.clear()
        self.state = State.TRANSACTION
        octets = sum(entry.size for entry in self._entries)
        self._reply(True, f"maildrop has {len(self._entries)} messages ({octets} octets)")

    def login_failed(self, text: str, *, code: str = "AUTH", close: bool = False) -> None:
        """The login failed (``code``: RFC 2449 IN-USE for a locked maildrop, RFC 3206 AUTH
        or SYS/TEMP); ``close`` after too many failures."""
        self._waiting = False
        self._reply(False, text, code)
        if close:
            self.state = State.CLOSED

    def tls_started(self) -> None:
        self._waiting = False
        self.tls_active = True
        self._user = None  # RFC 2595 §4: nothing of the plaintext session carries over

    # --- TRANSACTION --------------------------------------------------------------------------

    def _transaction(self, command: Command) -> Event | None:
        keyword = command.keyword
        if keyword in ("USER", "PASS", "AUTH", "STLS"):
            self._reply(False, "already logged in")
            return None
        if keyword == "STAT":
            if self._no_arguments(command):
                live = self._live()
                self._reply(True, f"{len(live)} {sum(self._entries[index].size for index in live)}")
            return None
        if keyword in ("LIST", "UIDL"):
            self._listing(command)
            return None
        if keyword == "RSET":
            if self._no_arguments(command):
                self._deleted.clear()  # RFC 1939 §5: unmark every message marked as deleted
                self._reply(True, f"maildrop has {len(self._entries)} messages")
            return None
        arguments = command.arguments
        wanted = 2 if keyword == "TOP" else 1
        if len(arguments) != wanted:
            self._reply(
                False,
                f"{keyword} takes {'a message number and a line count' if wanted == 2 else 'a message number'}",
            )
            return None
        index = self._message(arguments[0])
        if index is None:
            return None
        if keyword == "DELE":
            self._deleted.add(index)
            self._reply(True, f"message {index + 1} deleted")
            return None
        lines = None
        if keyword == "TOP":
            lines = number(arguments[1])
            if lines is None:
                self._reply(False, "TOP takes a line count")
                return None
        return Retrieve(index + 1, self._entries[index].uid, lines)

    def _live(self) -> list[int]:
        return [index for index in range(len(self._entries)) if index not in self._deleted]

    def _message(self, text: str) -> int | None:
        """The 0-based index of message ``text``, or None with the -ERR said (RFC 1939 §5: a
        message marked as deleted is not there)."""
        found = number(text)
        if found is None or not 1 <= found <= len(self._entries):
            self._reply(False, "no such message")
            return None
        if found - 1 in self._deleted:
            self._reply(False, f"message {found} already deleted")
            return None
        return found - 1

    def _listing(self, command: Command) -> None:
        """LIST and UIDL (RFC 1939 §5, §7): one message's line, or every live message's."""

        def field(index: int) -> str:
            entry = self._entries[index]
            return f"{index + 1} {entry.size if command.keyword == 'LIST' else entry.uid}"

        if len(command.arguments) > 1:
            self._reply(False, f"{command.keyword} takes at most a message number")
        elif command.arguments:
            index = self._message(command.arguments[0])
            if index is not None:
                self._reply(True, field(index))
        else:
            live = self._live()
            self._multiline(f"{len(live)} messages", [field(index) for index in live])

    # --- what the driver says about a message ---------------------------------------------------

    def message_begins(self, event: Retrieve) -> None:
        """The message could be opened: its +OK, then the bytes through :meth:`message_chunk`."""
        size = self._entries[event.number - 1].size
        self._reply(True, f"{size} octets" if event.lines is None else "top of message follows")
        self._normalizer = Normalizer(body_lines=event.lines)

    def message_chunk(self, chunk: bytes) -> None:
        assert self._normalizer is not None
        self._out += self._normalizer.feed(chunk)

    def message_ends(self) -> None:
        assert self._normalizer is not None
        self._out += self._normalizer.finish() + b".\r\n"
        self._normalizer = None
        self._waiting = False

    def message_unavailable(self, event: Retrieve) -> None:
        """The message could not be read (another program removed it): -ERR, go on."""
        self._reply(False, f"message {event.number} is no longer there", "SYS/TEMP")
        self._waiting = False

    # --- UPDATE ---------------------------------------------------------------------------------

    def updated(self, removed: bool) -> None:
        """The deletions are applied (``removed``), or some could not be: the last reply, then
        the session ends (RFC 1939 §6)."""
        self._waiting = False
        if removed:
            self._reply(True, f"{self.settings.hostname} POP3 server signing off")
        else:
            self._reply(False, "some deleted messages not removed", "SYS/TEMP")
        self.state = State.CLOSED
