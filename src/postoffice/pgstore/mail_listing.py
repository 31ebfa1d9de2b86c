"""Reading a mailbox's rows: its messages (all, or by key), its folders, and one folder's
listing with UIDs and mod-sequences for IMAP (RFC 9051 §2.3.1.1, RFC 7162).

Untrusted input seen here: none beyond addresses, folder names and keys, already checked by
the store and passed as statement parameters.
"""

from __future__ import annotations

from typing import Any

from postoffice.pgstore.mail_rows import MESSAGE_COLUMNS, MESSAGE_FROM, MessageRow, message_row
from postoffice.storage import FolderListing


def all_rows(connection: Any, mailbox: str) -> list[MessageRow]:
    """Every message of ``mailbox``, its folders' too, by folder and UID."""
    rows = connection.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} WHERE b.address = %s ORDER BY f.name, m.uid",
        (mailbox,),
    ).fetchall()
    return [message_row(row) for row in rows]


def rows_by_key(connection: Any, mailbox: str, keys: list[str]) -> list[MessageRow]:
    rows = connection.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} WHERE b.address = %s AND m.key = ANY(%s)",
        (mailbox, keys),
    ).fetchall()
    return [message_row(row) for row in rows]


def folder_names(connection: Any, mailbox: str) -> list[str]:
    rows = connection.execute(
        "SELECT f.name FROM mail_folders f JOIN mailboxes b ON b.id = f.mailbox_id WHERE b.address = %s",
        (mailbox,),
    ).fetchall()
    return [row[0] for row in rows]


# Folder listings kept for IMAP (each IDLE looks several times a second); past this many, forget.
LISTINGS = 1000

Listings = dict[tuple[str, str], tuple[tuple[int, ...], FolderListing]]


def listing(connection: Any, mailbox: str, folder: str, kept: Listings) -> FolderListing:
    """The folder's messages by UID; FileNotFoundError if there is no such folder. One
    snapshot (REPEATABLE READ): the UIDs listed are all below the UIDNEXT given.

    Every change to a folder's messages takes a new mod-sequence from the folder's row in the
    same transaction (mail_rows.py), so a folder whose row reads as it did last time holds what
    it held: the listing ``kept`` from then is given again, for one small query."""
    with connection.transaction():
        connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        head = connection.execute(
            "SELECT f.id, f.uidvalidity, f.uidnext, f.highestmodseq FROM mail_folders f"
            " JOIN mailboxes b ON b.id = f.mailbox_id WHERE b.address = %s AND f.name = %s",
            (mailbox, folder),
        ).fetchone()
        if head is None:
            raise FileNotFoundError(folder)
        stamp = tuple(int(value) for value in head)
        earlier = kept.get((mailbox, folder))
        if earlier is not None and earlier[0] == stamp:
            return earlier[1]
        rows = connection.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} WHERE m.folder_id = %s ORDER BY m.uid",
            (head[0],),
        ).fetchall()
    found = [message_row(row) for row in rows]
    result = FolderListing(
        stamp[1],
        stamp[2],
        [(row.uid, row.stored(mailbox)) for row in found],
        max(stamp[3], 1),
        {row.uid: row.modseq for row in found},
    )
    if len(kept) >= LISTINGS:
        kept.clear()
    kept[(mailbox, folder)] = (stamp, result)
    return result
