"""What the queue has learnt about one message: per-recipient results, retries, hold.

Untrusted input seen here: reply texts from remote servers (stored as data, printed only after
:func:`~postoffice.smtp.replies.printable`), and, when reading back, whatever lies in a state
file: a line that does not parse (the torn tail of a write cut short by a crash) is skipped,
never half-trusted.

The state of a message is an append-only log of small JSON records, one per line, next to the
message in the spool (Postfix keeps the same facts as records appended to the queue file
itself, see qmgr(8) and ``cleanup/cleanup_out_recipient.c``). Appending is what lets two
processes share it: the server records results while ``postoffice queue hold`` records a hold,
each with one ``write(2)`` in ``O_APPEND`` mode, and neither rewrites what the other wrote.
Folding the records in order (:func:`fold`) gives the :class:`QueueState`.

Records::

    {"type": "outcome", "index": 2, "action": "delivered", "reply": {...}, "at": 1.7e9, ...}
    {"type": "deferred", "attempts": 3, "next": 1.7e9, "at": 1.7e9, "replies": {"0": {...}}}
    {"type": "notified", "indices": [2], "dsn": "QUEUEID"}        a DSN was queued for them
    {"type": "warned"}                                             the delay warning went out
    {"type": "hold"}  /  {"type": "release"}                       set by an operator
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from postoffice.smtp.replies import Reply, printable

log = logging.getLogger("postoffice.spool")

# A reply text from a remote server goes into DSNs and `queue list`; RFC 5321 §4.5.3.1.5
# bounds a reply line to 512 octets, and no server needs more than a few lines to say why.
MAX_REPLY_LINES = 10


class Action(enum.Enum):
    """RFC 3464 §2.3.3 action values for a final result."""

    DELIVERED = "delivered"  # into a mailbox here
    RELAYED = "relayed"  # handed to a server that will not send DSNs on its behalf
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A final result for one recipient (by its index in the envelope)."""

    index: int
    action: Action
    reply: Reply
    at: float
    remote_mta: str | None = None  # the host that gave ``reply``; None: it is ours
    report: bool = False  # the sender asked for (or gets by default) a DSN about it


@dataclass(frozen=True, slots=True)
class Deferral:
    """The last temporary failure of one recipient."""

    reply: Reply
    remote_mta: str | None = None


@dataclass(slots=True)
class QueueState:
    """Everything the state log says about one message."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    deferrals: dict[int, Deferral] = field(default_factory=dict)
    attempts: int = 0  # attempts that ended with a temporary failure
    next_attempt: float | None = None  # wall-clock time of the next retry, when deferred
    last_attempt: float | None = None
    notified: set[int] = field(default_factory=set)  # indices a DSN has been queued for
    warned: bool = False  # the delay warning went out
    held: bool = False

    def unreported(self) -> list[Outcome]:
        """Outcomes that still owe the sender a DSN, in recipient order."""
        return [
            outcome
            for index, outcome in sorted(self.outcomes.items())
            if outcome.report and index not in self.notified
        ]


# --- records ------------------------------------------------------------------------------------


def reply_record(reply: Reply) -> dict[str, Any]:
    return {"code": reply.code, "enhanced": reply.enhanced, "lines": list(reply.lines)}


def _reply(data: Mapping[str, Any]) -> Reply:
    code = data["code"]
    enhanced = data.get("enhanced")
    lines = data.get("lines") or [""]
    if not isinstance(code, int) or not 200 <= code <= 599:
        raise ValueError(f"not a reply code: {code!r}")
    if enhanced is not None and not isinstance(enhanced, str):
        raise ValueError("enhanced code is not a string")
    if not isinstance(lines, list):
        raise ValueError("reply lines are not a list")
    return Reply(code, enhanced, tuple(printable(str(line), 512) for line in lines[:MAX_REPLY_LINES]))


def outcome_record(outcome: Outcome) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "outcome",
        "index": outcome.index,
        "action": outcome.action.value,
        "reply": reply_record(outcome.reply),
        "at": outcome.at,
        "report": outcome.report,
    }
    if outcome.remote_mta is not None:
        record["remote_mta"] = outcome.remote_mta
    return record


def deferred_record(
    attempts: int, next_attempt: float, at: float, deferrals: Mapping[int, Deferral]
) -> dict[str, Any]:
    return {
        "type": "deferred",
        "attempts": attempts,
        "next": next_attempt,
        "at": at,
        "replies": {
            str(index): {**reply_record(d.reply), "remote_mta": d.remote_mta}
            for index, d in deferrals.items()
        },
    }


def notified_record(indices: Iterable[int], dsn_queue_id: str | None) -> dict[str, Any]:
    return {"type": "notified", "indices": sorted(indices), "dsn": dsn_queue_id}


WARNED: dict[str, Any] = {"type": "warned"}
HOLD: dict[str, Any] = {"type": "hold"}
RELEASE: dict[str, Any] = {"type": "release"}


def encode(records: Iterable[Mapping[str, Any]]) -> bytes:
    """Records as JSON lines; ASCII only, so no record can hold a raw newline."""
    return b"".join(
        json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
        for record in records
    )


def _apply(state: QueueState, record: Mapping[str, Any]) -> None:
    kind = record.get("type")
    if kind == "outcome":
        index = int(record["index"])
        remote = record.get("remote_mta")
        state.outcomes[index] = Outcome(
            index=index,
            action=Action(record["action"]),
            reply=_reply(record["reply"]),
            at=float(record["at"]),
            remote_mta=str(remote) if remote is not None else None,
            report=bool(record.get("report", False)),
        )
        state.deferrals.pop(index, None)
    elif kind == "deferred":
        state.attempts = int(record["attempts"])
        state.next_attempt = float(record["next"])
        state.last_attempt = float(record["at"])
        for key, data in dict(record.get("replies", {})).items():
            remote = data.get("remote_mta")
            state.deferrals[int(key)] = Deferral(_reply(data), str(remote) if remote is not None else None)
    elif kind == "notified":
        state.notified.update(int(index) for index in record["indices"])
    elif kind == "warned":
        state.warned = True
    elif kind == "hold":
        state.held = True
    elif kind == "release":
        state.held = False
        state.next_attempt = None  # released mail goes out now, as after `postqueue -f`
    else:
        raise ValueError(f"unknown record type {kind!r}")


def fold(data: bytes, *, queue_id: str = "") -> QueueState:
    """The state a log describes. Lines that do not parse are skipped with a warning."""
    state = QueueState()
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            # Applied to a copy, so a record that fails half-way changes nothing.
            trial = replace(
                state,
                outcomes=dict(state.outcomes),
                deferrals=dict(state.deferrals),
                notified=set(state.notified),
            )
            _apply(trial, record)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "queue_id=%s status=state-record-skipped line=%d error=%r", queue_id, number, str(exc)
            )
            continue
        state = trial
    return state
