"""The per-message state log (spool/state.py): records, folding, torn writes, and the spool files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from postoffice.errors import SpoolError
from postoffice.smtp import replies
from postoffice.spool import state as records
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool
from postoffice.spool.state import Action, Deferral, Outcome, fold


def outcome(index: int, action: Action = Action.DELIVERED, report: bool = False) -> Outcome:
    reply = replies.OK if action is not Action.FAILED else replies.USER_UNKNOWN
    return Outcome(index, action, reply, 1_700_000_000.0, "mx.remote.test", report)


def test_records_fold_into_the_state() -> None:
    log = records.encode(
        [
            records.outcome_record(outcome(0)),
            records.deferred_record(1, 1_700_000_300.0, 1_700_000_000.0, {1: Deferral(replies.LOCAL_ERROR)}),
            records.outcome_record(outcome(2, Action.FAILED, report=True)),
            records.deferred_record(
                2, 1_700_000_900.0, 1_700_000_300.0, {1: Deferral(replies.LOCAL_ERROR, "mx")}
            ),
        ]
    )
    state = fold(log)
    assert state.outcomes == {0: outcome(0), 2: outcome(2, Action.FAILED, report=True)}
    assert (state.attempts, state.next_attempt, state.last_attempt) == (2, 1_700_000_900.0, 1_700_000_300.0)
    assert state.deferrals == {1: Deferral(replies.LOCAL_ERROR, "mx")}
    assert [o.index for o in state.unreported()] == [2]

    state = fold(log + records.encode([records.notified_record([2], "DSNID")]))
    assert state.unreported() == []


def test_an_outcome_clears_the_recipients_deferral() -> None:
    state = fold(
        records.encode(
            [
                records.deferred_record(1, 10.0, 5.0, {0: Deferral(replies.LOCAL_ERROR)}),
                records.outcome_record(outcome(0)),
            ]
        )
    )
    assert state.deferrals == {} and 0 in state.outcomes


def test_hold_and_release() -> None:
    held = records.encode([records.deferred_record(1, 99.0, 1.0, {}), records.HOLD])
    assert fold(held).held
    released = fold(held + records.encode([records.RELEASE]))
    # Released mail goes out at once, not at its old retry time.
    assert not released.held and released.next_attempt is None


def test_a_torn_or_unknown_line_is_skipped_and_the_rest_kept(caplog: pytest.LogCaptureFixture) -> None:
    good = records.encode([records.outcome_record(outcome(0)), records.WARNED])
    torn = records.encode([records.outcome_record(outcome(1))])[:-20]
    state = fold(good + b'{"type":"mystery"}\n' + b'{"type":"outcome","index":"x"}\n' + torn)
    assert list(state.outcomes) == [0] and state.warned
    assert sum("state-record-skipped" in r.getMessage() for r in caplog.records) == 3


def test_reply_texts_from_the_log_are_made_printable() -> None:
    line = (
        b'{"type":"outcome","index":0,"action":"failed","at":1,"reply":{"code":550,"lines":["a\\r\\nb"]}}\n'
    )
    assert fold(line).outcomes[0].reply.lines == ("a??b",)


async def queued(spool: FileSpool) -> QueuedMessage:
    recipient = Recipient("a@example.com", "a@example.com", Route.LOCAL)
    writer = spool.put(Envelope("s@example.org", (recipient,), received_at=time.time()))
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    return await writer.commit()


async def test_the_spool_appends_reads_and_removes_state(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    message = await queued(spool)
    assert spool.read_state(message.queue_id) == records.QueueState()

    spool.append_state(message.queue_id, [records.outcome_record(outcome(0))])
    spool.append_state(message.queue_id, [records.HOLD])
    state = spool.read_state(message.queue_id)
    assert state.held and 0 in state.outcomes
    assert (spool.state_dir / message.queue_id).stat().st_mode & 0o777 == 0o600

    spool.complete(message.queue_id)
    assert not spool.exists(message.queue_id) and not (spool.state_dir / message.queue_id).exists()


async def test_a_state_without_its_message_is_removed_at_start_up(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    message = await queued(spool)
    spool.append_state(message.queue_id, [records.HOLD])
    (spool.queue_dir / message.queue_id).unlink()  # a crash between the two unlinks of complete()
    FileSpool(tmp_path / "spool", clean_tmp=False)
    assert (spool.state_dir / message.queue_id).exists()  # a reader leaves it alone
    FileSpool(tmp_path / "spool")
    assert not (spool.state_dir / message.queue_id).exists()


def test_state_is_refused_for_names_that_are_not_queue_ids(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    with pytest.raises(SpoolError, match="not a queue ID"):
        spool.append_state("../../escape", [records.HOLD])
