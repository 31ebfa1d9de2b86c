"""The web side of several server processes (``serve --workers N``), as the parent sets it up.

Untrusted input seen here: none directly; the index feed it starts parses delivered mail
(:mod:`postoffice.web.feed`).

Before forking, the parent makes what the workers share: the index file (made or checked
once, so two workers never create it at the same moment), the HTTP listening sockets (bound
here, so the banner can name their ports, then served by worker 0) and one stream per worker
for its delivered paths. After forking, each worker keeps only its own part
(:meth:`WorkersWeb.share`), and the parent starts indexing what the streams bring and
following what other programs do to the Maildirs (:mod:`postoffice.web.watch`).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from postoffice.config import Config
from postoffice.storage import MailboxStore
from postoffice.web.feed import IndexFeed, close_all, feed_streams
from postoffice.web.index import MailIndex
from postoffice.web.retention import Retention
from postoffice.web.server import HttpAddress, address_of, bind_http
from postoffice.web.service import INDEX_BATCH, INDEX_LINGER, MAX_BACKLOG, WebShare
from postoffice.web.watch import MaildirWatcher


class WorkersWeb:
    """Made in the parent before the workers are forked; raises OSError (or sqlite3.Error for
    an index that cannot be opened) with nothing left open."""

    def __init__(
        self, config: Config, mailboxes: MailboxStore, *, sockets: Sequence[socket.socket] | None = None
    ) -> None:
        """``mailboxes``: the store the index covers. ``sockets``: the HTTP listeners, bound
        already (before root was given up)."""
        self._config = config
        self._mailboxes = mailboxes
        self._sockets: list[socket.socket] = []
        self._streams: list[tuple[socket.socket, socket.socket]] = []
        self._feed: IndexFeed | None = None
        self._watcher: MaildirWatcher | None = None
        self._retention: Retention | None = None
        self.addresses: list[HttpAddress] = []
        if not config.http_listeners:
            return
        MailIndex(config.index_file, mailboxes).close()
        try:
            if sockets is not None:
                self._sockets = list(sockets)
            else:
                for listener in config.http_listeners:
                    self._sockets.append(bind_http(listener.host, listener.port, kind=listener.kind))
            self._streams = feed_streams(config.worker_count)
        except BaseException:
            self.close()
            raise
        # Named in the banner, which the parent prints after handing the sockets over.
        self.addresses = [
            address_of(sock, listener.kind)
            for listener, sock in zip(config.http_listeners, self._sockets, strict=True)
        ]

    def share(self, index: int) -> WebShare | None:
        """In worker ``index``, after the fork: its part, with everything else closed."""
        if not self._streams:
            return None
        serves = index == 0
        if not serves:
            close_all(self._sockets)
        close_all(own for own, _ in self._streams)
        close_all(end for number, (_, end) in enumerate(self._streams) if number != index)
        return WebShare(
            feed=self._streams[index][1],
            serves=serves,
            sockets=tuple(self._sockets) if serves else (),
        )

    def start_indexing(self) -> None:
        """In the parent, once every worker is forked (a process forked while a thread runs may
        inherit a lock that thread held): index what the workers deliver."""
        close_all(self._sockets)  # worker 0 serves them now
        close_all(end for _, end in self._streams)  # so that a worker's exit ends its stream
        if self._streams:
            self._feed = IndexFeed(
                MailIndex(self._config.index_file, self._mailboxes, authserv_id=self._config.hostname),
                [own for own, _ in self._streams],
                batch=INDEX_BATCH,
                linger=INDEX_LINGER,
                max_backlog=MAX_BACKLOG,
            )
            self._feed.start()
            # One watcher per index, beside the one writer: worker 0 announces what it
            # journals (web/service.py).
            self._watcher = MaildirWatcher(self._feed.index)
            self._watcher.start()
            # [retention] too: its deletions are journalled, and worker 0 announces them.
            self._retention = Retention(self._feed.index, self._config.retention)
            self._retention.start()

    def close(self) -> None:
        """In the parent, once every worker has stopped: index what they sent last."""
        if self._retention is not None:
            self._retention.stop()
            self._retention = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._feed is not None:
            self._feed.stop()
            self._feed = None
        close_all(self._sockets)
        close_all(end for pair in self._streams for end in pair)
