"""Nodes sharing the queue in PostgreSQL, as real processes (``python -m postoffice serve
--database URL``): mail relayed through the shared queue to an aiosmtpd peer, ``postoffice
queue`` on the database, the database down at the commit (451 4.3.0, then recovery by itself),
and node B SIGKILLed again and again under load while node A takes over its messages: every
acknowledged message reaches the peer, and exactly once."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aiosmtpd_peer import Handler, Peer
from aiosmtpd_peer import peer_factory as peer_factory  # the fixture
from conftest import ServerProcess
from pg_server import PostgresServer
from postoffice.smtp import replies

pytestmark = pytest.mark.timeout(240)

QUEUED = re.compile(r"(?:2\.0\.0 )?Ok: queued as (?P<id>[0-9A-Z]{16})")
SEQ = re.compile(rb"X-Test-Seq: (\d+)")


class LocalSmtp(smtplib.SMTP):
    """smtplib over a node's local socket (trusted as the local system: relaying allowed)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self._path = str(path)
        super().__init__(timeout=timeout)
        self.connect()

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        sock.connect(self._path)
        return sock


def letter(seq: int) -> bytes:
    body = "".join(f"line {n} of message {seq}\r\n" for n in range(30))
    return f"From: a@cluster.test\r\nTo: far@remote.test\r\nX-Test-Seq: {seq}\r\n\r\n{body}END {seq}\r\n".encode()


def start_node(
    server_process: Callable[..., ServerProcess],
    tmp_path: Path,
    name: str,
    url: str,
    peer: Peer,
    *extra: str,
    lease: str = "2s",
) -> ServerProcess:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[storage]\nnode_name = "{name}"\nqueue_lease = "{lease}"\n'
        '[queue]\nminimal_backoff_time = "1s"\nmaximal_backoff_time = "2s"\n'
        '[delivery]\nrelay_tls = "none"\n'
    )
    return server_process(
        "--config",
        str(config),
        "--database",
        url,
        "--relay-host",
        f"127.0.0.1:{peer.port}",
        "--domain",
        "cluster.test",
        "--no-http",
        *extra,
        data_dir=tmp_path / name,
    )


def send(node: ServerProcess, seq: int, to: str = "far@remote.test") -> tuple[int, str]:
    with LocalSmtp(node.data_dir / "run" / "submit.sock") as client:
        client.ehlo("load.test")
        client.mail("a@cluster.test")
        client.rcpt(to)
        code, text = client.data(letter(seq))
    return code, text.decode()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        time.sleep(0.05)


