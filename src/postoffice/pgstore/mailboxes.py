"""The mailboxes of a cluster in the shared PostgreSQL database: a
:class:`~postoffice.storage.MailboxStore` every node uses at once.

Untrusted input seen here: recipient addresses (a mailbox is named by its canonical address,
and only an address a Maildir could hold is accepted, so the two stores take the same ones and
``migrate-store`` moves every mailbox both ways), folder names and keywords from mail clients,
and message bytes (stored verbatim in chunks, :mod:`postoffice.pgstore.bodies`). Every value
reaches the database as a statement parameter.

Tables (``pg/migrations/v0003_mailboxes.py``): ``mailboxes``, ``mail_folders`` (UIDVALIDITY,
next UID, highest mod-sequence, keywords), ``mail_messages`` (key, UID, mod-sequence, flags,
received, size, folder) and ``mail_chunks`` (the bodies). A message's UID and mod-sequence are
taken from its folder's row in the transaction that stores it, so UIDs ascend in commit order
and are never given twice (RFC 9051 §2.3.1.1); each change sends a small notification in the
same transaction (:mod:`postoffice.pgstore.mail_watch`). A failure of the database is an
OSError (the seam's "trouble with the storage": delivery tries again later).
"""

from __future__ import annotations

import contextlib
import errno
import io
import uuid
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from postoffice.addresses import canonical
from postoffice.errors import MessageGone
from postoffice.maildir.folders import INBOX
from postoffice.maildir.names import mailbox_location
from postoffice.pg.database import Database, one_line
from postoffice.pgstore import bodies, mail_delivery, mail_folders, mail_listing
from postoffice.pgstore.bodies import SpooledMessage
from postoffice.pgstore.mail_rows import (
    MessageRow,
    ensure_folder,
    ensure_mailbox,
    find_row,
    folder_id,
    folder_name,
    insert_message,
    location,
    mailbox_id,
    next_modseq,
    next_uid,
    notify,
    payload,
    placed,
    sorted_flags,
)
from postoffice.pgstore.mail_watch import PgMailboxWatch
from postoffice.storage import FolderListing, OnChanges, PendingMessage, StoredMessage


class _Placed(NamedTuple):
    uid: int
    location: str


