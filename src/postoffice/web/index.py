"""The mailbox index: an SQLite database (WAL, FTS5) of what a mailbox store holds.

Untrusted input seen here: message contents (through :mod:`postoffice.web.message`), the
locations (Maildir file names) that other programs create and rename, and search queries
(through :mod:`postoffice.web.search`, which binds every value). No SQL text here is ever built
from anything but constants.

The mailboxes are the truth and this is a cache of them, reached only through the
:class:`~postoffice.storage.MailboxStore` protocol (Maildirs by default): :meth:`MailIndex.add`
records a message at delivery, :meth:`MailIndex.sync` reconciles the index with the store
(messages added, moved or removed by mutt, Dovecot or a person), the watcher applies such
changes as they happen (:mod:`postoffice.web.watch`, through :meth:`MailIndex.apply_followed`),
and a message that moved behind the index's back is found again by its key the moment someone
asks for it.

One database file, ``<data_dir>/index.sqlite3``. WAL lets the HTTP handlers read while a
delivery writes (SQLite "Write-Ahead Logging" §2.2). Each thread gets its own connection;
writes in this process are serialised by a lock, and ``busy_timeout`` waits for a writer in
another process (``postoffice reindex`` while the server runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from postoffice.errors import MessageGone
from postoffice.storage import MailboxStore, StoredMessage
from postoffice.web import authresults, message
from postoffice.web.authresults import Authentication
from postoffice.web.search import TEXT_TABLE, Compiled, mailbox_token, within_mailboxes

log = logging.getLogger("postoffice.web.index")

# Bumped whenever the schema or what is indexed changes: an older index is rebuilt from disk,
# except that one of version 3 first gains the snippet column in place (_add_snippets), one of
# version 4 then the change journal, and one of version 5 then the authentication results
# (_add_auth): ids stay, links keep working.
SCHEMA_VERSION = 6
# The version that added messages.snippet.
SNIPPET_SCHEMA = 4
# The version that added the changes table (the journal of changes followed from the disk).
JOURNAL_SCHEMA = 5
# The version that added the authentication results (messages.auth and the auth_* columns).
AUTH_SCHEMA = 6
# Rows written per transaction while syncing: large enough to amortise the commit, small
# enough that a delivery waiting for the lock never waits long.
SYNC_BATCH = 200
# The most rows one page may ask for.
MAX_PAGE = 500
# Characters of message text parsed and held before they are written: a batch of long
# messages is written in several transactions, so memory stays flat whatever the batch size.
PREPARED_TEXT_BUDGET = 1024 * 1024
# Entries the change journal keeps: a follower that falls further behind than this misses some
# announcements (the list it reloads is right either way).
JOURNAL_KEEP = 10_000
# Keys named in one query (SQLite's limit on bound values was 999 before 3.32).
KEYS_PER_QUERY = 500

# The statements a migration runs by themselves too (each IF NOT EXISTS).
_CHANGES_TABLE = """CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id INTEGER NOT NULL,
    mailbox TEXT NOT NULL,
    seen INTEGER NOT NULL
)"""
_AUTH_INDEX = (
    "CREATE INDEX IF NOT EXISTS messages_by_auth"
    " ON messages (mailbox, auth_verdict, auth_dmarc, auth_spf, auth_dkim, auth_arc)"
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS mailboxes (
    address TEXT PRIMARY KEY,
    total INTEGER NOT NULL DEFAULT 0,
    unread INTEGER NOT NULL DEFAULT 0
);
-- AUTOINCREMENT: an id is never reused, so a stale link can never open a different message.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox TEXT NOT NULL,
    key TEXT NOT NULL,
    location TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    date REAL,
    received REAL NOT NULL,
    size INTEGER NOT NULL,
    seen INTEGER NOT NULL,
    has_attachments INTEGER NOT NULL,
    snippet TEXT NOT NULL DEFAULT '',
    -- The results of our Authentication-Results field as JSON (web/authresults.py), NULL for
    -- none; the auth_* columns are what search compares (Authentication.columns).
    auth TEXT,
    auth_verdict TEXT NOT NULL DEFAULT 'none',
    auth_spf TEXT NOT NULL DEFAULT '',
    auth_dkim TEXT NOT NULL DEFAULT '',
    auth_dmarc TEXT NOT NULL DEFAULT '',
    auth_arc TEXT NOT NULL DEFAULT '',
    UNIQUE (mailbox, key)
);
-- Newest first is id order: ids follow arrival (see MailIndex.page). An index ends with the
-- rowid, so this one lists a mailbox newest first without sorting.
CREATE INDEX IF NOT EXISTS messages_by_mailbox ON messages (mailbox);
-- Counting by flags, dates and sizes reads only this index, never the rows.
CREATE INDEX IF NOT EXISTS messages_by_flags ON messages (mailbox, seen, has_attachments, received, size);
-- Counting by authentication results (auth:fail, dmarc:pass) reads only this index, too.
{_AUTH_INDEX};
CREATE VIRTUAL TABLE IF NOT EXISTS messages_text USING fts5 (
    sender, recipients, subject, body, mailbox, tokenize = "unicode61 remove_diacritics 2"
);
-- Counts kept by triggers: listing mailboxes never scans messages.
CREATE TRIGGER IF NOT EXISTS messages_added AFTER INSERT ON messages BEGIN
    INSERT INTO mailboxes (address, total, unread) VALUES (new.mailbox, 1, new.seen = 0)
    ON CONFLICT (address) DO UPDATE SET total = total + 1, unread = unread + (new.seen = 0);
END;
CREATE TRIGGER IF NOT EXISTS messages_removed AFTER DELETE ON messages BEGIN
    UPDATE mailboxes SET total = total - 1, unread = unread - (old.seen = 0) WHERE address = old.mailbox;
    DELETE FROM messages_text WHERE rowid = old.id;
END;
CREATE TRIGGER IF NOT EXISTS messages_flagged AFTER UPDATE OF seen ON messages BEGIN
    UPDATE mailboxes SET unread = unread - (old.seen = 0) + (new.seen = 0) WHERE address = new.mailbox;
END;
-- Read-state changes and deletions followed from the disk, in order: the process serving HTTP
-- among workers announces them from here (new messages it finds by id). AUTOINCREMENT: a
-- sequence number is never reused, so pruning old entries never hides a new one.
{_CHANGES_TABLE};
"""
# The columns schema 6 added, as _SCHEMA defines them.
_AUTH_COLUMNS = (
    ("auth", "TEXT"),
    ("auth_verdict", "TEXT NOT NULL DEFAULT 'none'"),
    ("auth_spf", "TEXT NOT NULL DEFAULT ''"),
    ("auth_dkim", "TEXT NOT NULL DEFAULT ''"),
    ("auth_dmarc", "TEXT NOT NULL DEFAULT ''"),
    ("auth_arc", "TEXT NOT NULL DEFAULT ''"),
)

