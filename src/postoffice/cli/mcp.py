"""``postoffice mcp``: serve the MCP tools of :mod:`postoffice.web.mcp_tools` over stdio.

Untrusted input seen here: the command line; the MCP traffic is the SDK's and the module's.
"""

from __future__ import annotations

import argparse
import sys

from postoffice.cli.common import Subparsers
from postoffice.cli.wait import API_HELP
from postoffice.client.api import DEFAULT_API


def add_parser(subparsers: Subparsers) -> None:
    mcp = subparsers.add_parser(
        "mcp",
        help="an MCP server (stdio) over a running server's mail, for AI agents",
        description="Serve Model Context Protocol tools over standard input and output: list"
        " mailboxes, search, read, wait for a message, its links and codes, delete.",
    )
    mcp.add_argument("--api", default=DEFAULT_API, metavar="URL", help=API_HELP)
    mcp.set_defaults(handler=_run_mcp)


def _run_mcp(args: argparse.Namespace) -> int:
    try:
        from postoffice.web.mcp_tools import build
    except ImportError:
        print(
            "postoffice: the MCP server needs the mcp package: pip install 'postoffice[mcp]'", file=sys.stderr
        )
        return 1
    from postoffice.client.api import ApiClient

    build(ApiClient(args.api)).run("stdio")
    return 0
