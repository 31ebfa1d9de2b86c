"""The queue from one :class:`~postoffice.storage.MessageStore` to another: each message's
bytes and envelope, and what its state log says delivery has learnt.

Untrusted input seen here: message bytes and envelopes from SMTP clients, and state records
with remote servers' replies, all copied as data (the bytes streamed, never held whole).

The target gives each message a queue ID of its own; the source's goes into the envelope's
``extra`` under :data:`ORIGIN`, so a run started again after an interruption finds what it
copied already. The state log is written again as the records that fold to the same
:class:`~postoffice.spool.state.QueueState`: results per recipient, the last deferral and the
retry schedule, the reports sent, a hold.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from postoffice.migration.tally import Progress, Tally
from postoffice.spool import state as queue_state
from postoffice.spool.state import QueueState
from postoffice.storage import MessageStore

# The envelope entry naming the queue ID a message had in the store it was moved from.
ORIGIN = "migrated-from"
CHUNK = 256 * 1024


async def copy_queue(
    source: MessageStore, target: MessageStore, target_whole: MessageStore, tally: Tally, progress: Progress
) -> None:
    """Every message queued in ``source`` (oldest first) into ``target``, state included;
    ``target_whole`` lists every message the target holds (what an earlier run copied)."""
    copied = _copied(target_whole)
    for queue_id in source.pending():
        if queue_id in copied:
            _complete_state(source, target_whole, queue_id, copied[queue_id])
            tally.skipped += 1
            continue
        new_id = await copy_message(source, target, queue_id)
        tally.queued += 1
        progress(f"queue {queue_id}: queued as {new_id}")


async def copy_message(source: MessageStore, target: MessageStore, queue_id: str) -> str:
    """One queued message; its queue ID in ``target``."""
    message = source.load(queue_id)
    state = source.read_state(queue_id)
    envelope = replace(message.envelope, extra={**message.envelope.extra, ORIGIN: queue_id})
    writer = target.put(envelope)
    try:
        with source.open(queue_id) as stream:
            while chunk := stream.read(CHUNK):
                writer.write(chunk)
    except BaseException:
        writer.discard()
        raise
    queued = await writer.commit()
    target.append_state(queued.queue_id, state_records(state))
    return queued.queue_id


def _copied(target: MessageStore) -> dict[str, str]:
    """Source queue ID -> target queue ID of what an earlier run moved into ``target``."""
    found = {}
    for queue_id in target.pending():
        origin = target.load(queue_id).envelope.extra.get(ORIGIN)
        if origin is not None:
            found[origin] = queue_id
    return found


def _complete_state(source: MessageStore, target: MessageStore, queue_id: str, new_id: str) -> None:
    """An earlier run stopped between a message's commit and its state: write the state now."""
    state = source.read_state(queue_id)
    if target.read_state(new_id) != state and target.read_state(new_id) == QueueState():
        target.append_state(new_id, state_records(state))


def state_records(state: QueueState) -> list[dict[str, Any]]:
    """Records that :func:`~postoffice.spool.state.fold` turns into ``state`` again.

    The deferral comes first (an outcome clears its recipient's deferral); the queue ID of a
    report already sent is not kept (only which recipients it covered counts).
    """
    records: list[dict[str, Any]] = []
    if state.last_attempt is not None:  # a deferred record was folded in
        records.append(
            queue_state.deferred_record(
                state.attempts,
                state.next_attempt or 0.0,
                state.last_attempt or 0.0,
                state.deferrals,
            )
        )
        if state.next_attempt is None:
            records.append(queue_state.RELEASE)  # a released message: retried at once
    records.extend(queue_state.outcome_record(outcome) for _, outcome in sorted(state.outcomes.items()))
    if state.notified:
        records.append(queue_state.notified_record(state.notified, None))
    if state.warned:
        records.append(queue_state.WARNED)
    if state.held:
        records.append(queue_state.HOLD)
    return records
