"""How fast the SMTP client sends: dot-stuffing, and messages to our own server on loopback.

Run from the repository root: ``python bench/bench_client.py``. The server runs in the same
process and event loop, with its data in a temporary directory, so the figures include the
server's work (parsing, fsync per group commit, Maildir delivery) as well as the client's.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from postoffice.app import Application
from postoffice.client.connection import SmtpClient
from postoffice.config import Config, Listener
from postoffice.smtp import client as core

MiB = 1024 * 1024
SMALL = b"Subject: bench\r\n\r\n" + b"x" * 70 + b"\r\n"


def bench_dot_stuffing() -> None:
    for name, line in (
        ("LF lines", b"a line of text .with dots\n"),
        ("CRLF lines", b"a line of text .with dots\r\n"),
    ):
        data = (line * (25 * MiB // len(line) + 1))[: 25 * MiB]
        start = time.perf_counter()
        core.dot_stuff(data)
        elapsed = time.perf_counter() - start
        print(f"dot-stuffing 25 MiB of {name}: {elapsed:.3f}s ({25 / elapsed:.0f} MiB/s)")


async def bench_sending(data_dir: Path) -> None:
    config = Config(hostname="mx.bench", data_dir=data_dir, listeners=(Listener("smtp", "127.0.0.1", 0),))
    app = Application(config)
    port = (await app.start())[0].port
    try:
        count = 500
        start = time.perf_counter()
        async with SmtpClient("127.0.0.1", port, ehlo_name="client.bench") as client:
            for _ in range(count):
                await client.send("a@client.bench", ["b@mx.bench"], SMALL)
        elapsed = time.perf_counter() - start
        print(f"{count} messages on one connection: {elapsed:.2f}s ({count / elapsed:.0f}/s)")

        count = 200
        start = time.perf_counter()
        for _ in range(count):
            async with SmtpClient("127.0.0.1", port, ehlo_name="client.bench") as client:
                await client.send("a@client.bench", ["b@mx.bench"], SMALL)
        elapsed = time.perf_counter() - start
        print(f"{count} messages, a connection each: {elapsed:.2f}s ({count / elapsed:.0f}/s)")

        big = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 60 + b"\r\n"
        big = big * (20 * MiB // len(big))
        start = time.perf_counter()
        async with SmtpClient("127.0.0.1", port, ehlo_name="client.bench") as client:
            await client.send("a@client.bench", ["b@mx.bench"], big)
        elapsed = time.perf_counter() - start
        print(f"one {len(big) / MiB:.0f} MiB message: {elapsed:.2f}s ({len(big) / MiB / elapsed:.0f} MiB/s)")
    finally:
        await app.stop(grace=5)


def main() -> None:
    bench_dot_stuffing()
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(bench_sending(Path(directory)))


if __name__ == "__main__":
    main()