_COLUMNS = (
    "id, mailbox, key, location, sender, recipients, subject, date, received, size, seen, has_attachments,"
    " snippet, auth"
)
# The columns a message's file gives its row (all but id, mailbox and key), as _content orders them.
_CONTENT_COLUMNS = (
    "location",
    "sender",
    "recipients",
    "subject",
    "date",
    "received",
    "size",
    "seen",
    "has_attachments",
    "snippet",
    *(name for name, _ in _AUTH_COLUMNS),
)
_INSERT = (
    f"INSERT INTO messages (mailbox, key, {', '.join(_CONTENT_COLUMNS)})"
    f" VALUES (?, ?, {', '.join('?' * len(_CONTENT_COLUMNS))}) ON CONFLICT (mailbox, key) DO NOTHING"
)
_UPDATE = f"UPDATE messages SET {', '.join(f'{name} = ?' for name in _CONTENT_COLUMNS)} WHERE id = ?"


@dataclass(frozen=True, slots=True)
class Row:
    """One indexed message."""

    id: int
    mailbox: str
    key: str
    location: str
    sender: str
    recipients: str
    subject: str
    date: float | None
    received: float
    size: int
    seen: bool
    has_attachments: bool
    # The start of the body text, for the list (message.snippet); made from SearchText.body
    # when the row is written.
    snippet: str = ""
    # The results of our Authentication-Results field; None when the message has none.
    auth: Authentication | None = None


@dataclass(frozen=True, slots=True)
class SearchText:
    """What full-text search sees of a message beyond its row: all recipients and the body."""

    recipients: str
    body: str


@dataclass(frozen=True, slots=True)
class MailboxCount:
    address: str
    total: int
    unread: int


