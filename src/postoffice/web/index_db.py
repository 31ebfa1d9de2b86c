"""The mailbox index's database: one SQLite connection per thread, the write lock, and
opening (migrating, or setting aside a damaged file and rebuilding) the file.

Part of :mod:`postoffice.web.index`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from postoffice.storage import MailboxStore
from postoffice.web.index_schema import migrate

log = logging.getLogger("postoffice.web.index")

# KiB of page cache of the connection that indexes deliveries (SQLite "PRAGMA cache_size"): the
# upper levels of the B-trees every insert walks fit many times over.
PAGE_CACHE_KIB = 256


class IndexDatabase:
    """The database of a :class:`~postoffice.web.index.MailIndex` of ``store``, stored in ``path``."""

    def __init__(self, path: Path, store: MailboxStore, *, authserv_id: str | None = None) -> None:
        """``authserv_id``: the server's host name, whose Authentication-Results fields hold
        the results to keep (web/authresults.py); None keeps none."""
        self.path = path
        self.store = store
        self.authserv_id = authserv_id
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._prepare()

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode = WAL")
        # A cache of the Maildirs: after a power loss the last commits may go, and sync puts
        # them back (SQLite "PRAGMA synchronous": NORMAL is safe from corruption in WAL mode).
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    def keep_cache_small(self) -> None:
        """This thread's connection indexes deliveries: its page cache is PAGE_CACHE_KIB.

        SQLite's default is 2 MB a connection, and indexing 100 KB messages fills it with pages
        nothing reads again (the FTS5 content and its overflow pages); the file's pages stay in
        the kernel's cache, so a miss costs a read(2), not the disk. Readers keep the default:
        a search walks FTS5's doclists, and there the smaller cache cost 2-3x the time."""
        self._db.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB:d}")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the index is closed")
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
            self._connections.clear()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        with self._write_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._create_schema()
        except sqlite3.OperationalError:
            raise  # locked by another process, or cannot be opened: not a damaged file
        except sqlite3.DatabaseError as exc:
            # The file is a cache: a damaged one is set aside and rebuilt from the Maildirs.
            aside = self.path.with_name(self.path.name + ".damaged")
            log.warning("index %s is unusable (%s); moving it to %s and rebuilding", self.path, exc, aside)
            self.close()
            self._closed = False
            self._local = threading.local()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            self._create_schema()

    def _create_schema(self) -> None:
        db = self._db
        with self._write_lock:
            migrate(db)
