"""Hearing what the other nodes change: one connection per node that LISTENs.

Untrusted input seen here: notification payloads (written by other nodes of the cluster, each
parsed and bounded before use) and the versions in ``shared_versions``.

What every node keeps in memory from the database (the accounts, the DKIM keys) has a row in
``shared_versions`` that a writer bumps in its transaction, with ``NOTIFY postoffice_shared``
(delivered at commit, PostgreSQL's NOTIFY documentation). The watch thread reads the versions
when a notification comes and in any case every ``interval`` seconds, so a lost notification
(a dropped connection) costs at most that long; subscribers reload in this thread, off the
event loop, and lookups keep using what they have. While the database cannot be reached
nobody can change it, so what a node has stays right; on reconnecting the versions are read
again. Failed logins travel on ``postoffice_failures`` to the throttles of every node.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from postoffice.pg.database import Database, one_line

log = logging.getLogger("postoffice.cluster")

CHANGES = "postoffice_shared"
FAILURES = "postoffice_failures"
# Seconds between reads of the versions without a notification: the longest a change made on
# another node can go unseen here, should its notification be lost.
INTERVAL = 0.5

VersionListener = Callable[[int], None]
# (node, op, key) of another node's failed login ("fail") or success that clears ("clear").
FailureListener = Callable[[str, str, str], None]


class SharedWatch:
    """The versions of what nodes share, kept current by a thread (:meth:`start`)."""

    def __init__(self, database: Database, *, interval: float = INTERVAL) -> None:
        self._database = database
        self.interval = interval
        self._versions: dict[str, int] = {}
        self._on_change: dict[str, list[VersionListener]] = {}
        self._on_failure: dict[str, list[FailureListener]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def version(self, name: str) -> int | None:
        """The latest version of ``name`` this node has heard of (None: not read yet)."""
        return self._versions.get(name)

    def on_change(self, name: str, listener: VersionListener) -> None:
        self._on_change.setdefault(name, []).append(listener)

    def on_failure(self, kind: str, listener: FailureListener) -> None:
        self._on_failure.setdefault(kind, []).append(listener)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, wait: float = 5.0) -> None:
        """Start listening; waits up to ``wait`` seconds for the first versions."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="postoffice-watch", daemon=True)
        self._thread.start()
        self.connected.wait(wait)

    def stop(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.interval + 5.0)

    def _run(self) -> None:
        reported = False
        while not self._stopping.is_set():
            try:
                self._listen()
                reported = False
            except psycopg.Error as error:
                self.connected.clear()
                if not reported:  # once per outage, not once a second
                    log.warning(
                        "event=watch-lost database=%s reason=%r", self._database.where, one_line(error)
                    )
                    reported = True
            self._stopping.wait(1.0)

    def _listen(self) -> None:
        url, name = self._database.url, f"{self._database.name} watch"
        with psycopg.connect(url, autocommit=True, application_name=name, connect_timeout=10) as conn:
            conn.execute(f"LISTEN {CHANGES}")
            conn.execute(f"LISTEN {FAILURES}")
            self._read_versions(conn)
            self.connected.set()
            last = time.monotonic()
            while not self._stopping.is_set():
                changed = False
                for note in conn.notifies(timeout=self.interval, stop_after=1):
                    if note.channel == CHANGES:
                        changed = True
                    else:
                        self._failure(note.payload)
                # A change was announced, or nothing was heard for a while: read the versions
                # (a flood of failed logins does not make a read each).
                if changed or time.monotonic() - last >= self.interval:
                    self._read_versions(conn)
                    last = time.monotonic()

    def _read_versions(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute("SELECT name, version FROM shared_versions").fetchall()
        for name, version in rows:
            if self._versions.get(name) == version:
                continue
            try:
                for listener in self._on_change.get(name, ()):
                    listener(version)
            except Exception as error:  # a subscriber's failure must not end the watch
                log.warning("event=watch-reload-failed name=%s reason=%r", name, one_line(error))
                continue  # not taken as seen: tried again at the next read
            self._versions[name] = version

    def _failure(self, payload: str) -> None:
        """Hand another node's failed login (or a success that clears) to the throttles."""
        try:
            event = json.loads(payload)
            node, kind, op, key = (str(event[field])[:512] for field in ("node", "kind", "op", "key"))
        except (ValueError, KeyError, TypeError):
            log.warning("event=watch-bad-payload channel=%s", FAILURES)
            return
        for listener in self._on_failure.get(kind, ()):
            listener(node, op, key)
