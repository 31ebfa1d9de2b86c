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

This module is the writing side (delivery, sync, what the watcher follows); the rest is in
:mod:`~postoffice.web.index_schema` (the schema and its migrations),
:mod:`~postoffice.web.index_rows` (a row and how it is read and written),
:mod:`~postoffice.web.index_db` (connections, the write lock, opening the file) and
:mod:`~postoffice.web.index_query` (the reading side: rows, counts, pages). Their public names
are importable from here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence

from postoffice.errors import MessageGone
from postoffice.storage import StoredMessage
from postoffice.web import authresults, message, tags
from postoffice.web.index_query import KEYS_PER_QUERY, MAX_PAGE, IndexReading, in_list
from postoffice.web.index_rows import (
    _INSERT,
    _UPDATE,
    Change,
    MailboxCount,
    Page,
    Row,
    SearchText,
    SyncReport,
    _content,
)
from postoffice.web.index_schema import AUTH_SCHEMA, JOURNAL_SCHEMA, SCHEMA_VERSION, SNIPPET_SCHEMA
from postoffice.web.search import mailbox_token

__all__ = [
    "AUTH_SCHEMA",
    "JOURNAL_KEEP",
    "JOURNAL_SCHEMA",
    "KEYS_PER_QUERY",
    "MAX_PAGE",
    "PREPARED_TEXT_BUDGET",
    "SCHEMA_VERSION",
    "SNIPPET_SCHEMA",
    "SYNC_BATCH",
    "Change",
    "MailIndex",
    "MailboxCount",
    "Page",
    "Row",
    "SearchText",
    "SyncReport",
]

log = logging.getLogger("postoffice.web.index")

# Rows written per transaction while syncing: large enough to amortise the commit, small
# enough that a delivery waiting for the lock never waits long.
SYNC_BATCH = 200
# Characters of message text parsed and held before they are written: a batch of long
# messages is written in several transactions, so memory stays flat whatever the batch size.
PREPARED_TEXT_BUDGET = 1024 * 1024
# Entries the change journal keeps: a follower that falls further behind than this misses some
# announcements (the list it reloads is right either way).
JOURNAL_KEEP = 10_000


class MailIndex(IndexReading):
    """The index of every mailbox of ``store``, stored in ``path``."""

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
        fell behind): a look up by key costs far less than parsing the message again, and one
        query asks it for the whole batch.
        """
        known = self._known(delivered)
        return self._insert_prepared(
            self._prepare_message(stored) for stored in delivered if (stored.mailbox, stored.key) not in known
        )

    def _known(self, delivered: Sequence[StoredMessage]) -> set[tuple[str, str]]:
        """Which of ``delivered`` the index has already, as ``(mailbox, key)``: one query per
        mailbox and KEYS_PER_QUERY keys, where one per message cost a sixth of indexing."""
        keys_by_mailbox: dict[str, list[str]] = {}
        for stored in delivered:
            keys_by_mailbox.setdefault(stored.mailbox, []).append(stored.key)
        known: set[tuple[str, str]] = set()
        for address, keys in keys_by_mailbox.items():
            for start in range(0, len(keys), KEYS_PER_QUERY):
                chunk = keys[start : start + KEYS_PER_QUERY]
                marks, values = in_list(chunk)
                found = self._db.execute(
                    f"SELECT key FROM messages WHERE mailbox = ? AND key IN ({marks})", (address, *values)
                )
                known.update((address, key) for (key,) in found)
        return known

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
                summary = message.summarise_stream(stream, size)
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
            tags=tuple(tags.from_message(summary.x_tags, summary.delivered_to, stored.mailbox)),
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
        found = self._add_tags(db, row.mailbox, row.key, row.tags)
        return dataclasses.replace(row, id=new_id, snippet=snippet, tags=found)

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
    def _add_tags(db: sqlite3.Connection, address: str, key: str, new: Sequence[str]) -> tuple[str, ...]:
        """Add ``new`` to the tags of ``address``'s message ``key``; returns all its tags now
        (a tag set through the API before a rebuild is kept: the table is by key)."""
        if new:  # most messages bring no tag: no statement to run
            db.executemany(
                "INSERT INTO tags (mailbox, key, tag) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(address, key, tag) for tag in new],
            )
        found = db.execute("SELECT tag FROM tags WHERE mailbox = ? AND key = ? ORDER BY tag", (address, key))
        return tuple(str(tag) for (tag,) in found)

    def set_tags(self, message_id: int, new: Sequence[str]) -> Row | None:
        """Make ``new`` (normal tags, web/tags.py) the tags of message ``message_id``;
        returns its row as it is now, None if it is gone."""
        with self._writing() as db:
            found = db.execute("SELECT mailbox, key FROM messages WHERE id = ?", (message_id,)).fetchone()
            if found is None:
                return None
            address, key = str(found[0]), str(found[1])
            db.execute("DELETE FROM tags WHERE mailbox = ? AND key = ?", (address, key))
            self._add_tags(db, address, key, new)
        return self.get(message_id)

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
                self._add_tags(db, row.mailbox, row.key, row.tags)
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
