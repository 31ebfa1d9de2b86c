"""Several server processes (``serve --workers N``) on one port and one data directory.

Real processes on an ephemeral loopback port, real SMTP clients: every message accepted by any
worker is delivered once, what a previous run left is delivered once, SIGTERM stops them all,
and a second server on the same data directory is refused.
"""

from __future__ import annotations

import asyncio
import ctypes
import mailbox
import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ServerProcess, wait_until
from postoffice.config import load_config
from postoffice.errors import ConfigError
from postoffice.spool import ids
from postoffice.spool.envelope import Envelope, Recipient, Route
from postoffice.spool.files import FileSpool
from postoffice.spool.ids import claim_queue_ids, is_queue_id, new_queue_id, owner_of

pytestmark = pytest.mark.timeout(60)

RECIPIENT = "many@workers.test"


def subjects(data_dir: Path) -> Counter[str]:
    box = data_dir / "mail" / "workers.test" / "many"
    if not (box / "new").exists():
        return Counter()
    return Counter(str(message["Subject"]) for message in mailbox.Maildir(box, factory=None, create=False))


def test_workers_share_the_port_and_deliver_every_message_once(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    running = server_process("--workers", "2", data_dir=tmp_path / "data")
    assert len(running.workers()) == 2
    sent = [f"message {index}" for index in range(30)]
    for subject in sent:  # one connection each, so the kernel spreads them over the workers
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.sendmail("sender@example.org", [RECIPIENT], f"Subject: {subject}\r\n\r\nbody\r\n")

    wait_until(lambda: sum(subjects(running.data_dir).values()) >= len(sent), what="every message delivered")
    assert subjects(running.data_dir) == Counter(sent)
    wait_until(lambda: not any((running.data_dir / "spool" / "queue").iterdir()), what="the queue drained")

    assert running.terminate(signal.SIGTERM) == 0
    assert sum("event=shutdown" in line for line in running.output) == 2


async def _leave_in_queue(spool_dir: Path, subject: str) -> None:
    spool = FileSpool(spool_dir)
    envelope = Envelope(
        mail_from="sender@example.org",
        recipients=(Recipient(RECIPIENT, RECIPIENT, Route.LOCAL),),
        received_at=time.time(),
    )
    writer = spool.put(envelope)
    writer.write(f"Subject: {subject}\r\n\r\nleft by a previous run\r\n".encode())
    await writer.commit()


def test_what_a_previous_run_left_is_delivered_once_by_its_owner(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    for index in range(5):
        asyncio.run(_leave_in_queue(data_dir / "spool", f"left {index}"))

    running = server_process("--workers", "2", data_dir=data_dir)

    wait_until(lambda: sum(subjects(data_dir).values()) >= 5, what="the queue delivered")
    wait_until(lambda: not any((data_dir / "spool" / "queue").iterdir()), what="the queue drained")
    assert subjects(data_dir) == Counter(f"left {index}" for index in range(5))

    # Each message went to the one worker its queue ID names.
    def started() -> list[int]:
        return [
            int(found[1])
            for line in list(running.output)
            if (found := re.search(r"status=started pending=(\d+)", line))
        ]

    wait_until(lambda: len(started()) == 2, what="both workers logged their start")
    assert sum(started()) == 5
    assert running.terminate() == 0


def test_queue_ids_name_the_worker_that_owns_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_owner", None)  # put back afterwards: this process is no worker
    for count in (1, 2, 3, 7, 256):
        for index in range(count):
            claim_queue_ids(index, count)
            made = {new_queue_id() for _ in range(50)}
            assert len(made) == 50 and all(is_queue_id(queue_id) for queue_id in made)
            assert {owner_of(queue_id, count) for queue_id in made} == {index}
    with pytest.raises(ValueError):
        claim_queue_ids(2, 2)


def test_workers_share_one_self_signed_certificate(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Regression: each worker made its own at the same moment, and one could load another's
    certificate with its own key (KEY_VALUES_MISMATCH) and fail to start."""
    running = server_process("--workers", "2", "--domain", "workers.test", data_dir=tmp_path / "data")

    def reused() -> int:
        return sum("using the self-signed certificate made earlier" in line for line in running.output)

    # A worker's line may come just after the banner (log lines are written together, up to 20 ms).
    wait_until(lambda: reused() >= 2, what="both workers reusing the certificate")
    assert (
        sum("so a self-signed certificate for mx.test was generated" in line for line in running.output) == 1
    )
    assert reused() == 2
    for _ in range(8):  # one connection each: both workers offer the one certificate
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.starttls(context=ssl._create_unverified_context())
            assert client.ehlo()[0] == 250
    assert running.terminate() == 0


def test_a_second_server_on_the_same_data_directory_is_refused(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server_process("--workers", "2", data_dir=data_dir)
    done = subprocess.run(
        [sys.executable, "-m", "postoffice", "serve", "--data-dir", str(data_dir), "--smtp", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"postoffice: another postoffice server is using {data_dir} (pid ")


def test_a_worker_that_dies_stops_the_server(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    running = server_process("--workers", "2", data_dir=tmp_path / "data")
    first, second = running.workers()
    os.kill(first, signal.SIGKILL)
    assert running.process.wait(30) == 1
    wait_until(
        lambda: not Path(f"/proc/{second}").exists() or _zombie(second), what="the other worker stopped"
    )


def test_sigterm_taken_by_a_thread_of_the_parent_still_stops_every_worker(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The parent indexes the workers' mail on threads of its own, and the kernel may hand a
    # signal sent to the process to any of them. tgkill(2) does that on purpose here.
    running = server_process("--workers", "2", data_dir=tmp_path / "data")
    parent = running.process.pid

    def threads() -> list[int]:
        return [int(task.name) for task in Path(f"/proc/{parent}/task").iterdir() if int(task.name) != parent]

    wait_until(lambda: bool(threads()), what="the parent's indexing threads")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.tgkill(parent, threads()[0], signal.SIGTERM) == 0
    assert running.process.wait(15) == 0


def test_workers_stop_when_the_parent_is_killed(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    running = server_process("--workers", "2", data_dir=data_dir)
    workers = running.workers()
    running.process.kill()
    running.process.wait(10)
    for pid in workers:
        wait_until(
            lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), what=f"worker {pid} ended"
        )
    # Their lock went with them: the data directory can be served again.
    again = server_process(data_dir=data_dir)
    assert again.terminate() == 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "too small"),
        ('"two"', 'expected an integer or "auto"'),
        ("1000", "too many"),
        ("1.5", "expected"),
    ],
)
def test_workers_key_is_checked(tmp_path: Path, value: str, problem: str) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text(f"workers = {value}\n")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(config)
    assert str(caught.value).startswith(f"{config}: workers:")


def test_workers_auto_is_one_per_core_this_process_may_use(tmp_path: Path) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text('workers = "auto"\n')
    cores = len(os.sched_getaffinity(0))
    assert load_config(config).worker_count == cores
    assert load_config(None, workers="auto").worker_count == cores


def test_workers_flag_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text("workers = 4\n")
    assert load_config(config).workers == 4
    assert load_config(config, workers=2).worker_count == 2
    assert load_config(config, workers=1).worker_count == 1