class PgMailboxStore:
    """The mailboxes in ``database`` (opened by the caller; see :mod:`postoffice.stores`)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._listings: mail_listing.Listings = {}

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection; the database's failures as one-line OSErrors."""
        import psycopg

        try:
            with self.database.connection() as connection:
                yield connection
        except psycopg.Error as error:
            raise OSError(errno.EIO, f"database {self.database.where}: {one_line(error)}") from None

    @staticmethod
    def _name(address: str) -> str:
        """The canonical address of ``address``'s mailbox; ValueError if it can have none."""
        mailbox_location(Path("/"), address)  # the names alone: the Maildir store's rules
        return canonical(address)

    @staticmethod
    def _folder(folder: str | None) -> str:
        return INBOX if folder is None else folder_name(folder)

    # --- delivering ---------------------------------------------------------------------------------

    def deliver(
        self,
        address: str,
        headers: bytes,
        content: BinaryIO,
        key: str,
        *,
        received_at: float,
        size: int,
        recovering: bool,
        folder: str | None = None,
    ) -> StoredMessage:
        """See :meth:`postoffice.storage.MailboxStore.deliver`: the body is streamed into the
        database a chunk at a time, then the message row takes its UID, and all of it commits
        at once before this returns (synchronous commit: durable)."""
        mailbox, target = self._name(address), self._folder(folder)
        received = float(int(received_at))
        staged, staged_size = bodies.stage(headers, content, size)  # before taking a connection
        with staged, self._connection() as connection:
            found = placed(connection, mailbox, target, key)
            made = found is None
            if found is None:
                owner = ensure_mailbox(connection, mailbox)[0]
                target_id = ensure_folder(connection, owner, target)[0]
                found = (owner, target_id, find_row(connection, mailbox, key) is not None)
            owner, target_id, earlier = found
            if earlier:
                row = find_row(connection, mailbox, key)
                if recovering and row is not None:
                    return row.stored(mailbox)
                key = f"{key}.{uuid.uuid4().hex[:12]}"  # another delivery under the same key
            stored = StoredMessage(mailbox, key, location(target, key, "", True), "", received)
            # A mailbox or folder made now is named whole: its watchers look at all of it.
            changed = payload(mailbox) if made else payload(mailbox, key, (stored.location,))
            with connection.transaction():
                body = bodies.write_body(connection, bodies.chunks_of(b"", staged, staged_size))
                insert_message(
                    connection,
                    (owner, target_id),
                    key,
                    "",
                    fresh=True,
                    received=received,
                    body=body,
                    changed=changed,
                )
        return stored

    # --- direct delivery (delivery/direct_pg.py): on the event loop, in the caller's transaction ---

    def place(self, address: str, folder: str | None) -> tuple[str, str]:
        """The mailbox and folder names a delivery to ``address`` goes to; ValueError if none."""
        return self._name(address), self._folder(folder)

    def make_place(self, mailbox: str, folder: str) -> bool:
        """Make ``mailbox`` and its ``folder`` (:meth:`place`'s) if missing; whether the mailbox
        was made now (its watchers then look at all of it)."""
        with self._connection() as connection:
            owner, made = ensure_mailbox(connection, mailbox)
            ensure_folder(connection, owner, folder)
        return made

    async def deliver_on(
        self,
        connection: Any,
        place: tuple[str, str],
        key: str,
        content: AsyncIterator[bytes],
        *,
        received_at: float,
        whole: bool = False,
        small: bool = False,
    ) -> StoredMessage:
        """Store ``content`` (header fields included) as message ``key`` at ``place`` on the
        async ``connection`` and commit (:func:`postoffice.pgstore.mail_delivery.deliver`);
        NoFolder if :meth:`make_place` must make it first, psycopg's errors as they come."""
        mailbox, folder = place
        return await mail_delivery.deliver(
            connection,
            mailbox,
            folder,
            key,
            content,
            received=float(int(received_at)),
            whole=whole,
            small=small,
        )

    def describe(self, message: StoredMessage) -> str:
        return f"postgresql {self.database.where} mailbox {message.mailbox}"

    # --- mailboxes ----------------------------------------------------------------------------------

    def mailbox_name(self, address: str) -> str | None:
        try:
            return self._name(address)
        except ValueError:
            return None

    def mailboxes(self) -> Iterator[str]:
        with self._connection() as connection:
            rows = connection.execute("SELECT address FROM mailboxes ORDER BY address").fetchall()
        return iter([row[0] for row in rows])

    def has_mailbox(self, address: str) -> bool:
        mailbox = self.mailbox_name(address)
        if mailbox is None:
            return False
        with self._connection() as connection:
            return mailbox_id(connection, mailbox) is not None

    # --- messages -----------------------------------------------------------------------------------

    def list_messages(self, address: str) -> list[StoredMessage]:
        mailbox = self._name(address)
        with self._connection() as connection:
            return [row.stored(mailbox) for row in mail_listing.all_rows(connection, mailbox)]

    def look_up(self, address: str, candidates: Mapping[str, Sequence[str]]) -> dict[str, StoredMessage]:
        if not candidates:
            return {}
        mailbox = self._name(address)
        with self._connection() as connection:
            rows = mail_listing.rows_by_key(connection, mailbox, list(candidates))
        found = {}
        for row in rows:
            stored = row.stored(mailbox)
            if stored.location in candidates.get(row.key, ()):
                found[row.key] = stored
        return found

    def find(self, address: str, key: str, location: str | None = None) -> StoredMessage | None:
        mailbox = self._name(address)
        with self._connection() as connection:
            row = find_row(connection, mailbox, key)
        return None if row is None else row.stored(mailbox)

    def _row(self, connection: Any, message: StoredMessage, *, lock: bool = False) -> MessageRow:
        """The row of ``message`` if it is still where it says; MessageGone if not."""
        row = find_row(connection, message.mailbox, message.key, lock=lock)
        if row is None or row.stored(message.mailbox).location != message.location:
            raise MessageGone(f"{message.mailbox}: {message.location} is gone")
        return row

    def read(self, message: StoredMessage) -> BinaryIO:
        """The message's bytes, fetched a chunk at a time as they are read (never whole)."""
        with self._connection() as connection:
            row = self._row(connection, message)
        name = f"{message.mailbox}: {message.location}"
        return bodies.reader(self._connection, row.body, row.size, name)

    def set_flags(self, message: StoredMessage, flags: str) -> StoredMessage:
        """Give the message exactly ``flags`` (a new mod-sequence if they changed, RFC 7162)."""
        flags = sorted_flags(flags)
        with self._connection() as connection, connection.transaction():
            row = self._row(connection, message, lock=True)
            # A new mod-sequence for a change of flags (RFC 7162 §3.1); the folder's is raised
            # for any change, a look from new/ to cur/ too (mail_listing.listing relies on it).
            changed = flags != row.flags or row.fresh
            modseq = next_modseq(connection, row.folder_id) if changed else row.modseq
            modseq = modseq if flags != row.flags else row.modseq
            connection.execute(
                "UPDATE mail_messages SET flags = %s, fresh = false, modseq = %s WHERE id = %s",
                (flags, modseq, row.id),
            )
            now = location(row.folder, row.key, flags, False)
            notify(connection, message.mailbox, row.key, (message.location, now))
        return StoredMessage(message.mailbox, message.key, now, flags, message.received)

    def expunge(self, message: StoredMessage) -> bool:
        with self._connection() as connection, connection.transaction():
            try:
                row = self._row(connection, message, lock=True)
            except MessageGone:
                return False
            connection.execute("DELETE FROM mail_messages WHERE id = %s", (row.id,))
            next_modseq(connection, row.folder_id)
            notify(connection, message.mailbox, row.key, (message.location,))
        return True

    # --- folders ------------------------------------------------------------------------------------

    def folders(self, address: str) -> list[str]:
        mailbox = self._name(address)
        with self._connection() as connection:
            names = mail_listing.folder_names(connection, mailbox)
        return [INBOX, *sorted(name for name in names if name != INBOX)]

    def move(self, message: StoredMessage, folder: str) -> StoredMessage:
        """Move ``message`` into ``folder`` (made if missing) with its key and flags; a new UID
        there, as a Maildir folder would give it."""
        target = folder_name(folder)
        with self._connection() as connection:
            owner, _ = ensure_mailbox(connection, message.mailbox)
            target_id, made = ensure_folder(connection, owner, target)
            with connection.transaction():
                row = self._row(connection, message, lock=True)
                now = self._relocate(connection, row, target_id, target, fresh=row.fresh)
                if made:
                    notify(connection, message.mailbox)
                notify(connection, message.mailbox, row.key, (message.location, now.location))
        return StoredMessage(message.mailbox, message.key, now.location, message.flags, message.received)

    def _relocate(
        self, connection: Any, row: MessageRow, target_id: int, target: str, *, fresh: bool
    ) -> _Placed:
        """Put ``row`` into folder ``target_id`` (a new UID unless it is there already)."""
        uid = row.uid
        if target_id != row.folder_id or fresh != row.fresh:
            next_modseq(connection, row.folder_id)
        if target_id != row.folder_id:
            uid, modseq = next_uid(connection, target_id)
            connection.execute(
                "UPDATE mail_messages SET folder_id = %s, uid = %s, modseq = %s, fresh = %s WHERE id = %s",
                (target_id, uid, modseq, fresh, row.id),
            )
        elif fresh != row.fresh:
            connection.execute("UPDATE mail_messages SET fresh = %s WHERE id = %s", (fresh, row.id))
        return _Placed(uid, location(target, row.key, row.flags, fresh))

    # --- what mail clients (IMAP) do ----------------------------------------------------------------

    def create_folder(self, address: str, folder: str) -> None:
        with self._connection() as connection:
            mail_folders.create(connection, self._name(address), folder_name(folder))

    def delete_folder(self, address: str, folder: str) -> None:
        with self._connection() as connection:
            mail_folders.delete(connection, self._name(address), folder_name(folder))

    def rename_folder(self, address: str, old: str, new: str) -> None:
        with self._connection() as connection:
            mail_folders.rename(connection, self._name(address), folder_name(old), folder_name(new))

    def subscriptions(self, address: str) -> list[str] | None:
        with self._connection() as connection:
            return mail_folders.subscriptions(connection, self._name(address))

    def set_subscriptions(self, address: str, folders: Collection[str]) -> None:
        with self._connection() as connection:
            mail_folders.set_subscriptions(connection, self._name(address), folders)

    def listing(self, address: str, folder: str | None) -> FolderListing:
        mailbox, name = self._name(address), self._folder(folder)
        with self._connection() as connection:
            if folder is None:
                ensure_mailbox(connection, mailbox)
            return mail_listing.listing(connection, mailbox, name, self._listings)

    def keywords(self, address: str, folder: str | None) -> list[str]:
        with self._connection() as connection:
            return mail_folders.keywords(connection, self._name(address), self._folder(folder))

    def keyword_letters(self, address: str, folder: str | None, names: Collection[str], *, add: bool) -> str:
        if not names:
            return ""
        mailbox, name = self._name(address), self._folder(folder)
        with self._connection() as connection:
            return mail_folders.keyword_letters(connection, mailbox, name, names, add=add)

    def begin_append(self, address: str, folder: str | None) -> SpooledMessage:
        """A message kept in a temporary file as it arrives, streamed in by :meth:`add`."""
        return SpooledMessage(self._name(address), folder)

    def add(
        self,
        address: str,
        folder: str | None,
        content: bytes | PendingMessage,
        *,
        flags: str,
        received: float,
    ) -> tuple[int, StoredMessage]:
        mailbox, target = self._name(address), self._folder(folder)
        if isinstance(content, SpooledMessage):
            stream, size = content.content(), content.size
        elif isinstance(content, bytes):
            stream, size = io.BytesIO(content), len(content)
        else:
            raise TypeError("a pending message of another store")
        try:
            return self._add(mailbox, target, stream, size, sorted_flags(flags), float(int(received)))
        finally:
            if isinstance(content, SpooledMessage):
                content.discard()

    def _add(
        self, mailbox: str, target: str, stream: BinaryIO, size: int, flags: str, received: float
    ) -> tuple[int, StoredMessage]:
        key = "imap" + uuid.uuid4().hex
        with self._connection() as connection:
            owner = (
                ensure_mailbox(connection, mailbox)[0] if target == INBOX else mailbox_id(connection, mailbox)
            )
            target_id = None if owner is None else folder_id(connection, owner, target)
            if owner is None or target_id is None:
                raise FileNotFoundError(target)
            stored = StoredMessage(mailbox, key, location(target, key, flags, False), flags, received)
            changed = payload(mailbox, key, (stored.location,))
            with connection.transaction():
                body = bodies.write_body(connection, bodies.chunks_of(b"", stream, size))
                uid = insert_message(
                    connection,
                    (owner, target_id),
                    key,
                    flags,
                    fresh=False,
                    received=received,
                    body=body,
                    changed=changed,
                )
        return uid, stored

    def copy(self, message: StoredMessage, folder: str | None, *, move: bool) -> tuple[int, StoredMessage]:
        target = self._folder(folder)
        with self._connection() as connection, connection.transaction():
            owner = mailbox_id(connection, message.mailbox)
            target_id = None if owner is None else folder_id(connection, owner, target)
            if owner is None or target_id is None:
                raise FileNotFoundError(folder)
            row = self._row(connection, message, lock=True)
            if move:
                placed = self._relocate(connection, row, target_id, target, fresh=False)
                notify(connection, message.mailbox, row.key, (message.location, placed.location))
                return placed.uid, StoredMessage(
                    message.mailbox, row.key, placed.location, row.flags, row.received
                )
            key = "imap" + uuid.uuid4().hex
            where = location(target, key, row.flags, False)
            body = (bodies.copy_body(connection, row.body), row.size)
            uid = insert_message(
                connection,
                (owner, target_id),
                key,
                row.flags,
                fresh=False,
                received=row.received,
                body=body,
                changed=payload(message.mailbox, key, (where,)),
            )
        return uid, StoredMessage(message.mailbox, key, where, row.flags, row.received)

    def watch(self, on_changes: OnChanges, *, force_polling: bool | None = None) -> PgMailboxWatch:
        """A LISTEN/NOTIFY watch (``force_polling`` does not apply: the database tells)."""
        return PgMailboxWatch(self.database, on_changes)
