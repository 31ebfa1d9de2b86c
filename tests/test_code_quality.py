"""The code base keeps its own rules: ruff, mypy --strict, and imports that point downward.

The layering is ARCHITECTURE.md's: errors/config ← smtp ← policy, accounts, spool ← net,
delivery ← web ← app ← cli. A module that reaches upward or sideways fails here.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "postoffice"

# module prefix -> imports it must never make (prefixes of module names)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "postoffice.smtp": (
        "asyncio",
        "socket",
        "ssl",
        "os",
        "time",
        "postoffice.net",
        "postoffice.spool",
        "postoffice.delivery",
        "postoffice.policy",
        "postoffice.accounts",
        "postoffice.app",
        "postoffice.config",
    ),
    "postoffice.errors": ("postoffice.net", "postoffice.spool", "postoffice.delivery", "postoffice.config"),
    "postoffice.config": ("ssl", "logging", "postoffice.net", "postoffice.spool", "postoffice.delivery"),
    "postoffice.policy": ("postoffice.net", "postoffice.spool", "postoffice.delivery", "postoffice.web"),
    "postoffice.accounts": ("postoffice.net", "postoffice.delivery", "postoffice.web", "postoffice.spool"),
    "postoffice.spool": (
        "postoffice.net",
        "postoffice.delivery.maildir",
        "postoffice.delivery.remote",
        "postoffice.web",
    ),
    "postoffice.delivery": ("postoffice.net", "postoffice.web", "postoffice.policy"),
    "postoffice.net": ("postoffice.delivery", "postoffice.web", "postoffice.app", "postoffice.cli"),
    "postoffice.web": ("postoffice.smtp", "postoffice.net", "postoffice.app", "postoffice.cli"),
    # Mail authentication checks: used by the SMTP session's stages, using only DNS themselves.
    "postoffice.mailauth": (
        "postoffice.net",
        "postoffice.spool",
        "postoffice.delivery",
        "postoffice.policy",
        "postoffice.accounts",
        "postoffice.web",
        "postoffice.cli",
    ),
    # The sending side: beside net (both drive smtp over asyncio), usable by delivery.
    "postoffice.client": (
        "postoffice.net",
        "postoffice.spool",
        "postoffice.delivery",
        "postoffice.policy",
        "postoffice.accounts",
        "postoffice.web",
        "postoffice.cli",
    ),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_imports_point_downward() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for layer, forbidden in FORBIDDEN.items():
            if not _matches(module, layer):
                continue
            for name in _imports(path):
                for prefix in forbidden:
                    if _matches(name, prefix):
                        violations.append(f"{module} imports {name}")
        if module not in ("postoffice.cli", "postoffice.app"):
            violations += [f"{module} imports {n}" for n in _imports(path) if _matches(n, "postoffice.app")]
    assert violations == []


def test_reply_codes_only_in_replies_module() -> None:
    """ARCHITECTURE.md rule 3: no other string literal starts with a three-digit code."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "replies.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and re.match(r"[2-5]\d\d[ -]", node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:30]!r}")
    assert offenders == []


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed")
    return [sys.executable, "-m", name]


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [*_tool("ruff"), "check", "src", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied() -> None:
    result = subprocess.run(
        [*_tool("ruff"), "format", "--check", "src", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run([*_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
