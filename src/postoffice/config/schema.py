"""How a configuration key is declared: once, as a dataclass field carrying a :class:`Key`.

Untrusted input seen here: values from the configuration file and the command line, through
:func:`read`.

A key is a field of a settings dataclass (``Limits``, ``QueueSettings``, ...) made with
:func:`setting`: its annotation is its type, the field's default is its default, and the
:class:`Key` in its metadata says how a TOML value is read (a :class:`Kind`), its floor and
ceiling, the one line of help, and the ``postoffice serve`` option that overrides it. A
:class:`Section` names the TOML table whose keys a dataclass declares. From these the loader
reads and checks the file and words its errors, and ``config.reference`` writes the reference
in ``docs/`` (which a test keeps current).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from postoffice.config.values import Invalid, means_zero

_T = TypeVar("_T")

# The metadata entry of a setting's field.
_KEY = "postoffice.config.key"


def toml_text(value: object) -> str:
    """``value`` written as TOML: what the reference shows as a default."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string, for the names we write
    return str(value)


@dataclass(frozen=True, slots=True)
class Bound:
    """A floor or a ceiling; ``why`` is the precedent, quoted in the error when a value passes it."""

    value: int | float
    why: str = ""


@dataclass(frozen=True, slots=True)
class Kind:
    """A type of setting: how a TOML value is read into it, and how the reference writes one."""

    # What the reference calls a value of this kind: "size", "duration", "domain name", ...
    name: str
    # The file's value and the file's directory -> the setting; raises ValueError (Invalid) or
    # ConfigError with a one-line reason.
    read: Callable[[object, Path], Any]
    # A setting -> the TOML that writes it.
    show: Callable[[Any], str] = toml_text
    # The least value of every key of this kind, unless the key sets its own.
    floor: Bound | None = None
    # How the error words a value above a ceiling ("too many" workers, "too large" otherwise).
    excess: str = "too large"


def plain(read: Callable[[object], Any]) -> Callable[[object, Path], Any]:
    """A reader that does not need the file's directory (only paths do)."""
    return lambda value, _base: read(value)


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key, as its field's metadata."""

    kind: Kind
    # One line for the reference: what the key does, with its precedent.
    help: str
    floor: Bound | None = None
    ceiling: Bound | None = None
    # What 0 in the file stands for: the setting turned off, accepted below the floor; None: 0
    # is just a number (and a duration must be positive).
    off: float | None = None
    # The reference's wording for a default the code cannot write as TOML (decided at run time,
    # or meaning "not set").
    default_text: str | None = None
    # The `postoffice serve` option that overrides the key, if any.
    flag: str | None = None

    @property
    def lowest(self) -> Bound | None:
        return self.floor or self.kind.floor


def setting(
    default: _T,
    kind: Kind,
    help: str,
    *,
    floor: Bound | None = None,
    ceiling: Bound | None = None,
    off: float | None = None,
    default_text: str | None = None,
    flag: str | None = None,
) -> _T:
    """A dataclass field that is a configuration key (see :class:`Key` for the arguments)."""
    key = Key(kind, help, floor, ceiling, off, default_text, flag)
    return dataclasses.field(default=default, metadata={_KEY: key})


def computed_setting(
    factory: Callable[[], _T], kind: Kind, help: str, *, default_text: str, flag: str | None = None
) -> _T:
    """A configuration key whose default is computed when a ``Config`` is made."""
    key = Key(kind, help, default_text=default_text, flag=flag)
    return dataclasses.field(default_factory=factory, metadata={_KEY: key})


def keys_of(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Key]]:
    """The fields of the dataclass ``cls`` that are configuration keys, in declaration order."""
    for item in dataclasses.fields(cls):
        key = item.metadata.get(_KEY)
        if isinstance(key, Key):
            yield item, key


def default_of(item: dataclasses.Field[Any]) -> object:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def read(key: Key, value: object, base: Path) -> Any:
    """The setting ``value`` (from the file in ``base``, or a flag) stands for, or Invalid."""
    if key.off is not None and means_zero(value):
        return key.off
    result = key.kind.read(value, base)
    if result is None:  # a word for a value decided at run time ("auto")
        return None
    lowest = key.lowest
    if lowest is not None and result < lowest.value and result != key.off:
        reason = f": {lowest.why}" if lowest.why else f"; the least is {lowest.value}"
        raise Invalid(f"{result} is too small{reason}")
    if key.ceiling is not None and result > key.ceiling.value:
        reason = f": {key.ceiling.why}" if key.ceiling.why else f"; the most is {key.ceiling.value}"
        raise Invalid(f"{result} is {key.kind.excess}{reason}")
    return result


@dataclass(frozen=True, slots=True)
class Section:
    """A TOML table ("" for the top level): the dataclass declaring its keys, and what it builds."""

    name: str
    keys: type
    # One line for the reference.
    help: str
    # The keys the file (or a flag) set, by field name -> the ``Config`` fields they make.
    build: Callable[[dict[str, Any]], dict[str, Any]]
    # An array of tables ([[name]]): the keys the file set are given as {"entries": [{...}, ...]}.
    many: bool = False

    def key_names(self) -> tuple[str, ...]:
        return tuple(item.name for item, _ in keys_of(self.keys))

    def dotted(self, name: str) -> str:
        return f"{self.name}.{name}" if self.name else name
