"""An authenticated IMAP session over the storage seam: folders, selection, and dispatch.

Untrusted input seen here: parsed commands from a logged-in client (names of folders, sets of
messages) and, through the store, mail other people sent. A session only ever names its own
user's mailbox: every store call passes ``self.user``, fixed at login.

Methods block (the store waits for the disk): the transport runs
:func:`postoffice.imapd.dispatch.execute` in a worker thread, one command at a time. Each returns the untagged responses; the transport adds
the tagged ``OK`` (or ``NO``/``BAD`` from :class:`No` and
:class:`~postoffice.imap.ImapParseError`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

from postoffice.errors import MessageGone
from postoffice.imap import ImapParseError, responses
from postoffice.imap.grammar import (
    DELIMITER,
    SequenceSet,
    arguments,
    atom,
    mailbox_name,
    number,
    sequence_set,
    text,
)
from postoffice.imap.tokens import Token
from postoffice.imapd.selected import Selected, vanished
from postoffice.storage import MailboxStore, StoredMessage

# RFC 6154 special-use folders, made at the first login (Thunderbird, iOS Mail and K-9 find
# them by attribute, not by name).
SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
# Maildir names carry the size as ",S=<octets>" (ours, Dovecot's); STATUS SIZE reads it there.
_SIZE_IN_NAME = re.compile(r",S=([0-9]{1,15})(?:[,:]|\Z)")
_STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "RECENT", "SIZE", "HIGHESTMODSEQ")


class No(Exception):
    """The command failed: answered ``NO [code] text``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


