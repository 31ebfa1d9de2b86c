"""The rows behind :class:`~postoffice.pgstore.mailboxes.PgMailboxStore`: a mailbox, its
folders, a message's row, and the locations the storage seam names messages by.

Untrusted input seen here: addresses (already in canonical form), folder names (checked by
:func:`folder_name` before any statement sees them) and message keys (compared, never parsed);
every value goes to the database as a parameter, never as SQL text.

A location has the Maildir shape the rest of the server knows (``new/KEY``, ``cur/KEY:2,FS``,
``.Junk/cur/KEY:2,S``, maildir/folders.py), made from the row: the folder's directory name,
``new/`` until a client has looked at the message (set its flags, or it was appended), and the
flags. It changes with the flags, as a Maildir file's name does, and a location is only ever
compared with the one the row makes, so no location from outside is a path of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from postoffice.maildir.folders import INBOX, directory_of, name_of
from postoffice.storage import StoredMessage

# The channel LISTEN/NOTIFY carries mailbox changes on (pgstore/mail_watch.py).
CHANNEL = "postoffice_mailboxes"

# A message row with its folder's name: what every look-up selects.
MESSAGE_COLUMNS = (
    "m.id, m.key, m.flags, m.fresh, m.received, f.name, m.uid, m.modseq, m.body, m.size, m.folder_id"
)
MESSAGE_FROM = (
    "mail_messages m JOIN mail_folders f ON f.id = m.folder_id JOIN mailboxes b ON b.id = m.mailbox_id"
)


def folder_name(name: str) -> str:
    """The one spelling of folder ``name`` (``INBOX`` in any case, ``junk`` is ``Junk``);
    ValueError for a name no folder can have."""
    canonical = name_of(directory_of(name))
    if canonical is None:  # directory_of and name_of are inverses for every name it allows
        raise ValueError(f"not a folder name: {name!r}")
    return canonical


def location(folder: str, key: str, flags: str, fresh: bool) -> str:
    """Where a message in ``folder`` with ``flags`` is, in the Maildir shape (see above)."""
    directory = directory_of(folder)
    prefix = f"{directory}/" if directory else ""
    return f"{prefix}new/{key}" if fresh else f"{prefix}cur/{key}:2,{flags}"


def sorted_flags(flags: str) -> str:
    """Flag letters in ASCII order, each once (as Maildir names them)."""
    return "".join(sorted(set(flags)))


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: int
    key: str
    flags: str
    fresh: bool
    received: float
    folder: str
    uid: int
    modseq: int
    body: int
    size: int
    folder_id: int

    def stored(self, mailbox: str) -> StoredMessage:
        where = location(self.folder, self.key, self.flags, self.fresh)
        return StoredMessage(mailbox, self.key, where, self.flags, self.received)


def message_row(row: Any) -> MessageRow:
    return MessageRow(
        int(row[0]), row[1], row[2], bool(row[3]), float(row[4]), row[5], int(row[6]), int(row[7]),
        int(row[8]), int(row[9]), int(row[10]),
    )  # fmt: skip


def find_row(connection: Any, mailbox: str, key: str, *, lock: bool = False) -> MessageRow | None:
    """Message ``key`` of ``mailbox`` wherever it is (its row locked with ``lock``)."""
    row = connection.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} WHERE b.address = %s AND m.key = %s"
        + (" FOR UPDATE OF m" if lock else ""),
        (mailbox, key),
    ).fetchone()
    return None if row is None else message_row(row)


def mailbox_id(connection: Any, mailbox: str) -> int | None:
    row = connection.execute("SELECT id FROM mailboxes WHERE address = %s", (mailbox,)).fetchone()
    return None if row is None else int(row[0])


def ensure_mailbox(connection: Any, mailbox: str) -> tuple[int, bool]:
    """The id of ``mailbox``, made now (with its inbox) if missing; and whether it was."""
    with connection.transaction():
        row = connection.execute(
            "INSERT INTO mailboxes (address) VALUES (%s) ON CONFLICT (address) DO NOTHING RETURNING id",
            (mailbox,),
        ).fetchone()
        if row is not None:
            ensure_folder(connection, int(row[0]), INBOX)
            return int(row[0]), True
    found = mailbox_id(connection, mailbox)
    if found is None:  # removed between the two statements: make it again
        return ensure_mailbox(connection, mailbox)
    return found, False


def folder_id(connection: Any, mailbox_id: int, folder: str) -> int | None:
    row = connection.execute(
        "SELECT id FROM mail_folders WHERE mailbox_id = %s AND name = %s", (mailbox_id, folder)
    ).fetchone()
    return None if row is None else int(row[0])


def ensure_folder(connection: Any, mailbox_id: int, folder: str) -> tuple[int, bool]:
    """The id of ``folder`` (a :func:`folder_name`) in the mailbox, made now if missing (with
    a UIDVALIDITY no folder had before); and whether it was."""
    row = connection.execute(
        "INSERT INTO mail_folders (mailbox_id, name, uidvalidity)"
        " VALUES (%s, %s, nextval('mail_uidvalidity')) ON CONFLICT DO NOTHING RETURNING id",
        (mailbox_id, folder),
    ).fetchone()
    if row is not None:
        return int(row[0]), True
    found = folder_id(connection, mailbox_id, folder)
    if found is None:
        raise OSError(f"folder {folder!r} was removed meanwhile")
    return found, False


def next_uid(connection: Any, folder_id: int) -> tuple[int, int]:
    """The folder's next UID and mod-sequence, taken (the folder row stays locked until the
    transaction ends, so UIDs are given in commit order: RFC 9051 §2.3.1.1 asks that they
    ascend)."""
    row = connection.execute(
        "UPDATE mail_folders SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
        " WHERE id = %s RETURNING uidnext - 1, highestmodseq",
        (folder_id,),
    ).fetchone()
    if row is None:
        raise OSError("the folder was removed meanwhile")
    return int(row[0]), int(row[1])


def next_modseq(connection: Any, folder_id: int) -> int:
    """The folder's next mod-sequence (RFC 7162 §3.1.1), taken."""
    row = connection.execute(
        "UPDATE mail_folders SET highestmodseq = highestmodseq + 1 WHERE id = %s RETURNING highestmodseq",
        (folder_id,),
    ).fetchone()
    return 1 if row is None else int(row[0])


