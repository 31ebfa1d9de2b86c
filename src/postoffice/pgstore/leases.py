"""Keeping a process's queue leases alive: a thread that renews them at a fixed interval.

Untrusted input seen here: none; it calls the queue's ``renew``.

A thread rather than a task on the event loop: a loop kept busy, or a stop waiting for
deliveries to finish, must not let the leases lapse while the work they cover goes on (another
node would take the messages and deliver them a second time). A renewal that fails (the
database down) is one log line, and one more when renewing works again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from postoffice.errors import SpoolError

log = logging.getLogger("postoffice.spool")


class LeaseKeeper:
    """Calls ``renew`` every ``interval`` seconds in a daemon thread until :meth:`stop`."""

    def __init__(self, renew: Callable[[], int], interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-leases", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self._renew()
            except SpoolError as exc:
                if not self._failing:
                    log.warning("status=lease-renewal-failed error=%r", str(exc))
                self._failing = True
            else:
                if self._failing:
                    log.info("status=lease-renewal-recovered")
                self._failing = False
