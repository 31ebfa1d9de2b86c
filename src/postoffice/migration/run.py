"""One migration: the accounts, then the mailboxes, then the queue, from one set of stores to
another.

Untrusted input seen here: none of its own (what the stores hold is copied by :mod:`.accounts`,
:mod:`.mailboxes` and :mod:`.queue`).

Accounts go first so that a user exists in the target before their mail; the queue goes last,
so that by the time the target's queue can deliver anything (the target's server started), the
mailboxes it delivers into are there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from postoffice.migration.accounts import AccountStore, copy_accounts
from postoffice.migration.mailboxes import copy_mailboxes
from postoffice.migration.queue import copy_queue
from postoffice.migration.tally import Progress, Tally, quiet
from postoffice.storage import MailboxStore, MessageStore


@dataclass(frozen=True, slots=True)
class Side:
    """The stores on one side of a migration."""

    queue: MessageStore
    mailboxes: MailboxStore
    accounts: AccountStore


def holdings(side: Side) -> list[str]:
    """What ``side`` holds already, by kind ("users", "mailboxes", ...); empty when nothing."""
    held = []
    if side.accounts.users():
        held.append("users")
    if side.accounts.aliases():
        held.append("aliases")
    if next(iter(side.mailboxes.mailboxes()), None) is not None:
        held.append("mailboxes")
    if side.queue.pending():
        held.append("queued messages")
    return held


def migrate(source: Side, target: Side, progress: Progress = quiet) -> Tally:
    """Copy everything ``source`` holds into ``target``; what was copied."""
    tally = Tally()
    copy_accounts(source.accounts, target.accounts, tally, progress)
    copy_mailboxes(source.mailboxes, target.mailboxes, tally, progress)
    asyncio.run(copy_queue(source.queue, target.queue, tally, progress))
    return tally
