"""The ``postoffice`` command: parses arguments, calls public functions, reports one line.

Untrusted input seen here: the command line, and for ``user add`` a password read from standard
input, a terminal or a file, all from the operator. The password goes straight to
:class:`~postoffice.accounts.Accounts` and is never printed.

Like uvicorn's ``main.py``, this module only turns arguments into a ``Config`` and calls into
the package: no business logic lives here. Every error a person can fix reaches them as one line
``postoffice: <message>`` with exit status 1; usage errors are argparse's, status 2.
``send`` and ``sendmail`` report what the server said with sysexits statuses (see
:mod:`postoffice.client.submit`).

Adding a command: write ``_add_<command>_parser(subparsers)``, which registers the parser and
sets ``handler``, and ``_run_<command>(args) -> int``; then list the first in ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from postoffice import __version__, pidfile, privileges
from postoffice.accounts import Accounts
from postoffice.config import (
    DEFAULT_HTTP_LISTENER,
    DEFAULT_SMTP_LISTENER,
    LOG_FORMATS,
    Config,
    DeliverySettings,
    Listener,
    check_config,
    default_data_dir,
    load_config,
    maildir_directory_mode,
    parse_dns_server,
    parse_hostport,
    parse_relay_host,
)
from postoffice.errors import AccountError, ConfigError, PostofficeError
from postoffice.qmgr import admin
from postoffice.spool.files import FileSpool

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
        parents: Sequence[_CommandParser] = ...,
    ) -> _CommandParser: ...


Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    # sendmail's options are not argparse's (-oi, -f<>, -odi): that command parses its own, and
    # so does a `postoffice` linked as /usr/sbin/sendmail.
    invoked_as_sendmail = argv is None and Path(sys.argv[0]).name == "sendmail"
    arguments = sys.argv[1:] if argv is None else argv
    if invoked_as_sendmail or arguments[:1] == ["sendmail"]:
        return _run_sendmail(arguments if invoked_as_sendmail else arguments[1:])
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


class _CommandParser(argparse.ArgumentParser):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postoffice", description="A durable, standards-correct ESMTP mail server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True, parser_class=_CommandParser
    )
    for add in _COMMANDS:
        add(subparsers)
    return parser


def _config_options(*, data_dir: bool = True) -> _CommandParser:
    """``--config`` and ``--data-dir``, shared by every command that reads the settings."""
    options = _CommandParser(add_help=False)
    options.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    if data_dir:
        options.add_argument(
            "--data-dir", type=Path, metavar="DIR", help="data directory (overrides the file's data_dir)"
        )
    return options


def _load(args: argparse.Namespace) -> Config:
    """The settings, for a command that reads or writes the data directory. Started as root
    with ``user`` set, the command becomes that user first, so what it writes (accounts.json,
    Maildirs, queue files) stays the server's to read and write."""
    config = load_config(args.config, data_dir=args.data_dir)
    privileges.become_configured_user(config)
    return config


def _load_to_write(args: argparse.Namespace) -> Config:
    """The settings of a command that writes to the data directory, which then exists (made
    before root is given up, so that it can be made the user's)."""
    config = load_config(args.config, data_dir=args.data_dir)
    _make_data_dir(config, flag=args.data_dir is not None)
    privileges.become_configured_user(config)
    return config


def _make_data_dir(config: Config, *, flag: bool) -> None:
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


# -- serve ---------------------------------------------------------------------------------


def _host_and_port(parse: Callable[..., tuple[str, int]], flag: str) -> Callable[[str], tuple[str, int]]:
    """An argparse type for ``flag``: the config parser's check, its message as the usage error."""

    def convert(text: str) -> tuple[str, int]:
        try:
            return parse(text, key=flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.detail) from None

    return convert


def _listener_of(kind: str) -> Callable[[str], Listener]:
    address = _host_and_port(parse_hostport, f"--{kind}")
    return lambda text: Listener(kind, *address(text))


_dns_server = _host_and_port(parse_dns_server, "--dns")
_relay_host = _host_and_port(parse_relay_host, "--relay-host")
_http_address = _host_and_port(parse_hostport, "--http")


def _tcp_port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a number from 1 to 65535")
    return int(text)


