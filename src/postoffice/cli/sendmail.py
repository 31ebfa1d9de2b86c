"""``postoffice sendmail``: the /usr/sbin/sendmail interface that cron, PHP ``mail()`` and git use.

Untrusted input seen here: the arguments and the message on standard input, from whatever
program calls us, and the server's replies. With ``-t`` the recipients come from the message's
own To/Cc/Bcc headers; the Bcc header is then removed so no recipient sees it.

The options are sendmail's (as Postfix's sendmail(1) documents them): ``-t``, ``-f`` (or the
older ``-r``), ``-F``, ``-i`` / ``-oi``, ``-v``; options that only tune sendmail's own queue
(``-odi``, ``-oem``, ``-B``, ``-N``...) are accepted and ignored, as Postfix does. Exit
statuses are sendmail's sysexits values, documented in :mod:`postoffice.cli.submit`.
"""

from __future__ import annotations

import email.utils
import getopt
import getpass
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from postoffice.cli.submit import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_USAGE,
    SMTP_PORT,
    ServerOptions,
    connectable,
    describe,
    describe_refused,
    exit_status,
    parse_server,
    partial_status,
    submit,
)
from postoffice.cli.transcript import TranscriptPrinter
from postoffice.config import DEFAULT_SMTP_LISTENER, default_data_dir, load_config, local_socket_path
from postoffice.errors import ConfigError, LocalProtocolError, SmtpClientError
from postoffice.smtp import client as core

# Where a system-wide installation keeps its configuration (the README's example).
SYSTEM_CONFIG = Path("/etc/postoffice.toml")

# getopt's spelling of sendmail's options: a letter followed by ":" takes a value.
SHORT_OPTIONS = "tivmnqUGb:B:C:d:F:f:h:L:N:O:o:p:R:r:V:X:"
LONG_OPTIONS = ("server=", "config=", "help")
# Modes other than -bm ("deliver mail", the default) are a different program (-bp lists
# the queue, -bd runs a daemon, -bi rebuilds aliases): say so instead of pretending.
_DELIVER_MODE = "m"
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")


class SendmailUsageError(Exception):
    """The arguments cannot be used; exit ``EX_USAGE``."""


@dataclass(slots=True)
class SendmailArgs:
    recipients: list[str] = field(default_factory=list)
    sender: str | None = None
    full_name: str | None = None
    from_headers: bool = False  # -t
    ignore_dots: bool = False  # -i / -oi
    verbose: bool = False  # -v: show the conversation on stderr
    server: str | None = None
    config: str | None = None
    help: bool = False
    # What to say if an address is not valid: it quotes what was typed (see _typed_addresses).
    complaints: dict[str, str] = field(default_factory=dict)


def parse_args(argv: Sequence[str]) -> SendmailArgs:
    """sendmail's command line; raises :class:`SendmailUsageError` with a one-line reason."""
    try:
        options, operands = getopt.gnu_getopt(list(argv), SHORT_OPTIONS, LONG_OPTIONS)
    except getopt.GetoptError as exc:
        raise SendmailUsageError(str(exc)) from None
    args = SendmailArgs()
    for option, value in options:
        if option == "-t":
            args.from_headers = True
        elif option == "-i":
            args.ignore_dots = True
        elif option == "-o":
            # -oi is -i; every other -o option tunes sendmail's own delivery (-oem, -odi...).
            if value == "i":
                args.ignore_dots = True
        elif option in ("-f", "-r"):
            args.sender = value
        elif option == "-F":
            args.full_name = value
        elif option == "-v":
            args.verbose = True
        elif option == "-b":
            if value != _DELIVER_MODE:
                raise SendmailUsageError(f"-b{value} is not supported: only -bm (send a message) is")
        elif option == "-q":
            raise SendmailUsageError("-q is not supported: the server runs its own queue")
        elif option == "--server":
            args.server = value
        elif option == "--config":
            args.config = value
        elif option == "--help":
            args.help = True
        # The rest (-B -C -d -G -h -L -m -n -N -O -p -R -U -V -X) only tune sendmail's own work.
    for address, complaint in _typed_addresses(operands):
        args.recipients.append(address)
        args.complaints.setdefault(address, complaint)
    if args.sender is not None:
        complaint = f"-f {args.sender!r} is not a valid address (local-part@domain)"
        args.complaints.setdefault(args.sender.removeprefix("<").removesuffix(">"), complaint)
    return args


def _typed_addresses(values: Sequence[str], where: str = "") -> list[tuple[str, str]]:
    """Each address in ``values``, with what to say if it is not valid.

    ``getaddresses`` keeps only part of a value it cannot parse ("not an address" gives
    "not"), so the complaint quotes the whole value as given, after ``where``.
    """
    found: list[tuple[str, str]] = []
    for value in values:
        addresses = [address for _, address in email.utils.getaddresses([value])]
        if len(addresses) == 1:
            complaint = f"{where}{value!r} is not a valid address (local-part@domain)"
        else:
            complaint = f"{where}{value!r} has an address that is not valid (local-part@domain)"
        found += [(address, complaint) for address in addresses]
    return found


