"""What an operator sees and does with the queue: list, show, hold, release, delete.

Untrusted input seen here: queue IDs typed by the operator (checked by the spool before they
become paths) and everything in the spool, written by the server from client data; it is
returned as data for the command line to print, never interpreted.

These functions work on the queue (the spool directory, or a cluster's shared queue, through
:class:`~postoffice.storage.MessageStore`) while a server runs: they only read, or append
to a state log (hold, release), or remove a message (delete), each of which the server is
built to notice (:meth:`postoffice.qmgr.scheduler.Scheduler.rescan`). The caller then pokes
the server (:mod:`postoffice.runtime.pidfile`) so that it notices now rather than at the next retry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from postoffice.errors import SpoolError
from postoffice.smtp.replies import Reply
from postoffice.spool import state as records
from postoffice.spool.envelope import QueuedMessage, Recipient
from postoffice.spool.state import QueueState
from postoffice.storage import MessageStore

# `queue show` prints at most this much of the header section.
SHOW_HEADERS_LIMIT = 64 * 1024


class MessageStatus(enum.Enum):
    ACTIVE = "active"  # being delivered, or waiting for its first attempt
    DEFERRED = "deferred"  # waiting for a retry
    HELD = "held"  # put on hold by an operator; not delivered until released


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    recipient: Recipient
    status: str  # delivered, relayed, failed, deferred or pending
    reply: Reply | None = None
    remote_mta: str | None = None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    message: QueuedMessage
    state: QueueState

    @property
    def queue_id(self) -> str:
        return self.message.queue_id

    @property
    def status(self) -> MessageStatus:
        if self.state.held:
            return MessageStatus.HELD
        if self.state.next_attempt is not None:
            return MessageStatus.DEFERRED
        return MessageStatus.ACTIVE

    def recipients(self) -> list[RecipientStatus]:
        statuses = []
        for index, recipient in enumerate(self.message.envelope.recipients):
            outcome = self.state.outcomes.get(index)
            deferral = self.state.deferrals.get(index)
            if outcome is not None:
                statuses.append(
                    RecipientStatus(recipient, outcome.action.value, outcome.reply, outcome.remote_mta)
                )
            elif deferral is not None:
                statuses.append(RecipientStatus(recipient, "deferred", deferral.reply, deferral.remote_mta))
            else:
                statuses.append(RecipientStatus(recipient, "pending"))
        return statuses


def list_queue(spool: MessageStore) -> list[QueueEntry]:
    """Every queued message, oldest first. One that leaves the queue meanwhile is skipped."""
    entries = []
    for queue_id in spool.pending():
        try:
            entries.append(QueueEntry(spool.load(queue_id), spool.read_state(queue_id)))
        except SpoolError:
            continue  # delivered (or moved aside as corrupt) while we were looking
    return entries


def show(spool: MessageStore, queue_id: str) -> QueueEntry:
    _require(spool, queue_id)
    return QueueEntry(spool.load(queue_id), spool.read_state(queue_id))


def header_section(spool: MessageStore, queue_id: str) -> bytes:
    """The message's header section (bounded), as stored."""
    with spool.open(queue_id) as content:
        lines = []
        total = 0
        while total < SHOW_HEADERS_LIMIT:
            line = content.readline(SHOW_HEADERS_LIMIT - total)
            if not line or line in (b"\r\n", b"\n"):
                break
            lines.append(line)
            total += len(line)
    return b"".join(lines)


def hold(spool: MessageStore, queue_id: str) -> None:
    """Keep the message from being delivered (Postfix ``postsuper -h``)."""
    _require(spool, queue_id)
    spool.append_state(queue_id, [records.HOLD])


def release(spool: MessageStore, queue_id: str) -> None:
    """Let a held message go, at once (Postfix ``postsuper -H`` then ``postqueue -f``)."""
    _require(spool, queue_id)
    spool.append_state(queue_id, [records.RELEASE])


def delete(spool: MessageStore, queue_id: str) -> None:
    """Remove the message without telling its sender (Postfix ``postsuper -d``)."""
    _require(spool, queue_id)
    spool.complete(queue_id)


def _require(spool: MessageStore, queue_id: str) -> None:
    if not spool.exists(queue_id):
        raise SpoolError(f"no message {queue_id} in the queue")
