"""docs/config-reference.md is written from the schema, and the committed copy is current."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

from postoffice.config.model import SECTIONS
from postoffice.config.reference import REGENERATE, render
from postoffice.config.schema import keys_of

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "config-reference.md"


def test_the_committed_reference_is_current() -> None:
    committed = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    current = render()
    if committed != current:
        diff = difflib.unified_diff(
            committed.splitlines(), current.splitlines(), "committed", "schema", n=0, lineterm=""
        )
        shown = "\n".join(list(diff)[:20])
        pytest.fail(
            f"docs/config-reference.md differs from the schema; regenerate it with\n    {REGENERATE}\n{shown}"
        )


def test_the_regenerate_command_writes_the_reference() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "postoffice.config"], cwd=ROOT, capture_output=True, check=True
    )
    assert result.stdout.decode("utf-8") == render()


def test_every_key_is_in_the_reference() -> None:
    text = render()
    for section in SECTIONS:
        heading = f"## `[{section.name}]`" if section.name else "## Top level"
        if section.many:
            heading = f"## `[[{section.name}]]`"
        part = text.split(heading, 1)[1].split("\n## ", 1)[0]
        for item, _ in keys_of(section.keys):
            assert f"\n| `{item.name}` |" in part, section.dotted(item.name)


def test_prose_cannot_break_the_table() -> None:
    # "<postmaster>" would be read as an HTML tag, "|" would end a cell.
    row = next(line for line in render().splitlines() if line.startswith("| `postmaster` |"))
    assert "postmaster@\\<the first domain>" in row
    assert row.count(" | ") == 3
