"""What the commands share: their parser class, ``--config`` and ``--data-dir``, loading the
settings (as the configured user), and errors as one line.

Untrusted input seen here: the command line and the configuration file, both the operator's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from postoffice.config import Config, default_data_dir, load_config, parse_dns_server
from postoffice.errors import ConfigError
from postoffice.runtime import privileges

# Shell convention (Advanced Bash-Scripting Guide, "Exit Codes With Special Meanings"):
# 128 + SIGINT.
EXIT_INTERRUPTED = 130


class Subparsers(Protocol):
    """The part of ``ArgumentParser.add_subparsers()``'s result that commands use."""

    def add_parser(
        self,
        name: str,
        *,
        help: str | None = ...,
        description: str | None = ...,
        parents: Sequence[CommandParser] = ...,
    ) -> CommandParser: ...


Handler = Callable[[argparse.Namespace], int]


def one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


class CommandParser(argparse.ArgumentParser):
    """A command's parser: an argument it does not know is its usage error, not the top level's.

    argparse hands a command's unknown arguments back up, and the top-level parser then shows
    its own usage (``postoffice [-h] [--version] COMMAND ...``), which names none of the
    command's options; here the command that was given shows its usage instead.
    """

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; same behaviour
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def config_options(*, data_dir: bool = True) -> CommandParser:
    """``--config`` and ``--data-dir``, shared by every command that reads the settings."""
    options = CommandParser(add_help=False)
    options.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    if data_dir:
        options.add_argument(
            "--data-dir", type=Path, metavar="DIR", help="data directory (overrides the file's data_dir)"
        )
    return options


def load(args: argparse.Namespace) -> Config:
    """The settings, for a command that reads or writes the data directory. Started as root
    with ``user`` set, the command becomes that user first, so what it writes (accounts.json,
    Maildirs, queue files) stays the server's to read and write."""
    config = load_config(args.config, data_dir=args.data_dir, database=getattr(args, "database", None))
    privileges.become_configured_user(config)
    return config


def load_to_write(args: argparse.Namespace) -> Config:
    """The settings of a command that writes to the data directory, which then exists (made
    before root is given up, so that it can be made the user's)."""
    config = load_config(args.config, data_dir=args.data_dir, database=getattr(args, "database", None))
    make_data_dir(config, flag=args.data_dir is not None)
    privileges.become_configured_user(config)
    return config


def make_data_dir(config: Config, *, flag: bool) -> None:
    """Create the data directory; its missing parents only for the default one.

    A mistyped ``--data-dir /srv/mial/data`` would otherwise grow a whole new tree and start
    an empty server there. The default (``~/.local/share/postoffice``) may lack parents on a
    fresh account, and nobody typed it. ``flag``: the path came from ``--data-dir``.
    """
    data_dir = config.data_dir
    try:
        privileges.make_data_dir(config, parents=data_dir == default_data_dir())
    except FileNotFoundError:
        key, path = ("--data-dir", None) if flag else ("data_dir", config.source)
        raise ConfigError(
            f"{data_dir} cannot be made: {data_dir.parent} does not exist (create it first if the path is right)",
            key=key,
            path=str(path) if path is not None else None,
        ) from None


# -- options shared by several commands ---------------------------------------------------


def host_and_port(parse: Callable[..., tuple[str, int]], flag: str) -> Callable[[str], tuple[str, int]]:
    """An argparse type for ``flag``: the config parser's check, its message as the usage error."""

    def convert(text: str) -> tuple[str, int]:
        try:
            return parse(text, key=flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.detail) from None

    return convert


# A DNS server to ask, as --dns HOST:PORT (serve's MX lookups; a command that looks records up).
dns_server = host_and_port(parse_dns_server, "--dns")
