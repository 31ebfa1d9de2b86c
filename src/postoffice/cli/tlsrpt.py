"""``postoffice tlsrpt send``: send the TLS reports (RFC 8460) of finished days now.

Untrusted input seen here: the command line; the ``_smtp._tls`` records the sender looks up
(:mod:`postoffice.tlsrpt.sender` reads them).

A running server sends them by itself in the first hour of each UTC day; this command does the
same at once, into the queue, and tells a running server to look at the queue. A day's report
for a domain is sent once, whoever sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from postoffice.cli.common import Subparsers, config_options, dns_server, load


def add_parser(subparsers: Subparsers) -> None:
    tlsrpt = subparsers.add_parser(
        "tlsrpt",
        help="TLS reports (RFC 8460) about the mail this server sent",
        description="TLS reporting (RFC 8460): the server counts the TLS result of each connection"
        " to another domain's mail servers and reports each finished UTC day to the domains that"
        " publish a _smtp._tls record.",
    )
    actions = tlsrpt.add_subparsers(title="actions", metavar="ACTION", required=True)
    send = actions.add_parser(
        "send",
        help="send the reports of finished days now",
        description="Queue the reports of every finished day not yet reported (DKIM-signed), and"
        " tell a running server to deliver them.",
        parents=[config_options()],
    )
    send.add_argument(
        "--dns",
        type=dns_server,
        metavar="HOST:PORT",
        help="ask this DNS server for the _smtp._tls records (replaces [delivery] dns)",
    )
    send.set_defaults(handler=_run_send)


def _run_send(args: argparse.Namespace) -> int:
    from postoffice.delivery.tlsrpt import TlsReportStore
    from postoffice.mailauth.dkim_signer import Signer
    from postoffice.runtime import pidfile
    from postoffice.spool.files import FileSpool
    from postoffice.tlsrpt.setup import config_recipients, host_signer, report_sender

    config = load(args)
    if args.dns is not None:
        config = dataclasses.replace(config, delivery=dataclasses.replace(config.delivery, dns=args.dns))
    store = TlsReportStore(config.data_dir)
    spool = FileSpool(config.spool_dir, clean_tmp=False)  # a running server may be receiving
    signer = Signer(config.data_dir, config.domains, enabled=config.authentication.sign)
    sender = report_sender(
        config,
        store,
        spool,
        sign=host_signer(signer, config.hostname),
        recipients_for=config_recipients(config),
    )
    try:
        sent = asyncio.run(sender.send_due())
    finally:
        store.close()
        spool.io.close()
    for report in sent:
        where = f"queued as {report.queued.queue_id}" if report.queued else "not queued"
        posted = f", posted to {len(report.posted)} URL(s)" if report.posted else ""
        print(f"{report.day} {report.domain}: {where}{posted}")
    if not sent:
        print("no reports to send")
    elif any(report.queued for report in sent):
        pidfile.poke(config.data_dir, pidfile.RESCAN_SIGNAL)
    return 0
