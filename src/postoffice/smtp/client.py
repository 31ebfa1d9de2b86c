"""The sans-I/O SMTP client: commands rendered to bytes, reply bytes parsed into :class:`Reply`.

Untrusted input seen here: every byte a server sends back. :class:`ReplyReader` parses it
strictly enough that a garbled or hostile reply becomes a
:class:`~postoffice.errors.SmtpProtocolError`, never an exception from deep inside, and never a
reply that was not sent. Addresses and message bytes come from our own caller and are checked
before they go on the wire: no command can carry a CR or LF (command injection) and message
text is dot-stuffed so that no line of it can end the DATA early (RFC 5321 §4.5.2).

Like :mod:`postoffice.smtp.server`, this module owns no socket: the driver
(:mod:`postoffice.client.connection`) writes what the functions here return and feeds
:meth:`ReplyReader.feed` with what it reads. The sequencing of a mail transaction lives in the
driver; this module holds every piece of it that can be checked with bytes alone.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from postoffice.errors import LocalProtocolError, SmtpProtocolError
from postoffice.smtp.grammar import GrammarError, parse_mailbox
from postoffice.smtp.replies import Reply

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF. MAIL and RCPT grow
# by their extensions' parameters (RFC 1870 §3 "+26 for SIZE", RFC 3461 §4 ORCPT), and RFC 4954
# §4 lets an AUTH line and a SASL response reach 12288 octets.
COMMAND_LINE_LIMIT = 512
PARAMETER_LINE_ALLOWANCE = 1024
AUTH_LINE_LIMIT = 12288

# RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets; servers in the wild send longer ones
# (long EHLO keyword lists, verbose rejections), so we take 8 KiB and treat more as garbage.
REPLY_LINE_LIMIT = 8192
# A multi-line reply longer than this many lines is a server that never stops talking.
REPLY_MAX_LINES = 1000

# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39; then SP or "-" or the end of the line.
_REPLY_LINE = re.compile(rb"([2-5][0-5][0-9])(?:([ -])(.*))?", re.DOTALL)
# RFC 3463 §2: status-code = class "." subject "." detail; 1*3digit each (class one digit).
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")
# RFC 5321 §4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-").
_EHLO_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_ANY_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


# --- replies ----------------------------------------------------------------------------------


class ReplyReader:
    """Turns the server's bytes into whole :class:`Reply` objects, in order.

    ``on_line`` (optional) sees every reply line as received, decoded, without its line ending:
    the raw material of a transcript.
    """

    def __init__(self, on_line: Callable[[str], None] | None = None) -> None:
        self._buffer = bytearray()
        self._lines: list[tuple[int, str]] = []
        self._ready: deque[Reply] = deque()
        self._on_line = on_line

    @property
    def has_unread(self) -> bool:
        """Bytes or replies received and not yet returned (there must be none when TLS starts)."""
        return bool(self._buffer or self._lines or self._ready)

    def feed(self, data: bytes) -> None:
        """Add bytes from the server; raises :class:`SmtpProtocolError` on a malformed reply."""
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > REPLY_LINE_LIMIT:
                    raise SmtpProtocolError(
                        f"the server sent a reply line longer than {REPLY_LINE_LIMIT} octets"
                    )
                return
            if end > REPLY_LINE_LIMIT:
                raise SmtpProtocolError(f"the server sent a reply line longer than {REPLY_LINE_LIMIT} octets")
            # CRLF is the rule (§2.3.8); a bare LF from a sloppy server is tolerated, as every
            # widely used client does, since it cannot smuggle anything into a reply.
            raw = bytes(self._buffer[:end]).removesuffix(b"\r")
            del self._buffer[: end + 1]
            self._take_line(raw)

    def _take_line(self, raw: bytes) -> None:
        match = _REPLY_LINE.fullmatch(raw)
        if match is None:
            shown = raw[:60].decode("utf-8", "replace")
            raise SmtpProtocolError(f"the server sent a line that is not an SMTP reply: {shown!r}")
        code = int(match[1])
        text = (match[3] or b"").decode("utf-8", "replace")
        if self._on_line is not None:
            self._on_line(raw.decode("utf-8", "replace"))
        if self._lines and self._lines[0][0] != code:
            # §4.2.1: every line of a multi-line reply carries the same code.
            raise SmtpProtocolError(
                f"the server changed the reply code inside a reply ({self._lines[0][0]}, {code})"
            )
        self._lines.append((code, text))
        if len(self._lines) > REPLY_MAX_LINES:
            raise SmtpProtocolError(f"the server sent a reply of more than {REPLY_MAX_LINES} lines")
        if match[2] != b"-":
            self._ready.append(_build_reply(code, [line for _, line in self._lines]))
            self._lines.clear()

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None until more bytes arrive."""
        return self._ready.popleft() if self._ready else None

    def end_of_input(self) -> None:
        """The server closed the connection: a half-received reply is an error."""
        if self._buffer or self._lines:
            raise SmtpProtocolError("the server closed the connection in the middle of a reply")


