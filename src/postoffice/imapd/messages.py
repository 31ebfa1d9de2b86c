"""The commands on messages of the selected folder: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE,
CLOSE (and their UID forms), and APPEND.

Untrusted input seen here: sequence sets, flags, FETCH items and SEARCH keys (parsed by
:mod:`postoffice.imap`), and the message bytes of APPEND, stored verbatim. Every store call is
for the session's own user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import cast

from postoffice.errors import MessageGone
from postoffice.imap import ImapParseError, responses
from postoffice.imap.fetch_items import FetchItem, fetch_items
from postoffice.imap.grammar import (
    arguments,
    atom,
    date_time,
    flag_list,
    flag_names,
    mailbox_name,
    number,
    sequence_set,
)
from postoffice.imap.reader import LiteralSink
from postoffice.imap.responses import Segment
from postoffice.imap.search import Key, parse_search
from postoffice.imap.tokens import Token
from postoffice.imapd.fetch import MessageView, fetch_response, fetch_values, needs_file
from postoffice.imapd.searching import Candidate, matches
from postoffice.imapd.selected import Selected, ranges_text, vanished
from postoffice.imapd.session import No, Session
from postoffice.storage import SEEN, PendingMessage, StoredMessage

Handler = Callable[[Session, Selected, list[Token]], Iterable[Segment]]


def _targets(selected: Selected, token: Token, *, by_uid: bool) -> list[tuple[int, int]]:
    """``(seq, uid)`` of the messages a set names, in ascending order."""
    return list(_iter_targets(selected, token, by_uid=by_uid))


def _iter_targets(selected: Selected, token: Token, *, by_uid: bool) -> Iterator[tuple[int, int]]:
    """:func:`_targets` one at a time (``1:*`` of a 100,000-message folder is no list); the
    set is checked before the first is given, so a bad one fails the command whole."""
    numbers = sequence_set(token)
    if by_uid:
        largest = selected.uids[-1] if selected.uids else 0
        ranges = numbers.resolve(largest)
        return (
            (seq, uid) for seq, uid in enumerate(selected.uids, 1) if any(a <= uid <= b for a, b in ranges)
        )
    count = len(selected.uids)
    ranges = sorted(numbers.resolve(count))
    if any(high > count or low < 1 for low, high in ranges):
        raise ImapParseError("no such message")
    return ((seq, selected.uids[seq - 1]) for seq in _merged(ranges))


def _merged(ranges: list[tuple[int, int]]) -> Iterator[int]:
    """The numbers of sorted, possibly overlapping ranges, each once, ascending."""
    after = 0  # the last number given
    for low, high in ranges:
        yield from range(max(low, after + 1), high + 1)
        after = max(after, high)


def modifiers(token: Token | None, allowed: tuple[str, ...]) -> dict[str, int]:
    """FETCH/STORE modifiers (RFC 7162 §3.1.4, §3.1.3; §3.2.6 VANISHED): name -> value (1 for
    a modifier without one)."""
    if token is None:
        return {}
    if not isinstance(token, list):
        raise ImapParseError("modifiers are a parenthesised list")
    found: dict[str, int] = {}
    words = list(token)
    while words:
        name = atom(words.pop(0), "modifier").upper()
        if name not in allowed:
            raise ImapParseError(f"unknown modifier {name[:20]}")
        found[name] = 1 if name == "VANISHED" else number(words.pop(0) if words else "", name)
    return found


def fetch(session: Session, selected: Selected, args: list[Token], *, by_uid: bool) -> Iterable[Segment]:
    """FETCH's responses, made one message at a time as the transport takes them (RFC 9051
    §6.4.5): ``FETCH 1:* (UID FLAGS)`` of a big folder is never a whole list in memory. What
    can fail the command (the items, the set) is checked before the first is made."""
    arguments(args, 2, 3)
    items = fetch_items(args[1])
    given = modifiers(args[2] if len(args) == 3 else None, ("CHANGEDSINCE", "VANISHED"))
    if "VANISHED" in given and (not by_uid or not selected.qresync or "CHANGEDSINCE" not in given):
        raise ImapParseError("VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC enabled")
    changed_since = given.get("CHANGEDSINCE")
    if changed_since is not None or any(item.name == "MODSEQ" for item in items):
        selected.condstore = True  # RFC 7162 §3.1: a CONDSTORE-enabling command
    if (
        selected.condstore and any(item.name in ("FLAGS", "MODSEQ") for item in items)
    ) or changed_since is not None:
        items = [item for item in items if item.name != "MODSEQ"] + fetch_items("MODSEQ")
    out: list[Segment] = []
    if by_uid or changed_since is not None:
        out += session.refresh(expunges=False)
    targets = _iter_targets(selected, args[0], by_uid=by_uid)
    if "VANISHED" in given:
        out += vanished(selected, sequence_set(args[0]), earlier=True)
    made = _fetch_each(session, selected, targets, items, changed_since)
    return itertools.chain(out, itertools.chain.from_iterable(made))


def _fetch_each(
    session: Session,
    selected: Selected,
    targets: Iterator[tuple[int, int]],
    items: list[FetchItem],
    changed_since: int | None,
) -> Iterator[list[Segment]]:
    file_needed = needs_file(items)
    seen = not selected.read_only and any(item.sets_seen for item in items)
    for seq, uid in targets:
        message = selected.messages.get(uid)
        if message is None or (changed_since is not None and selected.modseq_of(uid) <= changed_since):
            continue
        try:
            yield _fetch_one(session, selected, seq, uid, message, items, seen=seen, file_needed=file_needed)
        except MessageGone:
            continue  # removed meanwhile by someone else: its EXPUNGE comes with the next refresh


def _fetch_one(
    session: Session,
    selected: Selected,
    seq: int,
    uid: int,
    message: StoredMessage,
    items: list[FetchItem],
    *,
    seen: bool,
    file_needed: bool,
) -> list[Segment]:
    if seen and SEEN not in message.flags:
        message = _set(session, selected, uid, message, message.flags + SEEN)
        if not any(item.name == "FLAGS" for item in items):
            items = [*items, *fetch_items("FLAGS")]  # RFC 9051 §6.4.5: say \Seen was set
    modseq = selected.modseq_of(uid)
    if not file_needed:
        return fetch_response(seq, fetch_values(uid, message, items, None, modseq, selected.keywords))
    stream = session.store.read(message)
    view = MessageView(stream)
    try:
        return fetch_response(seq, fetch_values(uid, message, items, view, modseq, selected.keywords))
    finally:
        if not view.streamed:  # else the transport closes it once it has copied the literal
            stream.close()


def _set(session: Session, selected: Selected, uid: int, message: StoredMessage, flags: str) -> StoredMessage:
    updated = session.store.set_flags(message, "".join(sorted(set(flags))))
    selected.messages[uid] = updated
    return updated


def store(session: Session, selected: Selected, args: list[Token], *, by_uid: bool) -> list[bytes]:
    given: dict[str, int] = {}
    if len(args) == 4 and isinstance(args[1], list):
        given = modifiers(args[1], ("UNCHANGEDSINCE",))
        args = [args[0], args[2], args[3]]
        selected.condstore = True  # RFC 7162 §3.1
    arguments(args, 3)
    unchanged_since = given.get("UNCHANGEDSINCE")
    if selected.read_only:
        raise No("the folder is read-only (EXAMINE)", "READ-ONLY")
    action = args[1].upper() if isinstance(args[1], str) else ""
    mode, silent = action.removesuffix(".SILENT"), action.endswith(".SILENT")
    if mode not in ("FLAGS", "+FLAGS", "-FLAGS"):
        raise ImapParseError("STORE takes FLAGS, +FLAGS or -FLAGS")
    letters, keywords = flag_list(args[2])
    if keywords:  # their letters in this folder; STORE FLAGS/+FLAGS numbers new ones (RFC 9051 §2.3.2)
        letters += session.store.keyword_letters(
            session.user, selected.folder, keywords, add=mode != "-FLAGS"
        )
        selected.keywords = session.store.keywords(session.user, selected.folder)
    out, changed, modified = [], [], []
    for seq, uid in _targets(selected, args[0], by_uid=by_uid):
        message = selected.messages.get(uid)
        if message is None:
            continue
        if unchanged_since is not None and selected.modseq_of(uid) > unchanged_since:
            modified.append(uid if by_uid else seq)  # changed since the client looked (§3.1.3)
            continue
        if mode == "FLAGS":
            flags = letters
        elif mode == "+FLAGS":
            flags = message.flags + letters
        else:
            flags = "".join(letter for letter in message.flags if letter not in letters)
        if set(flags) != set(message.flags):
            try:
                message = _set(session, selected, uid, message, flags)
            except MessageGone:
                continue
        changed.append((seq, uid))
    if selected.condstore and changed:
        # The new mod-sequences: the store gives them as it sees the flags changed.
        listing = session.store.listing(session.user, selected.folder)
        selected.modseqs.update({uid: listing.modseqs.get(uid, 1) for _, uid in changed})
        selected.highestmodseq = max(selected.highestmodseq, listing.highestmodseq)
    for seq, uid in changed:
        if not silent or selected.condstore:
            out.append(selected.flags_response(seq, uid, selected.flags_of(uid)))
    if modified:
        session.last_code = f"MODIFIED {ranges_text(sorted(modified))}"
    return out


def search(session: Session, selected: Selected, args: list[Token], *, by_uid: bool) -> list[bytes]:
    query = parse_search(args)
    query = dataclasses.replace(query, key=_with_keywords(query.key, selected.keywords))
    uses_modseq = _uses_modseq(query.key)
    if uses_modseq:
        selected.condstore = True
    found, top = [], 0
    largest = (len(selected.uids), selected.uids[-1] if selected.uids else 0)
    for seq, uid in enumerate(selected.uids, 1):
        message = selected.messages.get(uid)
        if message is None:
            continue
        modseq = selected.modseq_of(uid)
        candidate = Candidate(
            seq, uid, message, functools.partial(session.store.read, message), largest, modseq
        )
        try:
            if matches(query.key, candidate):
                found.append(uid if by_uid else seq)
                top = max(top, modseq)
        except MessageGone:
            continue
        finally:
            candidate.close()
    if not query.extended:
        # RFC 7162 §3.1.5: a search by MODSEQ says the highest mod-sequence of what it found.
        tail = b" (MODSEQ %d)" % top if uses_modseq and found else b""
        return [b"* SEARCH" + b"".join(b" %d" % number for number in found) + tail + b"\r\n"]
    return [_esearch(session.tag, found, query.returns, by_uid)]


def _with_keywords(key: Key, keywords: list[str]) -> Key:
    """``key`` with each KEYWORD criterion made the FLAG criterion of the keyword's letter in
    this folder (a keyword the folder never numbered: no message has it)."""
    if key.op == "KEYWORD":
        name, wanted = cast(tuple[str, bool], key.value)
        numbers = [index for index, known in enumerate(keywords) if known.casefold() == name.casefold()]
        if not numbers:
            return Key("NONE" if wanted else "ALL")
        return Key("FLAG", (chr(ord("a") + numbers[0]), wanted))
    if key.children:
        return dataclasses.replace(
            key, children=tuple(_with_keywords(child, keywords) for child in key.children)
        )
    return key


def _uses_modseq(key: Key) -> bool:
    return key.op == "MODSEQ" or any(_uses_modseq(child) for child in key.children)


def _esearch(tag: str, found: list[int], returns: tuple[str, ...], by_uid: bool) -> bytes:
    """RFC 4731 ESEARCH: the options asked for, with the command's tag (RFC 9051 §7.3.4)."""
    parts = [f'* ESEARCH (TAG "{tag}")'] + (["UID"] if by_uid else [])
    if "MIN" in returns and found:
        parts.append(f"MIN {found[0]}")
    if "MAX" in returns and found:
        parts.append(f"MAX {found[-1]}")
    if "ALL" in returns and found:
        parts.append("ALL " + ",".join(str(number) for number in found))
    if "COUNT" in returns:
        parts.append(f"COUNT {len(found)}")
    return " ".join(parts).encode("ascii") + b"\r\n"


