"""``postoffice wait``: wait for a message in a running server and print it as JSON.

Untrusted input seen here: the command line, and the server's answers (read by
:mod:`postoffice.client.api`).

Exit status 0 with the message (as ``GET /api/v1/messages/{id}`` gives it) on standard output;
1 with one line on standard error when none came in time or the server cannot be asked.
"""

from __future__ import annotations

import argparse
import json
import sys

from postoffice.cli.common import Subparsers
from postoffice.client.api import DEFAULT_API

API_HELP = (
    f"the server's web address (default {DEFAULT_API}); POSTOFFICE_ADDRESS and POSTOFFICE_PASSWORD log in"
)


def add_parser(subparsers: Subparsers) -> None:
    wait = subparsers.add_parser(
        "wait",
        help="wait for a message and print it as JSON",
        description="Wait until a running server has a message matching the options (all of them)"
        " and print it as JSON; exit 1 if none comes within --timeout.",
    )
    wait.add_argument("--to", metavar="ADDR", help="a recipient (To, Cc or the envelope)")
    wait.add_argument("--from", dest="sender", metavar="ADDR", help="the sender")
    wait.add_argument("--subject", metavar="TEXT", help="words of the subject")
    wait.add_argument("--query", metavar="Q", help="a search query, as in the web UI")
    wait.add_argument("--after", type=int, default=0, metavar="ID", help="only messages with a higher id")
    wait.add_argument("--new", action="store_true", help="only messages that arrive after the command starts")
    wait.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to wait (default 30)")
    wait.add_argument("--api", default=DEFAULT_API, metavar="URL", help=API_HELP)
    wait.set_defaults(handler=_run_wait)


def _run_wait(args: argparse.Namespace) -> int:
    from postoffice.client.api import ApiClient, search_query

    api = ApiClient(args.api)
    query = search_query(to=args.to, sender=args.sender, subject=args.subject, query=args.query)
    after = max(args.after, api.newest_id()) if args.new else args.after
    found = api.wait(query, after=after, timeout=max(0.0, args.timeout))
    if found is None:
        print(f"postoffice: no matching message within {args.timeout:g} seconds", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return 0
