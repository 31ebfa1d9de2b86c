"""Every mailbox from one :class:`~postoffice.storage.MailboxStore` to another: folders (nested
ones and empty ones too), each message's bytes, flags, keywords and received time, and the
IMAP subscriptions.

Untrusted input seen here: message bytes (streamed through, never parsed or held whole), and
folder and keyword names mail clients chose, which the target store checks as it would a
client's.

A message is streamed into the target with :meth:`~postoffice.storage.MailboxStore.begin_append`
and published with :meth:`~postoffice.storage.MailboxStore.add`, as a big IMAP APPEND is: a
50 MB message never sits in memory. Keywords are numbered per folder (Maildir's letters), so
each one is carried by name and given the target folder's letter. UIDs are the target's own,
given in the source's UID order; the new UIDVALIDITY tells IMAP clients to fetch the folder
again (RFC 9051 §2.3.1.1).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Sequence

from postoffice.migration.tally import Progress, Tally
from postoffice.storage import MailboxStore, StoredMessage

# The inbox's name in MailboxStore.folders (any case, RFC 9051 §5.1); None in the other calls.
INBOX = "INBOX"
# Bytes read and written at a time.
CHUNK = 256 * 1024
# Keyword letters: "a" is a folder's keyword 0 (storage.MailboxStore.keywords).
_FIRST_KEYWORD = ord("a")


def copy_mailboxes(source: MailboxStore, target: MailboxStore, tally: Tally, progress: Progress) -> None:
    """Every mailbox of ``source`` into ``target``."""
    for address in sorted(source.mailboxes()):
        before = (tally.folders, tally.messages, tally.bytes)
        copy_mailbox(source, target, address, tally)
        tally.mailboxes += 1
        progress(
            f"mailbox {address}: {tally.folders - before[0]} folders,"
            f" {tally.messages - before[1]} messages ({tally.bytes - before[2]} bytes)"
        )


def copy_mailbox(source: MailboxStore, target: MailboxStore, address: str, tally: Tally) -> None:
    """One mailbox: its folders first (so nested ones exist before their messages), its
    subscriptions, then each folder's messages in UID order."""
    folders = source.folders(address)
    for folder in folders:
        if folder.upper() != INBOX:
            with contextlib.suppress(FileExistsError):  # made by an earlier run
                target.create_folder(address, folder)
    chosen = source.subscriptions(address)
    if chosen is not None:
        target.set_subscriptions(address, chosen)
    for folder in folders:
        copy_folder(source, target, address, None if folder.upper() == INBOX else folder, tally)
        tally.folders += 1


def copy_folder(
    source: MailboxStore, target: MailboxStore, address: str, folder: str | None, tally: Tally
) -> None:
    """The messages of one folder, but those the target folder holds already (same bytes)."""
    listing = source.listing(address, folder)
    names = source.keywords(address, folder)
    present = _present(target, address, folder)
    if any(names):
        # Every keyword the folder knows, used or not: a client may offer them (IMAP FLAGS).
        target.keyword_letters(address, folder, [name for name in names if name], add=True)
    for _, message in listing.messages:
        flags = _flags(target, address, folder, message.flags, names)
        size = _copy_message(source, target, message, folder, flags, present)
        if size is None:
            tally.skipped += 1
        else:
            tally.messages += 1
            tally.bytes += size


def _present(target: MailboxStore, address: str, folder: str | None) -> Counter[str]:
    """The SHA-256 of each message the target folder holds, counted (two copies of one message
    are two messages): what an earlier run copied already."""
    found: Counter[str] = Counter()
    for _, message in target.listing(address, folder).messages:
        digest = hashlib.sha256()
        with target.read(message) as stream:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
        found[digest.hexdigest()] += 1
    return found


def _flags(target: MailboxStore, address: str, folder: str | None, flags: str, names: Sequence[str]) -> str:
    """``flags`` of a source message as the target folder writes them: system flags as they
    are, each keyword letter by the keyword's name (numbered in the target as needed)."""
    system = "".join(flag for flag in flags if not flag.islower())
    keywords = []
    for flag in flags:
        number = ord(flag) - _FIRST_KEYWORD
        if flag.islower() and number < len(names) and names[number]:
            keywords.append(names[number])
    if not keywords:
        return system
    return system + target.keyword_letters(address, folder, keywords, add=True)


def _copy_message(
    source: MailboxStore,
    target: MailboxStore,
    message: StoredMessage,
    folder: str | None,
    flags: str,
    present: Counter[str],
) -> int | None:
    """Stream ``message`` into ``folder`` of the target; its size, or None when the target held
    it already (then the copy is dropped unpublished)."""
    pending = target.begin_append(message.mailbox, folder)
    digest = hashlib.sha256()
    try:
        with source.read(message) as stream:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                pending.write(chunk)
    except BaseException:
        pending.discard()
        raise
    if present[digest.hexdigest()] > 0:
        present[digest.hexdigest()] -= 1
        pending.discard()
        return None
    size = pending.size
    target.add(message.mailbox, folder, pending, flags=flags, received=message.received)
    return size
