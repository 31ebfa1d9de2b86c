"""``postoffice queue`` against a running server process, and the crash test: the server is killed
with SIGKILL while mail waits in its queue, and after a restart every message reaches the peer MTA
exactly once."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ServerProcess
from mail_peers import Dns, Peer, dns_server, free_port, start_peer

pytestmark = pytest.mark.timeout(90)

MX = "127.0.0.2"


def postoffice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postoffice", *args], capture_output=True, text=True, timeout=30
    )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        time.sleep(0.02)


@dataclass
class Setup:
    dns: Dns
    peer: Peer
    data_dir: Path
    start: Callable[..., ServerProcess]

    def queue(self, *args: str) -> subprocess.CompletedProcess[str]:
        return postoffice("queue", *args, "--data-dir", str(self.data_dir))


@pytest.fixture
def setup(server_process: Callable[..., ServerProcess], tmp_path: Path) -> Iterator[Setup]:
    data_dir = tmp_path / "data"
    port = free_port(MX)
    with dns_server() as dns:
        dns.zone.mx("remote.test", (10, "mx.remote.test"))
        dns.zone.a("mx.remote.test", MX)
        alias = postoffice(
            "alias",
            "add",
            "fwd@local.test",
            "bob@remote.test",
            "dan@remote.test",
            "--data-dir",
            str(data_dir),
        )
        assert alias.returncode == 0, alias.stderr
        peer = start_peer(MX, port)

        def start(*extra: str) -> ServerProcess:
            return server_process(
                *extra,
                "--domain",
                "local.test",
                "--dns",
                f"127.0.0.1:{dns.port}",
                "--mx-port",
                str(port),
                data_dir=data_dir,
            )

        try:
            yield Setup(dns, peer, data_dir, start)
        finally:
            peer.stop()


def send(server: ServerProcess, subject: str) -> str:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo()
        client.mail("carol@sender.test")
        client.rcpt("fwd@local.test")
        code, reply = client.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    assert code == 250
    match = re.search(rb"queued as ([0-9A-Z]{16})", reply)
    assert match
    return forwarded_copy(server, match.group(1).decode())


def forwarded_copy(server: ServerProcess, queue_id: str) -> str:
    """The queue ID of the copy the alias forwards (with its own SRS sender) to bob and dan."""
    pattern = re.compile(rf"queue_id={queue_id} event=forwarded copy=([0-9A-Z]{{16}})")
    found: list[str] = []

    def copied() -> bool:
        found[:] = [m.group(1) for line in list(server.output) if (m := pattern.search(line))]
        return bool(found)

    wait_until(copied, f"{queue_id} forwarded")
    return found[0]


def logged(server: ServerProcess, text: str) -> int:
    return sum(text in line for line in list(server.output))


def subjects_for(peer: Peer, address: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for message in peer.received:
        if address in message.rcpt_tos:
            subject = re.search(rb"Subject: (\S+)", message.content)
            assert subject
            found[subject.group(1).decode()] += 1
    return found


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_queue_command_sees_and_changes_a_running_servers_queue(setup: Setup, workers: str) -> None:
    setup.peer.behaviour.rcpt = lambda address: "451 4.3.0 Try again later"
    server = setup.start("--workers", workers)
    first, _, third = (send(server, f"m{n}") for n in range(3))
    wait_until(lambda: logged(server, "status=deferred attempts=1") == 3, "three deferred messages")

    listing = setup.queue("list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("[deferred, 1 attempt, next ") == 3
    assert "<bob@remote.test> deferred: 451 4.3.0 Try again later (from mx.remote.test)" in listing.stdout
    assert listing.stdout.rstrip().endswith("3 messages (3 deferred)")

    shown = setup.queue("show", first)
    assert shown.returncode == 0, shown.stderr
    assert "=sender.test=carol@local.test>" in shown.stdout and "Subject: m0" in shown.stdout

    assert setup.queue("hold", first).stdout == f"held {first}\n"
    assert setup.queue("delete", third).stdout == f"deleted {third}\n"

    # The peer recovers; flush reaches the server through its pid file.
    setup.peer.behaviour.rcpt = lambda address: None
    flushed = setup.queue("flush")
    assert flushed.returncode == 0 and f"pid {server.process.pid}" in flushed.stdout
    wait_until(lambda: subjects_for(setup.peer, "bob@remote.test") == Counter({"m1": 1}), "m1 delivered")
    [remaining] = [line for line in setup.queue("list").stdout.splitlines() if "[" in line]
    assert remaining.startswith(first) and remaining.endswith("[held]")

    assert setup.queue("release", first).returncode == 0
    wait_until(lambda: subjects_for(setup.peer, "dan@remote.test") == Counter({"m0": 1, "m1": 1}), "m0 out")
    assert setup.queue("list").stdout == "The queue is empty.\n"
    assert "m2" not in subjects_for(setup.peer, "bob@remote.test")  # deleted, never sent
    assert server.terminate() == 0


def test_queue_command_errors_are_one_line(setup: Setup) -> None:
    bad = setup.queue("show", "../../etc/passwd")
    assert bad.returncode == 1 and bad.stderr.startswith("postoffice: ") and bad.stderr.count("\n") == 1
    server = setup.start()
    unknown = setup.queue("hold", "0" * 16)
    assert unknown.returncode == 1 and unknown.stderr == f"postoffice: no message {'0' * 16} in the queue\n"
    assert server.terminate() == 0
    # No server now (and a stale pid file): flush says so rather than signal a stranger.
    (setup.data_dir / "postoffice.pid").write_text("1\n")
    idle = setup.queue("flush")
    assert idle.returncode == 1 and "no server is running" in idle.stderr


def test_a_second_server_on_the_same_data_directory_is_refused(setup: Setup) -> None:
    server = setup.start()
    second = postoffice("serve", "--data-dir", str(setup.data_dir), "--smtp", "127.0.0.1:0")
    assert second.returncode == 1
    assert second.stderr == (
        f"postoffice: another postoffice server is using {setup.data_dir} (pid {server.process.pid}); stop it first\n"
    )
    assert server.terminate() == 0


def test_sigkill_with_mail_in_the_queue_then_restart_delivers_each_message_once(setup: Setup) -> None:
    # bob's copies go out at once; dan's server answers 451, so every message waits in the
    # queue with one recipient done and one to go when the server is killed.
    setup.peer.behaviour.rcpt = lambda address: (
        "451 4.3.0 Try again later" if address.startswith("dan") else None
    )
    server = setup.start()
    subjects = [f"m{n}" for n in range(12)]
    for subject in subjects:
        send(server, subject)
    wait_until(
        lambda: logged(server, "status=deferred attempts=1") == len(subjects), "every message deferred"
    )
    server.crash()
    assert subjects_for(setup.peer, "bob@remote.test") == Counter(dict.fromkeys(subjects, 1))

    setup.peer.behaviour.rcpt = lambda address: None
    restarted = setup.start()
    # The restart keeps the retry schedule (minutes away); the operator flushes.
    assert setup.queue("flush").returncode == 0
    wait_until(
        lambda: subjects_for(setup.peer, "dan@remote.test") == Counter(dict.fromkeys(subjects, 1)),
        "dan's copies after the restart",
    )
    wait_until(lambda: setup.queue("list").stdout == "The queue is empty.\n", "an empty queue")
    assert subjects_for(setup.peer, "bob@remote.test") == Counter(dict.fromkeys(subjects, 1))
    assert restarted.terminate() == 0
