"""SMTP commands as frozen dataclasses, and the parser that makes them from one command line.

Untrusted input seen here: every command line the client sends (already framed by
:mod:`postoffice.smtp.reader`, CRLF removed, at most the line limit long). A line that is not a
well-formed command raises :class:`CommandError` carrying the reply to send (RFC 5321 §4.2.4:
500 unknown, 501 bad arguments, 502 not implemented, 555 unknown MAIL/RCPT parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from postoffice.smtp import grammar, replies
from postoffice.smtp.grammar import GrammarError, Path
from postoffice.smtp.replies import Reply


class CommandError(Exception):
    """The line is not an acceptable command; ``reply`` says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Ehlo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    path: Path
    size: int | None = None  # RFC 1870
    body: str | None = None  # RFC 6152: 7BIT or 8BITMIME
    smtputf8: bool = False  # RFC 6531
    ret: str | None = None  # RFC 3461: FULL or HDRS
    envid: str | None = None  # RFC 3461, xtext-decoded
    auth: str | None = None  # RFC 4954 §5: AUTH=<mailbox> or <>
    params: Mapping[str, str | None] = field(default_factory=dict)
    requiretls: bool = False  # RFC 8689 §2: REQUIRETLS


@dataclass(frozen=True, slots=True)
class Rcpt:
    path: Path
    notify: tuple[str, ...] = ()  # RFC 3461 NOTIFY=
    orcpt: str | None = None  # RFC 3461 ORCPT=, xtext-decoded
    params: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class Bdat:
    """RFC 3030: ``BDAT size [LAST]``; the next ``size`` octets are message data."""

    size: int
    last: bool


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Vrfy:
    argument: str


@dataclass(frozen=True, slots=True)
class Help:
    argument: str


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class Auth:
    """RFC 4954: ``AUTH mechanism [initial-response]``."""

    mechanism: str
    initial_response: str | None


Command = Helo | Ehlo | Mail | Rcpt | Data | Bdat | Rset | Noop | Quit | Vrfy | Help | StartTls | Auth


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What the session has advertised and what the transaction declared so far."""

    esmtp: bool = True  # EHLO was used: ESMTP parameters are allowed (§4.1.1.1)
    utf8_transaction: bool = False  # MAIL carried SMTPUTF8 (RFC 6531 §3.4)
    max_message_size: int = 0  # 0: no SIZE limit advertised
    dsn: bool = False  # RFC 3461 advertised
    auth: bool = False  # RFC 4954 advertised
    requiretls: bool = False  # RFC 8689 offered on this listener (advertised once TLS is up)
    tls: bool = False  # the session is inside TLS


_Parser = Callable[[str, ParseContext], Command]

# Verbs RFC 5321 knows that postoffice deliberately does not implement (§4.5.1 makes them optional).
_NOT_IMPLEMENTED = frozenset({"EXPN", "TURN", "ETRN", "SEND", "SOML", "SAML", "ATRN"})
# §4.5.3.1.4 is 512 octets; RFC 4954 §4 allows AUTH lines up to 12288 octets.
AUTH_LINE_LIMIT = 12288
# MAIL/RCPT lines grow by each extension's parameters (RFC 1870 §3: "+26 for SIZE", RFC 3461 §4:
# ORCPT up to 500, RFC 4954 §5: AUTH= up to 500). This is their sum, rounded up.
PARAMETER_LINE_ALLOWANCE = 1024


def parse_command(line: bytes, context: ParseContext, *, line_limit: int = 512) -> Command:
    """Parse one command line (no CRLF)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Invalid UTF-8 in command")) from exc
    verb, _, argument = text.partition(" ")
    verb = verb.upper()
    if not text.isprintable():
        # RFC 5321 §2.4: commands are printable text; a control character (NUL, TAB, bare CR/LF)
        # is an error, not something to interpret.
        if "\r" in text or "\n" in text:
            raise CommandError(replies.BARE_LINE_ENDING_IN_COMMAND)
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Control character in command"))
    limit = line_limit
    if verb == "AUTH":
        limit = AUTH_LINE_LIMIT
    elif verb in ("MAIL", "RCPT"):
        limit = line_limit + PARAMETER_LINE_ALLOWANCE
    if len(line) + 2 > limit:
        raise CommandError(replies.LINE_TOO_LONG)
    parser = _PARSERS.get(verb)
    if parser is None:
        if verb in _NOT_IMPLEMENTED:
            raise CommandError(replies.NOT_IMPLEMENTED)
        raise CommandError(replies.UNRECOGNIZED_COMMAND)
    return parser(argument, context)


