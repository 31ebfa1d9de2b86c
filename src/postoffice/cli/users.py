"""``postoffice user`` and ``postoffice alias``: who receives mail here, and where it goes.

Untrusted input seen here: the command line and, for ``user add``, a password read from
standard input, a terminal or a file, all from the operator. The password goes straight to
:class:`~postoffice.accounts.Accounts` and is never printed. With the postgresql backend (in
the configuration, or ``--database URL``) the users and aliases are the cluster's, in its
database.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from pathlib import Path

from postoffice.cli.backend import accounts_of, database_option
from postoffice.cli.common import Subparsers, config_options, load, load_to_write
from postoffice.config import maildir_directory_mode
from postoffice.errors import AccountError, PostofficeError


def add_user_parser(subparsers: Subparsers) -> None:
    user = subparsers.add_parser("user", help="add, list and remove users", description="Manage users.")
    actions = user.add_subparsers(title="actions", metavar="ACTION", required=True)
    common = [config_options(), database_option()]

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
    config = load_to_write(args)
    password = _read_password(args)
    with accounts_of(config) as accounts:
        address = accounts.add_user(args.address, password, admin=args.admin)
        if config.clustered:
            # The mailboxes are the database's too: one is made at the first message.
            print(f"added user {address} ({accounts.backend.where})")
            return 0
        from postoffice.maildir.layout import ensure_maildir

        try:
            maildir = ensure_maildir(
                config.mail_dir, address, mode=maildir_directory_mode(config.mail_file_mode)
            )
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
    with accounts_of(load(args)) as accounts:
        for user in accounts.users():
            print(f"{user.address} (admin)" if user.admin else user.address)
    return 0


def _run_user_del(args: argparse.Namespace) -> int:
    with accounts_of(load_to_write(args)) as accounts:
        address = accounts.remove_user(args.address)
    print(f"removed user {address}; their mail is kept")
    return 0


# -- alias ---------------------------------------------------------------------------------


def add_alias_parser(subparsers: Subparsers) -> None:
    alias = subparsers.add_parser("alias", help="add, list and remove aliases", description="Manage aliases.")
    actions = alias.add_subparsers(title="actions", metavar="ACTION", required=True)
    common = [config_options(), database_option()]

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
    with accounts_of(load_to_write(args)) as accounts:
        alias = accounts.add_alias(args.alias, args.targets)
        print(f"{alias} -> {', '.join(accounts.aliases()[alias])}")
    return 0


def _run_alias_list(args: argparse.Namespace) -> int:
    with accounts_of(load(args)) as accounts:
        for alias, targets in accounts.aliases().items():
            print(f"{alias} -> {', '.join(targets)}")
    return 0


def _run_alias_del(args: argparse.Namespace) -> int:
    with accounts_of(load_to_write(args)) as accounts:
        alias = accounts.remove_alias(args.alias)
    print(f"removed alias {alias}")
    return 0
