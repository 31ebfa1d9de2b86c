"""Where one postoffice process spends its CPU per message, by thread and by part.

    python bench/profile_cpu.py [--workload W1a] [--messages 6000] [--py-spy] [--perf]

Untrusted input seen here: none (it loads the server it starts on 127.0.0.1).

Starts ``postoffice serve`` as the benchmark does (capture mode, durable default, web side on),
sends one workload with the benchmark's load generator and reads each thread's CPU from
``/proc/<pid>/task/*/stat`` around it: the event loop, the web index thread(s), the file
threads. With ``--py-spy`` (``pip install py-spy``) it also samples the stacks meanwhile and
splits the event loop's and the index's samples into parts of a message's walk (logging, the
SMTP core, the checks, the ``Received:`` field, the writer, the scheduler, the index, ...): each
sample goes to the innermost frame that names a part, and what names none is the event loop's
own (uvloop, the transport, the sockets). The parts' milliseconds are the thread's CPU shared
out by the samples, so they add up to the thread's figure. With ``--perf`` (Linux ``perf``)
it records the event loop thread alone and shares its CPU out by library: the interpreter's
(``libpython`` or the ``python`` binary), the kernel's, and the rest (uvloop, libc, extension
modules). Issue 19's budget of
0.5 ms of Python a message on the event loop is the interpreter's row.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import load
import servers
from run import FULL

# (part, what a frame's "function (file:line)" text contains), innermost match wins.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("logging/__init__", "postoffice/logs.py")),
    ("metrics", ("postoffice/metrics.py", "prometheus_client")),
    ("Received: field", ("smtpd/checks/trace.py", "postoffice/trace.py")),
    (
        "policy and checks",
        ("smtpd/checks/", "smtpd/stages.py", "postoffice/policy.py", "postoffice/recipients.py"),
    ),
    ("addresses", ("postoffice/addresses.py",)),
    ("writer and commit", ("spool/", "delivery/direct.py", "postoffice/maildir/", "postoffice/durable.py")),
    ("scheduler hand-off", ("postoffice/qmgr/",)),
    ("event publishing", ("web/events.py", "web/feed.py")),
    ("web index", ("postoffice/web/", "sqlite3", "email/")),
    ("replies", ("smtp/replies.py",)),
    ("SMTP core: parsing, state", ("postoffice/smtp/",)),
    ("transaction layer", ("postoffice/smtpd/",)),
    ("session (net/)", ("postoffice/net/",)),
    ("application", ("postoffice/app.py",)),
)
LOOP = "event loop, transport, sockets"


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) of each thread of ``pid``, by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    by_tid: dict[int, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        by_tid[int(task.name)] = (int(fields[11]) / ticks, int(fields[12]) / ticks)
    return by_tid


def thread_kind(name: str) -> str:
    """The part of the server a Python thread's name says it is."""
    if name.startswith("MainThread"):
        return "event loop"
    if name.startswith("postoffice-web"):
        return "web index thread"
    if name.startswith("postoffice-io"):
        return "file threads"
    return name.rstrip("0123456789_") or "other"


def part_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for part, needles in PARTS:
            if any(needle in frame for needle in needles):
                return part
    return LOOP


def read_samples(path: Path) -> tuple[dict[int, str], dict[str, Counter[str]]]:
    """py-spy's raw output: each thread id's kind, and the samples per part of each kind."""
    kinds: dict[int, str] = {}
    parts: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        match = re.match(r"thread \((\d+)\): ([^;]*)", stack_text)
        if match is None or not count.isdigit():
            continue
        kind = kinds[int(match[1])] = thread_kind(match[2])
        parts.setdefault(kind, Counter())[part_of(stack_text.split(";")[2:])] += int(count)
    return kinds, parts