def read_message(stream: BinaryIO, *, ignore_dots: bool) -> bytes:
    """The message from ``stream``, lines ending in CRLF.

    Without ``-i`` a line holding only "." ends the message, as in classic sendmail. Bare LF
    line endings (what every Unix program writes) become CRLF, as RFC 5321 §2.3.8 requires.
    """
    lines: list[bytes] = []
    for raw in stream:
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if not ignore_dots and line == b".":
            break
        lines.append(line + b"\r\n")
    return b"".join(lines)


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines) and the rest (the empty line and body)."""
    fields: list[bytes] = []
    position = 0
    while position < len(data):
        end = data.find(b"\r\n", position)
        end = len(data) if end < 0 else end + 2
        line = data[position:end]
        if line in (b"\r\n", b""):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line  # RFC 5322 §2.2.3: a folded continuation of the field above
        elif _HEADER_LINE.match(line):
            fields.append(line)
        else:
            break  # not a header: the body starts here (a message without a header section)
        position = end
    return fields, data[position:]


def _field_name(field_bytes: bytes) -> str:
    return field_bytes.split(b":", 1)[0].decode("ascii", "replace").strip().lower()


def _field_value(field_bytes: bytes) -> str:
    value = field_bytes.split(b":", 1)[1].decode("utf-8", "replace")
    return " ".join(value.split())  # unfold (RFC 5322 §2.2.3)


def header_recipients(fields: list[bytes]) -> list[str]:
    """-t: addresses in To, Cc and Bcc; in Resent-To/-Cc/-Bcc instead when the message has them."""
    return [address for address, _ in _header_recipients(fields)]


def _header_recipients(fields: list[bytes]) -> list[tuple[str, str]]:
    """The addresses of :func:`header_recipients`, each with a complaint naming its field.

    RFC 5322 §3.6.6: a resent message goes to its Resent- recipients, not the original ones.
    """
    names = {"to", "cc", "bcc"}
    if any(_field_name(item) in {"resent-to", "resent-cc", "resent-bcc"} for item in fields):
        names = {"resent-to", "resent-cc", "resent-bcc"}
    found: list[tuple[str, str]] = []
    for item in fields:
        if _field_name(item) in names:
            name = item.split(b":", 1)[0].decode("ascii", "replace").strip()
            found += _typed_addresses([_field_value(item)], f"{name}: ")
    return [(address, typed) for address, typed in found if address]


def default_sender() -> str:
    """The envelope sender when neither -f nor a From header gives one: login@hostname."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "nobody"
    for host in (socket.gethostname(), "localhost"):
        candidate = f"{user}@{host}"
        try:
            core.check_address(candidate)
        except LocalProtocolError:
            continue
        return candidate
    return "nobody@localhost"


@dataclass(frozen=True, slots=True)
class Prepared:
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    # What to say if an address is not valid, quoting the argument, -f or header it came from.
    complaints: Mapping[str, str] = field(default_factory=dict)


def prepare(args: SendmailArgs, data: bytes) -> Prepared:
    """Envelope and final bytes: Bcc removed, From/Date/Message-ID added when missing."""
    fields, rest = split_message(data)
    recipients = list(args.recipients)
    complaints = dict(args.complaints)
    if args.from_headers:
        # Postfix adds header recipients to those on the command line; so do we.
        for address, complaint in _header_recipients(fields):
            recipients.append(address)
            complaints.setdefault(address, complaint)
    names = {_field_name(item) for item in fields}
    from_values = [_field_value(item) for item in fields if _field_name(item) == "from"]
    from_addresses = [item for item in _typed_addresses(from_values, "From: ") if item[0]]
    sender = args.sender
    if sender is None and from_addresses:
        sender = from_addresses[0][0]
        complaints.setdefault(sender, from_addresses[0][1])
    if sender is None:
        sender = default_sender()
    if sender == "<>":
        sender = ""  # -f '<>': the null sender of bounces (RFC 5321 §4.5.5)
    sender = sender.removeprefix("<").removesuffix(">")
    # Bcc is for the envelope only (RFC 5322 §3.6.3): no recipient may see it.
    kept = [item for item in fields if _field_name(item) not in ("bcc", "resent-bcc")]
    added: list[bytes] = []
    if "from" not in names:
        author = sender or default_sender()
        added.append(_header("From", email.utils.formataddr((args.full_name or "", author))))
    if "date" not in names:
        added.append(_header("Date", email.utils.formatdate(localtime=True)))
    if "message-id" not in names:
        domain = (sender or default_sender()).rpartition("@")[2]
        added.append(_header("Message-ID", email.utils.make_msgid(domain=domain)))
    if not rest:
        rest = b"\r\n"  # a message of headers only still needs its empty line before the (empty) body
    return Prepared(sender, tuple(dict.fromkeys(recipients)), b"".join(added + kept) + rest, complaints)