def _build_reply(code: int, lines: list[str]) -> Reply:
    """A :class:`Reply`, with the RFC 3463 enhanced code taken off the front of each line.

    RFC 2034 §3 puts the enhanced code at the start of the text of every line; it is recognised
    only when its class matches the reply code's first digit, so a greeting such as
    ``220 2.example.net ESMTP`` keeps its text.
    """
    match = _ENHANCED.match(lines[0])
    if match is None or int(match[1]) != code // 100:
        return Reply(code, None, tuple(lines))
    enhanced = f"{match[1]}.{int(match[2])}.{int(match[3])}"
    prefix = match[0].rstrip(" ")
    stripped = []
    for line in lines:
        if line == prefix:
            stripped.append("")
        elif line.startswith(prefix + " "):
            stripped.append(line[len(prefix) + 1 :])
        else:
            stripped.append(line)
    return Reply(code, enhanced, tuple(stripped))


# --- what the server offers -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extensions:
    """The service extensions of an EHLO reply (RFC 5321 §4.1.1.1): keyword → parameters."""

    keywords: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Extensions:
        """Parse every line after the greeting line; lines that are not keywords are skipped."""
        keywords: dict[str, str] = {}
        for line in reply.lines[1:]:
            word, _, params = line.strip().partition(" ")
            # Pre-RFC 2554 servers said "AUTH=LOGIN PLAIN"; read it as AUTH unless AUTH is there.
            if word.upper().startswith("AUTH="):
                keywords.setdefault("AUTH=", f"{word[5:]} {params}".strip())
                continue
            if _EHLO_KEYWORD.fullmatch(word):
                keywords[word.upper()] = params.strip()
        if "AUTH=" in keywords:
            legacy = keywords.pop("AUTH=")
            keywords.setdefault("AUTH", legacy)
        return cls(keywords)

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and keyword.upper() in self.keywords

    @property
    def size_limit(self) -> int | None:
        """RFC 1870 §4: ``SIZE n``; None when absent, 0 or unreadable (no fixed limit)."""
        value = self.keywords.get("SIZE", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        """RFC 4954 §3: the SASL mechanisms after AUTH, upper-cased."""
        return tuple(word.upper() for word in self.keywords.get("AUTH", "").split())


# --- commands ---------------------------------------------------------------------------------


def command(verb: str, argument: str = "", *, limit: int = COMMAND_LINE_LIMIT) -> bytes:
    """One command line, CRLF-terminated; refuses a CR, LF or control character in it.

    The check is what keeps a caller-supplied address or name from ending the line early and
    adding a command of its own (SMTP command injection).
    """
    line = f"{verb} {argument}" if argument else verb
    if not line.isprintable():
        raise LocalProtocolError(f"{verb} argument contains a line break or control character")
    data = line.encode("utf-8") + b"\r\n"
    if len(data) > limit:
        raise LocalProtocolError(
            f"{verb} line is {len(data)} octets; the limit is {limit} (RFC 5321 §4.5.3.1)"
        )
    return data


def ehlo(name: str) -> bytes:
    return command("EHLO", name)


def helo(name: str) -> bytes:
    return command("HELO", name)


def check_address(address: str) -> None:
    """Raise :class:`LocalProtocolError` unless ``address`` is an RFC 5321/6531 Mailbox."""
    try:
        parse_mailbox(address, utf8=True)
    except GrammarError as exc:
        raise LocalProtocolError(f"{address!r} is not a valid address: {exc}") from None


def _parameters(params: Mapping[str, str | None]) -> str:
    return "".join(f" {key}={value}" if value is not None else f" {key}" for key, value in params.items())


def mail(sender: str, params: Mapping[str, str | None] | None = None) -> bytes:
    """``MAIL FROM:<sender>`` with ESMTP parameters; ``""`` is the null reverse-path (§4.5.5)."""
    if sender:
        check_address(sender)
    return command(
        "MAIL",
        f"FROM:<{sender}>{_parameters(params or {})}",
        limit=COMMAND_LINE_LIMIT + PARAMETER_LINE_ALLOWANCE,
    )


def rcpt(recipient: str, params: Mapping[str, str | None] | None = None) -> bytes:
    check_address(recipient)
    return command(
        "RCPT",
        f"TO:<{recipient}>{_parameters(params or {})}",
        limit=COMMAND_LINE_LIMIT + PARAMETER_LINE_ALLOWANCE,
    )


DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
RSET = b"RSET\r\n"
NOOP = b"NOOP\r\n"
STARTTLS = b"STARTTLS\r\n"
END_OF_DATA = b".\r\n"


def needs_smtputf8(addresses: Iterable[str], message_head: bytes = b"") -> bool:
    """RFC 6531 §3.2: SMTPUTF8 is needed for a non-ASCII address or UTF-8 in the header section."""
    return any(not address.isascii() for address in addresses) or not message_head.isascii()


def header_section(message: bytes) -> bytes:
    """The header section of a message: everything before the first empty line."""
    match = re.search(rb"\r?\n\r?\n", message)
    return message if match is None else message[: match.start()]


# --- AUTH (RFC 4954) --------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def plain_response(username: str, password: str) -> str:
    """RFC 4616 §2: ``[authzid] NUL authcid NUL passwd``, base64; no authzid."""
    if "\0" in username or "\0" in password:
        raise LocalProtocolError("a user name or password cannot contain NUL")
    return _b64(f"\0{username}\0{password}")


def auth_plain(username: str, password: str) -> tuple[bytes, bytes | None]:
    """The AUTH PLAIN command, and the response to send after ``334`` if it did not fit.

    RFC 4954 §4: the initial response goes on the AUTH line unless that would be too long;
    then the client sends ``AUTH PLAIN``, waits for an empty ``334`` challenge and answers.
    """
    response = plain_response(username, password)
    line = f"AUTH PLAIN {response}\r\n".encode("ascii")
    if len(line) <= COMMAND_LINE_LIMIT:
        return line, None
    return command("AUTH", "PLAIN"), sasl_response(response)


def auth_login() -> bytes:
    """``AUTH LOGIN`` (draft-murchison-sasl-login): the server then asks for name and password."""
    return command("AUTH", "LOGIN")


def login_response(value: str) -> bytes:
    """The base64 answer to one LOGIN challenge (``Username:``, then ``Password:``)."""
    return sasl_response(_b64(value))


def sasl_response(encoded: str) -> bytes:
    return command(encoded, limit=AUTH_LINE_LIMIT) if encoded else b"\r\n"


SASL_CANCEL = b"*\r\n"  # RFC 4954 §4: "*" cancels the exchange


def redacted(line: bytes) -> str:
    """A command line as a transcript may show it: AUTH responses become ``***``."""
    text = line.decode("utf-8", "replace").removesuffix("\r\n")
    verb, _, rest = text.partition(" ")
    if verb.upper() == "AUTH":
        mechanism, _, initial = rest.partition(" ")
        return f"{verb} {mechanism} ***" if initial else text
    return text


# --- message content (RFC 5321 §4.5.2) --------------------------------------------------------


class DotStuffer:
    """Turns message bytes into DATA content, chunk by chunk, without holding the message.

    Every line ending becomes CRLF (bare CR and bare LF too: RFC 5321 §2.3.8 forbids them, and
    a server that takes them one way and a client the other is how SMTP smuggling works);
    a line starting with "." gets one more (§4.5.2), so the content can never contain the end
    marker. :meth:`finish` closes the last line and adds ``.CRLF``.
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._pending_cr = False  # a CR at the end of a chunk may be half of a CRLF

    def feed(self, data: bytes) -> bytes:
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._pending_cr = True
        if not data:
            return b""
        out = _crlf_lines(data).replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and out.startswith(b"."):
            out = b"." + out
        self._at_line_start = out.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        """The rest: the last line ending and the end-of-data line."""
        tail = b""
        if self._pending_cr:
            self._pending_cr = False
            tail = b"\r\n"
        elif not self._at_line_start:
            tail = b"\r\n"
        self._at_line_start = True
        return tail + END_OF_DATA


def _crlf_lines(data: bytes) -> bytes:
    """``data`` with every line ending CRLF; the common cases without a regular expression."""
    carriage_returns = data.count(b"\r")
    if carriage_returns == 0:
        return data.replace(b"\n", b"\r\n")  # Unix text
    if carriage_returns == data.count(b"\n") == data.count(b"\r\n"):
        return data  # already CRLF throughout
    return _ANY_LINE_ENDING.sub(b"\r\n", data)


def dot_stuff(message: bytes) -> bytes:
    """The whole DATA content for ``message``, end-of-data line included."""
    stuffer = DotStuffer()
    return stuffer.feed(message) + stuffer.finish()
