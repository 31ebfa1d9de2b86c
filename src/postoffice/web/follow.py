"""Bring one mailbox's index rows in line with its Maildir, for the keys a watcher saw change.

Untrusted input seen here: Maildir file names that other programs (Dovecot, mutt, a person with
a shell) create, rename and remove, as the watcher reports them (:mod:`postoffice.web.watch`),
and the messages they hold, parsed by the index. A name is only ever a candidate: it is looked
up inside the mailbox's ``new/`` or ``cur/`` with ``lstat`` and used only if it is a plain file
there (no symlink is followed out of the mailbox).

The decision for each key is made from the disk as it is now, never from what the events said
happened: events arrive in batches and may be out of date, but each change on the disk brings
another event, so a decision made from a stale look is put right by the next batch.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from postoffice.web import maildir
from postoffice.web.index import Change, MailIndex, Row
from postoffice.web.maildir import Entry


@dataclass(slots=True)
class Followed:
    """What following a mailbox changed, and the keys on disk the index does not know yet
    (with their names), when it was asked not to add them."""

    changes: list[Change] = field(default_factory=list)
    unknown: dict[str, set[str]] = field(default_factory=dict)


def follow_mailbox(
    index: MailIndex,
    address: str,
    touched: Mapping[str, Collection[str]] | None,
    *,
    add_new: bool,
) -> Followed:
    """Make ``address``'s rows say what its Maildir holds for the keys in ``touched`` (each
    with the ``new/NAME`` or ``cur/NAME`` names events gave it), or for every key (None).

    A key the index knows at a name that is still there costs one ``stat`` and nothing else:
    the server's own deliveries pass through here too. A known message no longer at its name
    is looked for among its candidate names, then (once per call) in a listing of the
    Maildir. A key the index does not know is indexed if ``add_new``, else returned untouched
    (``add_new`` False goes with a ``touched`` mapping: its names are what is returned).
    """
    box = index.maildir_of(address)
    keys = None if touched is None else sorted(touched)
    known = index.rows_by_key(address, keys)
    listing: dict[str, Entry] | None = None
    if touched is None:
        listing = {entry.key: entry for entry in maildir.entries(box)}
        touched = {key: () for key in known.keys() | listing.keys()}
    moved: list[tuple[Row, Entry]] = []
    gone: list[Row] = []
    fresh: list[Entry] = []
    result = Followed()
    for key, names in touched.items():
        row = known.get(key)
        if row is None and not add_new:
            # Not even looked at: most likely the server's own delivery, being indexed now.
            result.unknown[key] = set(names)
            continue
        if row is not None and maildir.entry_at(box, row.location, key) is not None:
            continue  # where the index says it is: nothing changed for a reader
        entry = _present(box, key, names)
        if entry is None and (row is not None or listing is not None):
            if listing is None:
                listing = {item.key: item for item in maildir.entries(box)}
            entry = listing.get(key)
        if entry is None:
            if row is not None:
                gone.append(row)
        elif row is not None:
            moved.append((row, entry))
        else:
            fresh.append(entry)
    result.changes += index.apply_followed(moved, gone)
    result.changes += [Change.new(row) for row in index.add_entries(address, fresh)]
    return result


def _present(box: Path, key: str, names: Collection[str]) -> Entry | None:
    """The first of ``names`` that is a plain file of message ``key`` in ``new/`` or ``cur/``."""
    for name in sorted(names):
        subdir, _, base = name.partition("/")
        if subdir not in ("new", "cur") or "/" in base or maildir.key_of(base) != key:
            continue
        entry = Entry(box, subdir, base)
        try:
            mode = os.lstat(entry.path).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            return entry
    return None
