"""Drive the sans-I/O SMTP core with bytes alone: a scripted application and a client↔server pair.

:class:`Driver` plays the application a real session would be: it feeds bytes to a
:class:`~postoffice.smtp.server.ServerConnection`, answers every decision event through a
:class:`Policy` (by default: accept everything), collects the message bytes of each
``MessageComplete`` and keeps the transcript of everything the server wrote.

:class:`Pair` adds a scripted client on the other end, in the style of h11's
``tests/helpers.py`` ``ConnectionPair``: the client writes commands, the server side processes
them, and the client parses the replies that come back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from postoffice.smtp import events as ev
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtp.server import ServerConnection, ServerSettings

HOST = "mx.test"
QUEUE_ID = "TESTID"

# Replies the application (not the core) chooses for STARTTLS and AUTH (RFC 3207, RFC 4954).
TLS_READY = Reply.of(220, "2.0.0", "Ready to start TLS")
AUTH_CHALLENGE = Reply.of(334, None, "")
AUTH_OK = Reply.of(235, "2.7.0", "Authentication successful")
AUTH_CANCELLED = Reply.of(501, "5.7.0", "Authentication cancelled")

#: One reply line on the wire (RFC 5321 §4.2): code, "-" or " ", text, CRLF.
REPLY_LINE = re.compile(rb"(\d{3})([ -])([^\r\n]*)\r\n")

Answer = Reply | Callable[[ServerConnection, Any], Reply]


def _hello(conn: ServerConnection, event: ev.HelloReceived) -> Reply:
    return conn.hello_reply(event)


def _chunk(conn: ServerConnection, event: ev.ChunkReceived) -> Reply:
    return replies.chunk_received(event.size)


def _auth(conn: ServerConnection, event: ev.AuthRequested) -> Reply:
    return AUTH_CHALLENGE if event.command.initial_response is None else AUTH_OK


def _auth_response(conn: ServerConnection, event: ev.AuthResponse) -> Reply:
    return AUTH_CANCELLED if event.data == "*" else AUTH_OK


@dataclass
class Policy:
    """How the scripted application answers each decision event: a Reply, or a function of
    ``(conn, event)`` returning one. The defaults accept everything."""

    hello: Answer = _hello
    mail: Answer = replies.SENDER_OK
    rcpt: Answer = replies.RECIPIENT_OK
    data: Answer = replies.START_MAIL_INPUT
    chunk: Answer = _chunk
    message: Answer = field(default_factory=lambda: replies.queued(QUEUE_ID))
    starttls: Answer = TLS_READY
    auth: Answer = _auth
    auth_response: Answer = _auth_response

    def answer(self, conn: ServerConnection, event: ev.Decision) -> Reply:
        choice = {
            ev.HelloReceived: self.hello,
            ev.MailReceived: self.mail,
            ev.RcptReceived: self.rcpt,
            ev.DataReceived: self.data,
            ev.ChunkReceived: self.chunk,
            ev.MessageComplete: self.message,
            ev.StartTlsRequested: self.starttls,
            ev.AuthRequested: self.auth,
            ev.AuthResponse: self.auth_response,
        }[type(event)]
        return choice if isinstance(choice, Reply) else choice(conn, event)


class Driver:
    """The application side of one session, without sockets or an event loop."""

    def __init__(
        self,
        settings: ServerSettings | None = None,
        policy: Policy | None = None,
        *,
        greet: bool = True,
    ) -> None:
        self.conn = ServerConnection(settings or ServerSettings(hostname=HOST))
        self.policy = policy or Policy()
        self.events: list[ev.Event] = []
        self.messages: list[bytes] = []  # content of each MessageComplete, in order
        self.transcript = bytearray()  # everything the server wrote
        self._content: bytearray | None = None
        if greet:
            self.conn.greet(replies.greeting(self.conn.settings.hostname))
            self._drain()

    # --- feeding ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Hand ``data`` to the core (b"" is end of file), process every event; the new output."""
        self.conn.receive_data(data)
        return self.pump()

    def feed_in_pieces(self, data: bytes, size: int | None) -> bytes:
        """Feed ``data`` in pieces of ``size`` octets (None: all at once); the new output."""
        start = len(self.transcript)
        for piece in split_every(data, size):
            if piece:  # b"" would mean end of file
                self.feed(piece)
        return bytes(self.transcript[start:])

    def feed_at(self, data: bytes, cuts: Iterable[int]) -> bytes:
        """Feed ``data`` cut at the given offsets; the new output."""
        start = len(self.transcript)
        for piece in split_at(data, cuts):
            if piece:
                self.feed(piece)
        return bytes(self.transcript[start:])

    def eof(self) -> bytes:
        return self.feed(b"")

    def pump(self) -> bytes:
        """Take every available event, answering decisions by the policy; the new output."""
        conn = self.conn
        while True:
            event = conn.next_event()
            if isinstance(event, ev.NeedData):
                break
            self.events.append(event)
            self._observe(event)
            if isinstance(event, ev.Decision):
                reply = self.policy.answer(conn, event)
                conn.send(reply)
                if isinstance(event, ev.StartTlsRequested) and reply.code == TLS_READY.code:
                    conn.start_tls()  # as if the handshake succeeded at once
        return self._drain()

    def _observe(self, event: ev.Event) -> None:
        if isinstance(event, ev.MessageStart):
            self._content = bytearray()
        elif isinstance(event, ev.MessageData):
            assert self._content is not None, "MessageData outside a message"
            self._content += event.data
        elif isinstance(event, ev.MessageComplete):
            assert self._content is not None, "MessageComplete outside a message"
            assert event.size == len(self._content), "MessageComplete.size disagrees with the data"
            self.messages.append(bytes(self._content))
            self._content = None
        elif isinstance(event, ev.MessageRejected):
            self._content = None

    def _drain(self) -> bytes:
        out = self.conn.data_to_send()
        self.transcript += out
        return out

    # --- looking at the results ---------------------------------------------------------------

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    @property
    def closed(self) -> bool:
        return any(isinstance(event, ev.Closing) for event in self.events)

    @property
    def replies(self) -> list[WireReply]:
        return parse_replies(bytes(self.transcript))