class Session:
    """One logged-in user's IMAP session."""

    def __init__(self, store: MailboxStore, user: str) -> None:
        self.store = store
        self.user = user
        self.selected: Selected | None = None
        # A response code for the tagged OK (APPENDUID, COPYUID: RFC 4315), set by the command.
        self.last_code: str | None = None
        self.tag = ""  # the tag of the command being run (ESEARCH names it)
        self.condstore = False  # ENABLEd (RFC 7162)
        self.qresync = False

    def prepare(self) -> None:
        """Make the inbox and the special-use folders the user does not have yet."""
        self.store.listing(self.user, None)
        have = set(self.store.folders(self.user))
        for name in SPECIAL_USE:
            if name not in have:
                with contextlib.suppress(FileExistsError):
                    self.store.create_folder(self.user, name)

    def size_of(self, message: StoredMessage) -> int:
        """A message's size in octets: from its name (``,S=``, as ours and Dovecot's carry it),
        else by looking at the file."""
        match = _SIZE_IN_NAME.search(message.location)
        if match is not None:
            return int(match.group(1))
        try:
            with self.store.read(message) as stream:
                return stream.seek(0, 2)
        except MessageGone:
            return 0

    @staticmethod
    def folder_of(name: str) -> str | None:
        """The store's folder for a mailbox name (None for INBOX)."""
        return None if name == "INBOX" else name

    def refresh(self, *, expunges: bool = True) -> list[bytes]:
        """What changed in the selected folder since the client last heard (NOOP, IDLE)."""
        selected = self.selected
        if selected is None:
            return []
        listing = self.store.listing(self.user, selected.folder)
        # Another session or program may have numbered a keyword meanwhile (one small file read).
        selected.keywords = self.store.keywords(self.user, selected.folder)
        return selected.refresh(listing, expunges=expunges)

    # --- folders ----------------------------------------------------------------------------------

    def select(self, args: list[Token], *, read_only: bool) -> list[bytes]:
        arguments(args, 1, 2)
        name = mailbox_name(args[0])
        resync = _select_parameters(args[1]) if len(args) == 2 else None
        if resync is not None and resync != "CONDSTORE" and not self.qresync:
            raise ImapParseError("QRESYNC is not enabled (ENABLE QRESYNC first)")
        self.selected = None
        listing = self.store.listing(self.user, self.folder_of(name))
        selected = Selected.of(self.folder_of(name), listing, read_only=read_only)
        selected.condstore = self.condstore or resync is not None
        selected.qresync = self.qresync
        self.selected = selected
        selected.keywords = self.store.keywords(self.user, selected.folder)
        names = " ".join(["\\Answered \\Flagged \\Deleted \\Seen \\Draft", *filter(None, selected.keywords)])
        # \* : clients may make new keywords (kept in dovecot-keywords, 26 a folder).
        permanent = f"({names} \\*)" if not read_only else "()"
        out = [
            f"* FLAGS ({names})\r\n".encode(),
            f"* {len(selected.uids)} EXISTS\r\n".encode(),
            b"* 0 RECENT\r\n",
            responses.status(None, "OK", "Permanent flags", f"PERMANENTFLAGS {permanent}"),
            responses.status(None, "OK", "UIDs valid", f"UIDVALIDITY {selected.uidvalidity}"),
            responses.status(None, "OK", "Predicted next UID", f"UIDNEXT {selected.uidnext}"),
        ]
        unseen = next(
            (seq for seq, uid in enumerate(selected.uids, 1) if "S" not in selected.flags_of(uid)), None
        )
        if unseen is not None:
            out.append(responses.status(None, "OK", "First unseen", f"UNSEEN {unseen}"))
        out.append(responses.status(None, "OK", "Highest", f"HIGHESTMODSEQ {selected.highestmodseq}"))
        if isinstance(resync, tuple) and resync[0] == selected.uidvalidity:
            out += _resynchronise(selected, *resync[1:])
        return out

    def list_folders(self, args: list[Token], *, lsub: bool = False) -> list[bytes]:
        """LIST (with LIST-EXTENDED's selection and return options, RFC 5258, and LIST-STATUS,
        RFC 5819) and LSUB."""
        selection: set[str] = set()
        if args and isinstance(args[0], list):
            selection = {atom(option, "selection option").upper() for option in args[0]}
            args = args[1:]
        if len(args) not in (2, 4):
            raise ImapParseError("LIST takes a reference, a pattern and RETURN options")
        returns, status_items = _return_options(args[2:])
        reference, pattern = text(args[0], "reference"), text(args[1], "pattern")
        if not pattern and not lsub:
            return [b'* LIST (\\Noselect) "/" ""\r\n']
        names = self.store.folders(self.user)
        subscribed = self.subscribed(names)
        regex = _pattern(reference + pattern)
        out = []
        for name in names:
            if not regex.fullmatch(name) or ((lsub or "SUBSCRIBED" in selection) and name not in subscribed):
                continue
            children = any(other.startswith(name + DELIMITER) for other in names)
            attributes = ["\\HasChildren" if children else "\\HasNoChildren"]
            if name in SPECIAL_USE:
                attributes.append(SPECIAL_USE[name])
            if not lsub and name in subscribed and ("SUBSCRIBED" in selection or "SUBSCRIBED" in returns):
                attributes.append("\\Subscribed")
            kind = b"LSUB" if lsub else b"LIST"
            out.append(
                b"* "
                + kind
                + b" ("
                + " ".join(attributes).encode()
                + b') "/" '
                + responses.mailbox(name)
                + b"\r\n"
            )
            if status_items:
                out += self.status([name.encode("utf-8"), list(status_items)])
        return out

    def subscribed(self, names: list[str]) -> set[str]:
        chosen = self.store.subscriptions(self.user)
        return set(names) if chosen is None else set(chosen)

    def subscribe(self, args: list[Token], *, on: bool = True) -> list[bytes]:
        name = mailbox_name(arguments(args, 1)[0])
        names = self.store.folders(self.user)
        if on and name not in names:
            raise No("no such folder", "NONEXISTENT")
        chosen = self.subscribed(names)
        self.store.set_subscriptions(self.user, chosen | {name} if on else chosen - {name})
        return []

    def status(self, args: list[Token]) -> list[bytes]:
        arguments(args, 2)
        name = mailbox_name(args[0])
        items = args[1] if isinstance(args[1], list) else [args[1]]
        listing = self.store.listing(self.user, self.folder_of(name))
        values: list[responses.Value] = []
        for item in items:
            key = atom(item, "status item").upper()
            if key not in _STATUS_ITEMS:
                raise ImapParseError(f"unknown STATUS item {key[:20]}")
            values.append(key)
            if key == "MESSAGES":
                values.append(len(listing.messages))
            elif key == "UIDNEXT":
                values.append(listing.uidnext)
            elif key == "UIDVALIDITY":
                values.append(listing.uidvalidity)
            elif key == "HIGHESTMODSEQ":
                values.append(listing.highestmodseq)
            elif key == "UNSEEN":
                values.append(sum(1 for _, message in listing.messages if not message.seen))
            elif key == "SIZE":
                values.append(sum(self.size_of(message) for _, message in listing.messages))
            else:
                values.append(0)  # RECENT: no session here claims messages as recent
        return [b"* STATUS " + responses.mailbox(name) + b" " + responses.write(values) + b"\r\n"]

    def create(self, args: list[Token]) -> list[bytes]:
        first = arguments(args, 1, 2)[0]
        # A trailing delimiter says "a folder for folders" (RFC 9051 §6.3.4): same thing here.
        name = mailbox_name(first.rstrip(DELIMITER) if isinstance(first, str) else first)
        if name == "INBOX":
            raise No("INBOX exists", "ALREADYEXISTS")
        parts = name.split(DELIMITER)
        for depth in range(1, len(parts) + 1):  # the levels above it too (RFC 9051 §6.3.4)
            try:
                self.store.create_folder(self.user, DELIMITER.join(parts[:depth]))
            except FileExistsError:
                if depth == len(parts):
                    raise No("folder exists", "ALREADYEXISTS") from None
            except ValueError as exc:
                raise No(str(exc), "CANNOT") from None
        return []

    def delete(self, args: list[Token]) -> list[bytes]:
        name = mailbox_name(arguments(args, 1)[0])
        if name == "INBOX":
            raise No("INBOX cannot be deleted", "CANNOT")
        if self.selected is not None and self.selected.folder == name:
            self.selected = None
        self.store.delete_folder(self.user, name)
        return []

    def rename(self, args: list[Token]) -> list[bytes]:
        arguments(args, 2)
        old, new = mailbox_name(args[0]), mailbox_name(args[1])
        if "INBOX" in (old, new):
            raise No("renaming INBOX is not supported", "CANNOT")
        try:
            self.store.rename_folder(self.user, old, new)
        except FileExistsError:
            raise No("target exists", "ALREADYEXISTS") from None
        return []

    def namespace(self, args: list[Token]) -> list[bytes]:
        arguments(args, 0)
        return [b'* NAMESPACE (("" "/")) NIL NIL\r\n']

    def unselect(self, args: list[Token]) -> list[bytes]:
        arguments(args, 0)
        if self.selected is None:
            raise ImapParseError("no folder selected")
        self.selected = None
        return []

    def enable(self, args: list[Token]) -> list[bytes]:
        """RFC 5161: CONDSTORE and QRESYNC (which implies CONDSTORE, RFC 7162 §3.2.3)."""
        enabled = []
        for arg in args:
            name = atom(arg, "capability").upper()
            if name in ("CONDSTORE", "QRESYNC"):
                self.condstore = True
                self.qresync = self.qresync or name == "QRESYNC"
                enabled.append(name)
        if self.selected is not None:
            self.selected.condstore = self.condstore
            self.selected.qresync = self.qresync
        return [("* ENABLED" + "".join(f" {name}" for name in enabled) + "\r\n").encode()]


