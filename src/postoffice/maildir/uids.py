"""IMAP UIDs and UIDVALIDITY of one Maildir folder, kept durably in a small file beside it.

Untrusted input seen here: message keys (the unique part of file names other programs chose)
and the file itself, which another process of this server appends to. A line that does not
parse is skipped; a file that does not start with a UIDVALIDITY line is replaced (with a new
UIDVALIDITY, so clients resynchronise rather than trust UIDs that may have been reused).

The file, ``postoffice-uidlist`` in the folder's Maildir (not in ``new/`` or ``cur/``, so no
Maildir reader takes it for a message): a first line ``V <uidvalidity>``, then
``<uid> <key> <modseq> :<flags>`` per message, appended and fsync'd as messages are first seen,
and ``M <uid> <modseq> :<flags>`` each time a message's flags are seen changed (CONDSTORE,
RFC 7162: every change gets the next mod-sequence, so a client asks only for what changed).
A compacted file starts its mod-sequences after ``H <highest>``. A key keeps its UID for good:
UIDs are assigned once, in the order messages are found, and never reused (RFC 9051 §2.3.1.1).
Keys of messages that are gone stay in the file until it is compacted (rewritten atomically
when they outnumber the live ones). An exclusive ``flock`` keeps the server's processes apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from postoffice.durable import fsync_directory, replace_file, write_all

FILE_NAME = "postoffice-uidlist"
# Compact when this many gone keys are in the file and they outnumber the live ones.
_COMPACT_AT = 1000
_LOCK = threading.Lock()  # flock is per open file; threads of one process share this too


@dataclass(slots=True)
class UidList:
    uidvalidity: int
    uids: dict[str, int] = field(default_factory=dict)
    modseqs: dict[int, int] = field(default_factory=dict)  # uid -> its last mod-sequence
    flags: dict[int, str] = field(default_factory=dict)  # uid -> its flags as last recorded
    highest: int = 0  # the highest mod-sequence given

    @property
    def uidnext(self) -> int:
        return max(self.uids.values(), default=0) + 1


def _parse(data: bytes) -> UidList | None:
    lines = data.split(b"\n")
    head = lines[0].split()
    if len(head) != 2 or head[0] != b"V" or not head[1].isdigit():
        return None
    listing = UidList(int(head[1]))
    for line in lines[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            uid = int(parts[0])
            listing.uids[parts[1].decode("utf-8", "surrogateescape")] = uid
            _record(listing, uid, parts[2:])
        elif len(parts) == 4 and parts[0] == b"M" and parts[1].isdigit():
            _record(listing, int(parts[1]), parts[2:])
        elif len(parts) == 2 and parts[0] == b"H" and parts[1].isdigit():
            listing.highest = max(listing.highest, int(parts[1]))
    return listing


def _record(listing: UidList, uid: int, parts: list[bytes]) -> None:
    """``<modseq> :<flags>`` for ``uid`` (absent in a line from before mod-sequences: 1)."""
    if len(parts) == 2 and parts[0].isdigit() and parts[1].startswith(b":"):
        modseq = int(parts[0])
        listing.flags[uid] = parts[1][1:].decode("ascii", "replace")
    else:
        modseq = 1
    listing.modseqs[uid] = modseq
    listing.highest = max(listing.highest, modseq)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    with _LOCK:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)


def _read(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def assign(
    folder: Path, keys: Mapping[str, tuple[float, str]], *, new_only: Mapping[str, str] | None = None
) -> UidList:
    """The folder's UID list with every one of ``keys`` holding a UID, new ones appended
    durably in the order of their delivery time, and flags that changed since they were last
    recorded given a new mod-sequence. ``keys``: key -> (delivery time, flags). ``new_only``:
    key -> flags of messages certainly new (this server just stored them), added after them."""
    path = folder / FILE_NAME
    with _locked(path) as fd:
        listing = _parse(_read(fd))
        if listing is None:
            listing = _start(path, fd)
        missing = sorted(
            (key for key in keys if key not in listing.uids), key=lambda key: (keys[key][0], key)
        )
        flags_of = {key: value[1] for key, value in keys.items()} | dict(new_only or {})
        missing += [key for key in new_only or () if key not in listing.uids]
        lines = bytearray()
        uid = listing.uidnext
        for key in missing:
            listing.uids[key] = uid
            lines += _line(listing, f"{uid} {key}", uid, flags_of[key])
            uid += 1
        new = bool(lines)
        for key, (_, flags) in keys.items():
            uid = listing.uids[key]
            if listing.flags.get(uid) != flags:
                lines += _line(listing, f"M {uid}", uid, flags)
        if lines:
            write_all(fd, lines)
            if new:  # a UID once given must never be given again; a mod-sequence is less precious
                os.fsync(fd)
        gone = len(listing.uids) - len(keys)
        if keys and gone > _COMPACT_AT and gone > len(keys):
            _compact(path, listing, keys)
    return listing


def _line(listing: UidList, head: str, uid: int, flags: str) -> bytes:
    """``head <modseq> :<flags>`` with the next mod-sequence, recorded in ``listing`` too."""
    listing.highest += 1
    listing.modseqs[uid] = listing.highest
    listing.flags[uid] = flags
    return f"{head} {listing.highest} :{flags}\n".encode("utf-8", "surrogateescape")


def _start(path: Path, fd: int) -> UidList:
    """A new list: a UIDVALIDITY no earlier list of this folder had (the time, in seconds)."""
    listing = UidList(int(time.time()))
    os.ftruncate(fd, 0)
    write_all(fd, f"V {listing.uidvalidity}\n".encode())
    os.fsync(fd)
    with contextlib.suppress(OSError):
        fsync_directory(path.parent)
    return listing


def _compact(path: Path, listing: UidList, live: Collection[str]) -> None:
    kept = {key: uid for key, uid in listing.uids.items() if key in live}
    lines = [f"V {listing.uidvalidity}\n", f"H {listing.highest}\n"]
    lines += [
        f"{uid} {key} {listing.modseqs.get(uid, 1)} :{listing.flags.get(uid, '')}\n"
        for key, uid in sorted(kept.items(), key=lambda item: item[1])
    ]
    # The next UID must not go back: keep the highest assigned, even if its message is gone.
    top = listing.uidnext - 1
    if top and top not in kept.values():
        lines.append(f"{top} .gone\n")
        kept[".gone"] = top
    replace_file(path, "".join(lines).encode("utf-8", "surrogateescape"))
    listing.uids = kept
