"""One migration: the accounts and DKIM keys, then the mailboxes, then the queue, from one set
of stores to another.

Untrusted input seen here: none of its own (what the stores hold is copied by :mod:`.accounts`,
:mod:`.mailboxes` and :mod:`.queue`).

Accounts go first so that a user exists in the target before their mail; the queue goes last,
so that by the time the target's queue can deliver anything (the target's server started), the
mailboxes it delivers into are there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from postoffice.mailauth.dkim_keys import KeyStore, copy_keys
from postoffice.migration.accounts import AccountStore, copy_accounts
from postoffice.migration.mailboxes import copy_mailboxes
from postoffice.migration.queue import copy_queue
from postoffice.migration.tally import Progress, Tally, quiet
from postoffice.storage import MailboxStore, MessageStore


@dataclass(frozen=True, slots=True)
class Side:
    """The stores on one side of a migration. ``queue`` receives; ``whole_queue`` lists and
    reads every queued message (a cluster node's queue lists only those it holds a lease on,
    so there it is the operator's view, :class:`~postoffice.pgstore.queue.PgQueue` without a
    node); None: ``queue`` does both."""

    queue: MessageStore
    mailboxes: MailboxStore
    accounts: AccountStore
    keys: KeyStore
    whole_queue: MessageStore | None = None

    @property
    def every_queued(self) -> MessageStore:
        return self.whole_queue if self.whole_queue is not None else self.queue


def holdings(side: Side) -> list[str]:
    """What ``side`` holds already, by kind ("users", "mailboxes", ...); empty when nothing."""
    held = []
    if side.accounts.users():
        held.append("users")
    if side.accounts.aliases():
        held.append("aliases")
    if next(iter(side.mailboxes.mailboxes()), None) is not None:
        held.append("mailboxes")
    if side.keys.ring().keys:
        held.append("DKIM keys")
    if side.every_queued.pending():
        held.append("queued messages")
    return held


async def migrate(source: Side, target: Side, progress: Progress = quiet) -> Tally:
    """Copy everything ``source`` holds into ``target``; what was copied. The stores' blocking
    calls run in a thread, but for the queue's, whose commits are the event loop's."""
    tally = Tally()
    await asyncio.to_thread(copy_accounts, source.accounts, target.accounts, tally, progress)
    copied, skipped = await asyncio.to_thread(copy_keys, source.keys, target.keys)
    tally.keys += len(copied)
    progress(f"DKIM keys: {len(copied)} copied")
    for line in skipped:
        progress(f"DKIM key skipped: {line}")  # there already, or unreadable
    await asyncio.to_thread(copy_mailboxes, source.mailboxes, target.mailboxes, tally, progress)
    await copy_queue(source.every_queued, target.queue, target.every_queued, tally, progress)
    return tally
