"""Folder names: what IMAP and the web UI call a folder, and the Maildir++ directory it is.

Untrusted input seen here: folder names from web API requests (``{"folder": "Trash"}``) and
the names of directories other programs (Dovecot, mutt) make inside a mailbox. A name becomes
a directory only through :func:`directory_of`, which allows one plain component: a leading dot,
then levels of letters, digits, spaces, ``-`` and ``_`` joined by Maildir++'s ``.``; never a
``/``, never ``..``, never an empty level.

Maildir++ (Courier's, which Dovecot keeps): the inbox is the mailbox's own Maildir; a folder
``Name`` is the Maildir ``.Name`` inside it, and ``Archive/2024`` is ``.Archive.2024``. The
special-use names are RFC 6154's, with the attribute IMAP's LIST shows for each.

A message's location (:class:`~postoffice.storage.StoredMessage`) carries its folder: ``new/N``
and ``cur/N`` are in the inbox, ``.Junk/cur/N`` in Junk.
"""

from __future__ import annotations

import re

INBOX = "INBOX"
# The hierarchy separator IMAP clients see (and the web UI shows).
SEPARATOR = "/"
# RFC 6154 §2: the special-use folders, by the names Dovecot's default configuration and most
# mail programs give them.
SPECIAL_USE = {
    "Archive": "\\Archive",
    "Drafts": "\\Drafts",
    "Junk": "\\Junk",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
}
# The special-use names are matched without regard to case ("junk" is Junk), as INBOX is
# (RFC 9051 §5.1); any other name is exact, as the directory is.
_SPECIAL_BY_LOWER = {name.lower(): name for name in SPECIAL_USE}
# Where the web UI can move a message to with one click.
MOVE_TARGETS = (INBOX, "Archive", "Junk", "Trash")

# One level of a name: letters, digits, "-" and "_", and spaces inside ("Sent Items"), at most
# 64 characters; at most 8 levels. The API document publishes the same pattern.
_LEVEL = r"[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?"
FOLDER_PATTERN = rf"^{_LEVEL}(?:/{_LEVEL}){{0,7}}$"
_NAME = re.compile(FOLDER_PATTERN)


def directory_of(name: str) -> str:
    """The Maildir++ directory (``.Junk``, ``.Archive.2024``) of folder ``name``; ``""`` for
    the inbox (``INBOX`` in any case, and the special-use names too: ``junk`` is ``.Junk``).
    ValueError for a name this server does not make a directory of."""
    if name.upper() == INBOX:
        return ""
    name = _SPECIAL_BY_LOWER.get(name.lower(), name)
    if _NAME.fullmatch(name) is None or name.endswith("\n"):
        raise ValueError(f"not a folder name: {name!r}")
    return "." + ".".join(name.split(SEPARATOR))


def name_of(directory: str) -> str | None:
    """The folder name of a Maildir++ directory (``""`` is the inbox); None for a directory
    that is no folder of ours (``..``, ``.Junk..x``, a name :func:`directory_of` refuses)."""
    if directory == "":
        return INBOX
    if not directory.startswith(".") or directory in (".", ".."):
        return None
    name = SEPARATOR.join(directory[1:].split("."))
    try:
        return name if directory_of(name) == directory else None
    except ValueError:
        return None


def folder_of(location: str) -> str:
    """The folder name a message's location is in: ``.Junk/cur/N`` is ``Junk``."""
    head, separator, _ = location.partition("/")
    if not separator or not head.startswith("."):
        return INBOX
    return name_of(head) or INBOX


def special_use(name: str) -> str | None:
    """RFC 6154's attribute for folder ``name`` (``\\Junk``), if it has one."""
    return SPECIAL_USE.get(name)