def copy(session: Session, selected: Selected, args: list[Token], *, by_uid: bool, move: bool) -> list[bytes]:
    arguments(args, 2)
    if move and selected.read_only:
        raise No("the folder is read-only (EXAMINE)", "READ-ONLY")
    target = session.folder_of(mailbox_name(args[1]))
    listing = session.store.listing(session.user, target)  # FileNotFoundError: [TRYCREATE]
    sources, copies = [], []
    for _seq, uid in _targets(selected, args[0], by_uid=by_uid):
        message = selected.messages.get(uid)
        if message is None:
            continue
        try:
            new_uid, copied = session.store.copy(message, target, move=move)
        except MessageGone:
            continue
        if target != selected.folder:
            _keywords_into(session, selected, target, copied)
        sources.append(uid)
        copies.append(new_uid)
    out = []
    code = f"COPYUID {listing.uidvalidity} {_set_text(sources)} {_set_text(copies)}" if sources else None
    if move:
        if code:
            out.append(responses.status(None, "OK", "Moved", code))
        for uid in sorted(sources, reverse=True):
            expunged = selected.forget(uid)
            if expunged is not None:
                out.append(expunged)
    session.last_code = None if move else code
    return out


def _keywords_into(session: Session, selected: Selected, target: str | None, copied: StoredMessage) -> None:
    """A copy keeps its keywords (RFC 9051 §6.4.7), but their letters are the target folder's
    own (its dovecot-keywords numbers them): the copy's letters are rewritten to match."""
    system = "".join(letter for letter in copied.flags if not "a" <= letter <= "z")
    if system == copied.flags:
        return
    names = [name for name in flag_names(copied.flags, selected.keywords) if not name.startswith("\\")]
    letters = session.store.keyword_letters(session.user, target, names, add=True)
    if system + letters != copied.flags:
        session.store.set_flags(copied, system + letters)