# insert_message's one statement: (folder, mailbox, folder, key, flags, fresh, received, size,
# body, channel, payload) -> the new UID, or no row if the folder is gone.
INSERT_MESSAGE = (
    "WITH next AS (UPDATE mail_folders SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
    "   WHERE id = %s RETURNING uidnext - 1 AS uid, highestmodseq AS modseq),"
    " added AS (INSERT INTO mail_messages"
    "   (mailbox_id, folder_id, key, uid, modseq, flags, fresh, received, size, body)"
    "   SELECT %s, %s, %s, next.uid, next.modseq, %s, %s, %s, %s, %s FROM next RETURNING uid)"
    " SELECT uid, pg_notify(%s, %s) FROM added"
)


def insert_message(
    connection: Any,
    ids: tuple[int, int],
    key: str,
    flags: str,
    *,
    fresh: bool,
    received: float,
    body: tuple[int, int],
    changed: str,
) -> int:
    """A new message row in folder ``ids[1]`` of mailbox ``ids[0]``, with the folder's next UID
    and mod-sequence (its row stays locked until the transaction ends, so UIDs are given in
    commit order: RFC 9051 §2.3.1.1 asks that they ascend) and the notification ``changed``
    (:func:`payload`): one statement. Its UID. ``body``: (id, size)."""
    row = connection.execute(
        INSERT_MESSAGE,
        (ids[1], ids[0], ids[1], key, flags, fresh, received, body[1], body[0], CHANNEL, changed),
    ).fetchone()
    if row is None:
        raise OSError("the folder was removed meanwhile")
    return int(row[0])


def payload(mailbox: str, key: str | None = None, locations: tuple[str, ...] = ()) -> str:
    """What a notification says: ``key`` changed, at ``locations``; with no key, the mailbox
    changed as a whole. Small, well under NOTIFY's 8000 octets."""
    item = {"m": mailbox} if key is None else {"m": mailbox, "k": key, "l": list(locations)}
    return json.dumps(item)


def notify(connection: Any, mailbox: str, key: str | None = None, locations: tuple[str, ...] = ()) -> None:
    """Tell every node's watch, at the commit, what :func:`payload` says."""
    connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload(mailbox, key, locations)))


# placed's look-up: (folder, key, mailbox) -> mailbox id, folder id or NULL, whether key is there.
PLACED = (
    "SELECT b.id, f.id, m.id IS NOT NULL FROM mailboxes b"
    " LEFT JOIN mail_folders f ON f.mailbox_id = b.id AND f.name = %s"
    " LEFT JOIN mail_messages m ON m.mailbox_id = b.id AND m.key = %s"
    " WHERE b.address = %s"
)


def placed(connection: Any, mailbox: str, folder: str, key: str) -> tuple[int, int, bool] | None:
    """The ids of ``mailbox`` and its ``folder``, and whether it holds a message ``key``: one
    look-up for a delivery; None if the mailbox or the folder is not there yet."""
    return placed_ids(connection.execute(PLACED, (folder, key, mailbox)).fetchone())


def placed_ids(row: Any) -> tuple[int, int, bool] | None:
    """What :func:`placed` makes of the row :data:`PLACED` gives."""
    if row is None or row[1] is None:
        return None
    return int(row[0]), int(row[1]), bool(row[2])
