"""The server's transcript log: every command and reply of every session, one line each.

Untrusted input seen here: command lines from SMTP clients (as the session reports them, AUTH
secrets already replaced by ``***``) and the client's address. Every character that is not
printable is written escaped (``\\x1b``), so a client can neither forge a log line with a line
break nor drive the terminal of whoever reads the log. Message contents are never logged.

A line::

    2025-01-31T09:15:02.117+00:00 00002A 192.0.2.7 C MAIL FROM:<alice@example.org>
    2025-01-31T09:15:02.118+00:00 00002A 192.0.2.7 S 250 2.1.0 Ok

Replies are written as the wire shows them to an EHLO client, with their enhanced status
codes. Lines are collected in memory and written by a worker thread at most every
``flush_interval`` seconds (sooner when many are waiting), so a slow disk never stalls the event
loop; if the disk stops taking them, at most ``max_pending`` lines wait and the rest are
counted and reported as dropped. :meth:`reopen` (on SIGHUP) makes the next write reopen the
file, which is how logrotate's ``create`` mode expects a daemon to behave.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from postoffice.smtp.replies import Reply

log = logging.getLogger("postoffice.transcript")

# Written at least this often while lines wait: a person tailing the file sees a session as it
# happens, and a crash loses at most this much.
DEFAULT_FLUSH_INTERVAL = 0.5
# Waiting lines that trigger a write before the interval is up.
FLUSH_BATCH = 512
# Lines held while the disk is not taking them (about 100 octets each: some 10 MB).
DEFAULT_MAX_PENDING = 100_000


def escape(text: str) -> str:
    """``text`` with every non-printable character shown as its Python escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class TranscriptLog:
    """A :class:`~postoffice.net.session.SessionObserver` that appends to a file.

    :meth:`open` before serving (it raises :class:`OSError` if the file cannot be opened),
    :meth:`start` inside the event loop, :meth:`stop` at the end to write what is left.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_pending: int = DEFAULT_MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._clock = clock
        self._file: TextIO | None = None
        self._pending: list[str] = []
        self._dropped = 0
        self._reopen = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._flushing = asyncio.Lock()  # one write at a time, in order

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        self._file = self._open_file()

    def _open_file(self) -> TextIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Line endings written as "\n" on every platform; UTF-8 because SMTPUTF8 addresses are.
        return self.path.open("a", encoding="utf-8", newline="\n")

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="transcript-log")

    def reopen(self) -> None:
        """Reopen the file before the next write (the old one may have been renamed away)."""
        self._reopen = True
        self._nudge()

    async def stop(self) -> None:
        self._stopping = True
        self._nudge()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    # --- SessionObserver ----------------------------------------------------------------------

    def client_said(self, session_id: str, peer: str, line: str) -> None:
        self._add(session_id, peer, "C", line)

    def server_said(self, session_id: str, peer: str, reply: Reply) -> None:
        for line in reply.render(enhanced=True).decode("utf-8", "replace").split("\r\n"):
            if line:
                self._add(session_id, peer, "S", line)

    def _add(self, session_id: str, peer: str, direction: str, text: str) -> None:
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            return
        self._pending.append(
            f"{self._timestamp()} {session_id} {escape(peer) or '-'} {direction} {escape(text)}\n"
        )
        if len(self._pending) >= FLUSH_BATCH:
            self._nudge()

    # --- writing ------------------------------------------------------------------------------

    def _nudge(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write every waiting line (in a worker thread) and, if asked, reopen the file first."""
        async with self._flushing:
            if not self._pending and not self._reopen and not self._dropped:
                return
            lines, self._pending = self._pending, []
            if self._dropped:
                lines.append(
                    f"{self._timestamp()} - - - <{self._dropped} lines dropped: the log could not keep up>\n"
                )
                self._dropped = 0
            reopen, self._reopen = self._reopen, False
            await asyncio.to_thread(self._write, lines, reopen)

    def _timestamp(self) -> str:
        return datetime.datetime.fromtimestamp(self._clock(), datetime.UTC).isoformat(timespec="milliseconds")

    def _write(self, lines: list[str], reopen: bool) -> None:
        try:
            if reopen or self._file is None:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                self._file = self._open_file()
            self._file.write("".join(lines))
            self._file.flush()
        except OSError as exc:
            # The server goes on: a transcript is a convenience, mail is not.
            log.warning("event=transcript-log-error path=%s error=%s lines=%d", self.path, exc, len(lines))
