"""What a migration has copied so far, and how it tells the operator.

Untrusted input seen here: none (counts, and mailbox names the stores give).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Told each step as one line of text ("mailbox alice@example.com: 3 folders, 12 messages").
Progress = Callable[[str], None]


def quiet(line: str) -> None:
    """A :data:`Progress` that tells nobody."""


@dataclass
class Tally:
    """Counts of what was copied; ``skipped`` is what the target held already (a resumed run)."""

    users: int = 0
    aliases: int = 0
    keys: int = 0
    mailboxes: int = 0
    folders: int = 0
    messages: int = 0
    bytes: int = 0
    queued: int = 0
    skipped: int = 0

    def summary(self) -> str:
        """The one line a run ends with."""
        return (
            f"migrated {self.users} users, {self.aliases} aliases, {self.keys} DKIM keys,"
            f" {self.mailboxes} mailboxes,"
            f" {self.folders} folders, {self.messages} messages ({self.bytes} bytes),"
            f" {self.queued} queued; {self.skipped} already there"
        )