@dataclass(frozen=True, slots=True)
class Page:
    total: int
    rows: list[Row]


@dataclass(frozen=True, slots=True)
class Change:
    """A change the index followed from the disk, to announce: ``kind`` is "new" (``row`` is
    the new row), "updated" (``seen`` is the read state now) or "deleted"."""

    kind: str
    id: int
    mailbox: str
    seen: bool
    row: Row | None = None

    @classmethod
    def new(cls, row: Row) -> Change:
        return cls("new", row.id, row.mailbox, row.seen, row)


@dataclass(frozen=True, slots=True)
class SyncReport:
    mailboxes: int
    added: int
    removed: int
    updated: int


def _row(values: Sequence[object]) -> Row:
    (
        id_,
        mailbox,
        key,
        location,
        sender,
        recipients,
        subject,
        date,
        received,
        size,
        seen,
        attached,
        snippet,
        auth,
    ) = values
    return Row(
        id=int(id_),  # type: ignore[call-overload]
        mailbox=str(mailbox),
        key=str(key),
        location=str(location),
        sender=str(sender),
        recipients=str(recipients),
        subject=str(subject),
        date=float(date) if date is not None else None,  # type: ignore[arg-type]
        received=float(received),  # type: ignore[arg-type]
        size=int(size),  # type: ignore[call-overload]
        seen=bool(seen),
        has_attachments=bool(attached),
        snippet=str(snippet),
        auth=authresults.loads(auth),
    )


def _content(row: Row, snippet: str) -> tuple[object, ...]:
    """The values of _CONTENT_COLUMNS for ``row``."""
    columns = row.auth.columns() if row.auth is not None else authresults.NO_COLUMNS
    return (
        row.location,
        row.sender,
        row.recipients,
        row.subject,
        row.date,
        row.received,
        row.size,
        int(row.seen),
        int(row.has_attachments),
        snippet,
        authresults.dumps(row.auth),
        *columns,
    )


def _snippet_of(body: object) -> str:
    return message.snippet(body) if isinstance(body, str) else ""


