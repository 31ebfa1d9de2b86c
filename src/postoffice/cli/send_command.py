"""``postoffice send``: build a message from command-line options and submit it.

Untrusted input seen here: the options :func:`postoffice.cli.send.add_send_parser` defines, the
body and password from standard input or files, and the server's replies (through
:mod:`postoffice.cli.submit`). The password comes from standard input, the environment or
the terminal, never from an option, so it never shows in ``ps`` or the shell's history.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import signal
import sys
from pathlib import Path

from postoffice.cli.compose import Draft, build, mailboxes, parse_header, parse_mailboxes
from postoffice.cli.guided import Guided
from postoffice.cli.submit import (
    EX_DATAERR,
    EX_OK,
    SMTP_PORT,
    SUBMISSIONS_PORT,
    ServerOptions,
    describe,
    describe_refused,
    exit_status,
    parse_server,
    partial_status,
    submit,
)
from postoffice.cli.transcript import TranscriptPrinter, terminal_safe
from postoffice.client.connection import TlsMode
from postoffice.errors import MessageError, SmtpClientError

PASSWORD_VARIABLE = "POSTOFFICE_PASSWORD"


def _parse_server(text: str) -> tuple[str, int | None]:
    return parse_server(text, key="--server")


def server_options(args: argparse.Namespace, *, password: str | None) -> ServerOptions:
    tls = TlsMode.IMPLICIT if args.tls else TlsMode.STARTTLS if args.starttls else TlsMode.PLAIN
    host, port = _parse_server(args.server)
    if port is None:
        port = SUBMISSIONS_PORT if tls is TlsMode.IMPLICIT else SMTP_PORT
    credentials = (args.auth_user, password) if args.auth_user and password is not None else None
    return ServerOptions(
        host=host,
        port=port,
        tls=tls,
        verify=not args.insecure,
        cafile=args.cafile,
        ehlo=args.ehlo,
        credentials=credentials,
        timeout=args.timeout,
    )


def _strip_line_ending(line: bytes) -> str:
    try:
        return line.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("the password on standard input is not UTF-8 text") from None


def read_password(args: argparse.Namespace) -> str | None:
    if not args.auth_user:
        return None
    if args.password_stdin:
        return _strip_line_ending(sys.stdin.buffer.readline())
    if PASSWORD_VARIABLE in os.environ:
        return os.environ[PASSWORD_VARIABLE]
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {args.auth_user}: ")
    raise MessageError(f"--auth-user needs a password: give it with --password-stdin or ${PASSWORD_VARIABLE}")


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError(f"{where} is not UTF-8 text") from None


def read_body(args: argparse.Namespace) -> str:
    if args.body is not None:
        return str(args.body)
    if args.body_file is not None and str(args.body_file) != "-":
        return _text(_read(args.body_file, "--body-file"), str(args.body_file))
    if sys.stdin.isatty():
        print("postoffice: type the message text; end it with Ctrl-D", file=sys.stderr)
    return _text(sys.stdin.buffer.read(), "standard input")


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MessageError(f"{option}: {path}: {exc.strerror or exc}") from None


def _addressed(args: argparse.Namespace) -> Draft:
    """A draft with the sender and recipients of ``--from``, ``--to``, ``--cc``, ``--bcc``."""
    senders = parse_mailboxes(args.sender, what="--from")
    if len(senders) != 1:
        raise MessageError("--from takes one address")
    return Draft(
        sender=senders[0],
        to=mailboxes(args.to, what="--to"),
        cc=mailboxes(args.cc, what="--cc"),
        bcc=mailboxes(args.bcc, what="--bcc"),
    )


def run(args: argparse.Namespace) -> int:
    if args.interactive:
        options = server_options(args, password=None)
        # A person is at the terminal: Ctrl-C must leave, even when we were started with SIGINT
        # ignored (a non-interactive shell starts background jobs so, and Python then keeps it
        # ignored rather than raising KeyboardInterrupt).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return Guided(options, _parse_server).run()
    if not args.sender:
        raise MessageError("--from is required (or use --interactive)")
    try:
        draft = _addressed(args)
    except MessageError as exc:
        # The server would refuse the address with a 5xx, and the status is the same as
        # for its refusal: EX_DATAERR, "what you sent" (sysexits.h).
        print(f"postoffice: {exc}", file=sys.stderr)
        return EX_DATAERR
    draft = dataclasses.replace(
        draft,
        subject=args.subject,
        html=_text(_read(args.html, "--html"), str(args.html)) if args.html else None,
        attachments=tuple(args.attach),
        headers=tuple(parse_header(text) for text in args.header),
    )
    if not draft.recipients:
        raise MessageError("no recipients: give at least one --to, --cc or --bcc")
    password = None if args.dry_run else read_password(args)
    options = server_options(args, password=password)
    outgoing = build(dataclasses.replace(draft, text=read_body(args)))
    if args.dry_run:
        sys.stdout.write(outgoing.data.decode("utf-8", "replace").replace("\r\n", "\n"))
        return EX_OK
    transcript = None
    if args.transcript or args.transcript_full:
        transcript = TranscriptPrinter(sys.stdout, full=args.transcript_full)
    try:
        result = submit(options, outgoing.sender, outgoing.recipients, outgoing.data, transcript)
    except SmtpClientError as exc:
        print(f"postoffice: {describe(exc)}", file=sys.stderr)
        return exit_status(exc)
    for address, reply in result.refused.items():
        print(f"postoffice: {describe_refused(address, reply)}", file=sys.stderr)
    count = len(result.accepted)
    print(f"sent to {count} recipient{'s' if count != 1 else ''}: {terminal_safe(str(result.reply))}")
    return partial_status(result.refused)
