"""``workers = "auto"``, the default: one server process per core this process may run on.

An explicit number is obeyed; one core (or a system without ``sched_getaffinity``) is one
process, the single server it always was (docs/operations.md, "Several processes"). The
servers here are real ``postoffice serve`` processes with no ``--workers`` at all, fed by
smtplib over real sockets.
"""

from __future__ import annotations

import contextlib
import mailbox
import os
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ServerProcess, wait_until
from postoffice.config import load_config
from postoffice.spool.ids import owner_of

pytestmark = pytest.mark.timeout(90)

CORES = len(os.sched_getaffinity(0))
MAILBOX = Path("mail") / "auto.test" / "many"


def send_one_per_connection(port: int, count: int) -> list[str]:
    """Send ``count`` messages, a connection each (the kernel spreads connections, not
    messages); the queue IDs of the 250 replies."""
    queue_ids = []
    for index in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.example.org")
            client.mail("sender@example.org")
            client.rcpt("many@auto.test")
            code, reply = client.data(f"Subject: message {index}\r\n\r\nhello\r\n".encode())
            assert code == 250, reply
            queue_ids.append(reply.decode().rsplit(" ", 1)[-1])
    return queue_ids


def banner_out(running: ServerProcess) -> None:
    """Until the banner's ``data in`` line (``listening smtp`` comes before the rest)."""
    wait_until(lambda: any(line.startswith("data in ") for line in list(running.output)), what="the banner")


def delivered(data_dir: Path) -> int:
    box = data_dir / MAILBOX
    return len(mailbox.Maildir(box, factory=None, create=False)) if (box / "new").exists() else 0


def test_the_default_is_one_process_per_usable_core() -> None:
    config = load_config(None)
    assert config.workers is None  # "auto", decided when the server starts
    assert config.worker_count == CORES


def test_auto_counts_only_the_cores_this_process_may_run_on() -> None:
    # Pinned to one core (as taskset or a container's cpuset does), "auto" is one process.
    script = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from postoffice.config import load_config; print(load_config(None).worker_count)"
    )
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert shown.stdout == "1\n"


def test_an_explicit_number_is_obeyed(tmp_path: Path) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text("workers = 1\n")
    assert load_config(config).worker_count == 1  # today's single process
    assert load_config(config, workers=3).worker_count == 3


@pytest.mark.skipif(CORES < 2, reason="one usable core: the default is one process")
def test_a_default_serve_runs_one_worker_per_core_and_each_takes_mail(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    running = server_process(data_dir=data_dir)  # no --workers: the default
    banner_out(running)
    assert f"workers {CORES} server processes, sharing the listeners\n" in running.output
    assert len(running.workers()) == CORES
    # Each worker gives the mail it accepts queue IDs it owns: every worker took some.
    queue_ids = send_one_per_connection(running.port, 12 * CORES)
    assert {owner_of(queue_id, CORES) for queue_id in queue_ids} == set(range(CORES))
    wait_until(lambda: delivered(data_dir) == len(queue_ids), what="every message delivered")
    assert running.terminate() == 0


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """This thread (and what it starts) on one core only: a one-core machine for a child."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def test_a_default_serve_on_one_core_is_a_single_process(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    with one_core():
        running = server_process(data_dir=data_dir)
    banner_out(running)
    assert not any(line.startswith("workers ") for line in running.output)
    assert running.workers() == []
    send_one_per_connection(running.port, 2)
    wait_until(lambda: delivered(data_dir) == 2, what="both messages delivered")
    assert running.terminate() == 0


def test_a_second_server_of_workers_on_the_same_port_is_refused(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Workers bind with SO_REUSEPORT, which would let a second server of workers join the
    # port and take half its connections; it is refused as one process is.
    first = server_process("--workers", "2", data_dir=tmp_path / "first")
    second = subprocess.run(
        [sys.executable, "-m", "postoffice", "serve", "--workers", "2", "--data-dir", str(tmp_path / "second"),
         "--smtp", f"127.0.0.1:{first.port}", "--no-http"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"postoffice: cannot listen on smtp 127.0.0.1:{first.port}: Address already in use;"
        " choose another address with --smtp HOST:PORT"
    ]
    assert first.terminate() == 0


def test_what_every_worker_would_fail_at_is_one_line(tmp_path: Path) -> None:
    # Worker 0 starts alone first: its failure is the one line, and no other worker starts.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    failed = subprocess.run(
        [sys.executable, "-m", "postoffice", "serve", "--workers", "2", "--data-dir", str(tmp_path / "data"),
         "--smtp", "127.0.0.1:0", "--no-http", "--transcript-log", str(blocker / "transcript.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [f"postoffice: {blocker}: File exists"]


def test_the_heap_the_workers_inherit_is_out_of_the_collectors_reach() -> None:
    # gc.freeze() before the fork: a worker's collections never write to, and so copy, the
    # pages it shares with its parent (docs/performance.md, "Workers by default").
    script = (
        "import gc; from postoffice.runtime import workers; before = gc.get_freeze_count();"
        "workers._share_the_heap(); print(before == 0 < gc.get_freeze_count())"
    )
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert shown.stdout == "True\n"