def queue_command(node: ServerProcess, url: str, *args: str) -> str:
    config = node.data_dir.parent / "cli.toml"
    config.write_text('[storage]\nbackend = "postgresql"\n' + f"database = {url!r}\n".replace("'", '"'))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "postoffice",
            "queue",
            *args,
            "--config",
            str(config),
            "--data-dir",
            str(node.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class TimedHandler(Handler):
    """Keeps when (time.monotonic()) it accepted each message too."""

    times: list[float] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        self.times.append(time.monotonic())
        return reply


def delivered(peer: Peer) -> Counter[int]:
    found: Counter[int] = Counter()
    for message in list(peer.handler.messages):
        match = SEQ.search(message.content)
        assert match, message.content[:200]
        found[int(match[1])] += 1
    return found


def explain(
    unexplained: list[int], twice: list[int], handler: TimedHandler, nodes: list[ServerProcess]
) -> str:
    """What the nodes logged about messages sent twice though no kill explains it."""
    ids = {
        queue_id.decode()
        for message in handler.messages
        if (match := SEQ.search(message.content)) and int(match[1]) in unexplained
        for queue_id in re.findall(rb"id ([0-9A-Z]{16})", message.content)
    }
    lines = [
        f"node {index}: {line.rstrip()}"
        for index, node in enumerate(nodes)
        for line in node.output
        if "lease" in line or any(queue_id in line for queue_id in ids)
    ]
    return "\n".join([f"sent twice though not in flight at a kill: {unexplained} (of {twice})", *lines])


def test_mail_goes_out_through_the_shared_queue_and_the_queue_command_lists_it(
    server_process: Callable[..., ServerProcess],
    peer_factory: Any,
    pg_url: str,
    tmp_path: Path,
) -> None:
    peer = peer_factory(Handler(rcpt_replies={"later@remote.test": "451 4.7.1 try again later"}))
    node = start_node(server_process, tmp_path, "a", pg_url, peer)
    code, text = send(node, 1)
    assert code == 250 and QUEUED.fullmatch(text)
    wait_until(lambda: delivered(peer) == Counter({1: 1}), what="relayed\n" + "".join(node.output))

    code, text = send(node, 2, to="later@remote.test")
    queue_id = QUEUED.fullmatch(text)
    assert code == 250 and queue_id
    wait_until(lambda: "deferred" in queue_command(node, pg_url, "list"), what="deferred")
    listing = queue_command(node, pg_url, "list")
    assert queue_id["id"] in listing and "<later@remote.test> deferred: 451 4.7.1" in listing
    assert "X-Test-Seq: 2" in queue_command(node, pg_url, "show", queue_id["id"])
    assert "deleted" in queue_command(node, pg_url, "delete", queue_id["id"])
    assert "The queue is empty." in queue_command(node, pg_url, "list")


def test_workers_of_a_cluster_node_each_deliver_what_they_hold(
    server_process: Callable[..., ServerProcess], peer_factory: Any, pg_url: str, tmp_path: Path
) -> None:
    """With ``--workers``, each worker receives into the shared queue and delivers what it holds."""
    peer = peer_factory()
    node = start_node(server_process, tmp_path, "a", pg_url, peer, "--workers", "2")
    for seq in range(8):
        assert send(node, seq)[0] == 250
    wait_until(lambda: delivered(peer) == Counter(range(8)), what="every message relayed once")


def test_the_database_down_at_the_commit_is_451_and_the_node_recovers_by_itself(
    server_process: Callable[..., ServerProcess],
    peer_factory: Any,
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    url = postgres.url(postgres.create_database())
    peer = peer_factory()
    node = start_node(server_process, tmp_path, "a", url, peer)
    assert send(node, 1)[0] == 250
    postgres.stop()
    try:
        code, text = send(node, 2)
        error = replies.LOCAL_ERROR
        assert (code, text) == (error.code, f"{error.enhanced} {error.lines[0]}")  # 451 4.3.0
    finally:
        postgres.start()
    commit_errors = [line for line in node.output if "event=commit-error" in line]
    output = "".join(node.output)
    assert len(commit_errors) == 1 and "Traceback" not in output and "error connecting" not in output
    wait_until(lambda: send(node, 3)[0] == 250, what="accepting again")
    wait_until(lambda: set(delivered(peer)) == {1, 3}, what="delivered after the outage")
    assert delivered(peer)[2] == 0


def test_a_node_killed_again_and_again_under_load_loses_nothing_and_sends_twice_only_what_it_could_not_record(
    server_process: Callable[..., ServerProcess], peer_factory: Any, pg_url: str, tmp_path: Path
) -> None:
    """Exactly once, but for RFC 5321 §6.1's window: a message the peer accepted just before
    the kill, whose result the killed node had not yet recorded (or whose 250 it never read,
    RFC 1047), goes again. Every duplicate must be such a one."""
    handler = TimedHandler()
    peer = peer_factory(handler)
    a = start_node(server_process, tmp_path, "a", pg_url, peer)
    nodes = {"b": start_node(server_process, tmp_path, "b", pg_url, peer)}
    acked: set[int] = set()
    lock = threading.Lock()
    counter = iter(range(10**6))
    stop = threading.Event()

    def load(node: Callable[[], ServerProcess]) -> None:
        while not stop.is_set():
            with lock:
                seq = next(counter)
            try:
                code, _ = send(node(), seq)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # killed under us: no 250, so not ours to keep
                continue
            if code == 250:
                with lock:
                    acked.add(seq)

    threads = [threading.Thread(target=load, args=(lambda: a,), daemon=True)] + [
        threading.Thread(target=load, args=(lambda: nodes["b"],), daemon=True) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    kills: list[float] = []
    everyone = [a, nodes["b"]]
    try:
        for _ in range(3):
            time.sleep(2.0)
            assert nodes["b"].crash() == -signal.SIGKILL
            kills.append(time.monotonic())
            nodes["b"] = start_node(server_process, tmp_path, "b", pg_url, peer)
            everyone.append(nodes["b"])
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(acked) > 50
    wait_until(lambda: acked <= set(delivered(peer)), timeout=60, what="every acknowledged message delivered")
    time.sleep(3)  # a late second copy would be here by now: leases are 2 s
    firsts: dict[int, float] = {}
    for message, at in zip(list(handler.messages), list(handler.times), strict=True):
        match = SEQ.search(message.content)
        assert match
        firsts.setdefault(int(match[1]), at)
    twice = [seq for seq, count in delivered(peer).items() if count > 1]
    unexplained = [seq for seq in twice if not any(abs(kill - firsts[seq]) < 1.0 for kill in kills)]
    assert unexplained == [], explain(unexplained, twice, handler, everyone)
    assert len(twice) <= 10 * len(kills)
    assert "Traceback" not in "".join(a.output)
