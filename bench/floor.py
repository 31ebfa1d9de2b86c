"""What this machine leaves for an SMTP receiver's own work on W1a: the floors under it.

    python bench/floor.py [--messages 10000] [--rate 2940]

Untrusted input seen here: none (it talks only to the responder it starts on 127.0.0.1).

Three figures, each the least a durable receiver pays here for a 1 KB message:

- **durable write**: the Maildir recipe alone (write into ``tmp/``, fsync, rename into
  ``new/``, fsync ``new/``) from 32 threads, as postoffice's file threads run it: writes a
  second, and CPU per write (mostly the kernel's);
- **durable write, grouped**: the same recipe with postoffice's group commit
  (``spool/group_commit.py``, ``[queue] group_commit``): the flushes of the writes under way at
  once are one ``syncfs(2)``; writes a second, CPU per write and flushes per write (the budget
  below still counts the per-file write, the default);
- **answering**: a Python server that answers every SMTP command with a fixed reply and stores
  nothing (on uvloop when installed), under W1a from the benchmark's load generator: messages a
  second and its CPU per message. The gap between this and a real server is the real server's
  own work: parsing, policy, the Received field, logging, indexing;
- **load generator**: the CPU that ``smtp-source`` itself takes per message on the same cores.

Then the budget at ``--rate`` (issue 7's W1a target, 3 × Postfix's 980 msg/s, by default):
the CPU time per message that the machine's cores allow, and what is left for the server once
the load generator, the durable write and answering are paid for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import load
import maildir_store
import procstat
import servers

DURABLE_THREADS = 32
MESSAGE_SIZE = 1024


def durable_writes(directory: Path, count: int, threads: int = DURABLE_THREADS) -> tuple[float, float]:
    """Writes a second and CPU seconds per write of the Maildir recipe, ``threads`` at once."""
    for sub in ("tmp", "new"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    content = b"x" * MESSAGE_SIZE
    return _timed_writes(count, threads, lambda name: maildir_store.store(directory, name, content))


def grouped_writes(directory: Path, count: int, threads: int = DURABLE_THREADS) -> tuple[float, float, float]:
    """As :func:`durable_writes`, through postoffice's group commit; also flushes per write."""
    sys.path.insert(0, str(servers.SOURCES))  # this checkout's postoffice, as the servers run it
    from postoffice.spool.group_commit import GroupCommit, load_syncfs

    syncfs = load_syncfs()
    if syncfs is None:
        return 0.0, 0.0, 0.0
    for sub in ("tmp", "new"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    group = GroupCommit(directory, syncfs)
    content = b"x" * MESSAGE_SIZE

    def write_one(name: str) -> None:
        temporary, final = directory / "tmp" / name, directory / "new" / name
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
            group.commit_file(fd, directory / "new", lambda: os.rename(temporary, final))
        finally:
            os.close(fd)

    try:
        rate, cpu = _timed_writes(count, threads, write_one)
    finally:
        group.close()
    return rate, cpu, group.flushes / (count // threads * threads)


def _timed_writes(count: int, threads: int, write: Callable[[str], None]) -> tuple[float, float]:
    """Writes a second and CPU seconds per write: ``count`` calls of ``write`` (each with a name
    of its own) spread over ``threads`` threads at once."""

    def write_some(thread: int) -> None:
        for number in range(count // threads):
            write(f"{thread}.{number}")

    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    workers = [threading.Thread(target=write_some, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    done = count // threads * threads
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done / seconds, cpu / done


# --- the answering floor ------------------------------------------------------------------------

_EHLO = b"250-floor.bench.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


class Responder(asyncio.Protocol):
    """Answers each command line with a fixed reply; takes DATA up to its end and drops it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(b"220 floor.bench.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer + data
        replies: list[bytes] = []
        while True:
            if self.in_data:
                end = buffer.find(b"\r\n.\r\n")
                if end < 0:
                    buffer = buffer[-4:]  # enough to find a terminator split across reads
                    break
                buffer = buffer[end + 5 :]
                self.in_data = False
                replies.append(b"250 2.0.0 Ok\r\n")
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            verb = buffer[:4].upper()
            buffer = buffer[end + 2 :]
            if verb in (b"EHLO", b"HELO"):
                replies.append(_EHLO)
            elif verb == b"DATA":
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data = True
                buffer = b"\r\n" + buffer  # the first line may be the terminator
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(replies))
                self.transport.close()
                return
            else:
                replies.append(b"250 2.0.0 Ok\r\n")
        self.buffer = buffer
        if replies:
            self.transport.write(b"".join(replies))


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Responder, "127.0.0.1", 0, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def answering(count: int) -> tuple[float, float, float | None]:
    """W1a against the responder: messages a second, its CPU per message, and the load
    generator's CPU per message (None when it is not smtp-source, a process of its own)."""
    process = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE)
    try:
        port = servers._read_port(process, "listening ")
        workload = load.Workload("W1a", "1 KB, 10 sessions, 1 msg/conn", count, MESSAGE_SIZE, 10, 1)
        server_before = procstat.cpu_seconds(process.pid)
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = load.run_load(workload, port, servers.RECIPIENT)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = procstat.cpu_seconds(process.pid) - server_before
    finally:
        process.terminate()
        process.wait(10)
    generator_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    if result.generator != "smtp-source":
        return count / result.seconds, server_cpu / count, None  # the asyncio client ran in this process
    return count / result.seconds, server_cpu / count, generator_cpu / count


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages per measurement")
    parser.add_argument("--rate", type=float, default=2_940.0, help="the W1a rate to budget for")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve())
        else:
            uvloop.run(serve())
        return 0
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="postoffice-floor-") as scratch:
        write_rate, write_cpu = durable_writes(Path(scratch) / "per-file", args.messages)
        grouped_rate, grouped_cpu, grouped_flushes = grouped_writes(Path(scratch) / "grouped", args.messages)
    answer_rate, answer_cpu, generator_cpu = answering(args.messages)
    print(f"cores: {cores}")
    print(
        f"durable write ({DURABLE_THREADS} threads): {write_rate:,.0f}/s, {write_cpu * 1e3:.3f} ms CPU each"
    )
    if grouped_rate:
        print(
            f"durable write, group commit ({DURABLE_THREADS} threads): {grouped_rate:,.0f}/s,"
            f" {grouped_cpu * 1e3:.3f} ms CPU each, {grouped_flushes:.3f} flushes each"
        )
    print(f"answering only (W1a): {answer_rate:,.0f} msg/s, {answer_cpu * 1e3:.3f} ms CPU per message")
    if generator_cpu is None:
        print("load generator: not measured (smtp-source is not installed; the asyncio client ran here)")
    else:
        print(f"load generator: {generator_cpu * 1e3:.3f} ms CPU per message")
    budget = cores / args.rate
    left = budget - (generator_cpu or 0.0) - write_cpu - answer_cpu
    paid = (
        "the durable write and answering"
        if generator_cpu is None
        else "the load generator, the durable write and answering"
    )
    print(
        f"budget at {args.rate:,.0f} msg/s on {cores} cores: {budget * 1e3:.3f} ms CPU per message; "
        f"left for a server's own work after {paid}: {left * 1e3:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
