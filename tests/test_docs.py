"""The README and docs/ hold together: every relative link leads to a file that exists and,
when it names one, to a heading that exists there; every page in docs/ is reachable from the
README; the README stays a short tour, with the two commands .ci/run reads after its markers.

Anchors are made from headings as GitHub makes them: lower case, punctuation dropped (letters,
digits, spaces, ``-`` and ``_`` kept), spaces turned into ``-``, and ``-1``, ``-2``, ... added to
repeats.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_code_quality import LAYERS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted([README, *(ROOT / "docs").glob("*.md")])
# Pages written on another branch: a link to one is allowed before it exists (and checked,
# anchors included, once it does).
PENDING: set[Path] = set()
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
README_MAX_LINES = 300

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"``.+?``|`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
# The layer drawing in docs/ARCHITECTURE.md: the fenced block right after this marker.
_LAYER_DRAWING = re.compile(r"^<!-- layers -->\n```text\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """``text`` without fenced code blocks, where a ``#`` line or ``[x](y)`` is not markdown."""
    return _FENCE.sub("", text)


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in _HEADING.findall(prose(path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        unique, n = slug, 0
        while unique in found:
            n += 1
            unique = f"{slug}-{n}"
        found.add(unique)
    return found


def links(path: Path) -> list[str]:
    text = _CODE_SPAN.sub("", prose(path.read_text()))
    return [target for target in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        name, _, anchor = target.partition("#")
        destination = (page.parent / name).resolve() if name else page
        if not destination.exists():
            if destination not in PENDING:
                problems.append(f"{target}: no file {shown(destination)}")
            continue
        if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{target}: no heading #{anchor} in {shown(destination)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_checker_sees_a_broken_file_and_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## The `[queue]` table\n")
    page.write_text(
        "# Page\n\nSee [ok](other.md#the-queue-table), [here](#page), [gone](missing.md),\n"
        "[bad](other.md#nope) and [web](https://example.org/#x).\n\n```\n[in code](nowhere.md)\n```\n"
    )
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert problems[0].startswith("missing.md: no file")
    assert problems[1].startswith("other.md#nope: no heading #nope")


def test_every_page_in_docs_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(README)}
    unlinked = [page.name for page in PAGES if page != README and page not in linked]
    assert unlinked == []


def test_the_readme_is_a_short_tour_with_its_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, "move detail into docs/"
    # .ci/run runs the first line after <!-- test-command --> that is not a fence.
    for marker, command in (
        ("<!-- run-command -->", "pip install . && postoffice serve"),
        ("<!-- test-command -->", "pip install -e '.[test]' && python -m pytest"),
    ):
        after = text.split(marker, 1)[1]
        first = next(line for line in after.splitlines() if line.strip() and not line.startswith("```"))
        assert first == command


def layer_drawing(layers: tuple[tuple[str, ...], ...]) -> str:
    """``layers`` (LAYERS of test_code_quality.py) as docs/ARCHITECTURE.md draws them: top layer
    first, one line each, its number and its units without the ``postoffice.`` prefix."""
    lines = []
    for number, layer in reversed(list(enumerate(layers))):
        names = ", ".join(unit.removeprefix("postoffice.") for unit in layer)
        lines.append(f"{number:>2}  {names}\n")
    return "".join(lines)


def test_the_architecture_draws_the_layers_the_code_quality_test_enforces() -> None:
    found = _LAYER_DRAWING.search(ARCHITECTURE.read_text())
    assert found is not None, "docs/ARCHITECTURE.md: no ```text block after <!-- layers -->"
    expected = layer_drawing(LAYERS)
    assert found.group(1) == expected, f"redraw the layers in docs/ARCHITECTURE.md as:\n{expected}"
