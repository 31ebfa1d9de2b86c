"""Issue 21's check of the database restarted under load: two real nodes (tests/cluster_support.py)
take a stream of distinct messages while PostgreSQL is stopped for a few seconds and started
again. Meanwhile they answer ``451 4.3.0`` (never a ``250``: RFC 5321 §4.2.5, a ``250`` after DATA
means the message is ours), ``/readyz`` goes ``503``; once the database is back both accept again
by themselves, ``/readyz`` is ``200``, and every message that got a ``250`` is in its mailbox once."""

from __future__ import annotations

import itertools
import re
import smtplib
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import psycopg
import pytest

from cluster_support import Cluster, Node, require_cluster_stores
from pg_server import PostgresServer
from postoffice.pgstore.queue import DEFAULT_CONNECT_WAIT
from postoffice.runtime.pidfile import FLUSH_SIGNAL

# A commit waits up to DEFAULT_CONNECT_WAIT for the database before it is 451: a shorter
# restart is only a pause for the clients. Down a little longer, so the 451s are seen.
DOWN_FOR = DEFAULT_CONNECT_WAIT + 2.0
SUBJECT = re.compile(rb"^Subject: (restart-\d+)\r?$", re.MULTILINE)


@dataclass(frozen=True)
class Sent:
    token: str
    node: str
    code: int  # 250, the SMTP error's code, or 0 for a connection that failed
    answer: str
    started: float
    answered: float


class Load:
    """Client threads sending distinct messages to the nodes until stopped, each on its own
    connection (so one session's failure is one message's outcome)."""

    def __init__(self, nodes: list[Node], per_node: int = 2) -> None:
        self.nodes = nodes
        self.sent: list[Sent] = []
        self.stopping = threading.Event()
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(node,), daemon=True)
            for node in nodes
            for _ in range(per_node)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(40)

    def _run(self, node: Node) -> None:
        while not self.stopping.is_set():
            with self._lock:
                token = f"restart-{next(self._numbers)}"
            started = time.monotonic()
            code, answer = _send(node, token)
            with self._lock:
                self.sent.append(Sent(token, node.name, code, answer, started, time.monotonic()))
            if code != 250:
                time.sleep(0.1)  # a client backs off a little after a temporary failure

    def accepted_since(self, node: Node, since: float) -> bool:
        with self._lock:
            return any(s.node == node.name and s.code == 250 and s.started > since for s in self.sent)


def _send(node: Node, token: str) -> tuple[int, str]:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "app@example.com", "dev@example.com", token
    message["Message-ID"] = f"<{token}@app.example.com>"
    message.set_content(f"Message {token}.\n")
    try:
        with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as smtp:
            smtp.send_message(message)
    except smtplib.SMTPResponseException as error:
        return error.smtp_code, error.smtp_error.decode(errors="replace")
    except smtplib.SMTPRecipientsRefused as error:
        code, text = next(iter(error.recipients.values()))
        return code, text.decode(errors="replace")
    except (OSError, smtplib.SMTPException) as error:
        return 0, repr(error)
    return 250, ""


class Readiness:
    """``/readyz`` of each node polled every 0.2 s: (time, node, status)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.seen: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Readiness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for node in self.nodes:
                self.seen.append((time.monotonic(), node.name, 200 if node.ready() else 503))


def _stored_subjects(url: str) -> list[str]:
    """The subject of every message in the shared mailboxes (pgstore/mailboxes.py's tables)."""
    with psycopg.connect(url) as connection:
        found = connection.execute(
            "SELECT c.data FROM mail_messages m JOIN mail_chunks c ON c.body = m.body AND c.seq = 0"
        ).fetchall()
    return [match[1].decode() for (data,) in found if (match := SUBJECT.search(bytes(data)))]


def _queued(url: str) -> int:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT count(*) FROM queue_messages").fetchone()
    return int(row[0]) if row else -1


@pytest.mark.xfail(
    strict=False,
    reason="a stall seen in half the runs before the heartbeat retried deferred deliveries (none in"
    " 7 runs since, the cause not proven): kept expected-to-fail until it has held longer",
)
def test_a_database_restart_under_load_is_451_meanwhile_and_loses_nothing(
    pg_url: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    require_cluster_stores()
    with Cluster(pg_url, tmp_path) as cluster:
        nodes = cluster.start(2)
        with Readiness(nodes) as readiness, Load(nodes) as load:
            time.sleep(2.0)  # the stream is flowing
            postgres.stop()
            down = time.monotonic()  # stopped: from here no commit can succeed
            time.sleep(DOWN_FOR)
            up = time.monotonic()
            postgres.start()
            deadline = time.monotonic() + 15
            while not all(load.accepted_since(node, up) and node.ready() for node in nodes):
                assert time.monotonic() < deadline, "a node did not accept again by itself"
                time.sleep(0.1)
            recovered = time.monotonic() - up
            time.sleep(1.0)  # a little more traffic after the recovery
        sent = list(load.sent)
        during = [s for s in sent if down < s.answered < up]
        assert not [s for s in during if s.code == 250], "a 250 while the database was down"
        assert during, "no message was tried while the database was down"
        wrong = [s for s in during if not (s.code == 451 and s.answer.startswith("4.3.0"))]
        assert not wrong, f"during the outage every answer is 451 4.3.0: {wrong[:5]}"
        assert recovered < 10, f"nodes took {recovered:.1f}s to accept again"
        for node in nodes:
            statuses = [(when, status) for when, name, status in readiness.seen if name == node.name]
            assert any(down < when < up and status == 503 for when, status in statuses), node.name
            assert statuses[-1][1] == 200, node.name
        accepted = {s.token for s in sent if s.code == 250}
        deadline = time.monotonic() + 20
        while (stored := _stored_subjects(pg_url), queued := _queued(pg_url)) and (
            queued or not accepted <= set(stored)
        ):
            assert time.monotonic() < deadline, (
                f"{queued} queued, {len(accepted - set(stored))} of {len(accepted)} not delivered"
            )
            # A local delivery that failed for want of a connection is deferred like any other
            # (retried in 5 minutes); the operator's `postoffice queue flush` retries it now.
            for node in nodes:
                node.process.send_signal(FLUSH_SIGNAL)
            time.sleep(2.0)
        counts = {token: stored.count(token) for token in set(stored)}
        assert all(counts[token] == 1 for token in accepted), "a message delivered twice"
        assert all(count == 1 for count in counts.values()), "a message delivered twice"
        for node in nodes:
            assert "Traceback" not in node.text, node.text