Resync = tuple[int, int, SequenceSet | None]


def _return_options(tokens: list[Token]) -> tuple[set[str], tuple[str, ...]]:
    """LIST's ``RETURN (...)``: the options, and the STATUS items asked for (RFC 5819)."""
    if not tokens:
        return set(), ()
    if atom(tokens[0], "RETURN").upper() != "RETURN" or not isinstance(tokens[1], list):
        raise ImapParseError("LIST options: RETURN (...)")
    options: set[str] = set()
    status_items: tuple[str, ...] = ()
    words = list(tokens[1])
    while words:
        option = atom(words.pop(0), "return option").upper()
        if option == "STATUS":
            items = words.pop(0) if words else None
            if not isinstance(items, list) or not items:
                raise ImapParseError("RETURN STATUS needs a list of items")
            status_items = tuple(atom(item, "status item").upper() for item in items)
        elif option not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE"):
            raise ImapParseError(f"unknown RETURN option {option[:20]}")
        options.add(option)
    return options, status_items


def _select_parameters(token: Token) -> str | Resync:
    """SELECT's ``(CONDSTORE)`` or ``(QRESYNC (uidvalidity modseq [known-uids]))`` (RFC 7162
    §3.2.5); the sequence-match data after known-uids is accepted and not needed."""
    if not isinstance(token, list) or not token:
        raise ImapParseError("SELECT parameters are a parenthesised list")
    name = atom(token[0], "parameter").upper()
    if name == "CONDSTORE" and len(token) == 1:
        return name
    if name != "QRESYNC" or len(token) != 2 or not isinstance(token[1], list) or len(token[1]) < 2:
        raise ImapParseError("unknown SELECT parameters")
    values = token[1]
    known = sequence_set(values[2]) if len(values) > 2 else None
    return (number(values[0], "uidvalidity"), number(values[1], "mod-sequence"), known)


def _resynchronise(selected: Selected, modseq: int, known: SequenceSet | None) -> list[bytes]:
    """What changed since the client's ``modseq``: the UIDs it knew that are gone (VANISHED
    (EARLIER), RFC 7162 §3.2.5.1), then the flags of the messages changed since."""
    everything = SequenceSet(((1, max(selected.uidnext - 1, 1)),))
    out = vanished(selected, known or everything, earlier=True)
    for seq, uid in enumerate(selected.uids, 1):
        if selected.modseq_of(uid) > modseq:
            out.append(selected.flags_response(seq, uid, selected.flags_of(uid)))
    return out


def _pattern(pattern: str) -> re.Pattern[str]:
    """LIST's pattern: "*" matches anything, "%" anything but the delimiter (RFC 9051 §6.3.9)."""
    parts = (".*" if char == "*" else "[^/]*" if char == "%" else re.escape(char) for char in pattern)
    return re.compile("".join(parts))


AUTHENTICATED: dict[str, Callable[[Session, list[Token]], list[bytes]]] = {
    "SELECT": lambda s, a: s.select(a, read_only=False),
    "EXAMINE": lambda s, a: s.select(a, read_only=True),
    "LIST": lambda s, a: s.list_folders(a),
    "LSUB": lambda s, a: s.list_folders(a, lsub=True),
    "STATUS": Session.status,
    "CREATE": Session.create,
    "DELETE": Session.delete,
    "RENAME": Session.rename,
    "SUBSCRIBE": Session.subscribe,
    "UNSUBSCRIBE": lambda s, a: s.subscribe(a, on=False),
    "NAMESPACE": Session.namespace,
    "UNSELECT": Session.unselect,
    "ENABLE": Session.enable,
}