class MailIndex:
    """The index of every mailbox of ``store``, stored in ``path``."""

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
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == SNIPPET_SCHEMA - 1:
                self._add_snippets(db)
                version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == JOURNAL_SCHEMA - 1:
                db.execute(_CHANGES_TABLE)  # IF NOT EXISTS: whoever comes second finds it there
                db.execute(f"PRAGMA user_version = {JOURNAL_SCHEMA:d}")
                version = JOURNAL_SCHEMA
            if version == AUTH_SCHEMA - 1:
                self._add_auth(db)
                version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return  # nothing to write: workers opening one index at once never wait here
            if version not in (0, SCHEMA_VERSION):
                db.executescript(
                    "DROP TABLE IF EXISTS messages; DROP TABLE IF EXISTS mailboxes;"
                    " DROP TABLE IF EXISTS messages_text; DROP TABLE IF EXISTS changes;"
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    @staticmethod
    def _add_snippets(db: sqlite3.Connection) -> None:
        """Schema 3 to 4: add the snippet column, made from the body text the index holds.

        A migration rather than a rebuild: ids stay, so links to messages keep working, and
        no message is parsed again. Another process may be doing the same: the version is
        read again once this one holds the write lock, and whoever comes second finds it done.
        """
        db.create_function("postoffice_snippet", 1, _snippet_of, deterministic=True)
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] == SNIPPET_SCHEMA - 1:
                db.execute("ALTER TABLE messages ADD COLUMN snippet TEXT NOT NULL DEFAULT ''")
                db.execute(
                    f"UPDATE messages SET snippet = postoffice_snippet("
                    f"(SELECT body FROM {TEXT_TABLE} WHERE {TEXT_TABLE}.rowid = messages.id))"
                )
                db.execute(f"PRAGMA user_version = {SNIPPET_SCHEMA:d}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @staticmethod
    def _add_auth(db: sqlite3.Connection) -> None:
        """Schema 5 to 6: add the authentication result columns, empty for every message.

        No message is read again: the server wrote no Authentication-Results field of its own
        before this version, so mail indexed then has no results to find (and a field naming
        our host name in it is a forgery). ``postoffice reindex --full`` reads them all anyway.
        As in _add_snippets, a second process finds the work done.
        """
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] == AUTH_SCHEMA - 1:
                present = {str(column[1]) for column in db.execute("PRAGMA table_info(messages)")}
                for name, definition in _AUTH_COLUMNS:
                    if name not in present:
                        db.execute(f"ALTER TABLE messages ADD COLUMN {name} {definition}")
                db.execute(_AUTH_INDEX)
                db.execute(f"PRAGMA user_version = {AUTH_SCHEMA:d}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------------

    def mailbox_name(self, address: str) -> str:
        """The name the index knows ``address``'s mailbox by (``Ann@Example.TEST`` is
        ``ann@example.test``); ``address`` itself if it names no mailbox."""
        return self.store.mailbox_name(address) or address

    def add(self, stored: StoredMessage) -> Row | None:
        """Index a delivered message.

        Returns the new row, or None if it was indexed already (a delivery found again while
        recovering) or is gone.
        """
        rows = self.add_many([stored])
        return rows[0] if rows else None

    def add_many(self, delivered: Sequence[StoredMessage]) -> list[Row]:
        """Index several delivered messages in one transaction; returns the rows that are new.

        Parsing happens before the write lock is taken, so readers and other writers wait
        only for the inserts. The Maildir watcher may have indexed one first (when indexing
        fell behind): a look up by key costs far less than parsing the message again.
        """
        return self._insert_prepared(
            self._prepare_message(stored)
            for stored in delivered
            if not self._knows(stored.mailbox, stored.key)
        )

    def _knows(self, address: str, key: str) -> bool:
        found = self._db.execute("SELECT 1 FROM messages WHERE mailbox = ? AND key = ?", (address, key))
        return found.fetchone() is not None

    def _insert_prepared(self, items: Iterable[tuple[Row, SearchText] | None]) -> list[Row]:
        """Insert what ``items`` prepares, in one transaction unless their texts together
        pass PREPARED_TEXT_BUDGET (then in several, holding no more than that at a time)."""
        rows: list[Row] = []
        prepared: list[tuple[Row, SearchText]] = []
        held = 0
        for item in items:
            if item is None:
                continue
            prepared.append(item)
            held += len(item[1].body)
            if held >= PREPARED_TEXT_BUDGET:
                rows += self.insert_many(prepared)
                prepared, held = [], 0
        return rows + self.insert_many(prepared)

    def _prepare_message(self, stored: StoredMessage) -> tuple[Row, SearchText] | None:
        try:
            with self.store.read(stored) as stream:
                size = stream.seek(0, os.SEEK_END)
                stream.seek(0)
                summary = message.summarise_stream(stream)
        except MessageGone:
            return None
        except OSError as exc:
            log.warning("cannot index %s %s: %s", stored.mailbox, stored.location, exc.strerror)
            return None
        row = Row(
            id=0,
            mailbox=stored.mailbox,
            key=stored.key,
            location=stored.location,
            sender=summary.sender,
            recipients=summary.recipients,
            subject=summary.subject,
            date=summary.date,
            received=stored.received,
            size=size,
            seen=stored.seen,
            has_attachments=summary.has_attachments,
            auth=authresults.ours(summary.auth_results, self.authserv_id) if self.authserv_id else None,
        )
        return row, SearchText(f"{summary.recipients} {summary.delivered_to}".strip(), summary.text)

    def _insert(self, db: sqlite3.Connection, row: Row, text: SearchText) -> Row | None:
        snippet = message.snippet(text.body)
        cursor = db.execute(_INSERT, (row.mailbox, row.key, *_content(row, snippet)))
        if cursor.rowcount == 0:
            return None
        new_id = cursor.lastrowid
        assert new_id is not None
        db.execute(
            "INSERT INTO messages_text (rowid, sender, recipients, subject, body, mailbox) VALUES (?, ?, ?, ?, ?, ?)",
            (new_id, row.sender, text.recipients, row.subject, text.body, mailbox_token(row.mailbox)),
        )
        return dataclasses.replace(row, id=new_id, snippet=snippet)

    def insert_many(self, items: Sequence[tuple[Row, SearchText]]) -> list[Row]:
        """Insert prepared rows in one transaction; returns the ones that are new.

        A row's mailbox comes into being with it (the ``messages_added`` trigger).
        """
        if not items:
            return []
        with self._writing() as db:
            rows = [self._insert(db, row, text) for row, text in items]
        return [row for row in rows if row is not None]

    @staticmethod
    def _ensure_mailbox(db: sqlite3.Connection, address: str) -> None:
        db.execute("INSERT INTO mailboxes (address) VALUES (?) ON CONFLICT (address) DO NOTHING", (address,))

    def register_mailbox(self, address: str) -> None:
        with self._writing() as db:
            self._ensure_mailbox(db, address)

    def remove(self, message_id: int) -> bool:
        with self._writing() as db:
            return db.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount > 0

    def set_location(self, message_id: int, stored: StoredMessage) -> None:
        with self._writing() as db:
            db.execute(
                "UPDATE messages SET location = ?, seen = ? WHERE id = ?",
                (stored.location, int(stored.seen), message_id),
            )

    def remove_keys(self, address: str, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), SYNC_BATCH):
            with self._writing() as db:
                db.executemany(
                    "DELETE FROM messages WHERE mailbox = ? AND key = ?",
                    [(address, key) for key in keys[start : start + SYNC_BATCH]],
                )

    def add_found(self, found: Sequence[StoredMessage]) -> list[Row]:
        """Index messages found in their mailboxes; returns the rows that are new.

        Oldest first, as :meth:`sync` adds them: ids (the list's order) follow delivery time.
        """
        ordered = sorted(found, key=lambda stored: (stored.received, stored.key))
        return self._insert_prepared(self._prepare_message(stored) for stored in ordered)

    def apply_followed(self, moved: Sequence[tuple[Row, StoredMessage]], gone: Sequence[Row]) -> list[Change]:
        """Record that the messages of ``moved`` are where they are now and those of ``gone``
        are no more; returns what a reader sees change (read state, deletions), journalled."""
        changes: list[Change] = []
        items: list[tuple[Row, StoredMessage | None]] = [*moved, *((row, None) for row in gone)]
        for start in range(0, len(items), SYNC_BATCH):
            with self._writing() as db:
                batch: list[Change] = []
                for row, stored in items[start : start + SYNC_BATCH]:
                    if stored is None:
                        if db.execute("DELETE FROM messages WHERE id = ?", (row.id,)).rowcount:
                            batch.append(Change("deleted", row.id, row.mailbox, row.seen))
                        continue
                    updated = db.execute(
                        "UPDATE messages SET location = ?, seen = ? WHERE id = ?",
                        (stored.location, int(stored.seen), row.id),
                    ).rowcount
                    if updated and stored.seen != row.seen:
                        batch.append(Change("updated", row.id, row.mailbox, stored.seen))
                self._journal(db, batch)
                changes += batch
        return changes

    @staticmethod
    def _journal(db: sqlite3.Connection, changes: Sequence[Change]) -> None:
        if not changes:
            return
        db.executemany(
            "INSERT INTO changes (kind, id, mailbox, seen) VALUES (?, ?, ?, ?)",
            [(change.kind, change.id, change.mailbox, int(change.seen)) for change in changes],
        )
        newest = int(db.execute("SELECT max(seq) FROM changes").fetchone()[0])
        db.execute("DELETE FROM changes WHERE seq <= ?", (newest - JOURNAL_KEEP,))

    def forget_mailbox(self, address: str) -> None:
        """Forget ``address``'s mailbox if it holds nothing (its directory is gone)."""
        with self._writing() as db:
            db.execute("DELETE FROM mailboxes WHERE address = ? AND total = 0", (address,))

    # -- reading -------------------------------------------------------------------------------

    def get(self, message_id: int) -> Row | None:
        found = self._db.execute(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        return _row(found) if found is not None else None

    def last_id(self) -> int:
        """The newest row's id (0 for an empty index): where following new rows starts."""
        found = self._db.execute("SELECT max(id) FROM messages").fetchone()
        return int(found[0] or 0)

    def rows_after(self, message_id: int, limit: int) -> list[Row]:
        """Up to ``limit`` rows newer than ``message_id``, oldest first.

        Rows become visible in id order, whichever process wrote them: SQLite has one writer
        at a time, and a row's id is given inside its writer's transaction.
        """
        found = self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?", (message_id, limit)
        ).fetchall()
        return [_row(values) for values in found]

    def rows_by_key(self, address: str, keys: Sequence[str] | None) -> dict[str, Row]:
        """The rows of ``address``'s messages named by ``keys`` (all of them for None), by key."""
        if keys is None:
            found = self._db.execute(f"SELECT {_COLUMNS} FROM messages WHERE mailbox = ?", (address,))
            return {row.key: row for row in map(_row, found)}
        rows: dict[str, Row] = {}
        for start in range(0, len(keys), KEYS_PER_QUERY):
            chunk = keys[start : start + KEYS_PER_QUERY]
            found = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE mailbox = ? AND key IN ({', '.join('?' * len(chunk))})",
                (address, *chunk),
            )
            rows.update((row.key, row) for row in map(_row, found))
        return rows

    def last_change(self) -> int:
        """The newest journal entry's number (0 for none): where following changes starts."""
        found = self._db.execute("SELECT max(seq) FROM changes").fetchone()
        return int(found[0] or 0)

    def changes_after(self, seq: int, limit: int) -> list[tuple[int, Change]]:
        """Up to ``limit`` journalled changes after entry ``seq``, oldest first, numbered."""
        found = self._db.execute(
            "SELECT seq, kind, id, mailbox, seen FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [
            (int(number), Change(str(kind), int(id_), str(mailbox), bool(seen)))
            for number, kind, id_, mailbox, seen in found
        ]

    def mailboxes(self, visible: Sequence[str] | None = None) -> list[MailboxCount]:
        """Every mailbox (``visible`` None) or those named in ``visible``, by address."""
        rows = self._db.execute("SELECT address, total, unread FROM mailboxes ORDER BY address").fetchall()
        allowed = None if visible is None else set(visible)
        return [
            MailboxCount(str(address), int(total), int(unread))
            for address, total, unread in rows
            if allowed is None or address in allowed
        ]

    def page(
        self,
        mailboxes: Sequence[str] | None,
        query: Compiled,
        *,
        limit: int,
        offset: int,
    ) -> Page:
        """Messages newest first; ``mailboxes`` None means all, ``query`` filters.

        Newest first means in the order the index learned of them: ids are given at delivery,
        and a sync adds what it finds oldest first, so for delivered mail this is arrival
        order. Ordering by id lets every plan stop after one page: FTS5 hands out its matches
        in rowid order, either way round, without sorting them, and an SQLite index ends with
        the rowid, so a mailbox's entries are already in id order.
        """
        if mailboxes is not None and not mailboxes:
            return Page(0, [])
        conditions = list(query.conditions)
        params: list[object] = list(query.params)
        db = self._db
        if query.match is not None:
            # The mailboxes go into the FTS5 query: counting then needs no look at the rows.
            match = query.match if mailboxes is None else within_mailboxes(query.match, mailboxes)
            if conditions:
                source = (
                    f"FROM {TEXT_TABLE} CROSS JOIN messages ON messages.id = {TEXT_TABLE}.rowid"
                    f" WHERE {TEXT_TABLE} MATCH ?"
                )
                column = "messages.id"
            else:
                source = f"FROM {TEXT_TABLE} WHERE {TEXT_TABLE} MATCH ?"
                column = f"{TEXT_TABLE}.rowid"
            order = f"ORDER BY {TEXT_TABLE}.rowid DESC"
            params.insert(0, match)
            where = "".join(f" AND {condition}" for condition in conditions)
        else:
            if mailboxes is not None:
                conditions.insert(0, "mailbox IN (" + ", ".join("?" * len(mailboxes)) + ")")
                params[:0] = list(mailboxes)
            source = "FROM messages"
            column = "messages.id"
            order = "ORDER BY messages.id DESC"
            where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
        if query.match is None and not query.conditions:
            total = sum(box.total for box in self.mailboxes(mailboxes))
        else:
            total = int(db.execute(f"SELECT count(*) {source}{where}", params).fetchone()[0])
        # Find the page's ids first (from indexes alone), then read just those rows: skipping
        # to a far offset never reads the rows it skips.
        ids = [
            int(found[0])
            for found in db.execute(
                f"SELECT {column} {source}{where} {order} LIMIT ? OFFSET ?",
                [*params, min(limit, MAX_PAGE), offset],
            )
        ]
        if not ids:
            return Page(total, [])
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY id DESC", ids
        ).fetchall()
        return Page(total, [_row(values) for values in rows])

    # -- the disk --------------------------------------------------------------------------------

    def locate(self, row: Row) -> StoredMessage | None:
        """Where the message of ``row`` is now; the index follows a move, and forgets a
        message gone."""
        stored = self.store.find(row.mailbox, row.key, row.location)
        if stored is None:
            self.remove(row.id)
            return None
        if stored.location != row.location:
            self.set_location(row.id, stored)
        return stored

    def sync(
        self,
        *,
        reparse: bool = False,
        on_added: Callable[[Row], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> SyncReport:
        """Make the index say what the mailboxes hold; ``reparse`` re-reads every message.

        Messages new to the index are added oldest first across all mailboxes, so ids (and
        with them the newest-first order) follow delivery time. ``stop`` is asked between
        steps; when it says True the sync ends early (the next one finishes the work).
        """
        boxes = removed = updated = 0
        seen_boxes: set[str] = set()
        fresh: list[StoredMessage] = []
        for address in self.store.mailboxes():
            if stop is not None and stop():
                return SyncReport(boxes, 0, removed, updated)
            boxes += 1
            seen_boxes.add(address)
            self.register_mailbox(address)
            new_messages, r, u = self._sync_mailbox(address, reparse)
            removed, updated = removed + r, updated + u
            fresh.extend(new_messages)
        fresh.sort(key=lambda stored: (stored.received, stored.key))
        added = 0
        for start in range(0, len(fresh), SYNC_BATCH):
            if stop is not None and stop():
                return SyncReport(boxes, added, removed, updated)
            batch = fresh[start : start + SYNC_BATCH]
            prepared = (self._prepare_message(stored) for stored in batch)
            for new_row in self._insert_prepared(prepared):
                added += 1
                if on_added is not None:
                    on_added(new_row)
        with self._writing() as db:
            # Mailboxes whose directory is gone and that hold nothing are forgotten.
            for (address,) in db.execute("SELECT address FROM mailboxes WHERE total = 0").fetchall():
                if address not in seen_boxes:
                    db.execute("DELETE FROM mailboxes WHERE address = ? AND total = 0", (address,))
        return SyncReport(boxes, added, removed, updated)

    def _sync_mailbox(self, address: str, reparse: bool) -> tuple[list[StoredMessage], int, int]:
        """Forget what is gone, follow what moved; returns the messages new to the index."""
        # The index first, then the disk: a message delivered (and indexed) in between is on
        # the disk but not in this snapshot, so it can never be taken for one that went away.
        indexed = {
            str(key): (int(id_), str(location))
            for id_, key, location in self._db.execute(
                "SELECT id, key, location FROM messages WHERE mailbox = ?", (address,)
            )
        }
        try:
            on_disk = {stored.key: stored for stored in self.store.list_messages(address)}
        except ValueError:
            return [], 0, 0  # no longer a mailbox this store can name (a symlink appeared)
        gone = [values[0] for key, values in indexed.items() if key not in on_disk]
        changed = [
            (on_disk[key], values[0])
            for key, values in indexed.items()
            if key in on_disk and (reparse or values[1] != on_disk[key].location)
        ]
        for start in range(0, len(gone), SYNC_BATCH):
            with self._writing() as db:
                db.executemany(
                    "DELETE FROM messages WHERE id = ?", [(i,) for i in gone[start : start + SYNC_BATCH]]
                )
        for start in range(0, len(changed), SYNC_BATCH):
            batch = changed[start : start + SYNC_BATCH]
            if reparse:
                self._reparse(address, batch)
                continue
            with self._writing() as db:
                db.executemany(
                    "UPDATE messages SET location = ?, seen = ? WHERE id = ?",
                    [(stored.location, int(stored.seen), i) for stored, i in batch],
                )
        return [stored for key, stored in on_disk.items() if key not in indexed], len(gone), len(changed)

    def _reparse(self, address: str, batch: Sequence[tuple[StoredMessage, int]]) -> None:
        prepared = [(item, self._prepare_message(item[0])) for item in batch]
        with self._writing() as db:
            for (_, message_id), result in prepared:
                if result is None:
                    continue
                row, text = result
                db.execute(_UPDATE, (*_content(row, message.snippet(text.body)), message_id))
                db.execute("DELETE FROM messages_text WHERE rowid = ?", (message_id,))
                db.execute(
                    "INSERT INTO messages_text (rowid, sender, recipients, subject, body, mailbox)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        message_id,
                        row.sender,
                        text.recipients,
                        row.subject,
                        text.body,
                        mailbox_token(row.mailbox),
                    ),
                )
