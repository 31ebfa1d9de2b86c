"""The configuration reference, written from the schema: ``docs/config-reference.md``.

Untrusted input seen here: none; it reads the declarations in :mod:`postoffice.config.model`.

Regenerate the file with ``PYTHONPATH=src python -m postoffice.config > docs/config-reference.md``;
``tests/test_config_reference.py`` fails, naming that command, when the committed file differs
from what the schema says.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from postoffice.config.model import SECTIONS
from postoffice.config.schema import Bound, Key, Section, default_of, keys_of

REGENERATE = "PYTHONPATH=src python -m postoffice.config > docs/config-reference.md"

_INTRO = f"""\
# Configuration reference

<!-- Written from the schema (src/postoffice/config/tables.py and model.py) by
     `{REGENERATE}`.
     Edit the schema, not this file: tests/test_config_reference.py fails when they differ. -->

Every key is optional. `postoffice check-config --config FILE` checks a file and lists every
problem in it; options given to `postoffice serve` override the file (each key's meaning names its
option). Sizes are octets, or a number with B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB
(powers of 1024). Durations are seconds, or a number with s, m (or min), h or d. A relative path is
relative to the file's directory, and `~` is expanded.
"""


def _bound(key: Key, bound: Bound) -> str:
    return key.kind.show(bound.value).strip('"')


def value_text(key: Key) -> str:
    """What the key takes: its kind, its floor and ceiling, and whether 0 turns it off."""
    lowest = key.lowest
    if lowest is not None and key.ceiling is not None:
        bounds = f"{_bound(key, lowest)} to {_bound(key, key.ceiling)}"
    elif lowest is not None:
        bounds = f"at least {_bound(key, lowest)}"
    elif key.ceiling is not None:
        bounds = f"at most {_bound(key, key.ceiling)}"
    else:
        bounds = ""
    if key.off is not None:
        bounds = f"{bounds}, or 0 (off)" if bounds else "or 0 (off)"
    return f"{key.kind.name}, {bounds}" if bounds else key.kind.name


def default_text(item: dataclasses.Field[Any], key: Key) -> str:
    """The key's default as the reference writes it: TOML, or words when TOML cannot say it."""
    if key.default_text is not None:
        return _words(key.default_text)
    return f"`{key.kind.show(default_of(item))}`"


def _words(text: str) -> str:
    """Prose in a table cell: "|" would end the cell, "<postmaster>" would be read as HTML."""
    for char in "\\|<*":
        text = text.replace(char, "\\" + char)
    return text


def _section(section: Section) -> list[str]:
    title = (
        f"`[[{section.name}]]`" if section.many else f"`[{section.name}]`" if section.name else "Top level"
    )
    lines = [
        f"## {title}",
        "",
        _words(section.help),
        "",
        "| Key | Value | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for item, key in keys_of(section.keys):
        meaning = _words(key.help) + (f" Option: `postoffice serve {key.flag}`." if key.flag else "")
        cells = (f"`{item.name}`", _words(value_text(key)), default_text(item, key), meaning)
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [_INTRO]
    for section in SECTIONS:
        lines += _section(section)
    return "\n".join(lines)
