"""The embedded :class:`~postoffice.storage.MailboxStore`: one Maildir per address under a mail root.

Untrusted input seen here: recipient addresses from SMTP clients (an address becomes a
directory only through :func:`~postoffice.maildir.names.mailbox_path`, which keeps it inside the
root), message bytes (copied verbatim, never parsed here), and the names other programs give to
files in the Maildirs (Dovecot, mutt, a person with a shell). A location (``new/NAME``,
``cur/NAME``) from outside is only ever split and checked (:func:`split_location`); a message
file is opened, renamed or removed only as a plain file found in its own mailbox's ``new/`` or
``cur/``, never through a symlink.

Message files keep the bytes as the spool holds them, CRLF line endings included, like the
added header lines; Dovecot, mutt and Python's :mod:`mailbox` read both line-ending styles.
Files get ``mail_file_mode`` (0600 by default; 0660 lets a group such as Dovecot's read and
flag them) and new directories the matching mode (0700; 0770 for 0660), whatever the umask.

A message reaches a Maildir by one of two routes, both through this store: :meth:`deliver`
copies it from the spool (the queue's local agent), and :meth:`new_file` names the file the
spool's writer streams it into when it is delivered before the reply (direct delivery). Both
name it :func:`maildir_name` of the same key and make it visible the same way: synced data,
then its name in ``new/``, then ``new/`` synced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from postoffice.addresses import canonical
from postoffice.config import Config, maildir_directory_mode
from postoffice.durable import CommitFile, commit_file, fsync_directory, remove_quietly
from postoffice.errors import MessageGone
from postoffice.maildir import keywords, mailbox_folders, uids, write
from postoffice.maildir.folders import INBOX, directory_of, name_of
from postoffice.maildir.layout import (
    STALE_TMP_AGE,
    find_mailboxes,
    flags_of,
    folder_directories,
    folder_path,
    key_of,
    maildir_name,
    make_maildir,
    message_files,
    name_time,
    remove_stale,
    split_location,
    with_flags,
)
from postoffice.maildir.mailbox_folders import TmpMessage
from postoffice.maildir.names import mailbox_location, mailbox_path
from postoffice.maildir.watch import MaildirWatch
from postoffice.storage import FolderListing, OnChanges, PendingMessage, StoredMessage

# Maildirs remembered as existing; past this many, forget them all (one entry per mailbox).
_MADE_MAILDIRS = 10_000

# Folder listings kept for IMAP (an IDLE looks several times a second); past this many, forget.
_LISTINGS = 1000
# A listing is reused only if it was made this long (ns) after its directories last changed:
# a change in the same tick of the file system's clock (a second, on some) as the last look
# would leave the modification times as they were.
_SETTLED_NS = 1_000_000_000


class MaildirStore:
    """Maildirs at ``mail_root/<domain>/<local>/``; deliveries named for ``hostname``."""

    def __init__(
        self, mail_root: Path, hostname: str, *, file_mode: int = 0o600, commit: CommitFile = commit_file
    ) -> None:
        """``file_mode``: of every file delivered (a checked ``mail_file_mode``); ``commit``: how
        :meth:`deliver` makes a copy durable (the server's group commit, shared with the spool)."""
        self.mail_root = mail_root
        self._commit_file = commit
        self.hostname = hostname
        self.file_mode = file_mode
        self.directory_mode = maildir_directory_mode(file_mode)
        # Maildirs known to exist, so that a delivery does not try five mkdirs each time.
        self._made: set[Path] = set()
        # Folder listings by Maildir: the modification times they were made at, when, and them.
        self._listings: dict[Path, tuple[tuple[int, ...], int, FolderListing]] = {}

    @classmethod
    def from_config(cls, config: Config, *, commit: CommitFile = commit_file) -> MaildirStore:
        return cls(config.mail_dir, config.hostname, file_mode=config.mail_file_mode, commit=commit)

    def prepare(self, maildir: Path, *, again: bool = False) -> None:
        """Make ``maildir`` (a checked :func:`mailbox_path`) unless this store made it already;
        ``again`` when it has gone since (a person removed it)."""
        if again:
            self._made.discard(maildir)
        if maildir in self._made:
            return
        make_maildir(self.mail_root, maildir, self.directory_mode)
        remove_stale(maildir / "tmp", time.time() - STALE_TMP_AGE)
        if len(self._made) >= _MADE_MAILDIRS:
            self._made.clear()
        self._made.add(maildir)

    # --- delivering -------------------------------------------------------------------------------

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
        """See :meth:`postoffice.storage.MailboxStore.deliver`."""
        mailbox = mailbox_path(self.mail_root, address)
        maildir = folder_path(mailbox, folder)
        name = maildir_name(key, received_at, self.hostname, len(headers) + size)
        if maildir != mailbox:
            self.prepare(mailbox)  # a folder's Maildir is made inside its mailbox's
        self.prepare(maildir)
        if recovering:
            earlier = write.find_delivered(maildir, name, f"{int(received_at)}.{key}.")
            if earlier is not None:
                # Synced again: the crash may have come between the link and the sync.
                fsync_directory(earlier.parent)
                return self._stored(canonical(address), earlier.parent.name, earlier.name, str(earlier))
        temporary = maildir / "tmp" / name
        final = maildir / "new" / name
        try:
            fd = write.write_unsynced(temporary, headers, content, size, self.file_mode)
        except FileNotFoundError:
            # The Maildir went away since it was made (a person removed it): make it again.
            self.prepare(maildir, again=True)
            fd = write.write_unsynced(temporary, headers, content, size, self.file_mode)
        try:
            self._commit_file(fd, final.parent, publish=lambda: write.publish(temporary, final))
        finally:
            os.close(fd)
            remove_quietly(temporary)
        where = "" if folder is None else f"{maildir.name}/"
        return StoredMessage(
            canonical(address), key_of(name), f"{where}new/{name}", "", float(int(received_at))
        )

    def new_file(self, address: str, key: str, received_at: float, header: bytes) -> MaildirFile:
        """The file a message for ``address`` is streamed into by someone else's writer (direct
        delivery): ValueError if the address names no mailbox."""
        # The names alone, here on the event loop; the symlink check is made in the file thread
        # just before the file is created (MaildirFile.create).
        return MaildirFile(self, address, mailbox_location(self.mail_root, address), key, received_at, header)

    def describe(self, message: StoredMessage) -> str:
        return f"maildir {mailbox_location(self.mail_root, message.mailbox)}"

    # --- mailboxes ----------------------------------------------------------------------------------

    def mailbox_name(self, address: str) -> str | None:
        try:
            mailbox_path(self.mail_root, address)
        except ValueError:
            return None
        return canonical(address)

    def mailboxes(self) -> Iterator[str]:
        return (address for address, _ in find_mailboxes(self.mail_root))

    def has_mailbox(self, address: str) -> bool:
        try:
            return (mailbox_path(self.mail_root, address) / "cur").is_dir()
        except ValueError:
            return False

    # --- messages -----------------------------------------------------------------------------------

    def list_messages(self, address: str) -> list[StoredMessage]:
        return list(self._messages(address))

    def _messages(self, address: str) -> Iterator[StoredMessage]:
        maildir = mailbox_path(self.mail_root, address)
        mailbox = canonical(address)
        prefix = f"{maildir}{os.sep}"
        for subdir, name in message_files(maildir, folders=True):
            yield self._stored(mailbox, subdir, name, f"{prefix}{subdir}{os.sep}{name}")

    def look_up(self, address: str, candidates: Mapping[str, Sequence[str]]) -> dict[str, StoredMessage]:
        if not candidates:
            return {}
        prefix = f"{mailbox_path(self.mail_root, address)}{os.sep}"
        mailbox = canonical(address)
        found: dict[str, StoredMessage] = {}
        for key, locations in candidates.items():
            for location in locations:
                parts = split_location(location)
                if parts is None or key_of(parts[1]) != key:
                    continue
                path = f"{prefix}{parts[0]}{os.sep}{parts[1]}"
                try:
                    status = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(status.st_mode):  # never through a symlink
                    found[key] = self._stored(mailbox, parts[0], parts[1], path, status)
                    break
        return found

    def find(self, address: str, key: str, location: str | None = None) -> StoredMessage | None:
        if location is not None:
            found = self.look_up(address, {key: (location,)}).get(key)
            if found is not None:
                return found
        return next((message for message in self._messages(address) if message.key == key), None)

    def read(self, message: StoredMessage) -> BinaryIO:
        path = self._path(message)
        try:
            return open(path, "rb", opener=_no_follow)
        except FileNotFoundError:
            raise MessageGone(f"{message.mailbox}: {message.location} is gone") from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise MessageGone(f"{message.mailbox}: {message.location} is a symlink") from None

    def set_flags(self, message: StoredMessage, flags: str) -> StoredMessage:
        """Rename the file so its info says ``flags``; a message in ``new/`` moves to ``cur/``
        either way (someone has looked at the mailbox)."""
        path = self._path(message)
        name = with_flags(path.name, flags)
        if path.parent.name != "cur" or name != path.name:
            try:
                os.rename(path, path.parent.parent / "cur" / name)
            except FileNotFoundError:
                raise MessageGone(f"{message.mailbox}: {message.location} moved") from None
        folder = _folder_prefix(message.location)
        return StoredMessage(
            message.mailbox, message.key, f"{folder}cur/{name}", flags_of(name), message.received
        )

    # --- folders (Maildir++, maildir/folders.py) ----------------------------------------------------

    def folders(self, address: str) -> list[str]:
        """The folders of ``address``'s mailbox by name: INBOX, then the Maildir++ ones there are."""
        maildir = mailbox_path(self.mail_root, address)
        found = (name_of(directory) for directory in folder_directories(maildir))
        return [INBOX, *sorted(name for name in found if name is not None)]

    def move(self, message: StoredMessage, folder: str) -> StoredMessage:
        """Move ``message`` into ``folder`` of its mailbox (made if missing), keeping its flags and
        its key: one rename, then the new directory synced. ValueError for a name no folder can
        have; MessageGone if it was not where it was said to be."""
        directory = directory_of(folder)
        path = self._path(message)
        mailbox = mailbox_path(self.mail_root, message.mailbox)
        target = mailbox / directory if directory else mailbox
        if directory:
            self.prepare(mailbox)
            self.prepare(target)
        subdir = path.parent.name
        destination = target / subdir / path.name
        if destination != path:
            try:
                os.rename(path, destination)
            except FileNotFoundError:
                raise MessageGone(f"{message.mailbox}: {message.location} moved") from None
            with contextlib.suppress(OSError):
                fsync_directory(destination.parent)
        location = f"{directory}/{subdir}/{path.name}" if directory else f"{subdir}/{path.name}"
        return StoredMessage(message.mailbox, message.key, location, message.flags, message.received)

    def expunge(self, message: StoredMessage) -> bool:
        try:
            path = self._path(message)
            path.unlink()
        except (FileNotFoundError, MessageGone):
            return False
        with contextlib.suppress(OSError):
            fsync_directory(path.parent)
        return True

    # --- what mail clients (IMAP) do: folders, UIDs, APPEND, COPY ---------------------------------

    def _folder_dir(self, address: str, folder: str | None) -> Path:
        maildir = mailbox_path(self.mail_root, address)
        return maildir if folder is None else mailbox_folders.folder_path(maildir, folder)

    def create_folder(self, address: str, folder: str) -> None:
        maildir = mailbox_path(self.mail_root, address)
        self.prepare(maildir)
        mailbox_folders.create_folder(self.mail_root, maildir, folder, self.directory_mode)

    def delete_folder(self, address: str, folder: str) -> None:
        mailbox_folders.delete_folder(mailbox_path(self.mail_root, address), folder)

    def rename_folder(self, address: str, old: str, new: str) -> None:
        mailbox_folders.rename_folder(mailbox_path(self.mail_root, address), old, new)

    def subscriptions(self, address: str) -> list[str] | None:
        return mailbox_folders.read_subscriptions(mailbox_path(self.mail_root, address))

    def set_subscriptions(self, address: str, folders: Collection[str]) -> None:
        maildir = mailbox_path(self.mail_root, address)
        self.prepare(maildir)
        mailbox_folders.write_subscriptions(maildir, folders)

    def listing(self, address: str, folder: str | None) -> FolderListing:
        maildir = self._folder_dir(address, folder)
        if folder is None:
            self.prepare(maildir)
        elif not (maildir / "cur").is_dir():
            raise FileNotFoundError(folder)
        made = time.time_ns()
        stamp = _stamp(maildir)
        cached = self._listings.get(maildir)
        if cached is not None and cached[0] == stamp and cached[1] - max(stamp) > _SETTLED_NS:
            return cached[2]
        mailbox = canonical(address)
        where = "" if folder is None else f"{maildir.name}/"
        prefix = f"{maildir}{os.sep}"
        found = [
            self._stored(mailbox, subdir, name, f"{prefix}{subdir}{os.sep}{name}")
            for subdir, name in message_files(maildir)
        ]
        listing = uids.assign(maildir, {message.key: (message.received, message.flags) for message in found})
        numbered = sorted(
            ((listing.uids[message.key], _in_folder(message, where)) for message in found), key=_first
        )
        result = FolderListing(
            listing.uidvalidity,
            listing.uidnext,
            numbered,
            max(listing.highest, 1),
            {uid: listing.modseqs.get(uid, 1) for uid, _ in numbered},
        )
        if len(self._listings) >= _LISTINGS:
            self._listings.clear()
        self._listings[maildir] = (stamp, made, result)
        return result

    def keywords(self, address: str, folder: str | None) -> list[str]:
        return keywords.read_keywords(self._folder_dir(address, folder))

    def keyword_letters(self, address: str, folder: str | None, names: Collection[str], *, add: bool) -> str:
        maildir = self._folder_dir(address, folder)
        if not (maildir / "cur").is_dir():
            raise FileNotFoundError(folder)
        return keywords.letters_for(maildir, names, add=add)

    def begin_append(self, address: str, folder: str | None) -> TmpMessage:
        # The folder's own tmp/ (Maildir); a folder that is not there yet: the mailbox's, so the
        # literal can still be read (the APPEND then fails with TRYCREATE and it is dropped).
        maildir = self._folder_dir(address, folder)
        if not (maildir / "tmp").is_dir():
            maildir = mailbox_path(self.mail_root, address)
            self.prepare(maildir)
        return TmpMessage(maildir, self.file_mode)

    def add(
        self,
        address: str,
        folder: str | None,
        content: bytes | PendingMessage,
        *,
        flags: str,
        received: float,
    ) -> tuple[int, StoredMessage]:
        maildir = self._folder_dir(address, folder)
        if not (maildir / "cur").is_dir():
            raise FileNotFoundError(folder)
        if isinstance(content, TmpMessage):
            location = mailbox_folders.store_written(maildir, content, flags, received, self.hostname)
        elif isinstance(content, bytes):
            location = mailbox_folders.store_new(
                maildir, content, flags, received, self.hostname, self.file_mode
            )
        else:
            raise TypeError("a pending message of another store")
        return self._numbered(address, folder, maildir, location)

    def copy(self, message: StoredMessage, folder: str | None, *, move: bool) -> tuple[int, StoredMessage]:
        source = self._path(message)
        maildir = self._folder_dir(message.mailbox, folder)
        if not (maildir / "cur").is_dir():
            raise FileNotFoundError(folder)
        try:
            location = mailbox_folders.copy_into(source, maildir, message.received, self.hostname, move=move)
        except FileNotFoundError:
            raise MessageGone(f"{message.mailbox}: {message.location} moved") from None
        return self._numbered(message.mailbox, folder, maildir, location)

    def _numbered(
        self, address: str, folder: str | None, maildir: Path, location: str
    ) -> tuple[int, StoredMessage]:
        subdir, name = location.split("/", 1)
        stored = self._stored(canonical(address), subdir, name, f"{maildir}{os.sep}{location}")
        listing = uids.assign(maildir, {}, new_only={stored.key: stored.flags})
        return listing.uids[stored.key], _in_folder(stored, "" if folder is None else f"{maildir.name}/")

    def watch(self, on_changes: OnChanges, *, force_polling: bool | None = None) -> MaildirWatch:
        return MaildirWatch(self.mail_root, on_changes, force_polling=force_polling)

    def _path(self, message: StoredMessage) -> Path:
        """The file ``message.location`` names in its mailbox; MessageGone for a location no
        message of ours can have (another key's, or not ``new/NAME`` or ``cur/NAME``)."""
        parts = split_location(message.location)
        if parts is None or key_of(parts[1]) != message.key:
            raise MessageGone(f"{message.mailbox}: no message {message.key} at {message.location!r}")
        return mailbox_path(self.mail_root, message.mailbox) / parts[0] / parts[1]

    @staticmethod
    def _stored(
        mailbox: str, subdir: str, name: str, path: str, status: os.stat_result | None = None
    ) -> StoredMessage:
        received = name_time(name)
        if received is None:
            # A name without the delivery time: the file's own time, if it is still there.
            try:
                received = (status or os.lstat(path)).st_mtime
            except OSError:
                received = 0.0
        flags = flags_of(name) if subdir.endswith("cur") else ""
        return StoredMessage(mailbox, key_of(name), f"{subdir}/{name}", flags, received)


def _folder_prefix(location: str) -> str:
    """``.Junk/`` of a location in a folder, ``""`` of one in the inbox."""
    head, separator, _ = location.partition("/")
    return f"{head}/" if separator and head.startswith(".") else ""


def _first(item: tuple[int, StoredMessage]) -> int:
    return item[0]


def _stamp(maildir: Path) -> tuple[int, ...]:
    """When ``new/``, ``cur/`` and the UID list last changed: a listing made since is current."""
    stamps = []
    for name in ("new", "cur", uids.FILE_NAME):
        try:
            stamps.append(os.stat(maildir / name).st_mtime_ns)
        except FileNotFoundError:
            stamps.append(0)
    return tuple(stamps)


def _in_folder(message: StoredMessage, where: str) -> StoredMessage:
    if not where:
        return message
    return StoredMessage(
        message.mailbox, message.key, where + message.location, message.flags, message.received
    )


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


class MaildirFile:
    """A message streamed into a Maildir by someone else's writer (direct delivery): created
    in ``tmp/`` under its key, renamed into ``new/`` under :func:`maildir_name`."""

    def __init__(
        self, store: MaildirStore, address: str, maildir: Path, key: str, received_at: float, header: bytes
    ) -> None:
        self._store = store
        self._address = address
        self._maildir = maildir
        self._prefix = f"{maildir}{os.sep}"
        self._key = key
        self._received_at = received_at
        self.header = header
        self.path = f"{self._prefix}tmp{os.sep}{key}"
        self._folder: str | None = None  # filed into this folder of the mailbox, not its inbox

    def file_into(self, folder: str) -> None:
        """Go to the mailbox's ``folder`` (a Maildir++ ``.Name``) at the commit."""
        folder_path(self._maildir, folder)  # the name is checked now
        self._folder = folder

    def create(self) -> int:
        """Make the file in ``tmp/``, empty and open for writing (the store's file mode: it is
        renamed into ``new/`` as it is). OSError if the mailbox cannot take it."""
        store = self._store
        try:
            mailbox_path(store.mail_root, self._address)
        except ValueError as exc:
            # A symlink out of the mail root appeared: the queue's agent refuses it and bounces.
            raise OSError(errno.ELOOP, str(exc), str(self._maildir)) from None
        store.prepare(self._maildir)
        flags = os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return write.create_mail_file(self.path, flags, store.file_mode)
        except FileNotFoundError:
            # The Maildir went away since this process made it (a person removed it).
            store.prepare(self._maildir, again=True)
            return write.create_mail_file(self.path, flags, store.file_mode)

    def destination(self, size: int) -> str:
        """Where the complete file of ``size`` octets goes: ``new/`` under its Maildir name."""
        name = maildir_name(self._key, self._received_at, self._store.hostname, size)
        if self._folder is None:
            return f"{self._prefix}new{os.sep}{name}"
        # In the commit's worker thread: the folder is made when first needed.
        folder = folder_path(self._maildir, self._folder)
        self._store.prepare(folder)
        return f"{folder}{os.sep}new{os.sep}{name}"

    def stored(self, destination: str) -> StoredMessage:
        """The message once its file is at ``destination``."""
        name = os.path.basename(destination)
        where = "" if self._folder is None else f".{self._folder}/"
        return StoredMessage(
            canonical(self._address), key_of(name), f"{where}new/{name}", "", float(int(self._received_at))
        )
