"""Benchmark postoffice against other SMTP servers on this machine, side by side.

    python bench/run.py            # every workload and server, one run (a few minutes)
    python bench/run.py --runs 3   # medians of three interleaved runs
    python bench/run.py --quick    # smaller workloads (under a minute)

Every server runs as its own process on 127.0.0.1, started afresh for each measurement; load
comes from Postfix's ``smtp-source`` when installed (an asyncio client otherwise); Postfix
itself runs as a peer when installed and we are root (postfix_peer.py). Workloads
(issue 7): W1a 1 KB messages one per connection, W1b 1 KB ~100 per connection, W2 100 KB,
W3 20 MB over 2 sessions, W4 idle sessions after EHLO. The table gives medians of the runs and
postoffice's rate divided by each peer's, all measured in this run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import load
import procstat
import servers
from load import Workload

FULL: dict[str, Workload] = {
    "W1a": Workload("W1a", "1 KB, 10 sessions, 1 msg/conn", 10_000, 1024, 10, 1),
    "W1b": Workload("W1b", "1 KB, 10 sessions, 100 msg/conn", 10_000, 1024, 10, 100),
    "W2": Workload("W2", "100 KB, 10 sessions", 2_000, 100 * 1024, 10, 1),
    "W3": Workload("W3", "20 MB, 2 sessions", 20, 20 * 1024 * 1024, 2, 1),
}
QUICK: dict[str, Workload] = {
    "W1a": replace(FULL["W1a"], messages=500),
    "W1b": replace(FULL["W1b"], messages=500),
    "W2": replace(FULL["W2"], messages=100),
    "W3": replace(FULL["W3"], messages=2),
}
IDLE_SESSIONS = {"full": 5_000, "quick": 500}
WORKLOAD_NAMES = (*FULL, "W4")

# Issue 19's targets: postoffice's rate at least this many times Postfix's, both measured in
# the same run (with the default worker setting; one process: ONE_PROCESS_TARGET on W1a).
POSTFIX_TARGET = {"W1a": 2.0, "W1b": 2.0, "W2": 1.5}
ONE_PROCESS_TARGET = 1.2
# The server the one-process target is read from: an explicit single worker.
ONE_PROCESS = "postoffice-w1"
GROWTH_TARGET_MB = {"W1a": 10.0, "W1b": 10.0, "W2": 10.0, "W3": 16.0}
IDLE_TARGET_KIB = 6.0
PROBE_TARGET_MS = 5.0
STORE_TIMEOUT = 600.0


@dataclass
class Sample:
    """One measurement of one server under one workload."""

    msgs_per_s: float = 0.0
    mb_per_s: float = 0.0
    stored_msgs_per_s: float | None = None  # until every message was in the Maildir
    cpu_ms_per_msg: float = 0.0  # the server's CPU time (all processes and threads) per message
    idle_mib: float = 0.0
    idle_pss_mib: float = 0.0  # the idle tree's PSS: shared pages of forked workers counted once
    peak_mib: float = 0.0
    growth_mib: float = 0.0
    kib_per_session: float = 0.0
    ehlo_quit_ms: float = 0.0
    error: str | None = None


def _mib(kib: float) -> float:
    return kib / 1024


def measure(server_name: str, workload_name: str, args: argparse.Namespace, workdir: Path) -> Sample:
    with servers.running(server_name, workdir) as server:
        time.sleep(0.2)  # let start-up work (recovery scan) finish before the baseline
        idle = procstat.rss_kib(server.pid)
        idle_pss = _mib(procstat.pss_kib(server.pid))
        if workload_name == "W4":
            result = load.run_idle(server.port, args.idle_sessions, lambda: procstat.rss_kib(server.pid))
            return Sample(
                idle_mib=_mib(idle),
                idle_pss_mib=idle_pss,
                peak_mib=_mib(result.kib_held),
                growth_mib=_mib(result.kib_held - idle),
                kib_per_session=result.kib_per_session,
                ehlo_quit_ms=result.ehlo_quit_ms,
            )
        workload: Workload = args.workloads_table[workload_name]
        cpu_before = procstat.cpu_seconds(server.pid)
        with procstat.RssSampler(server.pid) as sampler:
            done = load.run_load(
                workload, server.port, servers.RECIPIENT, prefer_smtp_source=not args.asyncio_load
            )
            stored = server.wait_stored(workload.messages, STORE_TIMEOUT)
        stored_rate = None if stored is None else workload.messages / max(done.seconds, stored)
        cpu = procstat.cpu_seconds(server.pid) - cpu_before
        return Sample(
            cpu_ms_per_msg=cpu * 1000 / workload.messages,
            msgs_per_s=workload.messages / done.seconds,
            mb_per_s=workload.megabytes / done.seconds,
            stored_msgs_per_s=stored_rate,
            idle_mib=_mib(idle),
            idle_pss_mib=idle_pss,
            peak_mib=_mib(sampler.peak),
            growth_mib=_mib(sampler.peak - idle),
        )


def median_sample(samples: list[Sample]) -> Sample:
    good = [s for s in samples if s.error is None]
    if not good:
        return samples[0]

    def med(values: list[float]) -> float:
        return statistics.median(values)

    stored = [s.stored_msgs_per_s for s in good if s.stored_msgs_per_s is not None]
    return Sample(
        msgs_per_s=med([s.msgs_per_s for s in good]),
        mb_per_s=med([s.mb_per_s for s in good]),
        stored_msgs_per_s=med(stored) if len(stored) == len(good) else None,
        cpu_ms_per_msg=med([s.cpu_ms_per_msg for s in good]),
        idle_mib=med([s.idle_mib for s in good]),
        idle_pss_mib=med([s.idle_pss_mib for s in good]),
        peak_mib=med([s.peak_mib for s in good]),
        growth_mib=med([s.growth_mib for s in good]),
        kib_per_session=med([s.kib_per_session for s in good]),
        ehlo_quit_ms=med([s.ehlo_quit_ms for s in good]),
    )


def _ratio(ours: float, theirs: float, *, lower_is_better: bool = False) -> str:
    if ours <= 0 or theirs <= 0:
        return "-"
    value = theirs / ours if lower_is_better else ours / theirs
    return f"{value:.2f}x"


def _ours(names: list[str]) -> list[str]:
    return [name for name in names if servers.is_postoffice(name)]


def render_table(results: dict[tuple[str, str], Sample], workloads: list[str], names: list[str]) -> str:
    """One row per server; the last columns divide each postoffice's figure by the row's."""
    ours = _ours(names)
    lines = []
    header = (
        f"{'workload':<9}{'server':<18}{'msgs/s':>9}{'MB/s':>8}{'stored/s':>10}{'CPU ms/msg':>11}"
        f"{'idle MB':>9}{'idle PSS':>9}{'peak MB':>9}{'growth MB':>11}"
        + "".join(f"{name + ' ÷':>17}" for name in ours)
    )
    lines += [header, "-" * len(header)]
    for workload in workloads:
        if workload == "W4":
            continue
        for name in names:
            sample = results.get((workload, name))
            if sample is None:
                continue
            if sample.error is not None:
                lines.append(f"{workload:<9}{name:<18}  failed: {sample.error}")
                continue
            stored = f"{sample.stored_msgs_per_s:.0f}" if sample.stored_msgs_per_s is not None else "-"
            ratios = ""
            for our_name in ours:
                our = results.get((workload, our_name))
                ratio = "" if our_name == name or our is None else _ratio(our.msgs_per_s, sample.msgs_per_s)
                ratios += f"{ratio:>17}"
            lines.append(
                f"{workload:<9}{name:<18}{sample.msgs_per_s:>9.1f}{sample.mb_per_s:>8.1f}{stored:>10}"
                f"{sample.cpu_ms_per_msg:>11.2f}"
                f"{sample.idle_mib:>9.1f}{sample.idle_pss_mib:>9.1f}{sample.peak_mib:>9.1f}{sample.growth_mib:>+11.1f}{ratios}"
            )
    if "W4" in workloads:
        lines.append("")
        header = f"{'W4':<9}{'server':<18}{'KiB/session':>12}{'held MB':>9}{'EHLO→QUIT ms':>14}" + "".join(
            f"{'KiB: this ÷ ' + name:>28}" for name in ours
        )
        lines += [header, "-" * len(header)]
        for name in names:
            sample = results.get(("W4", name))
            if sample is None:
                continue
            if sample.error is not None:
                lines.append(f"{'W4':<9}{name:<18}  failed: {sample.error}")
                continue
            ratios = ""
            for our_name in ours:
                our = results.get(("W4", our_name))
                ratio = (
                    ""
                    if our_name == name or our is None
                    else _ratio(our.kib_per_session, sample.kib_per_session, lower_is_better=True)
                )
                ratios += f"{ratio:>28}"
            lines.append(
                f"{'W4':<9}{name:<18}{sample.kib_per_session:>12.2f}{sample.peak_mib:>9.1f}"
                f"{sample.ehlo_quit_ms:>14.2f}{ratios}"
            )
    return "\n".join(lines)


def render_targets(results: dict[tuple[str, str], Sample], workloads: list[str], names: list[str]) -> str:
    lines = ["Targets (issue 19; Postfix measured in this run):"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for our_name in _ours(names):
        for workload in workloads:
            ours = results.get((workload, our_name))
            if ours is None or ours.error is not None:
                continue
            if workload in GROWTH_TARGET_MB:
                lines += _postfix_lines(results, workload, our_name, ours, verdict)
                limit = GROWTH_TARGET_MB[workload]
                lines.append(
                    f"  {our_name} {workload}: RSS growth {ours.growth_mib:+.1f} MB, target ≤ {limit:g} MB: "
                    f"{verdict(ours.growth_mib <= limit)}"
                )
            elif workload == "W4":
                lines.append(
                    f"  {our_name} W4: {ours.kib_per_session:.2f} KiB per idle session, "
                    f"target ≤ {IDLE_TARGET_KIB:g}: {verdict(ours.kib_per_session <= IDLE_TARGET_KIB)}; "
                    f"EHLO→QUIT {ours.ehlo_quit_ms:.2f} ms, target < {PROBE_TARGET_MS:g}: "
                    f"{verdict(ours.ehlo_quit_ms < PROBE_TARGET_MS)}"
                )
    one = results.get(("W1a", ONE_PROCESS)) or results.get(("W1a", "postoffice"))
    many = [
        (count, results.get(("W1a", name)))
        for name in _ours(names)
        if (count := servers.workers_of(name)) is not None and count > 1
    ]
    for count, sample in many:
        if (
            one is not None
            and sample is not None
            and one.error is None
            and sample.error is None
            and one.msgs_per_s > 0
        ):
            scale = sample.msgs_per_s / one.msgs_per_s
            lines.append(
                f"  W1a with {count} workers: {scale:.2f}x one worker, target ≥ {0.8 * count:.1f}x: "
                f"{verdict(scale >= 0.8 * count)}"
            )
    return "\n".join(lines)


def _postfix_lines(
    results: dict[tuple[str, str], Sample],
    workload: str,
    our_name: str,
    ours: Sample,
    verdict: Callable[[bool], str],
) -> list[str]:
    """Our rate against Postfix's from the same run, where the workload has a target."""
    postfix = results.get((workload, "postfix"))
    if postfix is None or postfix.error is not None or postfix.msgs_per_s <= 0:
        return [f"  {our_name} {workload}: Postfix not measured in this run (needs postfix and root)"]
    ratio = ours.msgs_per_s / postfix.msgs_per_s
    lines = [
        f"  {our_name} {workload}: {ratio:.2f}x Postfix ({ours.msgs_per_s:.0f} / {postfix.msgs_per_s:.0f} msg/s)"
    ]
    # The targets are for the default worker setting (with group commit or not).
    if workload in POSTFIX_TARGET and our_name.removesuffix(servers.GROUP_COMMIT) == "postoffice":
        need = POSTFIX_TARGET[workload]
        lines[-1] += f", target ≥ {need:g}x: {verdict(ratio >= need)}"
    if workload == "W1a" and our_name == ONE_PROCESS:
        lines.append(
            f"  {ONE_PROCESS} (one process) W1a: target ≥ {ONE_PROCESS_TARGET:g}x Postfix: "
            f"{verdict(ratio >= ONE_PROCESS_TARGET)}"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark postoffice against other SMTP servers on loopback."
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads and one run (under a minute)")
    parser.add_argument("--runs", type=int, help="interleaved runs; the table shows medians (default 1)")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOAD_NAMES), help="comma-separated, from W1a,W1b,W2,W3,W4"
    )
    parser.add_argument(
        "--servers",
        default=",".join(servers.SERVER_NAMES),
        help="comma-separated: postoffice (the default worker setting), postoffice-wN (--workers N), either with -gc (group commit on), postoffice-verify (SPF/DKIM/DMARC/ARC checked, from a local DNS server), aiosmtpd-maildir, aiosmtpd-discard, smtp-sink",
    )
    parser.add_argument("--messages", type=int, help="messages per workload (overrides W1a/W1b/W2/W3 counts)")
    parser.add_argument("--idle-sessions", type=int, help="W4 sessions (default 5000, quick 500)")
    parser.add_argument(
        "--asyncio-load", action="store_true", help="use the asyncio client even if smtp-source exists"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the medians as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the servers' data directories")
    args = parser.parse_args(argv)
    args.runs = args.runs or 1
    table = QUICK if args.quick else FULL
    if args.messages:
        table = {name: replace(w, messages=args.messages) for name, w in table.items()}
    args.workloads_table = table
    args.idle_sessions = args.idle_sessions or IDLE_SESSIONS["quick" if args.quick else "full"]
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.quick and args.servers == parser.get_default("servers"):
        # Under a minute: the worker-scaling comparison needs the full workloads anyway.
        args.server_list = [
            name for name in args.server_list if name == "postoffice" or not servers.is_postoffice(name)
        ]
    for name in args.workload_list:
        if name not in WORKLOAD_NAMES:
            parser.error(f"unknown workload {name!r}")
    for name in args.server_list:
        if name not in servers.SERVER_NAMES and not servers.is_postoffice(name):
            parser.error(f"unknown server {name!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [name for name in args.server_list if servers.available(name)]
    skipped = [name for name in args.server_list if name not in names]
    generator = "smtp-source" if load.smtp_source_available() and not args.asyncio_load else "asyncio client"
    print(f"servers: {', '.join(names)}" + (f" (not installed: {', '.join(skipped)})" if skipped else ""))
    print(f"load: {generator}; runs: {args.runs}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="postoffice-bench-"))
    samples: dict[tuple[str, str], list[Sample]] = {}
    started = time.perf_counter()
    try:
        for run in range(args.runs):
            for workload in args.workload_list:
                # Interleaved: each run visits every server, in a rotated order.
                order = names[run % len(names) :] + names[: run % len(names)]
                for name in order:
                    workdir = root / f"{run}-{workload}-{name}"
                    try:
                        sample = measure(name, workload, args, workdir)
                    except (load.LoadError, RuntimeError, OSError) as exc:
                        sample = Sample(error=str(exc)[:200])
                    samples.setdefault((workload, name), []).append(sample)
                    if not args.keep:
                        shutil.rmtree(workdir, ignore_errors=True)
                    print(
                        f"  run {run + 1} {workload} {name}: "
                        + (
                            sample.error or f"{sample.msgs_per_s:.0f} msg/s"
                            if workload != "W4"
                            else sample.error or f"{sample.kib_per_session:.2f} KiB/session"
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    results = {key: median_sample(values) for key, values in samples.items()}
    print()
    print(render_table(results, args.workload_list, names))
    print()
    print(render_targets(results, args.workload_list, names))
    print(f"\n({time.perf_counter() - started:.0f} s; medians of {args.runs} run(s))")
    if args.json is not None:
        args.json.write_text(
            json.dumps({f"{w}/{s}": asdict(sample) for (w, s), sample in results.items()}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
