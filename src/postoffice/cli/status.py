"""``postoffice status``: a running server's listeners, sessions, queue and recent errors.

Untrusted input seen here: the command line, and the server's JSON answer, read by
:mod:`postoffice.status`.
"""

from __future__ import annotations

import argparse

from postoffice.cli.common import Subparsers, host_and_port
from postoffice.config import DEFAULT_HTTP_LISTENER, parse_hostport

_http_address = host_and_port(parse_hostport, "--http")


def add_parser(subparsers: Subparsers) -> None:
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