def _is_decimal(text: str) -> bool:
    """RFC 1870 size-value and RFC 3030 chunk-size are ABNF DIGIT: ASCII 0-9 only.

    ``str.isdigit()`` alone also admits "²" (which ``int()`` rejects) or "١" (which it reads as 1).
    """
    return text.isascii() and text.isdigit()


def _detail(exc: GrammarError) -> str:
    """A grammar error as reply text. It may quote client input (a parameter keyword), so it is
    bounded: RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets."""
    return replies.printable(str(exc), 100)


def _no_argument(command: Command) -> _Parser:
    def parse(argument: str, context: ParseContext) -> Command:
        if argument.strip():
            raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS)
        return command

    return parse


def _parse_helo(argument: str, context: ParseContext) -> Command:
    name = argument.strip()
    # §4.1.1.1 asks for a domain or address literal; like Postfix's default we accept any single
    # printable token (real clients send bare host names) and reject only a missing or spaced one.
    if not name or " " in name:
        raise CommandError(replies.HELO_REQUIRES_DOMAIN)
    return Helo(name)


def _parse_ehlo(argument: str, context: ParseContext) -> Command:
    helo = _parse_helo(argument, context)
    assert isinstance(helo, Helo)
    return Ehlo(helo.name)


def _split_prefix(argument: str, prefix: str) -> str | None:
    """Strip ``FROM:``/``TO:`` case-insensitively, tolerating spaces after the colon."""
    if argument[: len(prefix)].upper() != prefix:
        return None
    return argument[len(prefix) :].lstrip(" ")


def _parse_mail(argument: str, context: ParseContext) -> Command:
    rest = _split_prefix(argument, "FROM:")
    if rest is None:
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Syntax: MAIL FROM:<address>"))
    try:
        # Parse with UTF-8 admitted; whether it was allowed is decided once SMTPUTF8 is known.
        path, param_text = grammar.parse_path(rest, utf8=True, allow_null=True, allow_postmaster=False)
        params = grammar.parse_parameters(param_text, utf8=True)
    except GrammarError as exc:
        raise CommandError(
            replies.BAD_SENDER_SYNTAX.with_text(f"Bad sender address syntax: {_detail(exc)}")
        ) from exc
    if params and not context.esmtp:
        raise CommandError(replies.PARAMETER_NOT_IMPLEMENTED)  # §4.1.1.11: parameters need EHLO
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None
    requiretls = False
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not _is_decimal(value) or len(value) > 20:
                raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Syntax: SIZE=<octets>"))
            size = int(value)
            if context.max_message_size and size > context.max_message_size:
                raise CommandError(replies.MESSAGE_TOO_BIG)  # RFC 1870 §6.2
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise CommandError(
                    replies.PARAMETER_NOT_IMPLEMENTED_504.with_text("BODY must be 7BIT or 8BITMIME")
                )
            body = value.upper()
        elif key == "SMTPUTF8":
            if value is not None:
                raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("SMTPUTF8 takes no value"))
            smtputf8 = True
        elif key == "RET" and context.dsn:
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("RET must be FULL or HDRS"))
            ret = value.upper()
        elif key == "ENVID" and context.dsn:
            envid = _xtext(value)
        elif key == "AUTH" and context.auth:
            auth = _xtext(value)
        elif key == "REQUIRETLS" and context.requiretls:
            requiretls = _requiretls(value, context)
        else:
            raise CommandError(replies.PARAMETER_NOT_IMPLEMENTED)
    if path.mailbox is not None and not path.mailbox.is_ascii and not smtputf8:
        raise CommandError(replies.NON_ASCII_NEEDS_SMTPUTF8)
    return Mail(path, size, body, smtputf8, ret, envid, auth, params, requiretls)


