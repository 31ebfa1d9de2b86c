"""Following the shared mailboxes as every node changes them: PostgreSQL ``LISTEN/NOTIFY``.

Untrusted input seen here: the notifications' payloads (JSON that this server's nodes send,
:func:`~postoffice.pgstore.mail_rows.notify`, but any client of the database could send one):
a payload that is not an object with a string mailbox is skipped, and what one names is only
ever looked up in the store (a location from a notification is a candidate, never a path).

Each node's store sends a notification inside the transaction of each change (a delivery, an
APPEND, a flag change, an expunge, a move), so the database delivers it to every listening
node at the commit, in commit order, and never for a change rolled back. One thread per watch
holds its own connection (LISTEN needs a session of its own, outside the pools), gathers what
arrives for ``TICK`` seconds and reports it as one :class:`~postoffice.storage.MailboxChanges`
(an empty one when nothing came, for the consumer's timed work).

A notification sent while the connection was down is lost, so after the connection fails the
watch connects again (``RESTART_DELAY``, doubled at each failure in a row, up to
``RESTART_DELAY_MAX``) and then names every mailbox as wholly changed: the consumer (each
node's web index) looks at them all again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from postoffice.pg.database import Database, one_line
from postoffice.pgstore.mail_rows import CHANNEL
from postoffice.storage import MailboxChanges, OnChanges

log = logging.getLogger("postoffice.pgstore.watch")

# How long notifications are gathered into one batch (s): a change reaches the consumer within
# about this, plus the consumer's own work.
TICK = 0.1
# How often a quiet connection is asked whether it is still there (s): a database that went
# away without closing the socket is noticed this soon.
CHECK_EVERY = 5.0
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0


def changes_of(payloads: Iterable[str]) -> MailboxChanges:
    """The notifications' payloads as one batch of changes (malformed ones skipped)."""
    messages: dict[str, dict[str, set[str]]] = {}
    whole: set[str] = set()
    for payload in payloads:
        try:
            item = json.loads(payload)
        except ValueError:
            continue
        mailbox = item.get("m") if isinstance(item, dict) else None
        if not isinstance(mailbox, str):
            continue
        key, locations = item.get("k"), item.get("l")
        if key is None:
            whole.add(mailbox)
        elif isinstance(key, str) and isinstance(locations, list):
            seen = messages.setdefault(mailbox, {}).setdefault(key, set())
            seen.update(where for where in locations if isinstance(where, str))
    return MailboxChanges(messages, sorted(whole))


class PgMailboxWatch:
    """A watch of the database's mailboxes (:meth:`~postoffice.storage.MailboxStore.watch`)."""

    def __init__(self, database: Database, on_changes: OnChanges) -> None:
        self._database = database
        self._on_changes = on_changes
        self._watching = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def polling(self) -> bool:
        return False

    @property
    def watching(self) -> threading.Event:
        return self._watching

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="pg-mailbox-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._watching.clear()

    def _run(self) -> None:
        import psycopg

        delay, rescan = RESTART_DELAY, False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self._database.url,
                    autocommit=True,
                    connect_timeout=10,
                    application_name=f"{self._database.name}-watch",
                ) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._watching.set()
                    if rescan:
                        self._report_all(connection)
                        log.info("event=mailbox-watch status=resumed database=%s", self._database.where)
                    delay = RESTART_DELAY
                    self._listen(connection)
            except psycopg.Error as error:
                self._watching.clear()
                log.warning(
                    "event=mailbox-watch status=failed database=%s retry_in=%.1fs error=%r",
                    self._database.where, delay, one_line(error),
                )  # fmt: skip
                rescan = True
                self._stopping.wait(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)

    def _listen(self, connection: Any) -> None:
        checked = time.monotonic()
        while not self._stopping.is_set():
            payloads = [item.payload for item in connection.notifies(timeout=TICK)]
            self._report(changes_of(payloads))
            if not payloads and time.monotonic() - checked > CHECK_EVERY:
                connection.execute("SELECT 1")
                checked = time.monotonic()

    def _report_all(self, connection: Any) -> None:
        mailboxes = [row[0] for row in connection.execute("SELECT address FROM mailboxes")]
        self._report(MailboxChanges({}, mailboxes))

    def _report(self, changes: MailboxChanges) -> None:
        try:
            self._on_changes(changes)
        except Exception as error:
            # The consumer's fault, not the watch's: the next batch is reported all the same.
            log.warning("event=mailbox-watch status=consumer-failed error=%r", str(error))
