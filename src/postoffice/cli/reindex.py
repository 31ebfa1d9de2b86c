"""``postoffice reindex``: bring the web UI's search index up to date with the Maildirs.

Untrusted input seen here: the command line; the mail it reads is parsed by
:class:`~postoffice.web.index.MailIndex`.
"""

from __future__ import annotations

import argparse

from postoffice.cli.common import Subparsers, config_options, load
from postoffice.errors import ConfigError


def add_parser(subparsers: Subparsers) -> None:
    reindex = subparsers.add_parser(
        "reindex",
        help="bring the web index up to date with the Maildirs",
        description="Reconcile the web UI's search index with the Maildirs: index messages it "
        "lacks, forget deleted ones, follow moved ones. Safe while the server runs.",
        parents=[config_options()],
    )
    reindex.add_argument(
        "--full", action="store_true", help="also read every indexed message again (ids stay the same)"
    )
    reindex.set_defaults(handler=_run_reindex)


def _run_reindex(args: argparse.Namespace) -> int:
    config = load(args)
    if not config.clustered and not config.mail_dir.is_dir():
        # Most likely a mistyped --data-dir: say so rather than make an empty index there.
        raise ConfigError(f"{config.mail_dir}: no mail directory here (is --data-dir right?)")
    from postoffice.stores import open_mailboxes
    from postoffice.web.index import MailIndex

    # A cluster's node indexes the database's mailboxes into its own index.
    index = MailIndex(config.index_file, open_mailboxes(config), authserv_id=config.hostname)
    try:
        report = index.sync(reparse=args.full)
    finally:
        index.close()
    print(
        f"indexed {report.mailboxes} mailboxes: {report.added} added, {report.removed} removed,"
        f" {report.updated} updated ({config.index_file})"
    )
    return 0
