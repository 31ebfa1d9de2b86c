"""What the scheduler knows about one queued message, and one job of a delivery round.

Untrusted input seen here: envelopes of accepted messages (addresses from SMTP clients) and
delivery results (reply texts from remote servers), carried as data and interpreted nowhere
in this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postoffice.delivery.agent import TempFail
from postoffice.spool.envelope import QueuedMessage, Route
from postoffice.spool.state import QueueState


@dataclass(slots=True)
class Entry:
    """What the scheduler knows about one message between and during rounds."""

    message: QueuedMessage
    state: QueueState
    recovering: bool
    due: float | None = None  # clock() time of the next round, when deferred
    jobs_left: int = 0  # jobs of the current round not yet finished
    in_round: bool = False
    temporary: dict[int, TempFail] = field(default_factory=dict)  # this round's
    unrouted: set[Route] = field(default_factory=set)  # routes already reported as waiting
    # Final results that only the message's removal records (no state log): flush the removal.
    flush_removal: bool = False


@dataclass(slots=True)
class Job:
    """The recipients of one message that one round hands to one agent for one destination."""

    entry: Entry
    route: Route
    destination: str
    indices: list[int]
