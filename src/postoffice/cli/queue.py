"""``postoffice queue``: see and act on the mail queue, while the server runs or not.

Untrusted input seen here: the command line, and the queued messages' envelopes and headers,
which came from clients: :mod:`postoffice.qmgr.admin` reads them, and ``show`` writes the header
section as it was received. ``flush``, ``hold``, ``release`` and ``delete`` tell a running server
at once (:mod:`postoffice.runtime.pidfile`).
"""

from __future__ import annotations

import argparse
import sys
import time

from postoffice.cli.common import Subparsers, config_options, load
from postoffice.config import Config
from postoffice.errors import PostofficeError
from postoffice.qmgr import admin
from postoffice.runtime import pidfile
from postoffice.storage import MessageStore
from postoffice.stores import open_queue_admin


def add_parser(subparsers: Subparsers) -> None:
    queue = subparsers.add_parser(
        "queue",
        help="see and act on the mail queue",
        description="See and act on the queue of mail not yet delivered. Works while the server "
        "runs; flush, hold, release and delete tell the running server at once (with SIGUSR1 "
        "or SIGUSR2 to the pid in <data-dir>/postoffice.pid).",
    )
    actions = queue.add_subparsers(title="actions", metavar="ACTION", required=True)
    common = [config_options()]

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


def _queue_spool(args: argparse.Namespace) -> tuple[Config, MessageStore]:
    """This host's spool, or with [storage] backend = "postgresql" the cluster's whole queue."""
    config = load(args)
    return config, open_queue_admin(config)


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
