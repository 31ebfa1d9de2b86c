"""The sans-I/O SMTP server: ``receive_data()`` bytes in, ``next_event()`` out, ``send()`` replies.

Untrusted input seen here: every byte a client sends. The core never raises on client input:
whatever arrives is either parsed into an event or answered with an RFC 5321 error reply, and
the connection state stays consistent (tests fuzz this invariant with Hypothesis).

Like h11, the core owns no socket, clock or file. The driver loops::

    conn.receive_data(bytes_from_socket)          # b"" at end of file
    while (event := conn.next_event()) is not NEED_DATA:
        if event is a decision:  conn.send(reply)  # exactly one reply per decision
    socket.write(conn.data_to_send())

Replies queue up in order, so pipelined commands (RFC 2920) are answered in order and in as few
writes as the driver likes.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from typing import cast, get_args

from postoffice import defaults
from postoffice.errors import LocalProtocolError
from postoffice.smtp import commands as c
from postoffice.smtp import events as ev
from postoffice.smtp import replies
from postoffice.smtp import state as st
from postoffice.smtp.reader import LINE_TOO_LONG, Reader
from postoffice.smtp.replies import Reply
from postoffice.smtp.state import State


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What this listener offers; the limits default as ``[limits]`` does (:mod:`postoffice.defaults`
    names their precedents)."""

    hostname: str
    max_message_size: int = defaults.MESSAGE_SIZE
    max_recipients: int = defaults.RECIPIENTS
    command_line_limit: int = defaults.COMMAND_LINE
    text_line_limit: int = defaults.TEXT_LINE
    max_errors: int = defaults.ERRORS_PER_SESSION
    starttls: bool = False
    auth_mechanisms: tuple[str, ...] = ()
    dsn: bool = False
    # RFC 8314 §3: the listener speaks TLS from the first byte (port 465).
    implicit_tls: bool = False
    # AUTH only inside TLS: not advertised before, refused with 538 (RFC 4954 §4, §6).
    auth_requires_tls: bool = False
    # RFC 8689: REQUIRETLS offered (advertised inside TLS only, as its §2 asks); the queue
    # honours it by relaying such a message only over verified TLS to a server offering it.
    requiretls: bool = True


class _Mode:
    COMMAND = "command"
    DATA = "data"
    CHUNK = "chunk"
    DISCARD_CHUNK = "discard-chunk"
    SASL = "sasl"
    TLS_PENDING = "tls-pending"


