"""Readers for the values a configuration file holds: sizes, durations, counts, paths, networks.

Untrusted input seen here: values from the configuration file and the command line, written by
the operator but possibly mistyped. Every reader returns the value or raises :class:`Invalid`
with one line saying what is wrong; the loader adds the file and the key.
"""

from __future__ import annotations

import ipaddress
import math
import os
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


_OCTAL = re.compile(r"(?:0o?)?([0-7]{1,4})")


def file_mode(value: object) -> int:
    """Permission bits from a TOML integer (``0o640``) or an octal string (``"0640"``, ``"640"``).

    Mail is readable by its owner and at most a group: never by every account on the machine,
    never executable, and without setuid, setgid or sticky bits.
    """
    if isinstance(value, str):
        match = _OCTAL.fullmatch(value.strip().lower())
        if match is None:
            raise Invalid(f'{value!r} is not an octal file mode such as "0640"')
        mode = int(match.group(1), 8)
    else:
        mode = integer(value)
    shown = f"0o{mode:03o}" if mode >= 0 else str(mode)
    if not 0 <= mode <= 0o777:
        raise Invalid(f"{shown} is not a file mode; write permission bits only (0o640, say)")
    if mode & 0o111:
        raise Invalid(f"{shown} has execute bits; mail files are not programs (0o640, say)")
    if mode & 0o007:
        raise Invalid(f"{shown} gives every account on the machine access to mail; end it in 0 (0o640, say)")
    if mode & 0o600 != 0o600:
        raise Invalid(f"{shown} keeps the server from reading or writing its own mail; start it with 6")
    return mode


def account_name(value: object) -> str:
    """A user or group name as the system's account database spells it; checked, not looked up."""
    name = string(value)
    if not name:
        raise Invalid("empty name")
    if not name.isprintable() or any(char.isspace() or char == ":" for char in name):
        raise Invalid(f"{name!r} is not an account name (no spaces, colons or control characters)")
    return name


# More processes than this is a typo, not a machine (Postfix default_process_limit is 100).
MAX_WORKERS = 256


def workers(value: object) -> int:
    """A number of processes, or ``"auto"``: one per core this process may run on."""
    if value == "auto":
        # Its CPU affinity, as nginx's "auto" counts.
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS) if hasattr(os, "sched_getaffinity") else 1
    if isinstance(value, str):
        raise Invalid(f'expected an integer or "auto", got {value!r}')
    return integer(value)
