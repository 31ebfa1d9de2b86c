"""The ``postoffice`` command: parses arguments, calls public functions, reports one line.

Untrusted input seen here: the command line, the operator's; what each command reads besides
(a password, a message, a configuration file) is said in its module.

Like uvicorn's ``main.py``, this package only turns arguments into a ``Config`` and calls into
the rest: no business logic lives here. Every error a person can fix reaches them as one line
``postoffice: <message>`` with exit status 1; usage errors are argparse's, status 2.
``send`` and ``sendmail`` report what the server said with sysexits statuses (see
:mod:`postoffice.cli.submit`).

One module per command group: :mod:`.serve`, :mod:`.users` (``user`` and ``alias``),
:mod:`.reindex`, :mod:`.check_config`, :mod:`.send` (``send`` and ``sendmail``), :mod:`.queue`,
:mod:`.status`, :mod:`.db` (a cluster's database); :mod:`.common` holds what they share. ``send`` and ``sendmail`` are built on
:mod:`.send_command`, :mod:`.sendmail`, :mod:`.guided`, :mod:`.compose`, :mod:`.submit` and
:mod:`.transcript`, over the SMTP client library (:mod:`postoffice.client`).

Adding a command: write a module with ``add_parser(subparsers)``, which registers the parser
and sets ``handler``, and ``_run_<command>(args) -> int``; then list ``add_parser`` in
``_COMMANDS``. What only running the command needs is imported inside ``_run_<command>``, so
the other commands start without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from postoffice import __version__
from postoffice.cli import (
    chaos,
    check_config,
    db,
    dkim,
    dns,
    mcp,
    migrate_store,
    queue,
    reindex,
    send,
    serve,
    status,
    tlsrpt,
    users,
    wait,
)
from postoffice.cli.common import EXIT_INTERRUPTED, CommandParser, Handler, Subparsers, one_line
from postoffice.errors import PostofficeError


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    # sendmail's options are not argparse's (-oi, -f<>, -odi): that command parses its own, and
    # so does a `postoffice` linked as /usr/sbin/sendmail.
    invoked_as_sendmail = argv is None and Path(sys.argv[0]).name == "sendmail"
    arguments = sys.argv[1:] if argv is None else argv
    if invoked_as_sendmail or arguments[:1] == ["sendmail"]:
        return send.run_sendmail(arguments if invoked_as_sendmail else arguments[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error: argparse has printed it
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `postoffice user list | head`: the reader left. Point stdout at /dev/null so the
        # interpreter's final flush does not complain (Python docs, "Note on SIGPIPE").
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (PostofficeError, OSError) as exc:
        print(f"postoffice: {one_line(exc)}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postoffice", description="A durable, standards-correct ESMTP mail server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    for add in _COMMANDS:
        add(subparsers)
    return parser


_COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    serve.add_parser,
    users.add_user_parser,
    users.add_alias_parser,
    reindex.add_parser,
    check_config.add_parser,
    send.add_send_parser,
    send.add_sendmail_parser,
    queue.add_parser,
    migrate_store.add_parser,
    status.add_parser,
    dkim.add_parser,
    dns.add_parser,
    tlsrpt.add_parser,
    wait.add_parser,
    chaos.add_parser,
    mcp.add_parser,
    db.add_parser,
)
