"""aiosmtpd as a benchmark peer: ``python bench/aiosmtpd_peer.py (maildir DIR | discard)``.

Listens on 127.0.0.1, an ephemeral port, and prints ``listening PORT``. The ``maildir`` handler
stores each message the way postoffice does before its 250: write ``tmp/NAME``, fsync it,
rename it into ``new/``, fsync ``new/`` (the blocking part runs in a worker thread, so
concurrent sessions overlap their fsyncs). ``discard`` answers 250 and stores nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import maildir_store
from aiosmtpd.smtp import SMTP, Envelope, Session


class DiscardHandler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


class MaildirHandler:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count()
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        await asyncio.to_thread(self._store, content)
        return "250 OK"

    def _store(self, content: bytes) -> None:
        name = f"{int(time.time())}.P{os.getpid()}Q{next(self._counter)}.{self._host}"
        maildir_store.store(self.root, name, content)


async def main(argv: list[str]) -> None:
    handler: Any = MaildirHandler(Path(argv[1])) if argv[0] == "maildir" else DiscardHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.bench.test", data_size_limit=64 * 1024 * 1024),
        "127.0.0.1",
        0,
        backlog=1024,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
