"""How fast the web index answers with a big mailbox, and that memory does not grow with it.

Fills a fresh index with synthetic messages (100,000 by default, in one mailbox), then times
listing pages and searches, directly on the index and through the HTTP API served by uvicorn on
a loopback port, and reads the process's resident memory while paging through every message
and while streaming a large raw message. It prints figures; it asserts nothing.

    python bench/web_index.py [--messages 100000] [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from postoffice.accounts import Accounts
from postoffice.maildir.names import mailbox_path
from postoffice.maildir.store import MaildirStore
from postoffice.web.api import WebContext
from postoffice.web.auth import Authenticator
from postoffice.web.events import EventHub
from postoffice.web.index import MailIndex, Row, SearchText
from postoffice.web.search import compile_query
from postoffice.web.server import HttpServer
from postoffice.web.site import create_app

MAILBOX = "bench@example.test"
OTHER_MAILBOX = "neighbour@example.test"
WORDS = [
    "invoice",
    "order",
    "shipped",
    "account",
    "password",
    "reset",
    "welcome",
    "meeting",
    "agenda",
    "report",
    "quarterly",
    "budget",
    "review",
    "deadline",
    "project",
    "update",
    "release",
    "notes",
    "security",
    "alert",
    "payment",
    "receipt",
    "delivery",
    "tracking",
    "newsletter",
    "offer",
    "discount",
    "event",
    "invitation",
    "reminder",
    "schedule",
    "holiday",
    "travel",
    "ticket",
    "booking",
    "confirmation",
    "support",
    "request",
    "feedback",
    "survey",
    "results",
    "launch",
    "team",
    "planning",
    "design",
]
RARE = "zeppelin"


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synthetic(count: int, start: float, mailbox: str = MAILBOX) -> list[tuple[Row, SearchText]]:
    rng = random.Random(f"{mailbox}{start}")
    senders = [f"{rng.choice(WORDS)}.{n}@sender{n % 50}.example" for n in range(500)]
    items = []
    for n in range(count):
        subject = " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
        body_words = rng.choices(WORDS, k=rng.randint(40, 160))
        if n % 10_000 == 0:
            body_words.append(RARE)
        row = Row(
            id=0,
            mailbox=mailbox,
            key=f"{int(start) + n}.BENCH{int(start) + n:012d}_0.bench",
            location=f"new/{int(start) + n}.BENCH{n:08d}_0.bench,S=2048",
            sender=f"{rng.choice(WORDS).title()} <{rng.choice(senders)}>",
            recipients=mailbox,
            subject=subject,
            date=start + n,
            received=start + n,
            size=rng.randint(800, 2_000_000) if n % 10 == 0 else rng.randint(800, 40_000),
            seen=rng.random() < 0.3,
            has_attachments=n % 10 == 0,
        )
        items.append((row, SearchText(mailbox, " ".join(body_words))))
    return items


def timed(function: Callable[[], object], runs: int) -> tuple[float, float]:
    function()  # warm
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1 if len(samples) > 1 else 0]


QUERIES = [
    ("", "listing, no query"),
    ("invoice", "common word"),
    (RARE, "rare word"),
    ("from:sender7", "from:"),
    ('subject:"security alert"', "subject phrase"),
    ("is:unread", "is:unread"),
    ("has:attachment larger:1M", "has:attachment larger:1M"),
    ("report -invoice -from:sender3", "word with negations"),
    ("after:2024-01-02 before:2024-01-03", "date range"),
]


def bench_index(index: MailIndex, total: int, runs: int) -> None:
    print(f"\nindex, {total:,} messages in the mailbox asked for (median / p95 of {runs} runs, ms):")
    for offset, label in ((0, "first page"), (total // 2, "page at the middle"), (total - 50, "last page")):
        query = compile_query("")
        med, p95 = timed(lambda o=offset, q=query: index.page([MAILBOX], q, limit=50, offset=o), runs)
        print(f"  {label:<34} {med:8.2f} {p95:8.2f}")
    med, p95 = timed(lambda: index.mailboxes(), runs)
    print(f"  {'mailbox counts':<34} {med:8.2f} {p95:8.2f}")
    for text, label in QUERIES[1:]:
        query = compile_query(text)
        found = index.page([MAILBOX], query, limit=50, offset=0).total
        med, p95 = timed(lambda q=query: index.page([MAILBOX], q, limit=50, offset=0), runs)
        print(f"  search {label:<27} {med:8.2f} {p95:8.2f}   ({found:,} found)")


async def bench_http(index: MailIndex, total: int, runs: int, workdir: Path) -> None:
    executor = ThreadPoolExecutor(4)
    accounts = Accounts(workdir / "accounts.json")
    context = WebContext(index, EventHub(), Authenticator(accounts, index.store, open_access=True), executor)
    server = HttpServer(create_app(context, loopback_only=True), [("127.0.0.1", 0)])
    (address,) = await server.start()
    base = f"http://127.0.0.1:{address.port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            print(f"\nHTTP API on {base} (median / p95 of {runs} runs, ms, JSON included):")
            for params, label in (
                ({"mailbox": MAILBOX}, "GET /messages first page"),
                ({"mailbox": MAILBOX, "offset": str(total // 2)}, "GET /messages middle page"),
                ({"mailbox": MAILBOX, "q": "invoice"}, "search common word"),
                ({"mailbox": MAILBOX, "q": 'subject:"security alert" is:unread'}, "search phrase + flag"),
            ):
                samples = []
                await http.get("/api/v1/messages", params=params)
                for _ in range(runs):
                    started = time.perf_counter()
                    response = await http.get("/api/v1/messages", params=params)
                    samples.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                samples.sort()
                print(f"  {label:<34} {statistics.median(samples):8.2f} {samples[int(runs * 0.95) - 1]:8.2f}")

            before = rss_mib()
            pages = 0
            offset = 0
            while True:
                page = (
                    await http.get("/api/v1/messages", params={"limit": "500", "offset": str(offset)})
                ).json()
                if not page["messages"]:
                    break
                offset += len(page["messages"])
                pages += 1
            after = rss_mib()
            print(f"\nmemory: paged through all {offset:,} messages ({pages} pages of 500):")
            print(f"  resident before {before:.1f} MiB, after {after:.1f} MiB")

            box = mailbox_path(workdir / "mail", "big@example.test")
            for part in ("tmp", "new", "cur"):
                (box / part).mkdir(parents=True, exist_ok=True)
            big = box / "new" / "1700000000.BIG_0.bench"
            with big.open("wb") as out:
                out.write(b"Subject: big\r\nContent-Type: text/plain\r\n\r\n")
                line = b"x" * 998 + b"\r\n"
                for _ in range(64 * 1024):  # 64 MiB
                    out.write(line)
            stored = index.store.find("big@example.test", "1700000000.BIG_0.bench")
            assert stored is not None
            row = index.add(stored)
            assert row is not None
            before = rss_mib()
            received = 0
            async with http.stream("GET", f"/api/v1/messages/{row.id}/raw") as stream:
                async for chunk in stream.aiter_bytes():
                    received += len(chunk)
            after = rss_mib()
            print(
                f"  streamed a {received / 2**20:.0f} MiB raw message: resident {before:.1f} -> {after:.1f} MiB"
            )
    finally:
        await server.stop()
        executor.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="postoffice-bench-") as temporary:
        workdir = Path(temporary)
        index = MailIndex(workdir / "index.sqlite3", MaildirStore(workdir / "mail", "bench.test"))
        start = 1704067200.0  # 2024-01-01T00:00:00Z, one message a second
        print(f"filling the index with {args.messages:,} + {args.messages // 10:,} messages ...", flush=True)
        started = time.perf_counter()
        batch = 5_000
        for first in range(0, args.messages, batch):
            items = synthetic(min(batch, args.messages - first), start + first)
            # A neighbour with a tenth as much mail, so every search really has to keep to
            # the one mailbox asked for.
            items += synthetic(min(batch, args.messages - first) // 10, start + first, OTHER_MAILBOX)
            index.insert_many(items)
        fill = time.perf_counter() - started
        size = sum(p.stat().st_size for p in workdir.glob("index.sqlite3*")) / 2**20
        print(
            f"filled in {fill:.1f} s ({args.messages / fill:,.0f} messages/s); index {size:.0f} MiB on disk"
        )
        print(f"machine: {os.cpu_count()} cores; resident {rss_mib():.1f} MiB")
        bench_index(index, args.messages, args.runs)
        asyncio.run(bench_http(index, args.messages, args.runs, workdir))
        index.close()


if __name__ == "__main__":
    main()
