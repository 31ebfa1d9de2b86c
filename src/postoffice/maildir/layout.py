"""What a Maildir looks like: its directories, the names of its files, and how to list them.

Untrusted input seen here: file names in Maildirs, which other programs (mutt, Dovecot, a
person with a shell) rename and create at will. A name is only ever compared and split, never
made into a path outside the Maildir it was found in.

The specification (cr.yp.to/proto/maildir.html): a Maildir is ``tmp/``, ``new/`` and ``cur/``;
a message file's name is a unique part, then in ``cur/`` the info ``:2,FLAGS`` with flags in
ASCII order ("S" is seen). Dovecot and mutt read and write the same names, so they agree with
us on flags. Files in ``tmp/`` are deliveries in progress and never messages.

New directories get exactly the mode asked for (0700 by default; 0770 for a ``mail_file_mode``
of 0660), whatever the umask.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from postoffice.durable import fsync_directory
from postoffice.errors import DeliveryError
from postoffice.maildir.folders import name_of
from postoffice.maildir.names import mailbox_address, mailbox_path

log = logging.getLogger("postoffice.maildir")

INFO_SEPARATOR = ":2,"
# The directories holding messages; tmp/ holds deliveries in progress.
MESSAGE_DIRS = ("new", "cur")
# Keys become part of a file name; ours are "<queue ID>_<recipient index>".
_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# Files in a Maildir's tmp/ older than this are a crashed delivery's (the specification's 36 hours).
STALE_TMP_AGE = 36 * 3600


# --- directories ------------------------------------------------------------------------------


def ensure_maildir(mail_root: Path, address: str, *, mode: int = 0o700) -> Path:
    """Create the Maildir for ``address`` (``tmp``, ``new``, ``cur``; directories of ``mode``)
    and return it.

    Raises ValueError when the address names no valid mailbox.
    """
    path = mailbox_path(mail_root, address)
    make_maildir(mail_root, path, mode)
    return path


_FOLDER_RE = re.compile(r"[A-Za-z0-9]+")


def folder_path(maildir: Path, folder: str | None) -> Path:
    """The Maildir of ``folder`` inside the mailbox ``maildir`` (Maildir++: ``.Name``, as
    Dovecot and Courier keep folders); ``maildir`` itself for None, the inbox. Names are ours
    ("Junk"), never a client's; anything but letters and digits is refused (ValueError)."""
    if folder is None:
        return maildir
    if not _FOLDER_RE.fullmatch(folder):
        raise ValueError(f"not a folder name: {folder!r}")
    return maildir / f".{folder}"


def make_mail_root(mail_root: Path, mode: int) -> None:
    """The directory of every Maildir (with the directories above it, as ``mkdir -p``)."""
    mail_root.parent.mkdir(parents=True, exist_ok=True)
    _make_directory(mail_root, mode)


def _make_directory(directory: Path, mode: int) -> bool:
    """mkdir with exactly ``mode``; False when it existed (left as it is)."""
    try:
        directory.mkdir(mode=mode)
    except FileExistsError:
        return False
    if mode & 0o077:
        os.chmod(directory, mode)  # the umask (022, 027) takes group bits away
    return True


def make_maildir(mail_root: Path, path: Path, mode: int) -> None:
    """Make the Maildir ``path`` (a checked :func:`mailbox_path`) and what is missing above it."""
    if not mail_root.is_dir():
        make_mail_root(mail_root, mode)
    # new/ last: a reader that finds new/ finds a whole Maildir (Python's mailbox module, for
    # one, wants cur/ as well).
    for directory in (path.parent, path, path / "tmp", path / "cur", path / "new"):
        if _make_directory(directory, mode):
            # A new directory's name is durable only once its parent is synced; without this a
            # crash could take new/ and the message in it away after the spool has let go.
            fsync_directory(directory.parent)


