"""Bring one mailbox's index rows in line with its store, for the keys a watcher saw change.

Untrusted input seen here: locations (Maildir file names) that other programs (Dovecot, mutt, a
person with a shell) create, rename and remove, as the watcher reports them
(:mod:`postoffice.web.watch`), and the messages they hold, parsed by the index. A location is
only ever a candidate: the store looks it up inside the mailbox
(:meth:`~postoffice.storage.MailboxStore.look_up`: for a Maildir, ``new/`` or ``cur/`` with
``lstat``, a plain file only, so no symlink is followed out of the mailbox).

The decision for each key is made from the disk as it is now, never from what the events said
happened: events arrive in batches and may be out of date, but each change on the disk brings
another event, so a decision made from a stale look is put right by the next batch.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from postoffice.storage import StoredMessage
from postoffice.web.index import Change, MailIndex, Row


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
    """Make ``address``'s rows say what its mailbox holds for the keys in ``touched`` (each
    with the locations, ``new/NAME`` or ``cur/NAME``, changes were seen at), or for every key
    (None).

    A key the index knows at a location that still holds it costs one ``stat`` and nothing
    else: the server's own deliveries pass through here too. A known message no longer at its
    location is looked for at the locations seen, then (once per call) in a listing of the
    mailbox. A key the index does not know is indexed if ``add_new``, else returned untouched
    (``add_new`` False goes with a ``touched`` mapping: its locations are what is returned).
    """
    store = index.store
    keys = None if touched is None else sorted(touched)
    known = index.rows_by_key(address, keys)
    listing: dict[str, StoredMessage] | None = None
    if touched is None:
        listing = {message.key: message for message in store.list_messages(address)}
        touched = {key: () for key in known.keys() | listing.keys()}
    result = Followed()
    wanted: dict[str, Collection[str]] = {}
    for key, names in touched.items():
        if key not in known and not add_new:
            # Not even looked at: most likely the server's own delivery, being indexed now.
            result.unknown[key] = set(names)
        else:
            wanted[key] = names
    # Where the index says they are: nothing changed for a reader.
    unmoved = store.look_up(address, {key: (known[key].location,) for key in wanted if key in known})
    wanted = {key: names for key, names in wanted.items() if key not in unmoved}
    present = store.look_up(address, {key: sorted(names) for key, names in wanted.items()})
    moved: list[tuple[Row, StoredMessage]] = []
    gone: list[Row] = []
    fresh: list[StoredMessage] = []
    for key in wanted:
        row = known.get(key)
        found = present.get(key)
        if found is None and (row is not None or listing is not None):
            if listing is None:
                listing = {message.key: message for message in store.list_messages(address)}
            found = listing.get(key)
        if found is None:
            if row is not None:
                gone.append(row)
        elif row is not None:
            moved.append((row, found))
        else:
            fresh.append(found)
    result.changes += index.apply_followed(moved, gone)
    result.changes += [Change.new(row) for row in index.add_found(fresh)]
    return result