def _set_text(numbers: list[int]) -> str:
    return ",".join(str(number) for number in numbers)


def expunge(
    session: Session, selected: Selected, args: list[Token], *, uids: Token | None = None
) -> list[bytes]:
    if selected.read_only:
        raise No("the folder is read-only (EXAMINE)", "READ-ONLY")
    out = session.refresh()
    wanted = None if uids is None else {uid for _, uid in _targets(selected, uids, by_uid=True)}
    for uid in list(reversed(selected.uids)):
        message = selected.messages.get(uid)
        if message is None or "T" not in message.flags or (wanted is not None and uid not in wanted):
            continue
        session.store.expunge(message)
        expunged = selected.forget(uid)
        if expunged is not None:
            out.append(expunged)
    return out


def close(session: Session, selected: Selected, args: list[Token]) -> list[bytes]:
    arguments(args, 0)
    if not selected.read_only:
        with contextlib.suppress(No):
            expunge(session, selected, [])
    session.selected = None
    return []  # CLOSE sends no EXPUNGE responses (RFC 9051 §6.4.1)


def append(session: Session, args: list[Token], spooled: LiteralSink | None = None) -> list[bytes]:
    """APPEND (RFC 9051 §6.3.12). ``spooled``: the message literal, written to the folder's
    ``tmp/`` as it arrived (the transport's spool gives the store's PendingMessage)."""
    if not 2 <= len(args) <= 4 or not isinstance(args[-1], bytes):
        raise ImapParseError("APPEND needs a folder and a message literal")
    if spooled is not None and args[-1] != b"":
        raise ImapParseError("APPEND's message is its last argument")
    content: bytes | PendingMessage = args[-1] if spooled is None else cast(PendingMessage, spooled)
    folder = session.folder_of(mailbox_name(args[0]))
    flags, received = "", time.time()
    for extra in args[1:-1]:
        if isinstance(extra, list):
            letters, keywords = flag_list(extra)
            flags = letters + _appended_keywords(session, folder, keywords)
        else:
            received = date_time(extra).timestamp()
    try:
        listing = session.store.listing(session.user, folder)
    except FileNotFoundError:
        raise No("no such folder", "TRYCREATE") from None
    uid, _ = session.store.add(session.user, folder, content, flags=flags, received=received)
    session.last_code = f"APPENDUID {listing.uidvalidity} {uid}"
    return session.refresh() if session.selected is not None and session.selected.folder == folder else []


