"""Keeping the capture store tidy: ``[retention]``'s limits applied in the background.

Untrusted input seen here: none; the limits are the operator's, the rows the index's own.

Run by the process that keeps the index (the only process, or the parent of ``serve
--workers``), in a thread of its own every ``check_interval``: the messages beyond the limits,
oldest (lowest id) first, are expunged from their Maildirs and taken out of the index as
journalled deletions, so every reader of the index (the event stream, the UI) hears of them as
of any other deletion. Ids only grow and are never reused, so pruning older mail never makes a
wait for a newer message miss it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from postoffice.config import RetentionSettings
from postoffice.errors import MessageGone
from postoffice.web.index import Change, MailIndex, Row

log = logging.getLogger("postoffice.web")

# Messages pruned per round (one index transaction batch each); rounds repeat until none is left.
ROUND = 500


# A message with a tag (the tags table, web/index_schema.py).
_TAGGED = "EXISTS (SELECT 1 FROM tags WHERE tags.mailbox = messages.mailbox AND tags.key = messages.key)"
# A flagged message: "F" among the flags after the Maildir info separator ":2," (maildir/layout.py).
_FLAGGED = "(instr(location, ':2,') > 0 AND instr(substr(location, instr(location, ':2,') + 3), 'F') > 0)"


def _candidates(settings: RetentionSettings) -> str:
    """The messages retention may delete and counts: all but those ``settings`` keeps."""
    kept = [
        condition
        for keep, condition in ((settings.keep_tagged, _TAGGED), (settings.keep_flagged, _FLAGGED))
        if keep
    ]
    return f"(SELECT * FROM messages WHERE NOT ({' OR '.join(kept)}))" if kept else "messages"


def _prunable_ids(index: MailIndex, settings: RetentionSettings, now: float) -> list[int]:
    # The index's own connection for this thread: these are reads of its tables. The
    # candidates are a constant of the settings, never of the data.
    db = index._db
    messages = _candidates(settings)
    found: set[int] = set()
    if settings.max_messages_per_mailbox:
        found.update(
            row[0]
            for row in db.execute(
                "SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY mailbox ORDER BY id DESC) AS n"
                f" FROM {messages}) WHERE n > ? LIMIT ?",
                (settings.max_messages_per_mailbox, ROUND),
            )
        )
    if settings.max_messages:
        found.update(
            row[0]
            for row in db.execute(
                f"SELECT id FROM {messages} ORDER BY id DESC LIMIT ? OFFSET ?", (ROUND, settings.max_messages)
            )
        )
    if settings.max_age:
        found.update(
            row[0]
            for row in db.execute(
                f"SELECT id FROM {messages} WHERE received < ? LIMIT ?", (now - settings.max_age, ROUND)
            )
        )
    return sorted(found)[:ROUND]


class Retention:
    """Applies ``settings`` to ``index``; ``announce`` hears of the deletions (it may be None)."""

    def __init__(
        self,
        index: MailIndex,
        settings: RetentionSettings,
        announce: Callable[[Sequence[Change]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.settings = settings
        self._announce = announce
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def prune(self) -> int:
        """One pass: delete what is beyond the limits now; how many were deleted."""
        deleted = 0
        while not self._stop.is_set():
            ids = _prunable_ids(self.index, self.settings, self._clock())
            rows = [row for row in map(self.index.get, ids) if row is not None]
            # Rows first, then files: the Maildir watcher, seeing a file go, then finds no row
            # to announce twice. A file that cannot go now is found again by the next sync.
            changes = self.index.apply_followed([], rows)
            for row in rows:
                self._expunge(row)
            if changes and self._announce is not None:
                self._announce(changes)
            deleted += len(changes)
            if len(ids) < ROUND or not changes:
                break
        if deleted:
            log.info("event=retention deleted=%d", deleted)
        return deleted

    def _expunge(self, row: Row) -> bool:
        stored = self.index.locate(row)
        if stored is None:
            return True  # its file is gone already: only the row is left to take out
        try:
            return self.index.store.expunge(stored)
        except MessageGone:
            return True

    def start(self) -> None:
        if self.settings.active and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="postoffice-retention", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.check_interval):
            try:
                self.prune()
            except Exception as exc:  # one line, and the next round tries again
                log.error("event=retention status=failed error=%r", str(exc))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
