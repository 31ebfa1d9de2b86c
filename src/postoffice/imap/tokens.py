"""A command as tokens: its tag, its name, and its arguments as atoms, strings and lists.

Untrusted input seen here: the command lines and literals the reader framed. A token is
an atom (``str``: ``FLAGS``, ``1:*``, ``\\Seen``, ``BODY[HEADER.FIELDS (FROM)]<0.10>``),
a string (``bytes``: quoted, RFC 9051 §4.3, or a literal) or a parenthesised list (``list``).
``NIL`` stays the atom ``"NIL"``; the string ``"NIL"`` is ``b"NIL"``. Anything else is an
:class:`~postoffice.imap.ImapParseError`, never another exception.

An atom keeps a bracketed part whole, spaces and parentheses included, as fetch attributes
(``BODY[HEADER.FIELDS (A B)]``) need (RFC 9051 §9 ``section``).
"""

from __future__ import annotations

from dataclasses import dataclass

from postoffice.imap import ImapParseError
from postoffice.imap.reader import Command, LiteralSink, tag_of

Token = str | bytes | list["Token"]

# Characters that end an atom (RFC 9051 §9 atom-specials, less "]" handled by depth, and the
# list wildcards "%" and "*", which LIST's mailbox pattern allows in atoms).
_ATOM_END = frozenset(b' ()"{')
# Nesting deeper than this is refused: a client could otherwise recurse us away.
MAX_DEPTH = 16
# UID is a prefix: its command is the next word (RFC 9051 §6.4.9).
_PREFIXES = frozenset({"UID"})


@dataclass(frozen=True, slots=True)
class Parsed:
    """A command: ``tag``, ``name`` in upper case ("UID FETCH" for the UID form), ``args``."""

    tag: str
    name: str
    args: list[Token]
    # A literal that went to a file as it arrived (APPEND's message): its token is b"".
    spooled: LiteralSink | None = None


def parse_command(command: Command) -> Parsed:
    """The tag, name and arguments of ``command``; ImapParseError (with the tag, when there is
    one) for anything malformed."""
    first = command.segments[0]
    tag = tag_of(first)
    if tag is None or tag == "+":
        raise ImapParseError("a command starts with a tag")
    try:
        tokens = _Tokenizer(command.segments, len(tag)).all()
    except ImapParseError as exc:
        raise ImapParseError(str(exc), tag) from None
    if not tokens or not isinstance(tokens[0], str):
        raise ImapParseError("command name missing", tag)
    name = tokens[0].upper()
    args = tokens[1:]
    if name in _PREFIXES:
        if not args or not isinstance(args[0], str):
            raise ImapParseError(f"{name} needs a command", tag)
        name = f"{name} {args[0].upper()}"
        args = args[1:]
    return Parsed(tag, name, args, command.spooled)


class _Tokenizer:
    def __init__(self, segments: tuple[bytes, ...], start: int) -> None:
        self.segments = segments
        self.index = 0  # which text segment
        self.position = start

    @property
    def text(self) -> bytes:
        return self.segments[self.index]

    def all(self) -> list[Token]:
        tokens = self._sequence(0)
        if self.index != len(self.segments) - 1 or self.position != len(self.text):
            raise ImapParseError("unbalanced parentheses")
        return tokens

    def _sequence(self, depth: int) -> list[Token]:
        if depth > MAX_DEPTH:
            raise ImapParseError("lists nested too deep")
        tokens: list[Token] = []
        while True:
            self._skip_spaces()
            if self.position == len(self.text):
                if self.index + 1 >= len(self.segments):
                    if depth:
                        raise ImapParseError("unclosed parenthesis")
                    return tokens
                tokens.append(self.segments[self.index + 1])  # the literal announced here
                self.index += 2
                self.position = 0
                continue
            char = self.text[self.position]
            if char == ord(")"):
                if not depth:
                    raise ImapParseError("unexpected ')'")
                self.position += 1
                return tokens
            if char == ord("("):
                self.position += 1
                tokens.append(self._sequence(depth + 1))
            elif char == ord('"'):
                tokens.append(self._quoted())
            else:
                tokens.append(self._atom())

    def _skip_spaces(self) -> None:
        text = self.text
        while self.position < len(text) and text[self.position] == 0x20:
            self.position += 1

    def _quoted(self) -> bytes:
        # RFC 9051 §4.3: a quoted string has no CR or LF, and "\" escapes only "\" and DQUOTE.
        text, out = self.text, bytearray()
        position = self.position + 1
        while position < len(text):
            char = text[position]
            if char == ord('"'):
                self.position = position + 1
                return bytes(out)
            if char == ord("\\"):
                position += 1
                if position >= len(text) or text[position] not in b'"\\':
                    raise ImapParseError("bad escape in quoted string")
                char = text[position]
            elif char in (0x0D, 0x0A, 0):
                raise ImapParseError("CR, LF or NUL in quoted string")
            out.append(char)
            position += 1
        raise ImapParseError("unterminated quoted string")

    def _atom(self) -> str:
        text, start = self.text, self.position
        position, depth = start, 0
        while position < len(text):
            char = text[position]
            if char < 0x20 or char == 0x7F:
                raise ImapParseError("control character in command")
            if char == ord("["):
                depth += 1
            elif char == ord("]"):
                depth -= 1
                if depth < 0:
                    raise ImapParseError("unexpected ']'")
            elif depth == 0 and char in _ATOM_END:
                break
            position += 1
        if depth:
            raise ImapParseError("unclosed '['")
        if position == start:
            raise ImapParseError(f"unexpected {chr(text[position])!r}")
        self.position = position
        try:
            return text[start:position].decode("utf-8")
        except UnicodeDecodeError:
            raise ImapParseError("atom is not UTF-8") from None
