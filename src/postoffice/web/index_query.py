"""The mailbox index's reading side: rows by id, key or journal entry, mailbox counts, and
pages of a mailbox listing or search.

Part of :mod:`postoffice.web.index`. Search queries arrive compiled by
:mod:`postoffice.web.search`, which binds every value.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from postoffice.web.index_db import IndexDatabase
from postoffice.web.index_rows import _COLUMNS, Change, MailboxCount, Page, Row, _row
from postoffice.web.search import TEXT_TABLE, Compiled, within_mailboxes

# The most rows one page may ask for.
MAX_PAGE = 500
# Keys named in one query (SQLite's limit on bound values was 999 before 3.32).
KEYS_PER_QUERY = 500


class IndexReading(IndexDatabase):
    """What a :class:`~postoffice.web.index.MailIndex` answers from the database alone."""

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
            marks, values = in_list(chunk)
            found = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE mailbox = ? AND key IN ({marks})", (address, *values)
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

    def folder_counts(self, address: str) -> dict[str, tuple[int, int]]:
        """Messages and unread ones of ``address`` by folder directory (``.Junk``; ``""`` the
        inbox), as the locations say."""
        rows = self._db.execute(
            "SELECT CASE WHEN substr(location, 1, 1) = '.'"
            " THEN substr(location, 1, instr(location, '/') - 1) ELSE '' END AS folder,"
            " count(*), sum(seen = 0) FROM messages WHERE mailbox = ? GROUP BY folder",
            (address,),
        ).fetchall()
        return {str(folder): (int(total), int(unread or 0)) for folder, total, unread in rows}

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
        plan = _plan(mailboxes, query)
        if query.match is None and not query.conditions:
            total = sum(box.total for box in self.mailboxes(mailboxes))
        else:
            total = plan.count(self._db)
        ids = plan.page_ids(self._db, limit, offset)
        if not ids:
            return Page(total, [])
        return Page(total, self._rows_by_id(ids))

    def _rows_by_id(self, ids: Sequence[int]) -> list[Row]:
        """The rows of ``ids``, newest first."""
        marks, values = in_list(ids)
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE id IN ({marks}) ORDER BY id DESC", values
        ).fetchall()
        return [_row(values) for values in rows]


_T = TypeVar("_T")


def in_list(values: Sequence[_T]) -> tuple[str, list[_T]]:
    """The ``?, ?, ...`` of an SQL ``IN`` list for ``values`` (not empty) and its parameters,
    padded with the last value to a power of two.

    Each connection keeps up to 128 prepared statements by their SQL text, and a statement with
    hundreds of parameters takes tens of KB: an IN list of every length the Maildir watch and
    the indexing met made up to 128 of them per connection, kept for good (SQLite held 10.6 MB
    after 20,000 messages). Padded, there are ten lengths at most; a value twice in an IN list
    matches what it matched once.
    """
    size = 1 << (len(values) - 1).bit_length()
    return ", ".join("?" * size), [*values, *[values[-1]] * (size - len(values))]


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a page's messages are found: ``SELECT <column> <source><where> <order>``."""

    source: str
    column: str
    order: str
    where: str
    params: list[object]

    def count(self, db: sqlite3.Connection) -> int:
        return int(db.execute(f"SELECT count(*) {self.source}{self.where}", self.params).fetchone()[0])

    def page_ids(self, db: sqlite3.Connection, limit: int, offset: int) -> list[int]:
        """The page's ids, newest first. Found first (from indexes alone), then just those
        rows are read: skipping to a far offset never reads the rows it skips."""
        return [
            int(found[0])
            for found in db.execute(
                f"SELECT {self.column} {self.source}{self.where} {self.order} LIMIT ? OFFSET ?",
                [*self.params, min(limit, MAX_PAGE), offset],
            )
        ]


def _plan(mailboxes: Sequence[str] | None, query: Compiled) -> _Plan:
    """The plan for ``query`` in ``mailboxes`` (None for all)."""
    if query.match is not None:
        return _text_plan(mailboxes, query, query.match)
    conditions = list(query.conditions)
    params: list[object] = list(query.params)
    if mailboxes is not None:
        conditions.insert(0, "mailbox IN (" + ", ".join("?" * len(mailboxes)) + ")")
        params[:0] = list(mailboxes)
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    return _Plan("FROM messages", "messages.id", "ORDER BY messages.id DESC", where, params)


def _text_plan(mailboxes: Sequence[str] | None, query: Compiled, match: str) -> _Plan:
    """The plan of a query with words to find: the full-text table first."""
    conditions = list(query.conditions)
    # The mailboxes go into the FTS5 query: counting then needs no look at the rows.
    match = match if mailboxes is None else within_mailboxes(match, mailboxes)
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
    where = "".join(f" AND {condition}" for condition in conditions)
    return _Plan(source, column, order, where, [match, *query.params])
