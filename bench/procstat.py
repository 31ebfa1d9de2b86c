"""Memory of a server and its worker processes, read from ``/proc`` (Linux).

RSS is the resident set of every process in the server's tree (a page shared by a parent and
its forked workers counted in each); PSS divides each shared page among its sharers, so their
sum is what the tree holds, and USS is what each holds alone. Peak RSS is sampled every few
milliseconds while a workload runs, so it covers the workload only (VmHWM is per process and
since start-up; it is reset through ``clear_refs`` where the kernel allows it).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _status_kib(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            # A process that ends meanwhile (Postfix's come and go) is skipped.
            tasks = list(Path(f"/proc/{current}/task").glob("*/children"))
        except OSError:
            continue
        for task in tasks:
            try:
                found.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in KiB."""
    return sum(_status_kib(p, "VmRSS") for p in process_tree(pid))


def _rollup_kib(pid: int, fields: tuple[str, ...]) -> int:
    """The sum of ``fields`` of ``/proc/PID/smaps_rollup`` (Linux 4.14+), in KiB; 0 if unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            total += int(rest.split()[0])
    return total


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` and its descendants, in KiB: each shared page divided
    among the processes sharing it, so pages a fork shares are counted once in the sum (the
    RSS sum counts them once per process)."""
    return sum(_rollup_kib(p, ("Pss",)) for p in process_tree(pid))


def uss_kib(pid: int) -> int:
    """Unique set size of ``pid`` and its descendants, in KiB: the pages only one process maps
    (what stopping that process would give back)."""
    return sum(_rollup_kib(p, ("Private_Clean", "Private_Dirty")) for p in process_tree(pid))


def hwm_kib(pid: int) -> int:
    """Sum of the per-process peak RSS (VmHWM) of the tree, in KiB."""
    return sum(_status_kib(p, "VmHWM") for p in process_tree(pid))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and its descendants (all threads, and the children
    they reaped), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, and cutime, cstime: what its reaped children used (fields 14-17 of
        # stat). A Postfix master reaps an smtpd after every 100 clients; their CPU counts.
        total += sum(int(value) for value in fields[11:15])
    return total / ticks


def reset_hwm(pid: int) -> None:
    """Reset VmHWM of the tree to the current RSS (writing 5 to clear_refs, Linux 4.0+)."""
    for p in process_tree(pid):
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            continue


class RssSampler:
    """Samples the tree's RSS in a thread; ``peak`` is the largest sample seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        reset_hwm(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid), hwm_kib(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_kib(self.pid))
