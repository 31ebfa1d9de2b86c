"""The folder a session has selected: its messages by sequence number, and what changed.

Untrusted input seen here: none from the client directly; the listings come from the
:class:`~postoffice.storage.MailboxStore`, which other programs (deliveries, the web UI,
another IMAP session, mutt) change at any time. :meth:`Selected.refresh` turns a new listing
into the untagged responses that tell the client (RFC 9051 §7.4: ``EXISTS``, ``EXPUNGE``,
``FETCH`` of changed flags), in the order that keeps sequence numbers right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postoffice.imap import responses
from postoffice.imap.grammar import SequenceSet, flag_names
from postoffice.storage import FolderListing, StoredMessage


@dataclass(slots=True)
class Selected:
    """``uids[n - 1]`` is message n's UID; ``messages`` by UID as last seen or set."""

    folder: str | None  # None: INBOX
    read_only: bool
    uidvalidity: int
    uidnext: int
    uids: list[int] = field(default_factory=list)
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    # CONDSTORE (RFC 7162): each message's mod-sequence and the folder's highest; once the
    # client enabled it, flag changes it hears of carry MODSEQ. QRESYNC: expunges are VANISHED.
    modseqs: dict[int, int] = field(default_factory=dict)
    highestmodseq: int = 1
    # The folder's keywords by number: lower-case flag letters stand for them (maildir/keywords.py).
    keywords: list[str] = field(default_factory=list)
    condstore: bool = False
    qresync: bool = False

    @classmethod
    def of(cls, folder: str | None, listing: FolderListing, *, read_only: bool) -> Selected:
        selected = cls(folder, read_only, listing.uidvalidity, listing.uidnext)
        for uid, message in listing.messages:
            selected.uids.append(uid)
            selected.messages[uid] = message
        selected.modseqs = dict(listing.modseqs)
        selected.highestmodseq = listing.highestmodseq
        return selected

    def modseq_of(self, uid: int) -> int:
        return self.modseqs.get(uid, 1)

    def flags_of(self, uid: int) -> str:
        message = self.messages.get(uid)
        return message.flags if message is not None else ""

    def seq_of(self, uid: int) -> int | None:
        """Message ``uid``'s sequence number (binary search: UIDs ascend)."""
        low, high = 0, len(self.uids)
        while low < high:
            middle = (low + high) // 2
            if self.uids[middle] < uid:
                low = middle + 1
            else:
                high = middle
        return low + 1 if low < len(self.uids) and self.uids[low] == uid else None

    def refresh(self, listing: FolderListing, *, expunges: bool) -> list[bytes]:
        """Take ``listing`` in; the responses that tell the client. Without ``expunges`` (during
        FETCH, STORE, SEARCH: RFC 9051 §7.4.1) messages that went stay until a later refresh."""
        out: list[bytes] = []
        present = {uid: message for uid, message in listing.messages}
        if expunges:
            for index in range(len(self.uids) - 1, -1, -1):
                uid = self.uids[index]
                if uid not in present:
                    out.append(self._expunged(index, uid))
        for seq, uid in enumerate(self.uids, start=1):
            message = present.get(uid)
            if message is None:
                continue
            modseq = listing.modseqs.get(uid, 1)
            if message.flags != self.flags_of(uid) or (self.condstore and modseq != self.modseq_of(uid)):
                self.modseqs[uid] = modseq
                out.append(self.flags_response(seq, uid, message.flags))
            self.messages[uid] = message
            self.modseqs[uid] = modseq
        self.highestmodseq = max(self.highestmodseq, listing.highestmodseq)
        before = len(self.uids)
        top = self.uids[-1] if self.uids else 0
        for uid, message in listing.messages:
            if uid > top:
                self.uids.append(uid)
                self.messages[uid] = message
                self.modseqs[uid] = listing.modseqs.get(uid, 1)
        if len(self.uids) != before:
            out.append(responses.untagged(len(self.uids), "EXISTS"))
        self.uidnext = max(self.uidnext, listing.uidnext)
        return out

    def forget(self, uid: int) -> bytes | None:
        """Message ``uid`` was expunged by this session: its EXPUNGE response."""
        seq = self.seq_of(uid)
        if seq is None:
            return None
        return self._expunged(seq - 1, uid)

    def _expunged(self, index: int, uid: int) -> bytes:
        del self.uids[index]
        self.messages.pop(uid, None)
        self.modseqs.pop(uid, None)
        if self.qresync:
            return f"* VANISHED {uid}\r\n".encode()  # RFC 7162 §3.2.10
        return responses.untagged(index + 1, "EXPUNGE")

    def flags_response(self, seq: int, uid: int, flags: str) -> bytes:
        """``* n FETCH (UID u FLAGS (...))``, with MODSEQ once CONDSTORE is on."""
        values: list[responses.Value] = ["UID", uid, "FLAGS", flag_names(flags, self.keywords)]
        if self.condstore:
            values += ["MODSEQ", (self.modseq_of(uid),)]
        return responses.untagged(seq, "FETCH", values)


def vanished(selected: Selected, numbers: SequenceSet, *, earlier: bool) -> list[bytes]:
    """``* VANISHED (EARLIER) uids``: UIDs of the set below UIDNEXT that no message has now
    (RFC 7162 §3.2.10; a UID that never had a message may be among them, as the RFC allows)."""
    present = set(selected.uids)
    gone = [
        uid
        for low, high in numbers.resolve(selected.uidnext - 1)
        for uid in range(low, min(high, selected.uidnext - 1, low + 1_000_000) + 1)
        if uid not in present
    ]
    if not gone:
        return []
    return [f"* VANISHED {'(EARLIER) ' if earlier else ''}{ranges_text(sorted(set(gone)))}\r\n".encode()]


def ranges_text(numbers: list[int]) -> str:
    """``1:3,7`` for [1, 2, 3, 7] (ascending)."""
    parts: list[str] = []
    start = previous = numbers[0]
    for value in [*numbers[1:], 0]:
        if value != previous + 1:
            parts.append(str(start) if start == previous else f"{start}:{previous}")
            start = value
        previous = value
    return ",".join(parts)
