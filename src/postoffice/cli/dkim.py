"""``postoffice dkim generate|list|retire``: the DKIM signing keys in ``<data-dir>/dkim/`` (a
cluster's in its database).

Untrusted input seen here: the command line (a domain and selector, checked by
:mod:`postoffice.mailauth.dkim_keys` before they name any file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from postoffice.cli.backend import database_option, dkim_keys_of
from postoffice.cli.common import Subparsers, config_options, load


def add_parser(subparsers: Subparsers) -> None:
    dkim = subparsers.add_parser(
        "dkim",
        help="make and list DKIM signing keys",
        description="Make and list the DKIM keys in <data-dir>/dkim/DOMAIN/SELECTOR.key. Every "
        "key signs mail from its domain unless it is retired.",
    )
    actions = dkim.add_subparsers(title="actions", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate",
        help="make a key and print the DNS TXT record to publish",
        description="Make a key (RSA 2048 or Ed25519) and print its DNS TXT record.",
        parents=[config_options(), database_option()],
    )
    generate.add_argument("domain", metavar="DOMAIN")
    generate.add_argument("--selector", metavar="S", help="default: the month, e.g. 202507 (-ed25519 added)")
    generate.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa", help="default rsa")
    generate.set_defaults(handler=_run_generate)
    listing = actions.add_parser(
        "list",
        help="list keys and which sign",
        description="List the DKIM keys.",
        parents=[config_options(), database_option()],
    )
    listing.add_argument("--records", action="store_true", help="also print each key's DNS TXT record")
    listing.set_defaults(handler=_run_list)
    retire = actions.add_parser(
        "retire",
        help="stop signing with a key (it stays on disk)",
        description="Stop signing with a key.",
        parents=[config_options(), database_option()],
    )
    retire.add_argument("domain", metavar="DOMAIN")
    retire.add_argument("selector", metavar="SELECTOR")
    retire.set_defaults(handler=_run_retire)
    copy = actions.add_parser(
        "import",
        help="copy the keys of a data directory (into the cluster's database)",
        description="Copy every key of DIR/dkim that is not here yet (retired ones stay retired), so that "
        "a server moving into a cluster keeps signing with the keys its DNS publishes.",
        parents=[config_options(), database_option()],
    )
    copy.add_argument("source", type=Path, metavar="DIR", help="the data directory whose dkim/ to copy")
    copy.set_defaults(handler=_run_import)


def _run_generate(args: argparse.Namespace) -> int:
    from postoffice.mailauth import dkim_cli

    with dkim_keys_of(load(args)) as keys:
        return dkim_cli.run_generate(keys, args.domain, args.selector, args.algorithm)


def _run_list(args: argparse.Namespace) -> int:
    from postoffice.mailauth import dkim_cli

    with dkim_keys_of(load(args)) as keys:
        return dkim_cli.run_list(keys, records=args.records)


def _run_import(args: argparse.Namespace) -> int:
    from postoffice.mailauth.dkim_keys import KeyDirectory, copy_keys

    with dkim_keys_of(load(args)) as keys:
        copied, skipped = copy_keys(KeyDirectory(args.source), keys)
        for key in copied:
            print(f"copied {key.domain}  {key.selector}  {'signs' if key.signing else 'retired'}")
        for line in skipped:
            print(f"postoffice: skipped {line}", file=sys.stderr)
        print(f"{len(copied)} key(s) copied into {keys.where}")
    return 0


def _run_retire(args: argparse.Namespace) -> int:
    from postoffice.mailauth import dkim_cli

    with dkim_keys_of(load(args)) as keys:
        return dkim_cli.run_retire(keys, args.domain, args.selector)
