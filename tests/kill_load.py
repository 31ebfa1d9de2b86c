"""Senders that keep a server busy until it is killed, keeping every 250's queue ID.

The crash tests (tests/test_faults.py, tests/test_group_commit.py) kill a server under load
several times and then check that each acknowledged message was delivered exactly once: this
is the load, shared across their rounds, so message numbers never repeat.
"""

from __future__ import annotations

import itertools
import signal
import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from conftest import ServerProcess
from test_integration_durability import message_for, queue_id_of, wait_until


@dataclass
class AckedLoad:
    """Numbered messages sent from threads; ``acked`` maps each acknowledged number to its queue ID."""

    recipients: Callable[[int], list[str]]
    acked: dict[int, str] = field(default_factory=dict)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def kill_under_load(
        self, running: ServerProcess, *, threads: int, acked_first: int, delay: float = 0.0
    ) -> None:
        """Send over ``threads`` connections; once ``acked_first`` more messages have their 250,
        wait ``delay`` seconds and SIGKILL the server, then stop the senders."""
        stop = threading.Event()
        senders = [
            threading.Thread(target=self._send, args=(running.port, stop), daemon=True)
            for _ in range(threads)
        ]
        before = len(self.acked)
        for sender in senders:
            sender.start()
        wait_until(lambda: len(self.acked) > before + acked_first, what="messages acknowledged")
        time.sleep(delay)
        assert running.crash() == -signal.SIGKILL
        stop.set()
        for sender in senders:
            sender.join(10)
            assert not sender.is_alive()

    def _send(self, port: int, stop: threading.Event) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("load.test")
                while not stop.is_set():
                    with self._lock:
                        seq = next(self._numbers)
                    client.mail("load@example.org")
                    for address in self.recipients(seq):
                        client.rcpt(address)
                    code, text = client.data(message_for(seq))
                    assert code == 250
                    with self._lock:
                        self.acked[seq] = queue_id_of(text)
        except (OSError, smtplib.SMTPException):
            return  # killed under us: whatever got its 250 is recorded
