"""Queue IDs: short names for spooled messages that sort by arrival time.

Untrusted input seen here: :func:`is_queue_id` checks strings typed by an operator
(``postoffice queue show ID``) or found as file names in the spool, before anything uses them
as a path component; only IDs of the exact shape below pass, so ``../x`` or ``a/b`` never do.

Shape, after Postfix's long queue IDs (``enable_long_queue_ids``, see postconf(5)): the time
of creation in microseconds, then random characters, all in one alphabet whose characters are
in ASCII order, so sorting IDs as strings sorts them by time. The alphabet is Crockford's
base32 (digits and upper-case letters without I, L, O, U), which is filename-safe, readable in
logs, and has no letters that look like digits.
"""

from __future__ import annotations

import random
import re
import string
import threading
import time
from collections.abc import Callable

ALPHABET = string.digits + "ABCDEFGHJKMNPQRSTVWXYZ"

# 11 base32 digits hold 55 bits of microseconds: good until the year 3111.
TIME_DIGITS = 11
# 5 random digits (25 bits) keep IDs from two processes (the server and a CLI, or two
# servers sharing a spool) apart when they start in the same microsecond; the spool still
# creates files with O_EXCL, so a collision is a retry, never an overwrite.
RANDOM_DIGITS = 5
LENGTH = TIME_DIGITS + RANDOM_DIGITS

_ID_RE = re.compile(f"[{ALPHABET}]{{{LENGTH}}}")

_lock = threading.Lock()
_last_micros = 0

# With several server processes on one spool (``serve --workers N``) every message has one
# owner, the process that schedules it, named by the ID itself: its last two digits (10 bits)
# modulo N. A worker makes only IDs it owns, so whichever process looks at the queue again
# (``postoffice queue release``) takes up exactly the messages that are its own.
_OWNER_DIGITS = 2
_OWNER_VALUES = 32**_OWNER_DIGITS
_owner: tuple[int, int] | None = None


# Bit offsets of each base32 digit, most significant first.
_SHIFTS = {digits: tuple(range(5 * (digits - 1), -1, -5)) for digits in (TIME_DIGITS, RANDOM_DIGITS)}


def _encode(value: int, digits: int) -> str:
    return "".join([ALPHABET[(value >> shift) & 31] for shift in _SHIFTS[digits]])


def _next_micros() -> int:
    """Wall-clock microseconds, strictly increasing within this process.

    Wall time can step backwards (NTP); IDs made afterwards still sort after earlier ones
    from this process, which keeps ``pending()`` in arrival order across such a step.
    """
    global _last_micros
    with _lock:
        now = time.time_ns() // 1000
        _last_micros = now if now > _last_micros else _last_micros + 1
        return _last_micros


def new_queue_id() -> str:
    """A fresh queue ID, e.g. ``1B2C3D4E5F6G7H8J``: 16 characters of ``ALPHABET``."""
    # The random digits only keep apart IDs made in the same microsecond by two processes;
    # nothing relies on them being unguessable (the ID is shown to the client in the 250
    # reply and in Received, and authorises nothing), so the random module serves: it is
    # seeded from os.urandom and reseeded in a forked child, and secrets.randbits would cost
    # a getrandom(2) call for every message.
    bits = random.getrandbits(5 * RANDOM_DIGITS)
    if _owner is not None:
        index, count = _owner
        # The last digits become a random value that is ``index`` modulo ``count``.
        owned = index + count * random.randrange(_OWNER_VALUES // count)
        bits = (bits & ~(_OWNER_VALUES - 1)) | owned
    return _encode(_next_micros(), TIME_DIGITS) + _encode(bits, RANDOM_DIGITS)


def claim_queue_ids(index: int, count: int) -> None:
    """Make every queue ID from now on one that worker ``index`` of ``count`` owns."""
    global _owner
    if not 0 <= index < count <= _OWNER_VALUES:
        raise ValueError(f"worker {index} of {count}")
    _owner = (index, count)


def owner_of(queue_id: str, count: int) -> int:
    """Which of ``count`` workers schedules the message ``queue_id`` (see claim_queue_ids)."""
    value = 0
    for char in queue_id[-_OWNER_DIGITS:]:
        value = value * 32 + ALPHABET.index(char)
    return value % count


def ownership(worker_index: int | None, count: int) -> Callable[[str], bool] | None:
    """Which queue IDs a worker schedules (None: a single process schedules them all)."""
    if worker_index is None:
        return None
    return lambda queue_id: owner_of(queue_id, count) == worker_index


def is_queue_id(text: str) -> bool:
    """True only for strings of exactly the shape :func:`new_queue_id` makes."""
    return _ID_RE.fullmatch(text) is not None


def queue_id_time(queue_id: str) -> float:
    """The creation time (seconds since the epoch) encoded in a queue ID."""
    if not is_queue_id(queue_id):
        raise ValueError(f"not a queue ID: {queue_id!r}")
    micros = 0
    for char in queue_id[:TIME_DIGITS]:
        micros = micros * 32 + ALPHABET.index(char)
    return micros / 1_000_000
