"""Delivered messages from worker processes to the one process that indexes them.

Untrusted input seen here: the delivered messages, which the index parses (through
:mod:`postoffice.web.message`). Each stream carries the messages one worker delivered itself,
one JSON array per line (:class:`~postoffice.storage.StoredMessage`'s fields), and the store
checks each again when the index reads it (a location names a file inside its mailbox only).

With ``serve --workers N`` one writer keeps the web index. Workers that each indexed their own
deliveries measured slower than one process alone: an indexing thread holds its worker's
interpreter lock while the event loop waits for it, and two SQLite writers each find the other's
commit at their next transaction and read the changed pages again. The parent process, which
otherwise only waits for its workers, indexes for all of them instead: every worker streams its
delivered messages over a socket of its own, and one thread in the parent reads them all and adds
them in batches, as a single process does (:mod:`postoffice.web.service`). Worker 0 serves
HTTP and announces new rows as it finds them in the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Sequence

from postoffice.storage import StoredMessage
from postoffice.web.index import MailIndex

log = logging.getLogger("postoffice.web")

# A worker that fell too far behind asks for a reconciliation with the Maildirs instead.
SYNC_REQUEST = b"!sync"
# Octets read from a stream at a time.
_READ_SIZE = 256 * 1024


def _lines(delivered: Iterable[StoredMessage]) -> bytes:
    # JSON escapes control characters: each message is one line, whatever its names hold.
    return b"".join(
        json.dumps([m.mailbox, m.key, m.location, m.flags, m.received]).encode() + b"\n" for m in delivered
    )


def _parse(line: bytes) -> StoredMessage | None:
    """The message a line names; None for a line that is not one (logged)."""
    try:
        mailbox, key, location, flags, received = json.loads(line)
        if not all(isinstance(text, str) for text in (mailbox, key, location, flags)):
            raise TypeError("not text")
        return StoredMessage(mailbox, key, location, flags, float(received))
    except (ValueError, TypeError) as exc:
        log.warning("event=index-feed status=bad-line error=%r", str(exc))
        return None


class FeedWriter:
    """A worker's end: hands delivered messages to the indexing process."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    async def send(self, delivered: Sequence[StoredMessage]) -> None:
        """Send ``delivered``; waits (without blocking the loop) while the reader is behind."""
        data = _lines(delivered)
        if data:
            await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def request_sync(self) -> None:
        await asyncio.get_running_loop().sock_sendall(self._sock, SYNC_REQUEST + b"\n")

    def close(self) -> None:
        self._sock.close()


class IndexFeed:
    """The indexing process's end: one thread reading every worker's stream into the index.

    It reconciles the index with the Maildirs first (as a single process does at start), then
    adds what the workers deliver in batches of up to ``batch`` messages, waiting up to ``linger``
    seconds for a batch to fill. It ends once every worker has closed its stream (they have
    stopped) and all they sent is indexed, or when :meth:`stop` runs out of patience.
    """

    def __init__(
        self,
        index: MailIndex,
        streams: Sequence[socket.socket],
        *,
        batch: int,
        linger: float,
        max_backlog: int,
    ) -> None:
        self.index = index
        self._streams = list(streams)
        self._batch = batch
        self._linger = linger
        self._max_backlog = max_backlog
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="postoffice-index-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what the stopped workers sent (a reconciliation under way ends early)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for stream in self._streams:
            stream.close()
        self.index.close()

    def _run(self) -> None:
        try:
            self.index.keep_cache_small()
            self._sync("start")
            self._follow_streams()
        except Exception:
            log.exception("event=index-feed status=failed")

    def _sync(self, reason: str) -> None:
        report = self.index.sync(stop=self._stopping.is_set)
        log.info(
            "event=index-sync reason=%s mailboxes=%d added=%d removed=%d updated=%d",
            reason,
            report.mailboxes,
            report.added,
            report.removed,
            report.updated,
        )

    def _follow_streams(self) -> None:
        selector = selectors.DefaultSelector()
        partial: dict[socket.socket, bytes] = {}
        for each in self._streams:
            each.setblocking(False)
            selector.register(each, selectors.EVENT_READ, each)
            partial[each] = b""
        pending: list[StoredMessage] = []
        overflowed = False
        sync_wanted = False
        due: float | None = None  # when the batch waiting in ``pending`` is written anyway
        with selector:
            while partial or pending or sync_wanted:
                if pending and due is None:
                    due = time.monotonic() + self._linger
                wait = None if due is None else max(0.0, due - time.monotonic())
                for key, _ in selector.select(wait if partial else 0):
                    stream: socket.socket = key.data
                    try:
                        data = stream.recv(_READ_SIZE)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # the worker is gone
                        selector.unregister(stream)
                        del partial[stream]
                        continue
                    *lines, partial[stream] = (partial[stream] + data).split(b"\n")
                    for line in lines:
                        if line == SYNC_REQUEST:
                            sync_wanted = True
                        elif len(pending) < self._max_backlog:
                            stored = _parse(line)
                            if stored is not None:
                                pending.append(stored)
                        elif not overflowed:
                            overflowed = True
                            log.warning(
                                "event=index-behind backlog=%d action=resync-when-drained", len(pending)
                            )
                if pending and due is None:
                    due = time.monotonic() + self._linger
                full = len(pending) >= self._batch
                if pending and (full or not partial or time.monotonic() >= (due or 0.0)):
                    batch, pending = pending[: self._batch], pending[self._batch :]
                    self._add(batch)
                    due = None
                if not pending and (overflowed or sync_wanted):
                    overflowed = sync_wanted = False
                    self._sync("backlog")

    def _add(self, batch: list[StoredMessage]) -> None:
        try:
            self.index.add_many(batch)
        except Exception:
            # The messages are safe in their Maildirs; the next reconciliation indexes them.
            log.exception("event=index-add status=failed messages=%d", len(batch))


def feed_streams(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """One connected pair per worker: (the indexing process's end, the worker's end)."""
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(count):
            pairs.append(socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    except OSError:
        for pair in pairs:
            for end in pair:
                end.close()
        raise
    return pairs


def close_all(sockets: Iterable[socket.socket]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()
