"""Outbound: how fast a full queue for another domain is relayed, postoffice beside Postfix.

    python bench/outbound.py [--messages 10000] [--runs 3]

Untrusted input seen here: none (everything runs on 127.0.0.1).

Each server gets ``--messages`` 1 KB messages for ``rcpt@remote.bench.test`` queued while it
does not deliver, then is let go with one relay host, a Postfix ``smtp-sink`` on 127.0.0.1
(which stores nothing), and the clock runs until its queue is empty. Both use their defaults
otherwise (postoffice: five sessions to one destination, reused; Postfix: twenty, cached).

- postoffice: the messages are written into its spool (the same files a previous run leaves)
  with ``[delivery] relay_host`` pointing at the sink, then the server is started; the time
  counts from its "listening" line.
- Postfix (Debian's ``postfix``, as root): a private instance (postfix_peer.py) with
  ``relayhost`` at the sink and ``defer_transports = smtp`` takes the messages from
  ``smtp-source``; then ``defer_transports`` is emptied, the instance reloaded and its queue
  flushed, and the time counts from the flush.

Medians of ``--runs`` interleaved runs; CPU is the server's process tree during the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import load
import postfix_peer
import procstat
import servers

sys.path.insert(0, str(servers.SOURCES))

RECIPIENT = "rcpt@remote.bench.test"
DRAIN_TIMEOUT = 900.0


@dataclass
class Drain:
    server: str
    seconds: float
    cpu_seconds: float

    def rate(self, messages: int) -> float:
        return messages / self.seconds


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    port = servers._free_port()
    command = ["smtp-sink", "-m", "1000"]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]
    command += [f"127.0.0.1:{port}", "1024"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers._wait_listening(port, sink)
    return sink, port


def wait_empty(count: Callable[[], int], what: str) -> float:
    start = time.perf_counter()
    while count():
        if time.perf_counter() - start > DRAIN_TIMEOUT:
            raise RuntimeError(f"{what}: queue not empty after {DRAIN_TIMEOUT:.0f} s")
        time.sleep(0.02)
    return time.perf_counter() - start


def count_files(*directories: Path) -> Callable[[], int]:
    def count() -> int:
        total = 0
        for directory in directories:
            for _, _, files in os.walk(directory):
                total += len(files)
        return total

    return count


# --- postoffice --------------------------------------------------------------------------------

POSTOFFICE_CONFIG = """\
hostname = "postoffice.bench.test"
data_dir = "{data_dir}"
domains = ["bench.test"]

[listen]
smtp = ["127.0.0.1:0"]

[delivery]
relay_host = "127.0.0.1:{sink_port}"
relay_tls = "none"
"""


async def fill_spool(spool_dir: Path, messages: int) -> None:
    from postoffice.spool.envelope import Envelope, Recipient, Route
    from postoffice.spool.files import FileSpool

    spool = FileSpool(spool_dir)
    body = load.message_bytes(1024)
    for _ in range(messages):
        envelope = Envelope(
            mail_from=load.SENDER,
            recipients=(Recipient(RECIPIENT, RECIPIENT, Route.REMOTE),),
            received_at=time.time(),
        )
        writer = spool.put(envelope)
        writer.write(body)
        await writer.commit()


def drain_postoffice(workdir: Path, messages: int, sink_port: int) -> Drain:
    data_dir = workdir / "data"
    asyncio.run(fill_spool(data_dir / "spool", messages))
    config = workdir / "postoffice.toml"
    config.write_text(POSTOFFICE_CONFIG.format(data_dir=data_dir, sink_port=sink_port))
    env = {**os.environ, "PYTHONPATH": str(servers.SOURCES)}
    log = (workdir / "postoffice.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "postoffice", "serve", "--config", str(config), "--no-http"],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
    )
    log.close()
    try:
        servers._read_port(process, "listening smtp ")
        servers._drain(process)
        cpu = procstat.cpu_seconds(process.pid)
        seconds = wait_empty(count_files(data_dir / "spool" / "queue"), "postoffice")
        return Drain("postoffice", seconds, procstat.cpu_seconds(process.pid) - cpu)
    finally:
        process.terminate()
        process.wait(30)


# --- Postfix -----------------------------------------------------------------------------------


def drain_postfix(workdir: Path, messages: int, sink_port: int) -> Drain:
    root = workdir / "postfix"
    port = servers._free_port()
    master = postfix_peer.start(root, port)
    etc = root / "etc"
    try:
        # Nothing is local: every message goes to the relay host.
        postconf(
            etc,
            f"relayhost = [127.0.0.1]:{sink_port}",
            "defer_transports = smtp",
            "virtual_mailbox_domains =",
        )
        postfix_peer.postfix(etc, "reload")
        load._smtp_source(messages, 10, 1024, port, RECIPIENT, keep=True)
        queue = count_files(*(root / "spool" / name for name in ("incoming", "active", "deferred")))
        # Every message is in the queue (deferred) before the clock starts.
        deadline = time.monotonic() + 120
        while queue() < messages and time.monotonic() < deadline:
            time.sleep(0.05)
        postconf(etc, "defer_transports =")
        postfix_peer.postfix(etc, "reload")
        cpu = procstat.cpu_seconds(master)
        subprocess.run(["postqueue", "-c", str(etc), "-f"], check=True)
        seconds = wait_empty(queue, "postfix")
        return Drain("postfix", seconds, procstat.cpu_seconds(master) - cpu)
    finally:
        postfix_peer.stop(root)


def postconf(etc: Path, *settings: str) -> None:
    subprocess.run(["postconf", "-c", str(etc), "-e", *settings], check=True)


# --- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    if shutil.which("smtp-sink") is None:
        print("outbound: needs Postfix's smtp-sink (apt-get install postfix)", file=sys.stderr)
        return 1
    kinds: dict[str, Callable[[Path, int, int], Drain]] = {"postoffice": drain_postoffice}
    if postfix_peer.available():
        kinds["postfix"] = drain_postfix
    root = Path(tempfile.mkdtemp(prefix="postoffice-bench-"))
    results: dict[str, list[Drain]] = {name: [] for name in kinds}
    try:
        for run in range(args.runs):
            order = list(kinds) if run % 2 == 0 else list(reversed(kinds))
            for name in order:
                sink, sink_port = start_sink()
                try:
                    drained = kinds[name](root / f"{name}-{run}", args.messages, sink_port)
                finally:
                    sink.terminate()
                    sink.wait(10)
                results[name].append(drained)
                print(f"  run {run + 1} {name}: {drained.rate(args.messages):.0f} msg/s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(render(results, args.messages))
    return 0


def render(results: dict[str, list[Drain]], messages: int) -> str:
    lines = [f"{'server':<12}{'msgs/s':>9}{'seconds':>9}{'CPU ms/msg':>11}"]
    rates: dict[str, float] = {}
    for name, drains in results.items():
        seconds = statistics.median(d.seconds for d in drains)
        cpu = statistics.median(d.cpu_seconds for d in drains)
        rates[name] = messages / seconds
        lines.append(f"{name:<12}{rates[name]:>9.0f}{seconds:>9.1f}{1000 * cpu / messages:>11.2f}")
    if "postfix" in rates:
        ratio = rates["postoffice"] / rates["postfix"]
        verdict = "met" if ratio >= 1.0 else "NOT met"
        lines.append(f"Target (issue 19): outbound relay ≥ Postfix's rate: {ratio:.2f}x, {verdict}")
    else:
        lines.append("Postfix not measured (needs postfix and root)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
