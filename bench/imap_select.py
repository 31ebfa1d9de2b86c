"""How long an IMAP SELECT of a big INBOX takes: ``python bench/imap_select.py [COUNT]``.

Makes COUNT small messages (default 100,000) in a Maildir under a temporary directory, then
times the store's folder listing (what SELECT, STATUS and every IDLE look cost) three ways:
the first time (every message gets its UID, appended to ``postoffice-uidlist``), with a new
store (the UID list is read back, as after a restart), and again in the same store (nothing
changed, so the kept listing is reused). Then a whole SELECT through imaplib against a server
with an IMAP listener. Figures go to docs/imap.md.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from postoffice.app import Application
from postoffice.config import Config, Listener
from postoffice.maildir.store import MaildirStore

ADDRESS = "alice@localhost"


def fill(maildir: Path, count: int) -> None:
    for name in ("tmp", "new", "cur"):
        (maildir / name).mkdir(parents=True, exist_ok=True)
    body = b"Subject: bench\r\n\r\nhello\r\n"
    start = int(time.time()) - count
    for number in range(count):
        path = maildir / "cur" / f"{start + number}.B{number:08d}.bench,S={len(body)}:2,S"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, body)
        os.close(fd)


def timed(what: str, call: object) -> None:
    began = time.perf_counter()
    result = call()  # type: ignore[operator]
    print(f"{what}: {time.perf_counter() - began:.3f} s ({len(result.messages)} messages)")


def select_over_imap(data_dir: Path) -> None:
    config = Config(
        hostname="bench.test",
        data_dir=data_dir,
        listeners=(Listener("smtp", "127.0.0.1", 0),),
        http_listeners=(),
        imap_listeners=(Listener("imap", "127.0.0.1", 0),),
    )
    loop = asyncio.new_event_loop()
    app = Application(config)
    loop.run_until_complete(app.start())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    assert app.imap is not None
    with imaplib.IMAP4("127.0.0.1", app.imap.bound[0].port) as client:
        began = time.perf_counter()
        client.login(ADDRESS, "x")  # lists INBOX once (a new process: the UID list is read back)
        print(f"LOGIN over imaplib (first listing in this process): {time.perf_counter() - began:.3f} s")
        time.sleep(1.1)  # past the settling second
        for attempt in ("first", "again"):
            began = time.perf_counter()
            status, data = client.select("INBOX")
            print(f"SELECT over imaplib ({attempt}): {time.perf_counter() - began:.3f} s, {status} {data}")
            client.unselect()
    asyncio.run_coroutine_threadsafe(app.stop(grace=1), loop).result(30)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory)
        store = MaildirStore(data_dir / "mail", "bench.test")
        fill(data_dir / "mail" / "localhost" / "alice", count)
        timed("listing, first time (UIDs assigned)", lambda: store.listing(ADDRESS, None))
        timed(
            "listing, new store (UID list read back)",
            lambda: MaildirStore(store.mail_root, "b").listing(ADDRESS, None),
        )
        time.sleep(1.1)  # past the settling second, so the next listing may be reused
        store.listing(ADDRESS, None)
        timed("listing, unchanged (reused)", lambda: store.listing(ADDRESS, None))
        select_over_imap(data_dir)


if __name__ == "__main__":
    main()