def _workers_flag(text: str) -> int | str:
    """``--workers``: a number, or "auto" (load_config checks either and names the flag)."""
    return int(text) if text.strip().isdigit() else text


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
        type=_listener_of("smtp"),
        default=[],
        dest="listeners",
        metavar="HOST:PORT",
        help="listen for SMTP here; repeat for more ([::1]:2525 for IPv6; replaces [listen] smtp)",
    )
    serve.add_argument(
        "--submission",
        action="append",
        type=_listener_of("submission"),
        default=[],
        dest="listeners",
        metavar="HOST:PORT",
        help="listen for mail submission (STARTTLS, then AUTH; port 587) here; replaces [listen] submission",
    )
    serve.add_argument(
        "--smtps",
        action="append",
        type=_listener_of("smtps"),
        default=[],
        dest="listeners",
        metavar="HOST:PORT",
        help="listen for submission over implicit TLS (port 465) here; replaces [listen] smtps",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="TLS certificate chain (PEM); without one a self-signed certificate is made",
    )
    serve.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="private key for --tls-cert, if not in the same file"
    )
    web = serve.add_mutually_exclusive_group()
    web.add_argument(
        "--http",
        action="append",
        type=_listener_of("http"),
        metavar="HOST:PORT",
        help="serve the web UI and JSON API here; repeat for more"
        f" (default {DEFAULT_HTTP_LISTENER.address}; replaces [listen] http)",
    )
    web.add_argument("--no-http", action="store_true", help="serve no web UI or JSON API")
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
        "--transcript-log",
        type=Path,
        metavar="FILE",
        help="append every SMTP command and reply to FILE (AUTH secrets redacted; reopened on SIGHUP)",
    )
    serve.add_argument(
        "--dns",
        type=_dns_server,
        metavar="HOST:PORT",
        help="send MX and address lookups to this DNS server (replaces [delivery] dns)",
    )
    serve.add_argument(
        "--mx-port",
        type=_tcp_port,
        metavar="PORT",
        help=f"TCP port to reach mail exchangers on (default {DeliverySettings().mx_port};"
        " replaces [delivery] mx_port)",
    )
    serve.add_argument(
        "--relay-host",
        type=_relay_host,
        metavar="HOST:PORT",
        help="send all outbound mail through this server (a smarthost; replaces [delivery] relay_host)",
    )
    serve.add_argument(
        "--log-format", choices=LOG_FORMATS, help="key=value text or one JSON object per line (log_format)"
    )
    serve.add_argument(
        "--user",
        metavar="NAME",
        help="started as root: bind the listeners, then run as this user (replaces user)",
    )
    serve.add_argument(
        "--group",
        metavar="NAME",
        help="the group to run as with --user (default: the user's; replaces group)",
    )
    serve.add_argument(
        "--workers",
        type=_workers_flag,
        metavar="N",
        help='server processes sharing the listeners and the data directory, or "auto" for one per core'
        " (replaces workers)",
    )
    serve.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    delivery = {
        name: value
        for name, value in (("dns", args.dns), ("mx_port", args.mx_port), ("relay_host", args.relay_host))
        if value is not None
    }

    def load() -> Config:
        config = load_config(
            args.config,
            data_dir=args.data_dir,
            listeners=args.listeners,
            hostname=args.hostname,
            domains=args.domains,
            transcript_log=args.transcript_log,
            delivery=delivery,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            http_listeners=() if args.no_http else args.http,
            workers=args.workers,
            user=args.user,
            group=args.group,
        )
        return dataclasses.replace(config, log_format=args.log_format) if args.log_format else config

    config = load()
    _make_data_dir(config, flag=args.data_dir is not None)
    # Imported here so that account and config commands never load the server.
    from postoffice import app

    return app.serve(config, reload=load)


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
    config = _load_to_write(args)
    password = _read_password(args)
    accounts = Accounts(config.accounts_file)
    address = accounts.add_user(args.address, password, admin=args.admin)
    from postoffice.maildir.layout import ensure_maildir

    try:
        maildir = ensure_maildir(config.mail_dir, address, mode=maildir_directory_mode(config.mail_file_mode))
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
    address = Accounts(_load_to_write(args).accounts_file).remove_user(args.address)
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
    accounts = Accounts(_load_to_write(args).accounts_file)
    alias = accounts.add_alias(args.alias, args.targets)
    print(f"{alias} -> {', '.join(accounts.aliases()[alias])}")
    return 0


def _run_alias_list(args: argparse.Namespace) -> int:
    for alias, targets in Accounts(_load(args).accounts_file).aliases().items():
        print(f"{alias} -> {', '.join(targets)}")
    return 0


def _run_alias_del(args: argparse.Namespace) -> int:
    alias = Accounts(_load_to_write(args).accounts_file).remove_alias(args.alias)
    print(f"removed alias {alias}")
    return 0


# -- reindex -------------------------------------------------------------------------------


def _add_reindex_parser(subparsers: _Subparsers) -> None:
    reindex = subparsers.add_parser(
        "reindex",
        help="bring the web index up to date with the Maildirs",
        description="Reconcile the web UI's search index with the Maildirs: index messages it "
        "lacks, forget deleted ones, follow moved ones. Safe while the server runs.",
        parents=[_config_options()],
    )
    reindex.add_argument(
        "--full", action="store_true", help="also read every indexed message again (ids stay the same)"
    )
    reindex.set_defaults(handler=_run_reindex)