def report(cpu: dict[int, tuple[float, float]], main_tid: int, raw: Path | None, count: int) -> None:
    kinds, parts = read_samples(raw) if raw is not None and raw.exists() else ({}, {})
    by_kind: Counter[str] = Counter()
    system: Counter[str] = Counter()
    for tid, (user_s, system_s) in cpu.items():
        kind = "event loop" if tid == main_tid else kinds.get(tid, "other threads")
        by_kind[kind] += user_s + system_s
        system[kind] += system_s
    print(f"  {'thread':32} {'ms/msg':>6} (of which the kernel's)")
    for kind, seconds in by_kind.most_common():
        print(f"  {kind:32} {seconds * 1000 / count:6.3f} ({system[kind] * 1000 / count:.3f})")
    print(f"  {'all threads':32} {sum(by_kind.values()) * 1000 / count:6.3f} ms/msg")
    for kind in ("event loop", "web index thread"):
        counted = parts.get(kind, Counter())
        total = sum(counted.values())
        if not total:
            continue
        print(f"{kind}, by part (ms/msg, its CPU shared by {total} samples):")
        for part, n in counted.most_common():
            print(f"  {part:32} {by_kind[kind] * 1000 / count * n / total:6.3f}")


def perf_by_library(data: Path, loop_ms: float) -> None:
    """The event loop's ``loop_ms`` a message shared out by the library ``perf`` sampled in."""
    done = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    shares: Counter[str] = Counter()
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].endswith("%"):
            dso = fields[1]
            kind = (
                "the interpreter (libpython)"
                if "python" in dso and "cpython-" not in dso
                else "the kernel"
                if "kernel" in dso
                else "uvloop, libc and extension modules"
            )
            shares[kind] += float(fields[0].rstrip("%"))
    total = sum(shares.values()) or 1.0
    print("event loop, by library (perf; ms/msg, its CPU shared by the samples):")
    for kind, share in shares.most_common():
        print(f"  {kind:32} {loop_ms * share / total:6.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W1a", choices=["W1a", "W1b", "W2"])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--py-spy", action="store_true", help="sample stacks with py-spy (installed)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples a second")
    parser.add_argument("--keep", type=Path, metavar="FILE", help="keep py-spy's raw stacks in FILE")
    parser.add_argument("--perf", action="store_true", help="split the event loop's CPU by library with perf")
    args = parser.parse_args(argv)
    workload = FULL[args.workload]
    workload = type(workload)(**{**workload.__dict__, "messages": args.messages})
    with (
        tempfile.TemporaryDirectory(prefix="postoffice-profile-") as tmp,
        servers.running("postoffice-w1", Path(tmp)) as server,
    ):
        time.sleep(0.5)
        before = thread_cpu(server.pid)
        spy = None
        raw = Path(tmp) / "py-spy.txt"
        if args.py_spy:
            spy = subprocess.Popen(
                [
                    *("py-spy", "record", "--pid", str(server.pid), "--rate", str(args.rate), "--threads"),
                    *("--nonblocking", "--format", "raw", "--output", str(raw)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        perf = None
        perf_data = Path(tmp) / "perf.data"
        if args.perf:
            perf = subprocess.Popen(
                ["perf", "record", "-q", "-t", str(server.pid), "-o", str(perf_data)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
        done = load.run_load(workload, server.port, servers.RECIPIENT)
        server.wait_stored(workload.messages, 120)
        time.sleep(0.2)  # the index's last batch
        after = thread_cpu(server.pid)
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(30)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            if args.keep is not None and raw.exists():
                args.keep.write_text(raw.read_text())
        count = workload.messages
        print(f"{args.workload}: {count} messages, {count / done.seconds:,.0f} msg/s")
        cpu = {
            tid: (user_s - before.get(tid, (0.0, 0.0))[0], system_s - before.get(tid, (0.0, 0.0))[1])
            for tid, (user_s, system_s) in after.items()
        }
        report(cpu, server.pid, raw if spy is not None else None, count)
        if perf is not None:
            user_s, system_s = cpu.get(server.pid, (0.0, 0.0))
            perf_by_library(perf_data, (user_s + system_s) * 1000 / count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
