"""Load generators: Postfix's ``smtp-source`` when installed, a small asyncio client otherwise.

Both speak SMTP without pipelining (smtp-source has none), one command and its reply at a
time, from ``sessions`` concurrent connections. Only 127.0.0.1 is ever a target.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

SENDER = "sender@bench.test"
HELO_NAME = "client.bench.test"


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    messages: int
    size: int  # payload octets per message
    sessions: int
    per_connection: int  # messages sent on one connection before QUIT

    @property
    def megabytes(self) -> float:
        return self.messages * self.size / 1e6


@dataclass(frozen=True)
class LoadResult:
    seconds: float
    generator: str


class LoadError(RuntimeError):
    pass


def smtp_source_available() -> bool:
    return shutil.which("smtp-source") is not None


def run_load(workload: Workload, port: int, recipient: str, *, prefer_smtp_source: bool = True) -> LoadResult:
    if prefer_smtp_source and smtp_source_available():
        return _run_smtp_source(workload, port, recipient)
    start = time.perf_counter()
    asyncio.run(_asyncio_load(workload, port, recipient))
    return LoadResult(time.perf_counter() - start, "asyncio")


# --- smtp-source --------------------------------------------------------------------------------


def _smtp_source(count: int, sessions: int, size: int, port: int, recipient: str, *, keep: bool) -> None:
    command = [
        "smtp-source",
        "-s",
        str(sessions),
        "-m",
        str(count),
        "-l",
        str(size),
        "-f",
        SENDER,
        "-t",
        recipient,
        "-M",
        HELO_NAME,
    ]
    if keep:
        command.append("-d")  # the next message on the same connection
    command.append(f"127.0.0.1:{port}")
    done = subprocess.run(command, capture_output=True, timeout=900, check=False)
    if done.returncode != 0:
        raise LoadError(
            f"smtp-source failed ({done.returncode}): {done.stderr.decode(errors='replace')[-300:]}"
        )


def _run_smtp_source(workload: Workload, port: int, recipient: str) -> LoadResult:
    start = time.perf_counter()
    if workload.per_connection <= 1:
        _smtp_source(workload.messages, workload.sessions, workload.size, port, recipient, keep=False)
    else:
        # smtp-source -d keeps each connection until the message count runs out; one round of
        # sessions * per_connection messages gives each connection about per_connection.
        per_round = workload.sessions * workload.per_connection
        left = workload.messages
        while left > 0:
            count = min(per_round, left)
            _smtp_source(count, workload.sessions, workload.size, port, recipient, keep=True)
            left -= count
    return LoadResult(time.perf_counter() - start, "smtp-source")


# --- the asyncio fallback -----------------------------------------------------------------------


def message_bytes(size: int) -> bytes:
    """A message with a few headers and ``size`` octets of 78-character lines, dot-stuffing free."""
    header = f"From: <{SENDER}>\r\nSubject: bench\r\n\r\n".encode()
    line = b"x" * 78 + b"\r\n"
    body = line * (size // len(line)) + b"y" * (size % len(line))
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return header + body


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise LoadError("connection closed")
        if line[3:4] != b"-":
            if line[:1] not in (b"2", b"3"):
                raise LoadError(f"server said {line!r}")
            return line


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line)
    return await _reply(reader)


async def _asyncio_load(workload: Workload, port: int, recipient: str) -> None:
    content = message_bytes(workload.size) + b".\r\n"
    left = [workload.messages]

    async def session() -> None:
        while left[0] > 0:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            await _reply(reader)
            await _command(reader, writer, f"EHLO {HELO_NAME}\r\n".encode())
            sent = 0
            while left[0] > 0 and sent < max(1, workload.per_connection):
                left[0] -= 1
                sent += 1
                await _command(reader, writer, f"MAIL FROM:<{SENDER}>\r\n".encode())
                await _command(reader, writer, f"RCPT TO:<{recipient}>\r\n".encode())
                await _command(reader, writer, b"DATA\r\n")
                writer.write(content)
                await _reply(reader)
            await _command(reader, writer, b"QUIT\r\n")
            writer.close()

    await asyncio.gather(*(session() for _ in range(workload.sessions)))


# --- W4: idle sessions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleResult:
    sessions: int
    kib_before: int
    kib_held: int
    ehlo_quit_ms: float  # median over the probes, EHLO sent to 221 received
    ehlo_quit_max_ms: float

    @property
    def kib_per_session(self) -> float:
        return (self.kib_held - self.kib_before) / self.sessions


def raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _open_idle(port: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    await _command(reader, writer, f"EHLO {HELO_NAME}\r\n".encode())
    return writer


async def _probe(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    start = time.perf_counter()
    await _command(reader, writer, f"EHLO {HELO_NAME}\r\n".encode())
    await _command(reader, writer, b"QUIT\r\n")
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed * 1000


async def _idle(port: int, sessions: int, rss: Callable[[], int], probes: int) -> IdleResult:
    # A first session and its probe warm the server's code paths before the baseline.
    await _probe(port)
    await asyncio.sleep(0.2)
    before = rss()
    writers: list[asyncio.StreamWriter] = []
    batch = 200
    try:
        for first in range(0, sessions, batch):
            count = min(batch, sessions - first)
            writers += await asyncio.gather(*(_open_idle(port) for _ in range(count)))
        await asyncio.sleep(0.5)
        held = rss()
        times = [await _probe(port) for _ in range(probes)]
    finally:
        for writer in writers:
            writer.close()
    return IdleResult(sessions, before, held, statistics.median(times), max(times))


def run_idle(port: int, sessions: int, rss: Callable[[], int], probes: int = 20) -> IdleResult:
    raise_open_files(sessions + 1000)
    return asyncio.run(_idle(port, sessions, rss, probes))
