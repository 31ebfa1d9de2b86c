"""What mail clients do to a mailbox's folders: make, remove and rename them, put messages in
them (APPEND, COPY, MOVE), and remember the subscribed ones.

Untrusted input seen here: folder names mail clients choose (IMAP CREATE, RENAME, APPEND,
COPY), which become directory names only through
:func:`~postoffice.maildir.folders.directory_of` (one plain ``.Name`` directly inside the
mailbox, never a path of its own); and message bytes from APPEND, written verbatim.

Each folder made here gets an empty ``maildirfolder`` file, as Maildir++ asks.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Collection
from pathlib import Path

from postoffice.durable import commit_file, fsync_directory, remove_quietly, replace_file, write_all
from postoffice.maildir import write
from postoffice.maildir.folders import SEPARATOR, directory_of, name_of
from postoffice.maildir.layout import (
    folder_directories,
    maildir_name,
    make_maildir,
    split_location,
    with_flags,
)

# The user's IMAP subscriptions, one folder name a line, in the mailbox's own Maildir (not
# Dovecot's "subscriptions", whose format differs, so both can serve the same Maildir).
SUBSCRIPTIONS = "postoffice-subscriptions"


def folder_path(maildir: Path, name: str) -> Path:
    """The Maildir of folder ``name`` (not INBOX) inside mailbox ``maildir``; ValueError for a
    name that is no folder's."""
    directory = directory_of(name)
    if not directory:
        raise ValueError(f"{name!r} is the inbox, not a folder")
    return maildir / directory


def create_folder(mail_root: Path, maildir: Path, name: str, mode: int) -> None:
    """Make folder ``name`` (FileExistsError if it is there)."""
    path = folder_path(maildir, name)
    if path.exists():
        raise FileExistsError(name)
    make_maildir(mail_root, path, mode)
    marker = os.open(path / "maildirfolder", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(marker)


def delete_folder(maildir: Path, name: str) -> None:
    """Remove folder ``name`` with what it holds (FileNotFoundError if it is not there)."""
    path = folder_path(maildir, name)
    if not (path / "cur").is_dir() or path.is_symlink():
        raise FileNotFoundError(name)
    shutil.rmtree(path)
    fsync_directory(maildir)


def rename_folder(maildir: Path, old: str, new: str) -> None:
    """Rename folder ``old`` and its subfolders to ``new`` (RFC 9051 §6.3.6)."""
    source, target = folder_path(maildir, old), folder_path(maildir, new)
    if not (source / "cur").is_dir():
        raise FileNotFoundError(old)
    if target.exists():
        raise FileExistsError(new)
    children = [name_of(directory) for directory in folder_directories(maildir)]
    inferiors = [name for name in children if name is not None and name.startswith(f"{old}{SEPARATOR}")]
    os.rename(source, target)
    for child in inferiors:
        os.rename(folder_path(maildir, child), folder_path(maildir, new + child[len(old) :]))
    fsync_directory(maildir)


def store_new(folder: Path, content: bytes, flags: str, received: float, hostname: str, mode: int) -> str:
    """Write ``content`` as a new message of ``folder`` with ``flags`` (APPEND), durably; its
    location (``cur/NAME``)."""
    key = "imap" + uuid.uuid4().hex
    name = with_flags(maildir_name(key, received, hostname, len(content)), flags)
    temporary, final = folder / "tmp" / key, folder / "cur" / name
    fd = write.create_mail_file(temporary, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        write_all(fd, content)
        commit_file(fd, final.parent, publish=lambda: os.rename(temporary, final))
    finally:
        os.close(fd)
        remove_quietly(temporary)
    os.utime(final, (received, received))
    return f"cur/{name}"


class TmpMessage:
    """A message written into ``folder/tmp/`` as it arrives (a big APPEND), published into
    ``cur/`` by rename (:func:`store_written`): the Maildir recipe, never held whole."""

    def __init__(self, folder: Path, mode: int) -> None:
        self.key = "imap" + uuid.uuid4().hex
        self.path = folder / "tmp" / self.key
        flags = os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        self.fd: int | None = write.create_mail_file(self.path, flags, mode)
        self.size = 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self.fd is None:
            return  # failed or discarded: the rest of the literal is read and dropped
        try:
            write_all(self.fd, data)
        except OSError as exc:
            self.error = exc
            self.discard()
            return
        self.size += len(data)

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        remove_quietly(self.path)


def store_written(folder: Path, message: TmpMessage, flags: str, received: float, hostname: str) -> str:
    """Publish ``message`` (written in this mailbox's ``tmp/``) as a new message of ``folder``
    with ``flags``, durably; its location (``cur/NAME``)."""
    if message.error is not None:
        raise message.error
    if message.fd is None:
        raise FileNotFoundError(message.path)
    name = with_flags(maildir_name(message.key, received, hostname, message.size), flags)
    final = folder / "cur" / name
    try:
        commit_file(message.fd, final.parent, publish=lambda: os.rename(message.path, final))
    finally:
        message.discard()
    os.utime(final, (received, received))
    return f"cur/{name}"


def copy_into(source: Path, folder: Path, received: float, hostname: str, *, move: bool) -> str:
    """Put the message file ``source`` into ``folder`` (moved, or copied under a new key), with
    its flags; its location there. The copy is a hard link where the file system allows."""
    parts = split_location(f"cur/{source.name}")
    if parts is None:
        raise ValueError(f"not a message file: {source.name}")
    if move:
        name = source.name if ":2," in source.name else with_flags(source.name, "")
        os.rename(source, folder / "cur" / name)
    else:
        key = "imap" + uuid.uuid4().hex
        flags = source.name.partition(":2,")[2]
        name = with_flags(maildir_name(key, received, hostname, source.stat().st_size), flags)
        try:
            os.link(source, folder / "cur" / name)
        except OSError:
            shutil.copyfile(source, folder / "tmp" / name)
            os.rename(folder / "tmp" / name, folder / "cur" / name)
    fsync_directory(folder / "cur")
    return f"cur/{name}"


def read_subscriptions(maildir: Path) -> list[str] | None:
    """The subscribed folder names, or None if the user never chose."""
    try:
        data = (maildir / SUBSCRIPTIONS).read_bytes()
    except FileNotFoundError:
        return None
    return [line for line in data.decode("utf-8", "replace").split("\n") if line]


def write_subscriptions(maildir: Path, folders: Collection[str]) -> None:
    names = sorted({name for name in folders if name and "\n" not in name})
    replace_file(maildir / SUBSCRIPTIONS, "".join(f"{name}\n" for name in names).encode("utf-8"))
