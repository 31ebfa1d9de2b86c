"""The mailbox index's schema: its version, its tables, and the migrations from older ones.

Part of :mod:`postoffice.web.index`. No SQL text here is ever built from anything but
constants.
"""

from __future__ import annotations

import sqlite3

from postoffice.web import message
from postoffice.web.search import TEXT_TABLE

# Bumped whenever the schema or what is indexed changes: an older index is rebuilt from disk,
# except that one of version 3 first gains the snippet column in place (_add_snippets), one of
# version 4 then the change journal, one of version 5 then the authentication results
# (_add_auth), and one of version 6 then unread counts without the Junk folder
# (_count_inbox_only), and one of version 7 then the tags table (_add_tags): ids stay, links
# keep working.
SCHEMA_VERSION = 8
# The version that added messages.snippet.
SNIPPET_SCHEMA = 4
# The version that added the changes table (the journal of changes followed from the disk).
JOURNAL_SCHEMA = 5
# The version that added the authentication results (messages.auth and the auth_* columns).
AUTH_SCHEMA = 6
# The version whose unread counts leave out the Junk folder (the triggers below).
JUNK_SCHEMA = 7
# The version that added the tags table.
TAGS_SCHEMA = 8
# Rows written per transaction while syncing: large enough to amortise the commit, small

# An unread message counts when it is in the inbox: mail in the Junk folder (a DMARC
# quarantine, location ".Junk/...", maildir.folders.folder_of) is listed but never announced as new.
_UNREAD_NEW = "(new.seen = 0 AND substr(new.location, 1, 6) <> '.Junk/')"
_UNREAD_OLD = "(old.seen = 0 AND substr(old.location, 1, 6) <> '.Junk/')"
# Counts kept by triggers: listing mailboxes never scans messages.
_COUNT_TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS messages_added AFTER INSERT ON messages BEGIN
    INSERT INTO mailboxes (address, total, unread) VALUES (new.mailbox, 1, {_UNREAD_NEW})
    ON CONFLICT (address) DO UPDATE SET total = total + 1, unread = unread + {_UNREAD_NEW};
END;
CREATE TRIGGER IF NOT EXISTS messages_removed AFTER DELETE ON messages BEGIN
    UPDATE mailboxes SET total = total - 1, unread = unread - {_UNREAD_OLD} WHERE address = old.mailbox;
    DELETE FROM messages_text WHERE rowid = old.id;
END;
CREATE TRIGGER IF NOT EXISTS messages_flagged AFTER UPDATE OF seen, location ON messages BEGIN
    UPDATE mailboxes SET unread = unread - {_UNREAD_OLD} + {_UNREAD_NEW} WHERE address = new.mailbox;
END;
"""

# The statements a migration runs by themselves too (each IF NOT EXISTS).
_CHANGES_TABLE = """CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id INTEGER NOT NULL,
    mailbox TEXT NOT NULL,
    seen INTEGER NOT NULL
)"""
# Tags (web/tags.py) by the message's mailbox and Maildir key rather than its row id: a rebuild
# of the other tables (an older schema, below) leaves this one alone, so the tags set through the
# API come back with the messages. A message deleted takes its tags with it (the trigger;
# DROP TABLE fires no triggers, so a rebuild does not).
_TAGS_TABLE = """CREATE TABLE IF NOT EXISTS tags (
    mailbox TEXT NOT NULL,
    key TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (mailbox, key, tag)
) WITHOUT ROWID"""
_TAGS_TRIGGER = """CREATE TRIGGER IF NOT EXISTS messages_untagged AFTER DELETE ON messages BEGIN
    DELETE FROM tags WHERE mailbox = old.mailbox AND key = old.key;
END"""
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
{_COUNT_TRIGGERS}
-- Read-state changes and deletions followed from the disk, in order: the process serving HTTP
-- among workers announces them from here (new messages it finds by id). AUTOINCREMENT: a
-- sequence number is never reused, so pruning old entries never hides a new one.
{_CHANGES_TABLE};
{_TAGS_TABLE};
{_TAGS_TRIGGER};
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


def _snippet_of(body: object) -> str:
    return message.snippet(body) if isinstance(body, str) else ""


def migrate(db: sqlite3.Connection) -> None:
    """Bring the schema of ``db`` to SCHEMA_VERSION; the caller holds the write lock."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SNIPPET_SCHEMA - 1:
        _add_snippets(db)
        version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == JOURNAL_SCHEMA - 1:
        db.execute(_CHANGES_TABLE)  # IF NOT EXISTS: whoever comes second finds it there
        db.execute(f"PRAGMA user_version = {JOURNAL_SCHEMA:d}")
        version = JOURNAL_SCHEMA
    if version == AUTH_SCHEMA - 1:
        _add_auth(db)
        version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == JUNK_SCHEMA - 1:
        _count_inbox_only(db)
        version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == TAGS_SCHEMA - 1:
        _add_tags(db)
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


def _count_inbox_only(db: sqlite3.Connection) -> None:
    """Schema 6 to 7: the count triggers leave the Junk folder out of the unread counts, and
    the counts are made again. As in _add_snippets, a second process finds the work done."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] == JUNK_SCHEMA - 1:
            for name in ("messages_added", "messages_removed", "messages_flagged"):
                db.execute(f"DROP TRIGGER IF EXISTS {name}")
            for statement in _COUNT_TRIGGERS.split("END;")[:-1]:
                db.execute(statement + "END;")
            db.execute(
                "UPDATE mailboxes SET unread = (SELECT count(*) FROM messages WHERE mailbox = address"
                " AND seen = 0 AND substr(location, 1, 6) <> '.Junk/')"
            )
            db.execute(f"PRAGMA user_version = {JUNK_SCHEMA:d}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _add_tags(db: sqlite3.Connection) -> None:
    """Schema 7 to 8: the tags table, empty. Tags from X-Tags fields and plus-addresses of
    mail indexed before come with ``postoffice reindex --full``. As in _add_snippets, a second
    process finds the work done."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] == TAGS_SCHEMA - 1:
            for statement in (_TAGS_TABLE, _TAGS_TRIGGER):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {TAGS_SCHEMA:d}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
