"""What mail clients do to a mailbox's folders in the database: make, remove and rename them,
number their keywords, remember the subscribed ones (IMAP CREATE, DELETE, RENAME, SUBSCRIBE;
RFC 9051 §6.3).

Untrusted input seen here: folder names and keywords mail clients choose, passed as statement
parameters only; a folder name is checked by :func:`~postoffice.pgstore.mail_rows.folder_name`
(the rules maildir/folders.py has for every store) before it gets here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from postoffice.maildir.folders import INBOX
from postoffice.pgstore.mail_rows import ensure_folder, ensure_mailbox, folder_id, mailbox_id, notify
from postoffice.storage import number_keywords


def _not_inbox(folder: str) -> None:
    if folder == INBOX:
        raise ValueError(f"{folder!r} is the inbox, not a folder")


def create(connection: Any, mailbox: str, folder: str) -> None:
    """Make ``folder``; FileExistsError if it is there."""
    _not_inbox(folder)
    owner, _ = ensure_mailbox(connection, mailbox)
    with connection.transaction():
        _, made = ensure_folder(connection, owner, folder)
        if not made:
            raise FileExistsError(folder)
        notify(connection, mailbox)


def delete(connection: Any, mailbox: str, folder: str) -> None:
    """Remove ``folder`` and its messages (their bodies go with them); FileNotFoundError if
    there is none."""
    _not_inbox(folder)
    with connection.transaction():
        deleted = connection.execute(
            "DELETE FROM mail_folders WHERE name = %s"
            " AND mailbox_id = (SELECT id FROM mailboxes WHERE address = %s) RETURNING id",
            (folder, mailbox),
        ).fetchone()
        if deleted is None:
            raise FileNotFoundError(folder)
        notify(connection, mailbox)


def rename(connection: Any, mailbox: str, old: str, new: str) -> None:
    """Rename ``old`` and its subfolders to ``new`` (RFC 9051 §6.3.6), keeping their UIDs and
    UIDVALIDITY, as a Maildir folder's directory keeps its UID list."""
    _not_inbox(old)
    _not_inbox(new)
    with connection.transaction():
        owner = mailbox_id(connection, mailbox)
        if owner is None or folder_id(connection, owner, old) is None:
            raise FileNotFoundError(old)
        if folder_id(connection, owner, new) is not None:
            raise FileExistsError(new)
        connection.execute(
            "UPDATE mail_folders SET name = %s || substr(name, length(%s) + 1)"
            " WHERE mailbox_id = %s AND (name = %s OR starts_with(name, %s || '/'))",
            (new, old, owner, old, old),
        )
        notify(connection, mailbox)


def subscriptions(connection: Any, mailbox: str) -> list[str] | None:
    row = connection.execute("SELECT subscriptions FROM mailboxes WHERE address = %s", (mailbox,)).fetchone()
    return None if row is None or row[0] is None else list(row[0])


def set_subscriptions(connection: Any, mailbox: str, folders: Collection[str]) -> None:
    names = sorted({name for name in folders if name and "\n" not in name})
    ensure_mailbox(connection, mailbox)
    connection.execute("UPDATE mailboxes SET subscriptions = %s WHERE address = %s", (names, mailbox))


def keywords(connection: Any, mailbox: str, folder: str) -> list[str]:
    """The folder's keywords by number (``""`` for a number not in use)."""
    row = connection.execute(
        "SELECT f.keywords FROM mail_folders f JOIN mailboxes b ON b.id = f.mailbox_id"
        " WHERE b.address = %s AND f.name = %s",
        (mailbox, folder),
    ).fetchone()
    return [] if row is None else list(row[0])


def keyword_letters(connection: Any, mailbox: str, folder: str, names: Collection[str], *, add: bool) -> str:
    """The flag letters of keywords ``names`` (matched without regard to case, RFC 9051
    §2.3.2); with ``add``, unknown ones get the next free numbers (past 26 they are dropped).
    FileNotFoundError if the folder is not there."""
    with connection.transaction():
        row = connection.execute(
            "SELECT f.id, f.keywords FROM mail_folders f JOIN mailboxes b ON b.id = f.mailbox_id"
            " WHERE b.address = %s AND f.name = %s FOR UPDATE OF f",
            (mailbox, folder),
        ).fetchone()
        if row is None:
            raise FileNotFoundError(folder)
        numbered, letters = number_keywords(row[1], names, add=add)
        if numbered is not None:
            connection.execute("UPDATE mail_folders SET keywords = %s WHERE id = %s", (numbered, row[0]))
    return letters