def _requiretls(value: str | None, context: ParseContext) -> bool:
    """RFC 8689 §2: REQUIRETLS takes no value, and §4.1 only inside TLS (530 5.7.10 outside)."""
    if value is not None:
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("REQUIRETLS takes no value"))
    if not context.tls:
        raise CommandError(replies.REQUIRETLS_NEEDS_TLS)
    return True


def _xtext(value: str | None) -> str:
    if value is None:
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS)
    try:
        decoded = grammar.decode_xtext(value)
    except GrammarError as exc:
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Invalid xtext")) from exc
    if not decoded.isprintable():
        # RFC 3461 §4.4: an ENVID is printable US-ASCII, and no ORCPT address holds a control
        # character; "+0D+0A" would otherwise carry CR LF into the header fields of a DSN.
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Control character in xtext"))
    return decoded


_NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


def _parse_rcpt(argument: str, context: ParseContext) -> Command:
    rest = _split_prefix(argument, "TO:")
    if rest is None:
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Syntax: RCPT TO:<address>"))
    try:
        path, param_text = grammar.parse_path(rest, utf8=True, allow_null=False, allow_postmaster=True)
        params = grammar.parse_parameters(param_text, utf8=context.utf8_transaction)
    except GrammarError as exc:
        raise CommandError(
            replies.BAD_RECIPIENT_SYNTAX.with_text(f"Bad recipient address syntax: {_detail(exc)}")
        ) from exc
    if path.mailbox is not None and not path.mailbox.is_ascii and not context.utf8_transaction:
        raise CommandError(replies.NON_ASCII_NEEDS_SMTPUTF8)
    if params and not context.esmtp:
        raise CommandError(replies.PARAMETER_NOT_IMPLEMENTED)
    notify: tuple[str, ...] = ()
    orcpt: str | None = None
    for key, value in params.items():
        if key == "NOTIFY" and context.dsn:
            items = tuple((value or "").upper().split(","))
            if not set(items) <= _NOTIFY_VALUES or ("NEVER" in items and len(items) > 1):
                raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Invalid NOTIFY"))
            notify = items
        elif key == "ORCPT" and context.dsn:
            orcpt = _xtext(value)
        else:
            raise CommandError(replies.PARAMETER_NOT_IMPLEMENTED)
    return Rcpt(path, notify, orcpt, params)


def _parse_bdat(argument: str, context: ParseContext) -> Command:
    parts = argument.split()
    if not 1 <= len(parts) <= 2 or not _is_decimal(parts[0]) or len(parts[0]) > 20:
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Syntax: BDAT <size> [LAST]"))
    if len(parts) == 2 and parts[1].upper() != "LAST":
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Syntax: BDAT <size> [LAST]"))
    return Bdat(int(parts[0]), len(parts) == 2)


def _parse_auth(argument: str, context: ParseContext) -> Command:
    parts = argument.split()
    if not 1 <= len(parts) <= 2:
        raise CommandError(
            replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Syntax: AUTH mechanism [initial-response]")
        )
    return Auth(parts[0].upper(), parts[1] if len(parts) == 2 else None)


def _parse_vrfy(argument: str, context: ParseContext) -> Command:
    if not argument.strip():
        raise CommandError(replies.SYNTAX_ERROR_IN_PARAMETERS)
    return Vrfy(argument.strip())


def _parse_help(argument: str, context: ParseContext) -> Command:
    return Help(argument.strip())


def _parse_noop(argument: str, context: ParseContext) -> Command:
    return Noop()  # §4.1.1.9: a NOOP argument is ignored


_PARSERS: dict[str, _Parser] = {
    "HELO": _parse_helo,
    "EHLO": _parse_ehlo,
    "MAIL": _parse_mail,
    "RCPT": _parse_rcpt,
    "DATA": _no_argument(Data()),
    "BDAT": _parse_bdat,
    "RSET": _no_argument(Rset()),
    "NOOP": _parse_noop,
    "QUIT": _no_argument(Quit()),
    "VRFY": _parse_vrfy,
    "HELP": _parse_help,
    "STARTTLS": _no_argument(StartTls()),
    "AUTH": _parse_auth,
}
