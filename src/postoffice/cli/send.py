"""``postoffice send`` and ``postoffice sendmail``: their command lines.

Untrusted input seen here: the command line. What the commands do is in
:mod:`postoffice.cli.send_command` and :mod:`postoffice.cli.sendmail`, imported only when one
runs (they load the SMTP client), so the other commands start without them. ``send`` and
``sendmail`` report what the server said with sysexits statuses (see :mod:`postoffice.cli.submit`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from postoffice.cli.common import EXIT_INTERRUPTED, Subparsers, one_line
from postoffice.config import DEFAULT_SMTP_LISTENER


def add_send_parser(subparsers: Subparsers) -> None:
    send = subparsers.add_parser(
        "send",
        help="send a message over SMTP (guided with --interactive)",
        description="Build a message and send it over SMTP, showing the conversation with "
        "--transcript. Exit status: 0 sent; 75 a 4xx reply or no connection (try again later); "
        "65 a 5xx reply to the sender, a recipient or the message, or an address given here that is "
        "not valid; 69 a 5xx reply to the "
        "session (greeting, EHLO, STARTTLS, AUTH), or a TLS failure.",
    )
    send.add_argument("--interactive", action="store_true", help="ask for everything, step by step")
    _add_server_options(send)
    _add_message_options(send)
    output = send.add_argument_group("output")
    output.add_argument("--dry-run", action="store_true", help="print the message instead of sending it")
    output.add_argument("--transcript", action="store_true", help="print the conversation (C: and S: lines)")
    output.add_argument("--transcript-full", action="store_true", help="... without shortening the message")
    send.set_defaults(handler=_run_send)


def _add_server_options(send: argparse.ArgumentParser) -> None:
    """Where to send, over what, as whom."""
    server = send.add_argument_group("server")
    server.add_argument(
        "--server", default=DEFAULT_SMTP_LISTENER.address, metavar="HOST[:PORT]", help="default %(default)s"
    )
    tls = server.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true", help="require STARTTLS (RFC 3207)")
    tls.add_argument("--tls", action="store_true", help="TLS from the first byte (port 465, RFC 8314)")
    server.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    server.add_argument("--cafile", type=Path, metavar="FILE", help="trust the CA certificates in FILE")
    server.add_argument("--auth-user", metavar="USER", help="log in as USER (AUTH PLAIN or LOGIN)")
    server.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (else $POSTOFFICE_PASSWORD)",
    )
    server.add_argument("--ehlo", metavar="NAME", help="our name in EHLO (default: host name or address)")
    server.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="default %(default)s")


def _add_message_options(send: argparse.ArgumentParser) -> None:
    """What to send: the envelope and the message built from these."""
    message = send.add_argument_group("message")
    message.add_argument(
        "--from", dest="sender", metavar="ADDRESS", help="the sender (Name <address> or address)"
    )
    for flag in ("to", "cc", "bcc"):
        message.add_argument(
            f"--{flag}",
            action="append",
            default=[],
            metavar="ADDRESS",
            help="repeatable; commas separate several",
        )
    message.add_argument("--subject", default="", metavar="TEXT")
    body = message.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="the text (default: read standard input)")
    body.add_argument("--body-file", type=Path, metavar="FILE", help="read the text from FILE")
    message.add_argument("--html", type=Path, metavar="FILE", help="an HTML version (multipart/alternative)")
    message.add_argument(
        "--attach", action="append", type=Path, default=[], metavar="FILE", help="repeatable"
    )
    message.add_argument(
        "--header", action="append", default=[], metavar='"NAME: VALUE"', help="an extra header; repeatable"
    )


def _run_send(args: argparse.Namespace) -> int:
    from postoffice.cli import send_command

    return send_command.run(args)


def add_sendmail_parser(subparsers: Subparsers) -> None:
    # Listed for --help only: main() hands `sendmail ...` to its own parser before argparse.
    subparsers.add_parser(
        "sendmail",
        help="read a message on standard input and submit it (a drop-in /usr/sbin/sendmail)",
        description="See `postoffice sendmail --help`.",
    )


def run_sendmail(argv: list[str]) -> int:
    """``postoffice sendmail ARGS`` (or a ``postoffice`` named sendmail): sendmail's own options."""
    from postoffice.cli import sendmail

    try:
        return sendmail.run(
            argv, stdin=sys.stdin.buffer, stdout=sys.stdout, stderr=sys.stderr, environ=os.environ
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"postoffice: {one_line(exc)}", file=sys.stderr)
        return os.EX_IOERR
