"""Reading one POP3 command line: a keyword and its arguments (RFC 1939 §3, RFC 2449 §4).

Untrusted input seen here: every command line a client sends, before and after login. A line
is split and checked only; nothing in it is used as a name of anything but a command, a
message number, a line count or (for USER, PASS and AUTH) text handed on unread.

RFC 1939 §3: "Commands in the POP3 consist of a case-insensitive keyword, possibly followed by
one or more arguments. All commands are terminated by a CRLF pair. Keywords and arguments
consist of printable ASCII characters. Keywords and arguments are each separated by a single
SPACE character. Keywords are three or four characters long. Each argument may be up to 40
characters long." RFC 2449 §4 raises the argument limit to 255 octets for extensions; PASS
takes the rest of the line (a password may hold spaces, as most servers allow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# RFC 2449 §4: "The maximum length of a command is increased from 47 characters ... to 255
# octets, including the terminating CRLF." SASL responses (RFC 5034 §4) may be longer, so
# lines are taken up to this many octets; a longer one is refused without being parsed.
MAX_LINE = 1024
# RFC 2449 §4: arguments of extension commands may be up to 255 octets.
MAX_ARGUMENT = 255
# The keywords this server knows; anything else is "-ERR unknown command".
KEYWORDS = frozenset(
    {
        "USER",
        "PASS",
        "AUTH",
        "STLS",
        "CAPA",
        "QUIT",
        "STAT",
        "LIST",
        "UIDL",
        "RETR",
        "TOP",
        "DELE",
        "RSET",
        "NOOP",
    }
)


class CommandError(ValueError):
    """A line that is not a command this server can read; the text is the -ERR's."""


@dataclass(frozen=True, slots=True)
class Command:
    keyword: str
    arguments: tuple[str, ...] = ()
    # The whole text after the keyword and one space (PASS's password, with its spaces).
    rest: str = field(default="", repr=False)


def parse(line: bytes) -> Command:
    """``line`` without its line ending, as a command; CommandError if it is none."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise CommandError("command is not ASCII") from None
    if any(not (" " <= char <= "~") for char in text):
        raise CommandError("command holds a control character")
    keyword, _, rest = text.partition(" ")
    keyword = keyword.upper()
    if keyword not in KEYWORDS:
        raise CommandError("unknown command")
    if keyword == "PASS":
        return Command(keyword, (), rest)
    arguments = tuple(rest.split(" ")) if rest else ()
    if any(not argument or len(argument) > MAX_ARGUMENT for argument in arguments):
        raise CommandError("malformed arguments")
    return Command(keyword, arguments, rest)


def number(text: str) -> int | None:
    """A message number or line count: decimal digits only, at most nine of them."""
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        return None
    return int(text)
