"""Faults with real processes, signals and file systems: full or read-only spool, repeated
SIGKILL under load, corrupt spool files at start-up.

SIGTERM (421 4.3.2 to idle sessions, grace for DATA, exit 0) is tested end to end in
``test_integration_durability.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import smtplib
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import RunningServer, ServerProcess
from kill_load import AckedLoad
from postoffice.spool.files import FileSpool
from postoffice.spool.ids import new_queue_id
from test_integration_durability import (
    DOMAIN,
    check_whole,
    delivered_files,
    message_for,
    queue_is_empty,
    received_id,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


# --- a full or read-only spool ----------------------------------------------------------------


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """``DATA_DIR/spool`` on a 256 KiB tmpfs made for the test (needs root and mount(8))."""
    data_dir = tmp_path / "data"
    spool = data_dir / "spool"
    spool.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(spool)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield data_dir
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def fill(directory: Path) -> Path:
    """Take every free block of the file system holding ``directory``."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as stream, contextlib.suppress(OSError):
        while True:
            stream.write(b"\0" * 4096)
    return filler


def send(port: int, seq: int) -> tuple[int, bytes]:
    """The reply to the message (or to the command that refused it)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        try:
            client.sendmail("load@example.org", [f"box{seq % 5}@capture.test"], message_for(seq))
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error
    return 250, b""


def assert_spool_consistent(data_dir: Path) -> None:
    """Every queued file loads whole; nothing is left half-written in tmp/."""
    spool = FileSpool(data_dir / "spool", clean_tmp=False)
    for queue_id in spool.pending():
        spool.load(queue_id)
    assert list((data_dir / "spool" / "tmp").iterdir()) == []
    assert list((data_dir / "spool" / "corrupt").iterdir()) == []


def test_full_spool_gets_452_and_recovers_when_space_returns(
    small_spool: Path, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(data_dir=small_spool)
    assert send(server.port, 0)[0] == 250
    server.wait_idle()
    filler = fill(small_spool / "spool")
    for seq in (1, 2):
        code, text = send(server.port, seq)
        assert (code, text[:5]) == (452, b"4.3.1"), text
    assert_spool_consistent(small_spool)
    assert server.app.spool.pending() == []

    filler.unlink()  # space returns; nothing else is done
    assert send(server.port, 3)[0] == 250
    server.wait_idle()
    seqs = sorted(check_whole(path)[0] for path in delivered_files(small_spool))
    assert seqs == [0, 3]
    assert_spool_consistent(small_spool)


def test_read_only_spool_gets_452_and_recovers(
    small_spool: Path, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(data_dir=small_spool)
    spool = small_spool / "spool"
    subprocess.run(["mount", "-o", "remount,ro", str(spool)], check=True)
    try:
        code, text = send(server.port, 1)
        assert (code, text[:5]) == (452, b"4.3.1"), text
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(spool)], check=True)
    assert send(server.port, 2)[0] == 250
    server.wait_idle()
    assert [check_whole(path)[0] for path in delivered_files(small_spool)] == [2]
    assert_spool_consistent(small_spool)


# --- SIGKILL, again and again ---------------------------------------------------------------


def test_repeated_sigkill_under_load_delivers_every_250_exactly_once(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    load = AckedLoad(lambda seq: [f"box{seq % 5}@{DOMAIN}"])
    rounds = 5
    for _ in range(rounds):
        # The instant of the kill is random on purpose.
        load.kill_under_load(
            server_process(data_dir=data_dir), threads=4, acked_first=5, delay=rng.uniform(0.0, 0.8)
        )
        # After every crash: no half-written message is visible in any mailbox.
        for path in delivered_files(data_dir):
            check_whole(path)

    final = server_process(data_dir=data_dir)
    wait_until(lambda: queue_is_empty(data_dir), what="the queue drained after the last restart")
    assert final.terminate() == 0

    seen: Counter[int] = Counter()
    for path in delivered_files(data_dir):
        seq, message = check_whole(path)
        seen[seq] += 1
        if seq in load.acked:
            assert received_id(message) == load.acked[seq]
    assert sorted(set(load.acked) - set(seen)) == [], "acknowledged but lost"
    assert sorted(seq for seq, count in seen.items() if count > 1) == [], "delivered twice"
    assert_spool_consistent(data_dir)
    assert len(load.acked) > rounds * 5


# --- corrupt spool files ----------------------------------------------------------------------


def test_corrupt_spool_files_are_moved_aside_and_reported(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    queue = data_dir / "spool" / "queue"
    queue.mkdir(parents=True)
    broken = {
        new_queue_id(): b"not a spool file at all\n",
        new_queue_id(): b'POSTOFFICE-SPOOL 1\n{"mail_from": "trunc',
        new_queue_id(): b"",
    }
    for queue_id, content in broken.items():
        (queue / queue_id).write_bytes(content)
    running = server_process("--http", "127.0.0.1:0", data_dir=data_dir)
    # It starts, serves, and has set the damaged files aside where an operator can look.
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.sendmail("a@client.test", [f"box0@{DOMAIN}"], message_for(0))
    wait_until(lambda: queue_is_empty(data_dir), what="the good message delivered")
    assert sorted(p.name for p in (data_dir / "spool" / "corrupt").iterdir()) == sorted(broken)
    for queue_id in broken:
        assert any(f"queue_id={queue_id} status=corrupt" in line for line in running.output)
    http = next(line for line in running.output if line.startswith("listening http "))

    def status() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{http.split()[-1]}/api/v1/status", timeout=5) as response:
            found: dict[str, Any] = json.load(response)
            return found

    assert status()["queue"]["corrupt"] == len(broken)
    # Another worker's errors reach the status within its report interval (about a second).
    wait_until(
        lambda: any("status=corrupt" in error["message"] for error in status()["recent_errors"]),
        what="the corrupt files among the recent errors",
    )
    assert running.terminate() == 0