def _run_reindex(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.mail_dir.is_dir():
        # Most likely a mistyped --data-dir: say so rather than make an empty index there.
        raise ConfigError(f"{config.mail_dir}: no mail directory here (is --data-dir right?)")
    from postoffice.maildir.store import MaildirStore
    from postoffice.web.index import MailIndex

    index = MailIndex(config.index_file, MaildirStore.from_config(config))
    try:
        report = index.sync(reparse=args.full)
    finally:
        index.close()
    print(
        f"indexed {report.mailboxes} mailboxes: {report.added} added, {report.removed} removed,"
        f" {report.updated} updated ({config.index_file})"
    )
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
    tls = config.tls.cert or f"self-signed, made in {config.tls_dir} when a listener needs it"
    print(f"  tls certificate: {tls}")
    print(f"  web: {', '.join(str(listener) for listener in config.http_listeners) or 'off'}")
    print(f"  data dir: {config.data_dir}")
    delivery = config.delivery
    if delivery.relay_host is not None:
        outbound = (
            f"through relay {delivery.relay_host[0]}:{delivery.relay_host[1]} (TLS: {delivery.relay_tls})"
        )
    else:
        resolver = f"{delivery.dns[0]}:{delivery.dns[1]}" if delivery.dns else "the system resolver"
        outbound = f"to MX hosts on port {delivery.mx_port}, looked up with {resolver}"
    print(f"  outbound mail: {outbound}")
    return 0


# -- queue ---------------------------------------------------------------------------------


def _add_queue_parser(subparsers: _Subparsers) -> None:
    queue = subparsers.add_parser(
        "queue",
        help="see and act on the mail queue",
        description="See and act on the queue of mail not yet delivered. Works while the server "
        "runs; flush, hold, release and delete tell the running server at once (with SIGUSR1 "
        "or SIGUSR2 to the pid in <data-dir>/postoffice.pid).",
    )
    actions = queue.add_subparsers(title="actions", metavar="ACTION", required=True)
    common = [_config_options()]

    listing = actions.add_parser(
        "list", help="list queued messages and why they wait", description="List the queue.", parents=common
    )
    listing.set_defaults(handler=_run_queue_list)

    show = actions.add_parser(
        "show",
        help="show one message's envelope, progress and headers",
        description="Show a message.",
        parents=common,
    )
    show.add_argument("queue_id", metavar="ID")
    show.set_defaults(handler=_run_queue_show)

    flush = actions.add_parser(
        "flush",
        help="retry every deferred message now",
        description="Retry deferred mail now.",
        parents=common,
    )
    flush.set_defaults(handler=_run_queue_flush)

    for name, helptext in (
        ("delete", "remove messages from the queue, telling nobody"),
        ("hold", "keep messages from being delivered until released"),
        ("release", "let held messages go, at once"),
    ):
        action = actions.add_parser(
            name, help=helptext, description=helptext.capitalize() + ".", parents=common
        )
        action.add_argument("queue_ids", nargs="+", metavar="ID")
        action.set_defaults(handler=_run_queue_change, change=name)


def _queue_spool(args: argparse.Namespace) -> tuple[Config, FileSpool]:
    config = _load(args)
    if not config.spool_dir.is_dir():
        raise PostofficeError(f"no queue in {config.data_dir} (no server has run there)")
    # clean_tmp=False: a running server may be receiving into tmp/ right now.
    return config, FileSpool(config.spool_dir, clean_tmp=False)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _print_recipients(entry: admin.QueueEntry) -> None:
    for status in entry.recipients():
        line = f"    <{status.recipient.address}> {status.status}"
        if status.reply is not None and status.status != "delivered":
            where = f" (from {status.remote_mta})" if status.remote_mta else ""
            line += f": {' '.join(str(status.reply).split())}{where}"
        print(line)


def _run_queue_list(args: argparse.Namespace) -> int:
    _, spool = _queue_spool(args)
    entries = admin.list_queue(spool)
    for entry in entries:
        envelope = entry.message.envelope
        status = entry.status.value
        if entry.status is admin.MessageStatus.DEFERRED:
            attempts = entry.state.attempts
            status += (
                f", {attempts} attempt{'s' if attempts != 1 else ''}, next {_when(entry.state.next_attempt)}"
            )
        print(
            f"{entry.queue_id}  {entry.message.size:>9}  {_when(envelope.received_at)}  "
            f"<{envelope.mail_from}>  [{status}]"
        )
        _print_recipients(entry)
    if not entries:
        print("The queue is empty.")
    else:
        counts: dict[str, int] = {}
        for entry in entries:
            counts[entry.status.value] = counts.get(entry.status.value, 0) + 1
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        print(f"{len(entries)} message{'s' if len(entries) != 1 else ''} ({summary})")
    return 0


def _run_queue_show(args: argparse.Namespace) -> int:
    _, spool = _queue_spool(args)
    entry = admin.show(spool, args.queue_id)
    envelope = entry.message.envelope
    state = entry.state
    print(f"queue ID: {entry.queue_id}")
    print(f"status: {entry.status.value}")
    print(f"arrived: {_when(envelope.received_at)} from {envelope.client_address or 'this server'}")
    print(f"size: {entry.message.size} octets")
    print(f"sender: <{envelope.mail_from}>")
    if envelope.ret or envelope.envid:
        print(f"DSN: RET={envelope.ret or '-'} ENVID={envelope.envid or '-'}")
    if state.attempts:
        print(
            f"attempts: {state.attempts}, last {_when(state.last_attempt)}, next {_when(state.next_attempt)}"
        )
    print("recipients:")
    _print_recipients(entry)
    print("headers:")
    sys.stdout.flush()
    sys.stdout.buffer.write(admin.header_section(spool, entry.queue_id).replace(b"\r\n", b"\n"))
    sys.stdout.buffer.flush()
    return 0


def _run_queue_flush(args: argparse.Namespace) -> int:
    config, _ = _queue_spool(args)
    pid = pidfile.poke(config.data_dir, pidfile.FLUSH_SIGNAL)
    if pid is None:
        raise PostofficeError(
            f"no server is running for {config.data_dir}; the queue goes out when it starts"
        )
    print(f"asked the server (pid {pid}) to retry the queue now")
    return 0


def _run_queue_change(args: argparse.Namespace) -> int:
    config, spool = _queue_spool(args)
    change = {"delete": admin.delete, "hold": admin.hold, "release": admin.release}[args.change]
    past = {"delete": "deleted", "hold": "held", "release": "released"}[args.change]
    try:
        for queue_id in args.queue_ids:
            change(spool, queue_id)
            print(f"{past} {queue_id}")
    finally:
        # The server learns of every change made, even when a later ID was wrong.
        pidfile.poke(config.data_dir, pidfile.RESCAN_SIGNAL)
    return 0


# -- send, sendmail ------------------------------------------------------------------------


def _add_send_parser(subparsers: _Subparsers) -> None:
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
    output = send.add_argument_group("output")
    output.add_argument("--dry-run", action="store_true", help="print the message instead of sending it")
    output.add_argument("--transcript", action="store_true", help="print the conversation (C: and S: lines)")
    output.add_argument("--transcript-full", action="store_true", help="... without shortening the message")
    send.set_defaults(handler=_run_send)


def _run_send(args: argparse.Namespace) -> int:
    from postoffice.client import send_command

    return send_command.run(args)


def _add_sendmail_parser(subparsers: _Subparsers) -> None:
    # Listed for --help only: main() hands `sendmail ...` to its own parser before argparse.
    subparsers.add_parser(
        "sendmail",
        help="read a message on standard input and submit it (a drop-in /usr/sbin/sendmail)",
        description="See `postoffice sendmail --help`.",
    )


def _run_sendmail(argv: list[str]) -> int:
    from postoffice.client import sendmail

    try:
        return sendmail.run(
            argv, stdin=sys.stdin.buffer, stdout=sys.stdout, stderr=sys.stderr, environ=os.environ
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"postoffice: {_one_line(exc)}", file=sys.stderr)
        return os.EX_IOERR


# -- status --------------------------------------------------------------------------------


def _add_status_parser(subparsers: _Subparsers) -> None:
    status = subparsers.add_parser(
        "status",
        help="summarise a running server",
        description="Show a running server's listeners, sessions, queue and recent errors "
        "(from its /api/v1/status endpoint; start it with serve --http).",
    )
    status.add_argument(
        "--http",
        type=_http_address,
        default=(DEFAULT_HTTP_LISTENER.host, DEFAULT_HTTP_LISTENER.port),
        metavar="HOST:PORT",
        help=f"the server's --http address (default {DEFAULT_HTTP_LISTENER.address})",
    )
    status.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from postoffice.status import fetch_status, render_status

    print(render_status(fetch_status(*args.http)))
    return 0


_COMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_serve_parser,
    _add_user_parser,
    _add_alias_parser,
    _add_reindex_parser,
    _add_check_config_parser,
    _add_send_parser,
    _add_sendmail_parser,
    _add_queue_parser,
    _add_status_parser,
)
