"""The benchmark still runs: a tiny W1a against every installed peer prints its table.

Speed is not asserted (it belongs to the benchmark's own figures); only that the command works
end to end and reports postoffice's rate relative to a peer measured in the same run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_quick_benchmark_prints_a_table_with_ratios() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--workloads", "W1a", "--messages", "50"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("W1a ")]
    assert any(" postoffice " in row for row in rows), done.stdout
    # Another server's row ends with postoffice's rate divided by its own, e.g. "1.83x".
    assert any(re.search(r"\d+\.\d\dx$", row) for row in rows if " postoffice " not in row), done.stdout
    assert "failed" not in done.stdout, done.stdout
    # Idle memory as RSS and as PSS, which counts once the pages workers share with their parent.
    assert "idle MB" in done.stdout and "idle PSS" in done.stdout, done.stdout


@pytest.mark.timeout(180)
def test_postfix_runs_beside_postoffice_and_the_targets_compare_with_it() -> None:
    require_tool("postfix")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    before = _bench_processes()
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--workloads", "W1a"),
            *("--messages", "50", "--servers", "postoffice,postfix"),
        ],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [row] = [line for line in done.stdout.splitlines() if line.startswith("W1a ") and " postfix " in line]
    assert "failed" not in row, done.stdout
    assert re.search(r"postoffice W1a: \d+\.\d\dx Postfix \(\d+ / \d+ msg/s\), target ≥ 2x", done.stdout), (
        done.stdout
    )
    # Its instance is stopped with the run (its master names the run's directory); another
    # benchmark running on the machine meanwhile is not this run's.
    assert _bench_processes() - before == set()


@pytest.mark.timeout(120)
def test_floor_prints_the_budget() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "floor.py"), "--messages", "64"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^durable write \(32 threads\): [\d,]+/s, \d+\.\d{3} ms CPU each$", done.stdout, re.M)
    assert re.search(r"^answering only \(W1a\): [\d,]+ msg/s", done.stdout, re.M), done.stdout
    assert re.search(r"^budget at 2,940 msg/s on \d+ cores: \d+\.\d{3} ms CPU per message", done.stdout, re.M)


@pytest.mark.timeout(180)
def test_verifying_server_passes_spf_and_dmarc_from_its_own_dns(tmp_path: Path) -> None:
    # --keep leaves the data directories under TMPDIR, where the stored messages show that
    # verification ran against the bench's DNS server (and that its records pass).
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--workloads", "W1a"]
    done = subprocess.run(
        [*command, "--messages", "20", "--servers", "postoffice,postoffice-verify", "--keep"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("W1a ")]
    assert any(" postoffice-verify " in row for row in rows), done.stdout
    assert "failed" not in done.stdout, done.stdout
    verified = list(
        tmp_path.glob("postoffice-bench-*/0-W1a-postoffice-verify/data/mail/bench.test/rcpt/new/*")
    )
    plain = list(tmp_path.glob("postoffice-bench-*/0-W1a-postoffice/data/mail/bench.test/rcpt/new/*"))
    assert len(verified) == 20 and len(plain) == 20, done.stdout
    results = _header(verified[0])
    assert "spf=pass" in results and "dmarc=pass" in results, results
    assert "Authentication-Results" not in _header(plain[0])


def _header(message: Path) -> str:
    return message.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()


@pytest.mark.timeout(180)
def test_outbound_benchmark_drains_a_queue_to_the_sink() -> None:
    require_tool("smtp-sink")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "outbound.py"), "--messages", "50"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^postoffice\s+\d+\s+\d+\.\d\s+\d+\.\d\d$", done.stdout, re.MULTILINE), done.stdout
    if os.geteuid() == 0 and "postfix " in done.stdout:
        assert re.search(r"outbound relay ≥ Postfix's rate: \d+\.\d\dx", done.stdout), done.stdout


def _bench_processes() -> set[str]:
    """The processes of benchmark runs (their command lines name a postoffice-bench- directory)."""
    found = subprocess.run(["pgrep", "-af", "postoffice-bench-"], capture_output=True, text=True, check=False)
    return set(found.stdout.splitlines())


@pytest.mark.timeout(180)
def test_profile_prints_cpu_per_message_of_the_event_loop() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "profile_cpu.py"), "--messages", "50"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("W1a: 50 messages, "), done.stdout
    loop = [line for line in done.stdout.splitlines() if line.split()[:2] == ["event", "loop"]]
    assert loop and float(loop[0].split()[2]) > 0, done.stdout


def test_profile_gives_each_sample_to_the_innermost_part_it_names() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import profile_cpu as bench_profile
    finally:
        sys.path.remove(str(ROOT / "bench"))
    stack = [
        "Runner.run (asyncio/runners.py:118)",
        "SmtpSession.data_received (postoffice/net/session.py:180)",
        "Content._queued (postoffice/smtpd/content.py:150)",
        "Logger.info (logging/__init__.py:1489)",
    ]
    assert bench_profile.part_of(stack) == "logging"
    assert bench_profile.part_of(stack[:3]) == "transaction layer"
    assert bench_profile.part_of(stack[:1]) == bench_profile.LOOP
