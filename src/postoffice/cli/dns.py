"""``postoffice dns DOMAIN [--check]``: the DNS records a local domain needs, printed or checked.

Untrusted input seen here: the command line, and (with ``--check``) DNS answers, read by
:mod:`postoffice.mailauth.records_check`.
"""

from __future__ import annotations

import argparse

from postoffice.cli.backend import database_option, dkim_keys_of
from postoffice.cli.common import Subparsers, config_options, dns_server, load


def add_parser(subparsers: Subparsers) -> None:
    dns = subparsers.add_parser(
        "dns",
        help="print the DNS records a local domain needs, or check them",
        description="Print the MX, SPF, DKIM, DMARC and TLS-RPT records DOMAIN needs, as zone file lines. "
        "With --check, look each up and print ok, missing, different or error for it; the exit "
        "status is 0 only when every record is published as wanted.",
        parents=[config_options(), database_option()],
    )
    dns.add_argument("domain", metavar="DOMAIN")
    dns.add_argument("--check", action="store_true", help="look the records up and compare them")
    dns.add_argument(
        "--dns",
        type=dns_server,
        metavar="HOST:PORT",
        help="ask this DNS server (replaces [delivery] dns; default the system resolver)",
    )
    dns.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default %(default)s")
    dns.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from postoffice.mailauth import dns_cli

    config = load(args)
    with dkim_keys_of(config) as keys:
        return dns_cli.run(
            config, args.domain, check=args.check, nameserver=args.dns, timeout=args.timeout, keys=keys
        )