def _header(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode()


def server_options(args: SendmailArgs, environ: Mapping[str, str]) -> ServerOptions:
    """Where to submit: ``--server``, else the server's local socket in the data directory of
    the configuration file, and when that cannot be opened, the file's first listener.

    The file is ``--config``, else ``$POSTOFFICE_CONFIG``, else ``/etc/postoffice.toml`` when it
    exists (programs that run sendmail pass no options of ours), else the built-in default.
    Through the local socket the mail is the local system's own: signed and not verified, as
    a logged-in user's (docs/sending.md).
    """
    if args.server is not None:
        host, port = parse_server(args.server, key="--server")
        return ServerOptions(host=host, port=port or SMTP_PORT)
    path = args.config or environ.get("POSTOFFICE_CONFIG") or None
    if path is None and SYSTEM_CONFIG.is_file():
        path = str(SYSTEM_CONFIG)
    if path is None:
        return ServerOptions(local_socket=local_socket_path(default_data_dir(environ)))
    config = load_config(Path(path))
    listener = config.listeners[0]
    local = config.local_socket_path if config.local_socket else None
    return ServerOptions(host=connectable(listener.host), port=listener.port, local_socket=local)


USAGE = f"""\
usage: postoffice sendmail [-t] [-i] [-f SENDER] [-F NAME] [-v] [--server HOST:PORT]
                           [--config FILE] [RECIPIENT ...]

Read a message on standard input and submit it to the postoffice server, as
/usr/sbin/sendmail does.

  -t                 also send to the To, Cc and Bcc addresses of the message
                     (the Bcc header is removed)
  -i, -oi            a line with a single "." does not end the message
  -f SENDER          the envelope sender (default: the From address, else
                     login@hostname); -f '<>' for the null sender
  -F NAME            the sender's name, for a From header added when missing
  -v                 show the SMTP conversation on standard error
  --server HOST:PORT submit here (default: the server's local socket in its
                     data directory, else the first listener in the
                     configuration file, or {DEFAULT_SMTP_LISTENER.address})
  --config FILE      the configuration file (default: $POSTOFFICE_CONFIG, or
                     /etc/postoffice.toml when it exists)

Other sendmail options (-odi, -oem, -B, -N, -R, -V, -X, ...) are accepted and
ignored. Exit status: 0 sent; 75 try again later; 67 a recipient was refused;
65 the sender or the message was refused; 69 the server is unavailable;
64 a usage error.
"""


def run(
    argv: Sequence[str], *, stdin: BinaryIO, stdout: TextIO, stderr: TextIO, environ: Mapping[str, str]
) -> int:
    """The whole command; returns a sysexits status and never raises for a foreseeable failure."""
    try:
        args = parse_args(argv)
    except SendmailUsageError as exc:
        return _fail(stderr, str(exc), EX_USAGE)
    if args.help:
        stdout.write(USAGE)
        return EX_OK
    prepared = prepare(args, read_message(stdin, ignore_dots=args.ignore_dots))
    if not prepared.recipients:
        if args.from_headers:
            reason = "the message has no To, Cc or Bcc address, and no argument names one"
        else:
            reason = "name them as arguments, or use -t to take them from To, Cc and Bcc"
        return _fail(stderr, f"no recipients: {reason}", EX_USAGE)
    for address in (prepared.sender, *prepared.recipients) if prepared.sender else prepared.recipients:
        try:
            core.check_address(address)
        except LocalProtocolError:
            complaint = prepared.complaints.get(address, f"{address!r} is not a valid address")
            return _fail(stderr, complaint, EX_DATAERR)
    try:
        options = server_options(args, environ)
    except ConfigError as exc:
        return _fail(stderr, str(exc), EX_CONFIG)
    transcript = TranscriptPrinter(stderr, full=True) if args.verbose else None
    try:
        result = submit(options, prepared.sender, prepared.recipients, prepared.data, transcript)
    except SmtpClientError as exc:
        return _fail(stderr, describe(exc), exit_status(exc, recipients_refused=EX_NOUSER))
    for address, reply in result.refused.items():
        stderr.write(f"postoffice: {describe_refused(address, reply)}\n")
    return partial_status(result.refused, recipients_refused=EX_NOUSER)


def _fail(stderr: TextIO, message: str, status: int) -> int:
    stderr.write(f"postoffice: {message}\n")
    return status