def remove_stale(tmp: Path, before: float) -> None:
    """Remove files in ``tmp/`` last changed before ``before``: what a crash left half-written.

    The Maildir specification (cr.yp.to/proto/maildir.html) has files in ``tmp/`` untouched
    for 36 hours cleaned away; a live delivery takes seconds.
    """
    try:
        with os.scandir(tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < before:
                        os.unlink(entry.path)
    except OSError:
        return  # unreadable: delivery reports the real problem


# --- file names ---------------------------------------------------------------------------------


def maildir_name(key: str, received_at: float, hostname: str, size: int) -> str:
    """``<seconds>.<key>.<host>,S=<size>``: a unique name that is the same on every attempt.

    The specification's "time.unique.host", with the queue ID and recipient index as the
    unique part; the host has "/" and ":" written as \\057 and \\072 as the specification asks
    (and "," as \\054, so Dovecot's ",S=" file size, which saves it a stat, parses cleanly).
    """
    if _KEY_RE.fullmatch(key) is None:
        raise DeliveryError(f"delivery key not usable in a file name: {key!r}")
    host = hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")
    return f"{int(received_at)}.{key}.{host},S={size}"


def key_of(name: str) -> str:
    """The unique part of a Maildir file name: everything before the info (":2,...")."""
    return name.split(":", 1)[0]


def flags_of(name: str) -> str:
    _, separator, flags = name.partition(INFO_SEPARATOR)
    return flags if separator else ""


def with_flags(name: str, flags: str) -> str:
    # The specification asks for flags "in ASCII order"; duplicates would be meaningless.
    return f"{key_of(name)}{INFO_SEPARATOR}{''.join(sorted(set(flags)))}"


def name_time(name: str) -> float | None:
    """The delivery time a name starts with (ours, qmail's and Dovecot's do), if it does."""
    head = name.split(".", 1)[0]
    return float(head) if head.isdigit() else None


def split_location(location: str) -> tuple[str, str] | None:
    """``(subdir, name)`` of a location ``new/NAME`` or ``cur/NAME``, or in a folder
    ``.Junk/cur/NAME`` (subdir ``.Junk/cur``); None for anything else (a location is compared
    and joined only in this shape: never a path of its own)."""
    folder = ""
    head, _, rest = location.partition("/")
    if head.startswith("."):
        if name_of(head) is None:
            return None
        folder, location = f"{head}/", rest
    subdir, _, name = location.partition("/")
    if subdir not in MESSAGE_DIRS or not name or "/" in name or name.startswith("."):
        return None
    return f"{folder}{subdir}", name


def folder_directories(maildir: Path) -> list[str]:
    """The Maildir++ folders (``.Junk``) inside the mailbox ``maildir``: plain directories
    with a ``cur/``, named as :func:`~postoffice.maildir.folders.directory_of` names one."""
    try:
        with os.scandir(maildir) as scan:
            found = [
                item.name
                for item in scan
                if item.name.startswith(".")
                and name_of(item.name) is not None
                and item.is_dir(follow_symlinks=False)
                and os.path.isdir(os.path.join(item.path, "cur"))
            ]
    except OSError:
        return []
    return sorted(found)


def message_files(maildir: Path, *, folders: bool = False) -> Iterator[tuple[str, str]]:
    """``(subdir, name)`` of every message file in ``new/`` and ``cur/``: plain files only (a
    symlink could lead anywhere), no dot files (not messages, says the specification). With
    ``folders``, those of every Maildir++ folder too (subdir ``.Junk/cur``)."""
    yield from _files_of(maildir, "")
    if folders:
        for folder in folder_directories(maildir):
            yield from _files_of(maildir / folder, f"{folder}/")


def _files_of(maildir: Path, prefix: str) -> Iterator[tuple[str, str]]:
    for subdir in MESSAGE_DIRS:
        try:
            scan = os.scandir(maildir / subdir)
        except FileNotFoundError:
            continue
        with scan:
            for item in scan:
                if not item.name.startswith(".") and item.is_file(follow_symlinks=False):
                    yield f"{prefix}{subdir}", item.name


def find_mailboxes(mail_root: Path) -> Iterator[tuple[str, Path]]:
    """``(address, maildir)`` for every mailbox directory under ``mail_root``: a directory
    ``<domain>/<local>`` with a ``cur/``, named as :func:`mailbox_path` names one (a symlink,
    or a name this server never makes, is skipped)."""
    try:
        domains = sorted(os.scandir(mail_root), key=lambda item: item.name)
    except FileNotFoundError:
        return
    for domain in domains:
        if not domain.is_dir(follow_symlinks=False):
            continue
        for local in sorted(os.scandir(domain.path), key=lambda item: item.name):
            path = Path(local.path)
            if not local.is_dir(follow_symlinks=False) or not (path / "cur").is_dir():
                continue
            try:
                yield mailbox_address(domain.name, local.name), path
            except ValueError:
                log.warning("skipping %s: not a mailbox directory this server made", path)
