"""The mailbox index's rows: what it holds of a message, and how a row is read and written.

Part of :mod:`postoffice.web.index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from postoffice.maildir.folders import folder_of
from postoffice.web import authresults
from postoffice.web.authresults import Authentication
from postoffice.web.index_schema import _AUTH_COLUMNS

_COLUMNS = (
    "id, mailbox, key, location, sender, recipients, subject, date, received, size, seen, has_attachments,"
    " snippet, auth,"
    # The message's tags, one a line (a tag never holds a line break: web/tags.py).
    " (SELECT group_concat(tag, char(10)) FROM tags WHERE tags.mailbox = messages.mailbox"
    " AND tags.key = messages.key)"
)
# The columns a message's file gives its row (all but id, mailbox and key), as _content orders them.
_CONTENT_COLUMNS = (
    "location",
    "sender",
    "recipients",
    "subject",
    "date",
    "received",
    "size",
    "seen",
    "has_attachments",
    "snippet",
    *(name for name, _ in _AUTH_COLUMNS),
)
_INSERT = (
    f"INSERT INTO messages (mailbox, key, {', '.join(_CONTENT_COLUMNS)})"
    f" VALUES (?, ?, {', '.join('?' * len(_CONTENT_COLUMNS))}) ON CONFLICT (mailbox, key) DO NOTHING"
)
_UPDATE = f"UPDATE messages SET {', '.join(f'{name} = ?' for name in _CONTENT_COLUMNS)} WHERE id = ?"


@dataclass(frozen=True, slots=True)
class Row:
    """One indexed message."""

    id: int
    mailbox: str
    key: str
    location: str
    sender: str
    recipients: str
    subject: str
    date: float | None
    received: float
    size: int
    seen: bool
    has_attachments: bool
    # The start of the body text, for the list (message.snippet); made from SearchText.body
    # when the row is written.
    snippet: str = ""
    # The results of our Authentication-Results field; None when the message has none.
    auth: Authentication | None = None
    # Its tags, sorted (web/tags.py).
    tags: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        """The folder it is filed in: "INBOX", or "Junk" for a DMARC quarantine's copy, or any
        other Maildir++ folder."""
        return folder_of(self.location)


@dataclass(frozen=True, slots=True)
class SearchText:
    """What full-text search sees of a message beyond its row: all recipients and the body."""

    recipients: str
    body: str


@dataclass(frozen=True, slots=True)
class MailboxCount:
    address: str
    total: int
    unread: int


@dataclass(frozen=True, slots=True)
class Page:
    total: int
    rows: list[Row]


@dataclass(frozen=True, slots=True)
class Change:
    """A change the index followed from the disk, to announce: ``kind`` is "new" (``row`` is
    the new row), "updated" (``seen`` is the read state now) or "deleted"."""

    kind: str
    id: int
    mailbox: str
    seen: bool
    row: Row | None = None

    @classmethod
    def new(cls, row: Row) -> Change:
        return cls("new", row.id, row.mailbox, row.seen, row)


@dataclass(frozen=True, slots=True)
class SyncReport:
    mailboxes: int
    added: int
    removed: int
    updated: int


def _row(values: Sequence[object]) -> Row:
    (
        id_,
        mailbox,
        key,
        location,
        sender,
        recipients,
        subject,
        date,
        received,
        size,
        seen,
        attached,
        snippet,
        auth,
        tags,
    ) = values
    return Row(
        id=int(id_),  # type: ignore[call-overload]
        mailbox=str(mailbox),
        key=str(key),
        location=str(location),
        sender=str(sender),
        recipients=str(recipients),
        subject=str(subject),
        date=float(date) if date is not None else None,  # type: ignore[arg-type]
        received=float(received),  # type: ignore[arg-type]
        size=int(size),  # type: ignore[call-overload]
        seen=bool(seen),
        has_attachments=bool(attached),
        snippet=str(snippet),
        auth=authresults.loads(auth),
        tags=tuple(sorted(str(tags).split("\n"))) if tags else (),
    )


def _content(row: Row, snippet: str) -> tuple[object, ...]:
    """The values of _CONTENT_COLUMNS for ``row``."""
    columns = row.auth.columns() if row.auth is not None else authresults.NO_COLUMNS
    return (
        row.location,
        row.sender,
        row.recipients,
        row.subject,
        row.date,
        row.received,
        row.size,
        int(row.seen),
        int(row.has_attachments),
        snippet,
        authresults.dumps(row.auth),
        *columns,
    )
