"""The ``postoffice`` command: parses arguments, calls public functions, reports one line.

Untrusted input seen here: the command line, and for ``user add`` a password read from standard
input, a terminal or a file, all from the operator. The password goes straight to
:class:`~postoffice.accounts.Accounts` and is never printed.

Like uvicorn's ``main.py``, this module only turns arguments into a ``Config`` and calls into
the package: no business logic lives here. Every error a person can fix reaches them as one line
``postoffice: <message>`` with exit status 1; usage errors are argparse's, status 2.

Adding a command: write ``_add_<command>_parser(subparsers)``, which registers the parser and
sets ``handler``, and ``_run_<command>(args) -> int``; then list the first in ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from postoffice import __version__
from postoffice.accounts import Accounts
from postoffice.config import Config, Listener, check_config, load_config, parse_hostport
from postoffice.errors import AccountError, ConfigError, PostofficeError

# Shell convention (Advanced Bash-Scripting Guide, "Exit Codes With Special Meanings"):
# 128 + SIGINT.
EXIT_INTERRUPTED = 130


class _Subparsers(Protocol):
    """The part of ``ArgumentParser.add_subparsers()``'s result that commands use."""

    def add_parser(
        self,
        name: str,
        *,
        help: str | None = ...,
        description: str | None = ...,
        parents: Sequence[argparse.ArgumentParser] = ...,
    ) -> argparse.ArgumentParser: ...


Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
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
        print(f"postoffice: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postoffice", description="A durable, standards-correct ESMTP mail server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(subparsers)
    return parser


def _config_options(*, data_dir: bool = True) -> argparse.ArgumentParser:
    """``--config`` and ``--data-dir``, shared by every command that reads the settings."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    if data_dir:
        options.add_argument(
            "--data-dir", type=Path, metavar="DIR", help="data directory (overrides the file's data_dir)"
        )
    return options


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, data_dir=args.data_dir)


# -- serve ---------------------------------------------------------------------------------


def _listener(text: str) -> Listener:
    try:
        host, port = parse_hostport(text, key="--smtp")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None
    return Listener("smtp", host, port)


def _add_serve_parser(subparsers: _Subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the mail server",
        description="Run the mail server. Options given here override the configuration file.",
        parents=[_config_options()],
    )
    serve.add_argument(
        "--smtp",
        action="append",
        type=_listener,
        default=[],
        metavar="HOST:PORT",
        help="listen for SMTP here; repeat for more ([::1]:2525 for IPv6; replaces [listen] smtp)",
    )
    serve.add_argument("--hostname", metavar="NAME", help="our host name in greetings and Received: lines")
    serve.add_argument(
        "--domain",
        action="append",
        default=[],
        dest="domains",
        metavar="DOMAIN",
        help="a local domain; repeat for more (replaces domains; none at all means capture mode)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="server processes sharing the listeners and the data directory (replaces workers)",
    )
    serve.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    config = load_config(
        args.config,
        data_dir=args.data_dir,
        listeners=args.smtp,
        hostname=args.hostname,
        domains=args.domains,
        workers=args.workers,
    )
    # Imported here so that account and config commands never load the server.
    from postoffice import app

    return app.serve(config)


# -- user ----------------------------------------------------------------------------------


def _add_user_parser(subparsers: _Subparsers) -> None:
    user = subparsers.add_parser("user", help="add, list and remove users", description="Manage users.")
    actions = user.add_subparsers(title="actions", metavar="ACTION", required=True)
    common = [_config_options()]

    add = actions.add_parser(
        "add", help="add a user and create their mailbox", description="Add a user.", parents=common
    )
    add.add_argument("address", metavar="ADDRESS")
    # No --password option: a password on the command line shows up in ps and shell history.
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (asks twice on a terminal)",
    )
    source.add_argument("--password-file", type=Path, metavar="FILE", help="read the password from FILE")
    add.add_argument("--admin", action="store_true", help="the user may administer the server")
    add.set_defaults(handler=_run_user_add)

    listing = actions.add_parser("list", help="list users", description="List users.", parents=common)
    listing.set_defaults(handler=_run_user_list)

    delete = actions.add_parser(
        "del", help="remove a user (their mail stays)", description="Remove a user.", parents=common
    )
    delete.add_argument("address", metavar="ADDRESS")
    delete.set_defaults(handler=_run_user_del)


def _strip_newline(line: str) -> str:
    # Only the line ending goes: spaces at either end may be part of the password.
    return line.removesuffix("\n").removesuffix("\r")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        try:
            with open(args.password_file, encoding="utf-8") as stream:
                return _strip_newline(stream.readline())
        except UnicodeDecodeError:
            raise AccountError(f"{args.password_file}: not UTF-8 text") from None
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise AccountError("the passwords do not match")
        return first
    try:
        return _strip_newline(sys.stdin.readline())
    except UnicodeDecodeError:
        raise AccountError("standard input is not UTF-8 text") from None


def _run_user_add(args: argparse.Namespace) -> int:
    config = _load(args)
    password = _read_password(args)
    accounts = Accounts(config.accounts_file)
    address = accounts.add_user(args.address, password, admin=args.admin)
    from postoffice.delivery.maildir import ensure_maildir

    try:
        maildir = ensure_maildir(config.mail_dir, address)
    except BaseException as exc:
        # Without its mailbox the user would be half made; take it back so a retry starts clean.
        with contextlib.suppress(PostofficeError, OSError):
            accounts.remove_user(address)
        if isinstance(exc, ValueError):
            raise AccountError(f"cannot create a mailbox for {address}: {exc}") from None
        raise
    print(f"added user {address} (mailbox {maildir})")
    return 0


def _run_user_list(args: argparse.Namespace) -> int:
    for user in Accounts(_load(args).accounts_file).users():
        print(f"{user.address} (admin)" if user.admin else user.address)
    return 0


def _run_user_del(args: argparse.Namespace) -> int:
    address = Accounts(_load(args).accounts_file).remove_user(args.address)
    print(f"removed user {address}; their mail is kept")
    return 0


# -- alias ---------------------------------------------------------------------------------


def _add_alias_parser(subparsers: _Subparsers) -> None:
    alias = subparsers.add_parser("alias", help="add, list and remove aliases", description="Manage aliases.")
    actions = alias.add_subparsers(title="actions", metavar="ACTION", required=True)
    common = [_config_options()]

    add = actions.add_parser(
        "add",
        help="forward an address to others",
        description="Forward ALIAS to each TARGET. ALIAS may be @domain: a catch-all for "
        "that domain's unknown addresses. Adding to an existing alias adds targets.",
        parents=common,
    )
    add.add_argument("alias", metavar="ALIAS")
    add.add_argument("targets", nargs="+", metavar="TARGET")
    add.set_defaults(handler=_run_alias_add)

    listing = actions.add_parser("list", help="list aliases", description="List aliases.", parents=common)
    listing.set_defaults(handler=_run_alias_list)

    delete = actions.add_parser("del", help="remove an alias", description="Remove an alias.", parents=common)
    delete.add_argument("alias", metavar="ALIAS")
    delete.set_defaults(handler=_run_alias_del)


def _run_alias_add(args: argparse.Namespace) -> int:
    accounts = Accounts(_load(args).accounts_file)
    alias = accounts.add_alias(args.alias, args.targets)
    print(f"{alias} -> {', '.join(accounts.aliases()[alias])}")
    return 0


def _run_alias_list(args: argparse.Namespace) -> int:
    for alias, targets in Accounts(_load(args).accounts_file).aliases().items():
        print(f"{alias} -> {', '.join(targets)}")
    return 0


def _run_alias_del(args: argparse.Namespace) -> int:
    alias = Accounts(_load(args).accounts_file).remove_alias(args.alias)
    print(f"removed alias {alias}")
    return 0


# -- check-config --------------------------------------------------------------------------


def _add_check_config_parser(subparsers: _Subparsers) -> None:
    check = subparsers.add_parser(
        "check-config",
        help="check a configuration file and summarise it",
        description="Check the configuration and print what it means; list every problem found.",
        parents=[_config_options(data_dir=False)],
    )
    check.set_defaults(handler=_run_check_config)


def _run_check_config(args: argparse.Namespace) -> int:
    problems = check_config(args.config)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    config = load_config(args.config)
    if config.capture_mode:
        mode = "capture (no local domains: every recipient is accepted, nothing is relayed)"
    else:
        mode = f"MTA for {', '.join(config.domains)}"
    print(f"{args.config if args.config is not None else '(built-in defaults)'}: ok")
    print(f"  mode: {mode}")
    print(f"  hostname: {config.hostname}")
    print(f"  listeners: {', '.join(str(listener) for listener in config.listeners)}")
    print(f"  data dir: {config.data_dir}")
    return 0


_COMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_serve_parser,
    _add_user_parser,
    _add_alias_parser,
    _add_check_config_parser,
)
