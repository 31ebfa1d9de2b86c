"""Soak test: push many messages through a real server process and watch it hold steady.

Untrusted input seen here: none (it talks to a server it starts itself on loopback).

It starts ``python -m postoffice serve`` in capture mode on an ephemeral loopback port, sends
``--messages`` messages from ``--clients`` concurrent SMTP clients (each reusing its session
with RSET-free back-to-back transactions, as a relay does), samples the server's resident set
size from ``/proc/PID/status`` (its workers' too, with ``--workers N``) every few seconds, and
at the end checks that every message that got a 250 is in a Maildir exactly once and has a
row in the web index. Results print as one line per sample and a summary; docs/operations.md
(Long runs) records runs.

    python bench/soak.py --messages 1000000 --clients 8 [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_LISTENING = re.compile(r"^listening smtp 127\.0\.0\.1:(\d+)$")


def rss_kib(pid: int) -> int:
    """The resident set of ``pid`` and its children (the workers of ``serve --workers``)."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1])
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += rss_kib(int(child))
    return total


def indexed(data_dir: Path) -> int:
    """Rows in the web index (every delivered message should have one)."""
    with contextlib.closing(sqlite3.connect(data_dir / "index.sqlite3")) as db:
        count: int = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    return count


def start_server(data_dir: Path, workers: int) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, "-m", "postoffice", "serve", "--data-dir", str(data_dir)]
    command += ["--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--hostname", "soak.test"]
    command += ["--workers", str(workers)]
    # This checkout's sources, whatever is installed.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        match = _LISTENING.match(line.strip())
        if match:
            threading.Thread(
                target=lambda: process.stdout.read() if process.stdout else None, daemon=True
            ).start()
            return process, int(match.group(1))
    raise SystemExit("the server did not start")


def client(port: int, first: int, count: int, accepted: list[str], lock: threading.Lock) -> None:
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=60)
    smtp.ehlo("soak.client")
    for number in range(first, first + count):
        body = f"Subject: soak {number}\r\nMessage-ID: <soak-{number}@soak.test>\r\n\r\nmessage {number}\r\n"
        try:
            smtp.sendmail("sender@soak.test", [f"box{number % 50}@soak.test"], body)
        except smtplib.SMTPException:
            smtp.close()
            smtp = smtplib.SMTP("127.0.0.1", port, timeout=60)
            smtp.ehlo("soak.client")
            continue
        with lock:
            accepted.append(f"<soak-{number}@soak.test>")
    smtp.quit()


_MESSAGE_ID = re.compile(rb"^Message-ID: (<soak-\d+@soak\.test>)", re.MULTILINE)


def count_delivered(mail_dir: Path) -> dict[str, int]:
    """How many copies of each soak message the Maildirs hold (by Message-ID)."""
    seen: dict[str, int] = {}
    for box in mail_dir.glob("*/*"):
        for folder in ("new", "cur"):
            for path in (box / folder).iterdir():
                # The soak's own header is near the top: the head of the file is enough.
                with path.open("rb") as stream:
                    match = _MESSAGE_ID.search(stream.read(4096))
                key = match.group(1).decode() if match else str(path)
                seen[key] = seen.get(key, 0) + 1
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--data-dir", type=Path, help="keep the data here (default: a temporary directory)")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="postoffice-soak-"))
    process, port = start_server(data_dir, args.workers)
    accepted: list[str] = []
    lock = threading.Lock()
    per_client = args.messages // args.clients
    threads = [
        threading.Thread(target=client, args=(port, i * per_client, per_client, accepted, lock))
        for i in range(args.clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    peak = 0
    while any(thread.is_alive() for thread in threads):
        time.sleep(args.sample)
        rss = rss_kib(process.pid)
        peak = max(peak, rss)
        elapsed = time.monotonic() - started
        print(
            f"t={elapsed:.0f}s accepted={len(accepted)} rate={len(accepted) / elapsed:.0f}/s rss={rss}KiB",
            flush=True,
        )
    elapsed = time.monotonic() - started
    process.terminate()
    code = process.wait(60)
    delivered = count_delivered(data_dir / "mail")
    lost = [key for key in accepted if key not in delivered]
    duplicated = [key for key, n in delivered.items() if n > 1]
    rows = indexed(data_dir)
    print(
        f"messages={args.messages} accepted={len(accepted)} seconds={elapsed:.0f} "
        f"rate={len(accepted) / elapsed:.0f}/s peak_rss={peak}KiB exit={code} "
        f"lost={len(lost)} duplicated={len(duplicated)} indexed={rows} data_dir={data_dir}"
    )
    return 0 if not lost and not duplicated and code == 0 and rows == len(accepted) else 1


if __name__ == "__main__":
    sys.exit(main())
