"""The web side as one service: index, event hub, sessions and the HTTP server, started and
stopped together by the composition root.

Untrusted input seen here: the messages local delivery stored (through the mailbox store) and,
through the parts it builds, everything the HTTP side sees.

Deliveries are indexed as they happen (``delivered`` is local delivery's ``on_delivered``
hook) and announced on the event stream. At start the index is reconciled with the Maildirs
in the background, so mail that arrived, moved or went while the server was down (or was
changed by mutt or Dovecot) is right without a manual ``postoffice reindex``.

Indexing runs behind delivery, never in its way: delivered messages wait in a bounded backlog
that one task drains in batches (one SQLite transaction each). When mail arrives faster than
the index takes it for long enough to fill the backlog, further messages are not queued (memory
stays flat under any load) and the index is reconciled with the Maildirs once the backlog is
empty, which finds them.

What other programs do to the Maildirs (Dovecot marking a message seen or expunging it, a
file dropped into ``new/``) is followed as it happens by the process holding the index
(:mod:`postoffice.web.watch`) and announced too.

With several server processes (``serve --workers N``) the parent indexes what every worker
delivers (:mod:`postoffice.web.feed`) and watches the Maildirs, and worker 0 serves HTTP
(:class:`WebShare`). It sees no delivery happen, so it follows the index instead: new rows and
the index's journal of changes followed from the disk are announced from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starlette.routing import BaseRoute, Route

from postoffice.accounts import Accounts
from postoffice.config import Config
from postoffice.logins import Logins
from postoffice.mailauth.mta_sts import our_policy
from postoffice.storage import MailboxStore, StoredMessage
from postoffice.web.api import WebContext, summary_json
from postoffice.web.auth import Authenticator
from postoffice.web.events import Event, EventHub
from postoffice.web.feed import FeedWriter
from postoffice.web.index import Change, MailIndex, Row, SyncReport
from postoffice.web.mcp_http import McpEndpoint
from postoffice.web.mta_sts import with_policy
from postoffice.web.retention import Retention
from postoffice.web.server import HttpAddress, HttpServer
from postoffice.web.site import create_app
from postoffice.web.toolkit import Toolkit
from postoffice.web.watch import MaildirWatcher

log = logging.getLogger("postoffice.web")

# Worker threads for index and Maildir work (each keeps one SQLite connection): enough for
# reads to go on while a delivery is indexed, few enough to leave the cores to SMTP.
WORKERS = 4
# Delivered messages waiting to be indexed, at most (a few MB); beyond it a sync catches up.
MAX_BACKLOG = 20_000
# Messages indexed in one transaction.
INDEX_BATCH = 256
# How long indexing waits for more deliveries before a batch smaller than INDEX_BATCH: a
# transaction and a hand-off to a worker thread cost about as much as indexing a small message,
# and a person looking at the list does not see 50 ms.
INDEX_LINGER = 0.05
# The thread that indexes deliveries: one connection (one page cache) does that writing and one
# malloc arena holds its 100 KB buffers, where each of the WORKERS threads that took a batch grew
# a cache and an arena of its own. The start-up reconciliation runs beside it, in the WORKERS
# threads, so a long one never holds new mail back.
INDEX_THREAD = "postoffice-web-index"
# How long a worker gathers delivered messages before sending them to the indexing process.
FEED_LINGER = 0.01
# How often the process serving HTTP among workers looks for rows the others added, while
# someone has the event stream open.
FOLLOW_INTERVAL = 0.1
# Rows announced per look.
FOLLOW_BATCH = 500


@dataclass(frozen=True)
class WebShare:
    """One worker's part in the web side when several share a data directory.

    ``feed``: where it sends what it delivers, to the process that indexes them
    (and reconciles the index at start; :mod:`postoffice.web.feed`). ``serves``: this one
    serves HTTP on ``sockets`` (made and bound by the parent, so the banner can name them)
    and announces every worker's deliveries, following the index.
    """

    feed: socket.socket
    serves: bool
    sockets: tuple[socket.socket, ...] = ()


def open_access(config: Config) -> bool:
    """No login needed: capture mode, and every HTTP listener on loopback."""
    return config.capture_mode and all(listener.is_loopback for listener in config.http_listeners)


def change_event(change: Change) -> Event:
    """The event announcing ``change``, as the API announces its own changes."""
    if change.kind == "new" and change.row is not None:
        return Event("new", change.mailbox, summary_json(change.row))
    if change.kind == "updated":
        return Event(
            "updated", change.mailbox, {"id": change.id, "mailbox": change.mailbox, "read": change.seen}
        )
    return Event("deleted", change.mailbox, {"id": change.id, "mailbox": change.mailbox})


class WebService:
    def __init__(
        self,
        config: Config,
        accounts: Accounts,
        mailboxes: MailboxStore,
        *,
        extra_routes: Sequence[BaseRoute] = (),
        share: WebShare | None = None,
        sockets: Sequence[socket.socket] | None = None,
        tls: ssl.SSLContext | None = None,
        toolkit: Toolkit | None = None,
        logins: Logins | None = None,
    ) -> None:
        """``share`` None: this process is the whole server. ``sockets``: the whole server's
        listeners, bound already (before root was given up); None: it binds its own. ``tls``:
        the server's context (:class:`postoffice.net.tls.ServerTls`), for ``[listen] https``.
        ``logins``: where sessions are kept (default this process's memory)."""
        self.config = config
        self.executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="postoffice-web")
        self.index = MailIndex(config.index_file, mailboxes, authserv_id=config.hostname)
        self._indexing = ThreadPoolExecutor(
            1, thread_name_prefix=INDEX_THREAD, initializer=self.index.keep_cache_small
        )
        self.hub = EventHub()
        self.auth = Authenticator(accounts, mailboxes, open_access=open_access(config), logins=logins)
        self.context = WebContext(
            self.index,
            self.hub,
            self.auth,
            self.executor,
            chaos=toolkit.chaos if toolkit is not None else None,
            release=toolkit.release if toolkit is not None else None,
        )
        self.mcp = McpEndpoint(open_access=self.auth.open_access)
        routes = [*extra_routes, Route("/mcp", self.mcp, methods=["GET", "POST", "DELETE"])]
        self.app = with_policy(
            create_app(self.context, extra_routes=routes, loopback_only=self.auth.open_access),
            our_policy(config),
            config.domains,
        )
        self.serves = share is None or share.serves
        # A worker's deliveries are indexed elsewhere: the one serving follows the index.
        self._follows = share is not None and share.serves
        self.http = HttpServer(
            self.app,
            [(listener.host, listener.port) for listener in config.http_listeners],
            sockets=share.sockets if share is not None else sockets,
            secure=[listener.kind == "https" for listener in config.http_listeners],
            tls=tls,
        )
        self._feed = FeedWriter(share.feed) if share is not None else None
        self._follower: asyncio.Task[None] | None = None
        self.watcher: MaildirWatcher | None = None
        self.retention: Retention | None = None
        self.addresses: list[HttpAddress] = []
        self._backlog: deque[StoredMessage] = deque()
        self._overflowed = False
        self._indexer: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._sync: asyncio.Future[SyncReport] | None = None

    async def start(self) -> list[HttpAddress]:
        loop = asyncio.get_running_loop()
        if self.serves:
            # First: a taken port (ListenError) is reported before any work has started.
            self.addresses = await self.http.start()
        if self._feed is None:
            # Watching first: a change made while the sync runs is followed too.
            self.watcher = MaildirWatcher(self.index, announce=functools.partial(self._announce, loop))
            self.watcher.start()
            self._sync = loop.run_in_executor(
                self.executor, functools.partial(self.index.sync, stop=self._stopping.is_set)
            )
            self._sync.add_done_callback(self._synced)
            self.retention = Retention(
                self.index, self.config.retention, functools.partial(self._announce, loop)
            )
            self.retention.start()
        if not self.serves:
            return []
        if self._follows:
            self._follower = loop.create_task(self._follow(), name="postoffice-index-follower")
        if self.addresses:
            first = self.addresses[0]
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(first.host, first.host)
            await self.mcp.start(f"http://{f'[{host}]' if ':' in host else host}:{first.port}")
        return self.addresses

    @property
    def synced(self) -> bool:
        """The index has been reconciled with the Maildirs since start."""
        return self._sync is not None and self._sync.done() and not self._sync.cancelled()

    @staticmethod
    def _synced(future: asyncio.Future[SyncReport]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.error("event=index-sync status=failed error=%r", str(error))
            return
        report = future.result()
        log.info(
            "event=index-sync mailboxes=%d added=%d removed=%d updated=%d",
            report.mailboxes,
            report.added,
            report.removed,
            report.updated,
        )

    def _announce(self, loop: asyncio.AbstractEventLoop, changes: Sequence[Change]) -> None:
        """The watcher's hook (in its thread): announce what it followed, on the event loop."""
        events = [change_event(change) for change in changes]
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            loop.call_soon_threadsafe(self._publish, events)

    def _publish(self, events: Sequence[Event]) -> None:
        for event in events:
            self.hub.publish(event)

    def delivered(self, stored: StoredMessage) -> None:
        """Local delivery's hook: index the new copy and announce it (on the event loop)."""
        if len(self._backlog) < MAX_BACKLOG:
            self._backlog.append(stored)
        elif not self._overflowed:
            self._overflowed = True
            log.warning("event=index-behind backlog=%d action=resync-when-drained", len(self._backlog))
        if self._indexer is None or self._indexer.done():
            self._indexer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._backlog or self._overflowed:
            if not self._backlog:
                self._overflowed = False
                await self._catch_up(loop)
                continue
            if len(self._backlog) < INDEX_BATCH and not self._stopping.is_set():
                # Handing messages to the indexing process is cheap: it batches them itself.
                await asyncio.sleep(INDEX_LINGER if self._feed is None else FEED_LINGER)
            batch = [self._backlog.popleft() for _ in range(min(INDEX_BATCH, len(self._backlog)))]
            if self._feed is not None:
                try:
                    await self._feed.send(batch)
                except OSError as exc:
                    # The indexing process is gone (the server is stopping); the messages are
                    # safe in their Maildirs, and the next start's reconciliation indexes them.
                    log.warning("event=index-feed status=closed error=%r", exc.strerror or str(exc))
                    self._backlog.clear()
                    self._overflowed = False
                continue
            try:
                rows = await loop.run_in_executor(self._indexing, self.index.add_many, batch)
            except Exception:
                # The messages are safe in their Maildirs; the next sync indexes them.
                log.exception("event=index-add status=failed messages=%d", len(batch))
                continue
            if self.hub.subscribers:  # an event nobody would get is not worth its JSON
                for row in rows:
                    self.hub.publish(Event("new", row.mailbox, summary_json(row)))

    async def _catch_up(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._feed is not None:
            with contextlib.suppress(OSError):
                await self._feed.request_sync()
            return

        def announce(row: Row) -> None:
            loop.call_soon_threadsafe(self.hub.publish, Event("new", row.mailbox, summary_json(row)))

        sync = functools.partial(self.index.sync, on_added=announce, stop=self._stopping.is_set)
        try:
            report = await loop.run_in_executor(self._indexing, sync)
        except Exception:
            log.exception("event=index-sync status=failed")
            return
        log.info("event=index-sync reason=backlog added=%d", report.added)

    async def _follow(self) -> None:
        """Announce rows new to the index, whichever process added them, and the changes the
        index journalled as it followed the Maildirs.

        While nobody listens only the newest id and journal entry are read, so a stream opened
        later starts from what came after the last look (the UI ignores an id it already lists).
        """
        loop = asyncio.get_running_loop()
        since: tuple[int, int] | None = None
        while not self._stopping.is_set():
            try:
                if since is None or not self.hub.subscribers:
                    since = await loop.run_in_executor(self.executor, self._follow_from)
                else:
                    since, events, more = await loop.run_in_executor(self.executor, self._news, since)
                    self._publish(events)
                    if more:
                        continue  # more are waiting
            except Exception:
                log.exception("event=index-follow status=failed")
            await asyncio.sleep(FOLLOW_INTERVAL)

    def _follow_from(self) -> tuple[int, int]:
        return self.index.last_id(), self.index.last_change()

    def _news(self, since: tuple[int, int]) -> tuple[tuple[int, int], list[Event], bool]:
        """Events for rows and journalled changes after ``since``; where they end; more waiting."""
        last_id, last_change = since
        rows = self.index.rows_after(last_id, FOLLOW_BATCH)
        changes = self.index.changes_after(last_change, FOLLOW_BATCH)
        events = [Event("new", row.mailbox, summary_json(row)) for row in rows]
        events += [change_event(change) for _, change in changes]
        if rows:
            last_id = rows[-1].id
        if changes:
            last_change = changes[-1][0]
        return (last_id, last_change), events, FOLLOW_BATCH in (len(rows), len(changes))

    async def idle(self) -> None:
        """Until every delivery so far is indexed (and the start-up sync is done)."""
        while self._indexer is not None and not self._indexer.done():
            await asyncio.wait([self._indexer])
        if self._sync is not None:
            await asyncio.wait([self._sync])

    async def stop(self) -> None:
        self._stopping.set()
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.stop)
        if self.retention is not None:
            await asyncio.to_thread(self.retention.stop)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.mcp.stop()
        self.hub.close()
        await self.http.stop()
        await self.idle()
        if self._feed is not None:
            self._feed.close()  # the indexing process reads to here, then finishes
        self._indexing.shutdown(wait=True)
        self.executor.shutdown(wait=True)
        self.index.close()