def _appended_keywords(session: Session, folder: str | None, keywords: set[str]) -> str:
    if not keywords:
        return ""
    try:
        return session.store.keyword_letters(session.user, folder, keywords, add=True)
    except FileNotFoundError:
        raise No("no such folder", "TRYCREATE") from None


APPEND = append
SELECTED: dict[str, Handler] = {
    "FETCH": lambda s, sel, a: fetch(s, sel, a, by_uid=False),
    "UID FETCH": lambda s, sel, a: fetch(s, sel, a, by_uid=True),
    "STORE": lambda s, sel, a: store(s, sel, a, by_uid=False),
    "UID STORE": lambda s, sel, a: store(s, sel, a, by_uid=True),
    "SEARCH": lambda s, sel, a: search(s, sel, a, by_uid=False),
    "UID SEARCH": lambda s, sel, a: search(s, sel, a, by_uid=True),
    "COPY": lambda s, sel, a: copy(s, sel, a, by_uid=False, move=False),
    "UID COPY": lambda s, sel, a: copy(s, sel, a, by_uid=True, move=False),
    "MOVE": lambda s, sel, a: copy(s, sel, a, by_uid=False, move=True),
    "UID MOVE": lambda s, sel, a: copy(s, sel, a, by_uid=True, move=True),
    "EXPUNGE": lambda s, sel, a: expunge(s, sel, arguments(a, 0)),
    "UID EXPUNGE": lambda s, sel, a: expunge(s, sel, a, uids=arguments(a, 1)[0]),
    "CLOSE": close,
    "CHECK": lambda s, sel, a: s.refresh(),
}