class ServerConnection:
    """One SMTP server session, as a state machine over bytes."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.state = State.INIT
        self.esmtp = False  # EHLO used: enhanced status codes on (RFC 2034 §3)
        self.tls_active = settings.implicit_tls
        self.authenticated = False
        self.helo_name = ""
        self._reader = Reader(max_line=c.AUTH_LINE_LIMIT, text_line_limit=settings.text_line_limit)
        self._out = bytearray()
        self._events: deque[ev.Event] = deque()
        self._pending: ev.Decision | None = None
        self._mode = _Mode.COMMAND
        self._eof = False
        self._errors = 0
        self._chunk_remaining = 0
        self._chunk_last = False
        self._chunk_line = ""
        self._chunk_error: Reply = replies.BAD_SEQUENCE
        self._reset_transaction()

    # --- the driver's interface ---------------------------------------------------------------

    def greet(self, reply: Reply) -> None:
        """Queue the opening reply: 220, or 421/554 to refuse the connection (§3.1)."""
        if reply.code != 220:
            self._write(reply)  # our refusal, not a client error (see close_with)
            self._close()
        else:
            self._answer(reply)

    def close_with(self, reply: Reply) -> None:
        """End the session on our side with ``reply`` (421 on timeout or shutdown, §3.8)."""
        if self.state is not State.CLOSED:
            self._pending = None
            # Written, not counted as a client error: counting it could reach max_errors and
            # follow our 421 with a second one ("Too many errors") and the wrong Closing reply.
            self._write(reply)
            self._close(reply)

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self.state is not State.CLOSED:
            self._reader.feed(data)

    @property
    def buffered(self) -> int:
        """Octets received but not yet consumed (the driver pauses reading when this grows)."""
        return self._reader.buffered

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ev.Event | ev.NeedData:
        if self._pending is not None:
            raise LocalProtocolError(f"{type(self._pending).__name__} is waiting for send()")
        event = self._events.popleft() if self._events else self._produce()
        if type(event) in _DECISIONS:
            self._pending = cast(ev.Decision, event)
        return event

    def send(self, reply: Reply) -> None:
        """Answer the pending decision event and move the state machine accordingly."""
        event = self._pending
        if event is None:
            raise LocalProtocolError("send() without a pending decision event")
        self._pending = None
        self._apply(event, reply)
        self._answer(reply)

    def start_tls(self) -> None:
        """The byte stream switches to TLS after our 220: start afresh (RFC 3207 §4.2).

        Call it once the 220 is written and before the first byte of the handshake is read.
        "The server MUST discard any knowledge obtained from the client... which was not
        obtained from the TLS negotiation itself": plaintext that arrived after STARTTLS is
        dropped unread (CVE-2011-0411, CVE-2024-34083), and the client must EHLO (and AUTH)
        again.
        """
        if self._mode != _Mode.TLS_PENDING:
            raise LocalProtocolError("start_tls() without an accepted STARTTLS")
        self._reader.discard_buffered()
        self._mode = _Mode.COMMAND
        self.tls_active = True
        self.authenticated = False
        self.esmtp = False
        self.helo_name = ""
        self.state = st.after(self.state, c.StartTls)
        self._reset_transaction()

    def hello_reply(self, event: ev.HelloReceived) -> Reply:
        """The standard positive reply to HELO/EHLO, with our extensions for EHLO."""
        name = event.command.name
        if isinstance(event.command, c.Ehlo):
            return replies.ehlo_ok(self.settings.hostname, name, self.extensions())
        return replies.helo_ok(self.settings.hostname, name)

    def extensions(self) -> list[str]:
        """EHLO keywords (RFC 5321 §4.1.1.1), in the order Postfix lists them."""
        settings = self.settings
        keywords = ["PIPELINING", f"SIZE {settings.max_message_size}"]
        if settings.starttls and not self.tls_active:
            keywords.append("STARTTLS")
        if self.auth_offered:
            keywords.append("AUTH " + " ".join(settings.auth_mechanisms))
        keywords += ["ENHANCEDSTATUSCODES", "8BITMIME"]
        if settings.dsn:
            keywords.append("DSN")
        if settings.requiretls and self.tls_active:
            keywords.append("REQUIRETLS")  # RFC 8689 §2: only over TLS
        keywords += ["SMTPUTF8", "CHUNKING"]
        return keywords

    @property
    def auth_offered(self) -> bool:
        """AUTH is advertised now: mechanisms exist, and TLS is up where it is required."""
        settings = self.settings
        return bool(settings.auth_mechanisms) and (self.tls_active or not settings.auth_requires_tls)

    @property
    def in_transaction(self) -> bool:
        return st.in_transaction(self.state)

    @property
    def transaction_smtputf8(self) -> bool:
        return self._utf8

    # --- internals ----------------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self._utf8 = False
        self._recipients = 0
        self._rcpt_attempted = False
        self._size = 0
        self._too_big = False

    def _write(self, reply: Reply) -> None:
        if reply is replies.DROP:
            return  # fault injection's silent hang-up: the 421's closing without its words
        self._out += reply.render(enhanced=self.esmtp)

    def _answer(self, reply: Reply) -> None:
        self._write(reply)
        if reply.code >= 400 and self.state is not State.CLOSED:
            self._errors += 1
            # Postfix smtpd_hard_error_limit: a client that keeps failing is cut off.
            if self._errors >= self.settings.max_errors:
                self._out += replies.TOO_MANY_ERRORS.render(enhanced=self.esmtp)
                self._close(replies.TOO_MANY_ERRORS)

    def _close(self, reply: Reply | None = None) -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self._mode = _Mode.COMMAND
            self._events.append(ev.Closing(reply))
            self._reader.discard_buffered()

    def _apply(self, event: ev.Decision, reply: Reply) -> None:
        """Move on after ``reply`` to ``event``; every state comes from the table (smtp.state)."""
        positive = reply.positive
        if isinstance(event, ev.HelloReceived):
            if positive:
                self.state = st.after(self.state, type(event.command))
                self.esmtp = isinstance(event.command, c.Ehlo)
                self.helo_name = event.command.name
                self._reset_transaction()
        elif isinstance(event, ev.MailReceived):
            if positive:
                self.state = st.after(self.state, c.Mail)
                self._utf8 = event.command.smtputf8
        elif isinstance(event, ev.RcptReceived):
            self._rcpt_attempted = True
            if positive:
                self._recipients += 1
                self.state = st.after(self.state, c.Rcpt)
        elif isinstance(event, ev.DataReceived):
            if reply.code == 354:
                self.state = st.after(self.state, c.Data)
                self._mode = _Mode.DATA
                self._reader.start_data()
                self._events.append(ev.MessageStart())
        elif isinstance(event, ev.ChunkReceived):
            self.state = st.after_bdat(last=False, accepted=positive)
            if self.state is not State.BDAT:  # refused: the transaction has failed
                self._end_transaction()
        elif isinstance(event, ev.MessageComplete):
            self._end_transaction()
        elif isinstance(event, ev.StartTlsRequested):
            if reply.code == 220:
                self._mode = _Mode.TLS_PENDING
        elif isinstance(event, (ev.AuthRequested, ev.AuthResponse)):
            self._mode = _Mode.SASL if reply.code == 334 else _Mode.COMMAND
            if reply.code == 235:
                self.authenticated = True

    def _end_transaction(self) -> None:
        """The content (or a chunk of it) has been answered: the transaction is over."""
        self.state = st.after_content()
        self._mode = _Mode.COMMAND
        self._reset_transaction()

    def _produce(self) -> ev.Event | ev.NeedData:
        while True:
            if self._events:
                return self._events.popleft()
            if self.state is State.CLOSED:
                return ev.NEED_DATA
            mode = self._mode
            if mode == _Mode.COMMAND:
                event = self._command_event()
            elif mode == _Mode.DATA:
                event = self._data_event()
            elif mode in (_Mode.CHUNK, _Mode.DISCARD_CHUNK):
                event = self._chunk_event()
            elif mode == _Mode.SASL:
                event = self._sasl_event()
            else:  # TLS_PENDING: nothing is read until the handshake is done
                event = ev.NEED_DATA
            if event is None:
                continue
            if event is ev.NEED_DATA and self._eof:
                self._close()
                continue
            return event

    def _reply_event(self, line: str, reply: Reply) -> ev.Replied:
        self._answer(reply)
        return ev.Replied(line, reply)

    def _command_event(self) -> ev.Event | ev.NeedData | None:
        raw = self._reader.read_line()
        if raw is None:
            return ev.NEED_DATA
        if raw is LINE_TOO_LONG:
            return self._reply_event("", replies.LINE_TOO_LONG)
        assert isinstance(raw, bytes)
        line = _loggable(raw)
        settings = self.settings
        context = _parse_context(
            self.esmtp,
            self._utf8,
            settings.max_message_size,
            settings.dsn,
            self.auth_offered,
            settings.requiretls,
            self.tls_active,
        )
        try:
            command = c.parse_command(raw, context, line_limit=self.settings.command_line_limit)
        except c.CommandError as exc:
            return self._reply_event(line, exc.reply)
        if isinstance(command, c.Bdat):
            return self._start_chunk(command, line)
        refusal = self._refusal(command)
        if refusal is not None:
            return self._reply_event(line, refusal)
        return self._dispatch(command, line)

    def _refusal(self, command: c.Command) -> Reply | None:
        """Why ``command`` cannot be taken now, or None."""
        if isinstance(command, c.StartTls):
            if self.tls_active:
                return replies.BAD_SEQUENCE  # RFC 3207: no STARTTLS inside TLS
            if not self.settings.starttls:
                return replies.NOT_IMPLEMENTED
        if isinstance(command, c.Auth):
            if not self.settings.auth_mechanisms:
                return replies.NOT_IMPLEMENTED
            if self.authenticated:
                return replies.BAD_SEQUENCE  # RFC 4954 §4: no AUTH after a successful one
        too_many = isinstance(command, c.Rcpt) and self._recipients >= self.settings.max_recipients
        if too_many and st.in_transaction(self.state):
            return replies.TOO_MANY_RECIPIENTS  # §4.5.3.1.10
        if st.target(self.state, command) is None:
            if isinstance(command, c.Data) and self.state is State.MAIL and self._rcpt_attempted:
                return replies.NO_VALID_RECIPIENTS  # §3.3: all RCPTs were refused
            return st.sequence_error(self.state, command)
        if isinstance(command, c.Auth) and not self.auth_offered:
            # RFC 4954 §4/§6: a mechanism that needs an encryption layer is refused with 538.
            return replies.ENCRYPTION_REQUIRED
        return None

    def _dispatch(self, command: c.Command, line: str) -> ev.Event:
        if isinstance(command, (c.Helo, c.Ehlo)):
            return ev.HelloReceived(command, line)
        if isinstance(command, c.Mail):
            return ev.MailReceived(command, line)
        if isinstance(command, c.Rcpt):
            return ev.RcptReceived(command, line)
        if isinstance(command, c.Data):
            return ev.DataReceived(line)
        if isinstance(command, c.StartTls):
            return ev.StartTlsRequested(line)
        if isinstance(command, c.Auth):
            return ev.AuthRequested(command, line)
        if isinstance(command, c.Quit):
            event = self._reply_event(line, replies.CLOSING)
            self._close(replies.CLOSING)
            return event
        if isinstance(command, c.Rset):
            target = st.target(self.state, command)
            assert target is not None
            self.state = target
            self._reset_transaction()
            return self._reply_event(line, replies.RESET_OK)
        if isinstance(command, c.Vrfy):
            # RFC 5321 §3.5.3: 252 avoids confirming which users exist.
            return self._reply_event(line, replies.VRFY_CANNOT_VERIFY)
        if isinstance(command, c.Help):
            return self._reply_event(line, replies.HELP)
        return self._reply_event(line, replies.OK)  # NOOP

    # --- DATA ---------------------------------------------------------------------------------

    def _data_event(self) -> ev.Event | ev.NeedData | None:
        result = self._reader.read_data()
        if result is None:
            return ev.NEED_DATA
        data, done = result
        event: ev.Event | None = None
        if data:
            event = self._count(data)
        if done:
            finish = self._finish_message()
            if event is None:
                return finish
            self._events.append(finish)
        return event

    def _count(self, data: bytes) -> ev.MessageData | None:
        """Account for message octets; past the size limit they are dropped (RFC 1870 §6.3).

        The octets up to the limit are still handed on, so what the application sees does not
        depend on how the stream happened to be cut into reads.
        """
        room = self.settings.max_message_size - self._size
        self._size += len(data)
        if self._too_big:
            return None
        if len(data) > room:
            self._too_big = True
            data = data[: max(room, 0)]
        return ev.MessageData(data) if data else None

    def _finish_message(self) -> ev.MessageComplete | ev.MessageRejected:
        problems = self._reader.problems
        reply: Reply | None = None
        if self._too_big:
            reply = replies.MESSAGE_TOO_BIG
        elif self._mode == _Mode.DATA and problems.bare_line_ending:
            reply = replies.BARE_LINE_ENDING_IN_DATA
        elif self._mode == _Mode.DATA and problems.line_too_long:
            reply = replies.text_line_too_long(self.settings.text_line_limit)
        if reply is None:
            self._mode = _Mode.COMMAND
            return ev.MessageComplete(self._size)
        self._end_transaction()
        self._answer(reply)
        return ev.MessageRejected(reply)

    # --- BDAT (RFC 3030) ----------------------------------------------------------------------

    def _start_chunk(self, command: c.Bdat, line: str) -> ev.Event | None:
        self._chunk_remaining = command.size
        self._chunk_last = command.last
        self._chunk_line = line
        # "the receiver-SMTP MUST ... read the chunk" even when refusing the command, or the
        # chunk's octets would be read as commands. Refusals are answered after the chunk.
        # Out of sequence is 503 like any other command (§4.1.4: "Send HELO/EHLO first" before
        # a greeting); only a BDAT in place after HELO is 502, CHUNKING not being offered there.
        if st.target(self.state, command) is None:
            self._chunk_error = st.sequence_error(self.state, command)
            self._mode = _Mode.DISCARD_CHUNK
        elif not self.esmtp:
            self._chunk_error = replies.NOT_IMPLEMENTED
            self._mode = _Mode.DISCARD_CHUNK
        else:
            self._mode = _Mode.CHUNK
            target = st.after(self.state, c.Bdat)
            if target is not self.state:  # the first chunk (RCPT -> BDAT): the content begins
                self.state = target
                return ev.MessageStart()
        return None

    def _chunk_event(self) -> ev.Event | ev.NeedData | None:
        if self._chunk_remaining > 0:
            piece = self._reader.read_chunk(self._chunk_remaining)
            if piece is None:
                return ev.NEED_DATA
            self._chunk_remaining -= len(piece)
            if self._mode == _Mode.DISCARD_CHUNK:
                return None
            return self._count(piece)
        if self._mode == _Mode.DISCARD_CHUNK:
            self._mode = _Mode.COMMAND
            return self._reply_event(self._chunk_line, self._chunk_error)
        if self._chunk_last or self._too_big:
            return self._finish_message()  # answered: st.after_bdat(last=True) is after_content
        self._mode = _Mode.COMMAND
        return ev.ChunkReceived(self._size, self._chunk_line)

    # --- AUTH exchange (RFC 4954 §4) ----------------------------------------------------------

    def _sasl_event(self) -> ev.Event | ev.NeedData:
        raw = self._reader.read_line()
        if raw is None:
            return ev.NEED_DATA
        self._mode = _Mode.COMMAND
        if raw is LINE_TOO_LONG:
            return self._reply_event("***", replies.LINE_TOO_LONG)
        assert isinstance(raw, bytes)
        return ev.AuthResponse(raw.decode("ascii", "replace"))


# isinstance against the Decision union walks its members; the event classes are final.
_DECISIONS: frozenset[type] = frozenset(get_args(ev.Decision))


# A session meets a handful of distinct contexts; sharing them saves building one per command.
@functools.lru_cache(maxsize=64)
def _parse_context(
    esmtp: bool, utf8: bool, max_message_size: int, dsn: bool, auth: bool, requiretls: bool, tls: bool
) -> c.ParseContext:
    return c.ParseContext(
        esmtp=esmtp,
        utf8_transaction=utf8,
        max_message_size=max_message_size,
        dsn=dsn,
        auth=auth,
        requiretls=requiretls,
        tls=tls,
    )


def _loggable(raw: bytes) -> str:
    """The command line as it may appear in a log: AUTH initial responses are secrets."""
    text = raw.decode("utf-8", "replace")
    if text[:5].upper() == "AUTH ":
        parts = text.split()
        if len(parts) > 2:
            return f"{parts[0]} {parts[1]} ***"
    return text