def run(
    data: bytes,
    *,
    settings: ServerSettings | None = None,
    policy: Policy | None = None,
    size: int | None = None,
    eof: bool = False,
) -> Driver:
    """A greeted session that received ``data`` (in pieces of ``size``), optionally then EOF."""
    driver = Driver(settings, policy)
    driver.feed_in_pieces(data, size)
    if eof:
        driver.eof()
    return driver


def lines(*commands: str | bytes) -> bytes:
    """Command lines joined with CRLF, each terminated."""
    return b"".join((c.encode() if isinstance(c, str) else c) + b"\r\n" for c in commands)


def split_every(data: bytes, size: int | None) -> Iterator[bytes]:
    if size is None:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


def split_at(data: bytes, cuts: Iterable[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        if start < cut < len(data):
            yield data[start:cut]
            start = cut
    yield data[start:]


def normalised(events: Iterable[ev.Event]) -> list[ev.Event]:
    """Events as comparable across feedings: adjacent MessageData merged, and no MessageData for
    a message that did not complete (rejected, cut off by EOF, abandoned).

    How content is sliced into MessageData depends on how the bytes arrived; so does how much
    of an over-size message is handed out before the limit is noticed (RFC 1870 §6.3 only asks
    that it be refused). Neither reaches a stored message, and the replies are the same.
    """
    out: list[ev.Event] = []
    start: int | None = None  # index in ``out`` of the open message's MessageStart
    for event in events:
        if isinstance(event, ev.MessageData) and out and isinstance(out[-1], ev.MessageData):
            out[-1] = ev.MessageData(out[-1].data + event.data)
            continue
        if start is not None and isinstance(event, (ev.MessageStart, ev.MessageRejected, ev.Closing)):
            out[start:] = [e for e in out[start:] if not isinstance(e, ev.MessageData)]
            start = None
        if isinstance(event, ev.MessageStart):
            start = len(out)
        elif isinstance(event, ev.MessageComplete):
            start = None
        out.append(event)
    return out


# --- the client side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WireReply:
    """A reply as a client parses it off the wire."""

    code: int
    lines: tuple[str, ...]
    raw: bytes

    @property
    def enhanced(self) -> str | None:
        match = re.match(r"([245]\.\d{1,3}\.\d{1,3}) ", self.lines[-1])
        return match[1] if match else None

    def is_(self, expected: Reply, *, enhanced: bool = True) -> bool:
        """Same code, and the same enhanced code when the session uses them (RFC 2034 §3)."""
        return self.code == expected.code and self.enhanced == (expected.enhanced if enhanced else None)


def parse_replies(data: bytes) -> list[WireReply]:
    """Split server output into replies; asserts every line is well-formed (RFC 5321 §4.2)."""
    out: list[WireReply] = []
    position = 0
    pending: list[str] = []
    start = 0
    code: int | None = None
    while position < len(data):
        match = REPLY_LINE.match(data, position)
        assert match is not None, f"malformed reply line at {position}: {data[position : position + 80]!r}"
        line_code = int(match[1])
        assert code is None or line_code == code, "a multi-line reply changed its code"
        code = line_code
        pending.append(match[3].decode("utf-8"))
        position = match.end()
        if match[2] == b" ":
            out.append(WireReply(code, tuple(pending), data[start:position]))
            pending, code, start = [], None, position
    assert not pending, "output ends inside a multi-line reply"
    return out


class Client:
    """A scripted SMTP client, sans-I/O like the server: bytes out, parsed replies in."""

    def __init__(self) -> None:
        self._incoming = bytearray()

    @staticmethod
    def command(line: str | bytes) -> bytes:
        return (line.encode() if isinstance(line, str) else line) + b"\r\n"

    @staticmethod
    def data_content(content: bytes) -> bytes:
        """Content as sent after 354: dot-stuffed (§4.5.2), CRLF-terminated, then ``.``."""
        if content and not content.endswith(b"\r\n"):
            content += b"\r\n"
        stuffed = re.sub(rb"(?m)^\.", b"..", content)
        return stuffed + b".\r\n"

    def receive_data(self, data: bytes) -> list[WireReply]:
        """Complete replies in ``data`` (with anything left over from before)."""
        self._incoming += data
        text = bytes(self._incoming)
        cut = 0
        for match in REPLY_LINE.finditer(text):
            if match[2] == b" ":
                cut = match.end()
        self._incoming = self._incoming[cut:]
        return parse_replies(text[:cut])


class Pair:
    """A client and a server connected by nothing but bytes (h11 ``ConnectionPair`` style)."""

    def __init__(self, settings: ServerSettings | None = None, policy: Policy | None = None) -> None:
        self.client = Client()
        self.server = Driver(settings, policy)
        self.greeting = self._expect_one(self.client.receive_data(bytes(self.server.transcript)))

    def send(self, data: bytes) -> list[WireReply]:
        """Client bytes to the server; the replies that came back."""
        return self.client.receive_data(self.server.feed(data))

    def command(self, line: str | bytes) -> WireReply:
        """One command, exactly one reply."""
        return self._expect_one(self.send(Client.command(line)))

    def pipeline(self, *commands: str | bytes) -> list[WireReply]:
        """Several commands in one write (RFC 2920); one reply each, in order."""
        got = self.send(b"".join(Client.command(line) for line in commands))
        assert len(got) == len(commands), got
        return got

    def message(self, content: bytes) -> WireReply:
        """Content after a 354, dot-stuffed and terminated; the end-of-data reply."""
        return self._expect_one(self.send(Client.data_content(content)))

    def bdat(self, chunk: bytes, *, last: bool = False) -> WireReply:
        header = f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode()
        return self._expect_one(self.send(header + chunk))

    def transaction(self, sender: str, recipients: Iterable[str], content: bytes) -> list[WireReply]:
        got = [self.command(f"MAIL FROM:<{sender}>")]
        got += [self.command(f"RCPT TO:<{rcpt}>") for rcpt in recipients]
        got.append(self.command("DATA"))
        got.append(self.message(content))
        return got

    @staticmethod
    def _expect_one(got: list[WireReply]) -> WireReply:
        assert len(got) == 1, f"expected one reply, got {got}"
        return got[0]
