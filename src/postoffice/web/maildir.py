"""Reading-side Maildir operations: find a message by its key, change its flags, delete it.

Untrusted input seen here: file names in Maildirs, which other programs (mutt, Dovecot, a
person with a shell) rename and create at will, and message keys from the index. A key is
never a path: it is compared with directory entries, and only names found by listing ``new/``
and ``cur/`` are ever opened, renamed or removed.

Names follow the Maildir specification (cr.yp.to/proto/maildir.html): a message's unique
name, then in ``cur/`` the info ``:2,FLAGS`` with flags in ASCII order; "S" is seen. A
reader moves a message from ``new/`` to ``cur/`` when it has seen it is there; marking it
read adds "S". Dovecot and mutt read and write the same names, so they agree on read state.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from postoffice.durable import fsync_directory

INFO_SEPARATOR = ":2,"
SEEN = "S"


@dataclass(frozen=True, slots=True)
class Entry:
    """One message file: ``subdir`` is ``new`` or ``cur``, ``key`` its unique name."""

    maildir: Path
    subdir: str
    name: str

    @property
    def key(self) -> str:
        return key_of(self.name)

    @property
    def path(self) -> Path:
        return self.maildir / self.subdir / self.name

    @property
    def relative(self) -> str:
        return f"{self.subdir}/{self.name}"

    @property
    def flags(self) -> str:
        return flags_of(self.name) if self.subdir == "cur" else ""

    @property
    def seen(self) -> bool:
        return SEEN in self.flags


def key_of(name: str) -> str:
    """The unique part of a Maildir file name: everything before the info (":2,...")."""
    return name.split(":", 1)[0]


def flags_of(name: str) -> str:
    _, separator, flags = name.partition(INFO_SEPARATOR)
    return flags if separator else ""


def with_flags(name: str, flags: str) -> str:
    # The specification asks for flags "in ASCII order"; duplicates would be meaningless.
    return f"{key_of(name)}{INFO_SEPARATOR}{''.join(sorted(set(flags)))}"


def entries(maildir: Path) -> Iterator[Entry]:
    """Every message file in ``new/`` and ``cur/`` (``tmp/`` holds deliveries in progress)."""
    for subdir in ("new", "cur"):
        try:
            scan = os.scandir(maildir / subdir)
        except FileNotFoundError:
            continue
        with scan:
            for item in scan:
                # Dot files are not messages (the specification; Dovecot keeps none there).
                if not item.name.startswith(".") and item.is_file(follow_symlinks=False):
                    yield Entry(maildir, subdir, item.name)


def find(maildir: Path, key: str) -> Entry | None:
    """The file holding the message ``key`` now, wherever a reader has moved it."""
    for entry in entries(maildir):
        if entry.key == key:
            return entry
    return None


def entry_at(maildir: Path, relative: str, key: str) -> Entry | None:
    """The entry at ``relative`` ("cur/NAME") if it is still there and still ``key``."""
    subdir, _, name = relative.partition("/")
    if subdir not in ("new", "cur") or "/" in name or key_of(name) != key:
        return None
    entry = Entry(maildir, subdir, name)
    return entry if entry.path.is_file() else None


def set_seen(entry: Entry, seen: bool) -> Entry:
    """Rename the file so its flags say ``seen``; returns where it is now.

    A message in ``new/`` moves to ``cur/`` either way: someone has looked at the mailbox.
    Raises FileNotFoundError if another program moved it meanwhile (the caller finds it again).
    """
    flags = entry.flags.replace(SEEN, "") + (SEEN if seen else "")
    target = Entry(entry.maildir, "cur", with_flags(entry.name, flags))
    if target != entry:
        os.rename(entry.path, target.path)
    return target


def delete(entry: Entry) -> bool:
    """Remove the message file; False if it was already gone."""
    try:
        entry.path.unlink()
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        fsync_directory(entry.path.parent)
    return True
