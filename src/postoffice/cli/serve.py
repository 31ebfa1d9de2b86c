"""``postoffice serve``: the server's command line, turned into a :class:`Config` and run.

Untrusted input seen here: the command line, the operator's. Each option overrides its key in
the configuration file; a value the configuration would refuse is argparse's usage error,
with the configuration's own message. Running the server is :mod:`postoffice.runtime.process`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from postoffice.cli.common import Subparsers, config_options, dns_server, host_and_port, make_data_dir
from postoffice.config import (
    DEFAULT_HTTP_LISTENER,
    LOG_FORMATS,
    Config,
    DeliverySettings,
    Listener,
    load_config,
    parse_hostport,
    parse_relay_host,
)


def _listener_of(kind: str) -> Callable[[str], Listener]:
    address = host_and_port(parse_hostport, f"--{kind}")
    return lambda text: Listener(kind, *address(text))


_relay_host = host_and_port(parse_relay_host, "--relay-host")


def _tcp_port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a number from 1 to 65535")
    return int(text)


def _workers_flag(text: str) -> int | str:
    """``--workers``: a number, or "auto" (load_config checks either and names the flag)."""
    return int(text) if text.strip().isdigit() else text


def add_parser(subparsers: Subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the mail server",
        description="Run the mail server. Options given here override the configuration file.",
        parents=[config_options()],
    )
    _add_listen_options(serve)
    _add_pop3_options(serve)
    _add_imap_options(serve)
    _add_mail_options(serve)
    _add_process_options(serve)
    serve.set_defaults(handler=_run_serve)


def _add_pop3_options(serve: argparse.ArgumentParser) -> None:
    """The POP3 listeners (docs/pop3.md); none unless asked."""
    serve.add_argument(
        "--pop3",
        action="append",
        type=_listener_of("pop3"),
        default=[],
        dest="listeners",
        metavar="HOST:PORT",
        help="serve POP3 with STLS (port 110) here; replaces [listen] pop3",
    )
    serve.add_argument(
        "--pop3s",
        action="append",
        type=_listener_of("pop3s"),
        default=[],
        dest="listeners",
        metavar="HOST:PORT",
        help="serve POP3 over implicit TLS (port 995) here; replaces [listen] pop3s",
    )


def _add_listen_options(serve: argparse.ArgumentParser) -> None:
    """Where the server listens, and the TLS certificate its listeners offer."""
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
    web.add_argument("--no-http", action="store_true", help="serve no web UI or JSON API over plain HTTP")
    serve.add_argument(
        "--https",
        action="append",
        type=_listener_of("https"),
        default=[],
        dest="listeners",
        metavar="HOST:PORT",
        help="serve the web UI, JSON API and MTA-STS policy over HTTPS here (port 443),"
        " with the server's certificate; replaces [listen] https",
    )


def _add_imap_options(serve: argparse.ArgumentParser) -> None:
    """IMAP for mail clients (docs/imap.md); none unless asked for."""
    serve.add_argument(
        "--imap",
        action="append",
        type=_listener_of("imap"),
        default=[],
        dest="listeners",
        metavar="HOST:PORT",
        help="serve IMAP for mail clients (STARTTLS; port 143) here; replaces [listen] imap",
    )
    serve.add_argument(
        "--imaps",
        action="append",
        type=_listener_of("imaps"),
        default=[],
        dest="listeners",
        metavar="HOST:PORT",
        help="serve IMAP over implicit TLS (port 993) here; replaces [listen] imaps",
    )


def _add_mail_options(serve: argparse.ArgumentParser) -> None:
    """Who the server is and for which domains, what it records, how it sends mail on."""
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
        type=dns_server,
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


def _add_process_options(serve: argparse.ArgumentParser) -> None:
    """How the server runs: its log lines, its user, its processes, its storage."""
    serve.add_argument(
        "--database",
        metavar="URL",
        help="keep mail in this PostgreSQL database, shared with other nodes (postgresql://...;"
        ' sets [storage] database and backend = "postgresql")',
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
        help='server processes sharing the listeners and the data directory, or "auto" (the default):'
        " one per core; 1 runs a single process (replaces workers)",
    )


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
            database=args.database,
        )
        return dataclasses.replace(config, log_format=args.log_format) if args.log_format else config

    config = load()
    make_data_dir(config, flag=args.data_dir is not None)
    # Imported here so that account and config commands never load the server.
    from postoffice.runtime import process

    return process.serve(config, reload=load)
