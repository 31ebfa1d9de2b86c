"""Readers for the values a configuration file holds: sizes, durations, counts, paths, networks,
file modes, and the accounts of this machine (looked up when read).

Untrusted input seen here: values from the configuration file and the command line, written by
the operator but possibly mistyped. Every reader returns the value or raises :class:`Invalid`
with one line saying what is wrong; the loader adds the file and the key.
"""

from __future__ import annotations

import grp
import ipaddress
import math
import os
import pwd
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path


class Invalid(ValueError):
    """A value is wrong; the message says why, the caller adds file and key."""


def kind_of(value: object) -> str:
    """The TOML type of ``value``, named as TOML v1.0.0 does, since that is what the operator wrote."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def string(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {kind_of(value)}")
    return value


def integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"expected an integer, got {kind_of(value)}")
    return value


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {kind_of(value)}")
    return value


def choice(value: object, choices: Sequence[str]) -> str:
    text = string(value).lower()
    if text not in choices:
        raise Invalid(f"{text!r} is not one of {', '.join(choices)}")
    return text


def array(value: object, of: str) -> list[object]:
    if not isinstance(value, list):
        raise Invalid(f"expected an array of {of}, got {kind_of(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# Values with units
# ---------------------------------------------------------------------------------------------

# IEC binary units and SI decimal units are both common in mail configs (Postfix takes plain
# octets; Exim takes K/M with binary meaning). Spelling the unit out removes the doubt.
SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
# A decimal number, then an optional unit: "25MiB", "1.5 h", "300".
_NUMBER_UNIT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)")
TIME_UNITS = {
    "": 1,
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
}


def parse_size(value: object) -> int:
    """Octets from an integer or a string such as ``"25MiB"``, ``"10MB"`` or ``"512KiB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        match = _NUMBER_UNIT.fullmatch(value.strip().lower())
        if not match or match.group(2) not in SIZE_UNITS:
            raise Invalid(
                f"{value!r} is not a size; write octets or a number with B, KB, KiB, MB, MiB, GB, GiB"
            )
        number = Decimal(match.group(1)) * SIZE_UNITS[match.group(2)]
    else:
        raise Invalid(f"expected an integer or a string such as '25MiB', got {kind_of(value)}")
    if number < 0:
        raise Invalid(f"{value!r} is negative")
    return int(number)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"300s"``, ``"5m"``, ``"10min"`` or ``"1h"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _NUMBER_UNIT.fullmatch(value.strip().lower())
        if not match or match.group(2) not in TIME_UNITS:
            raise Invalid(f"{value!r} is not a duration; write seconds or a number with s, m, min, h, d")
        seconds = float(match.group(1)) * TIME_UNITS[match.group(2)]
    else:
        raise Invalid(f"expected a number of seconds or a string such as '5m', got {kind_of(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise Invalid(f"{value!r}: a timeout must be a positive, finite number of seconds")
    return seconds


def means_zero(value: object) -> bool:
    """Whether ``value`` is a zero the operator wrote to turn a setting off: 0, "0" or "0s"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    return isinstance(value, str) and value.strip() in ("0", "0s")


# ---------------------------------------------------------------------------------------------
# Ports, networks, paths, file modes, account names
# ---------------------------------------------------------------------------------------------


def port(value: object) -> int:
    number = integer(value)
    if not 1 <= number <= 65535:
        raise Invalid(f"{number}: a port is a number from 1 to 65535")
    return number


def network(value: object) -> str:
    text = string(value)
    try:
        return str(ipaddress.ip_network(text))
    except ValueError:
        pass
    try:
        # Host bits set ("10.1.2.3/8") is almost always a typo for the network; say which.
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(f"{text!r} is not an IP network in CIDR notation (10.0.0.0/8, 2001:db8::/32)") from None
    raise Invalid(f"{text!r} has host bits set; did you mean {str(loose)!r}?")


def networks(value: object) -> tuple[str, ...]:
    return tuple(network(item) for item in array(value, "networks"))


def path(value: object, base: Path) -> Path:
    text = string(value)
    if not text:
        raise Invalid("empty path")
    # Relative to the file, not to wherever the server happens to be started (like nginx's
    # include paths): the same file then means the same thing from any working directory.
    return (base / Path(text).expanduser()).resolve()


def file_mode(value: object) -> int:
    """A mail file's mode: ``0o660`` in TOML, or ``"0660"`` (``"660"``, ``"0o660"``); the owner
    reads and writes, a group at most reads and writes too, every other user gets nothing."""
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if not text or any(char not in "01234567" for char in text):
            raise Invalid(f'{value!r} is not an octal mode; write one such as "0600" or "0660"')
        mode = int(text, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise Invalid(f'expected an octal mode such as "0660" or 0o660, got {kind_of(value)}')
    shown = f"{mode:#o}" if mode >= 0 else str(mode)
    if mode & 0o007 and not mode & ~0o777:
        raise Invalid(f"{shown} lets every user of this machine read the mail; 0o660 at most")
    if mode & ~0o666:
        hint = ""
        if isinstance(value, int) and _octal_reading(value) is not None:
            # TOML reads 660 as a decimal number (0o1224): say how to write it in octal.
            hint = f'; an octal mode is written 0o{value} or "0{value}"'
        raise Invalid(f"{shown} is not a mail file mode (read and write bits only){hint}")
    if mode & 0o600 != 0o600:
        raise Invalid(f"{shown} does not let the server read and write its own files; 0o600 at least")
    return mode


def _octal_reading(value: int) -> int | None:
    """``value``'s decimal digits read as octal, when that is a mode we would accept."""
    digits = str(value)
    if any(char not in "01234567" for char in digits):
        return None
    mode = int(digits, 8)
    return mode if not mode & ~0o660 and mode & 0o600 == 0o600 else None


def maildir_directory_mode(file_mode: int) -> int:
    """The mode of Maildir directories for files of ``file_mode``: 0o700, or with group bits
    (and the group's search bit) when the files grant the group access: 0o660 gives 0o770."""
    group = file_mode & 0o070
    return 0o700 | group | (0o010 if group else 0)


def account_name(value: object) -> str:
    """A user or group name as the system's account database spells it (before it is looked up)."""
    name = string(value)
    if not name:
        raise Invalid("empty name")
    if not name.isprintable() or any(char.isspace() or char == ":" for char in name):
        raise Invalid(f"{name!r} is not an account name (no spaces, colons or control characters)")
    return name


def system_user(value: object) -> str:
    """An unprivileged user of this machine, looked up now: the server drops root to it."""
    name = account_name(value)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise Invalid(f"no user {name!r} on this machine (getent passwd {name})") from None
    if entry.pw_uid == 0:
        raise Invalid(f"{name!r} is root, which keeps every privilege; name an unprivileged user")
    return name


def system_group(value: object) -> str:
    """A group of this machine other than root's, looked up now."""
    name = account_name(value)
    try:
        entry = grp.getgrnam(name)
    except KeyError:
        raise Invalid(f"no group {name!r} on this machine (getent group {name})") from None
    if entry.gr_gid == 0:
        raise Invalid(f"{name!r} is root's group (gid 0); name an unprivileged group")
    return name


def primary_gid(user: str) -> int:
    """The group id ``user`` (already looked up by :func:`system_user`) has as its own."""
    return pwd.getpwnam(user).pw_gid


# More processes than this is a typo, not a machine (Postfix default_process_limit is 100).
MAX_WORKERS = 256


def workers(value: object) -> int | None:
    """A number of processes, or None for ``"auto"`` (decided when the server starts:
    :attr:`postoffice.config.Config.worker_count`)."""
    if value == "auto":
        return None
    if isinstance(value, str):
        raise Invalid(f'expected an integer or "auto", got {value!r}')
    return integer(value)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, as nginx's ``auto`` counts
    (a container limited to two of 64 cores gets two). 1 where the system cannot say (only
    Linux has ``sched_getaffinity``, and the workers need Linux: SO_REUSEPORT spreading
    connections, PR_SET_PDEATHSIG)."""
    if not hasattr(os, "sched_getaffinity"):
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))
