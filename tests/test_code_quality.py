"""The code base keeps its own rules: ruff, mypy --strict, imports that point downward, and
modules and functions small enough to read.

The layering is written down once, as :data:`LAYERS`; docs/ARCHITECTURE.md draws it (and
tests/test_docs.py keeps the drawing equal to it) and says why. A module that reaches upward or
sideways fails here, and so does a cycle between packages. :data:`FORBIDDEN` adds finer rules
(what the sans-I/O protocol may not touch, say).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "postoffice"

# module prefix -> imports it must never make (prefixes of module names)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # The IMAP core is sans-I/O like the SMTP one: bytes in, bytes out, fuzzable alone.
    "postoffice.imap": (
        "asyncio",
        "socket",
        "ssl",
        "os",
        "time",
        "postoffice.net",
        "postoffice.storage",
        "postoffice.maildir",
        "postoffice.accounts",
        "postoffice.config",
    ),
    "postoffice.smtp": (
        "asyncio",
        "socket",
        "ssl",
        "os",
        "time",
        "postoffice.net",
        "postoffice.spool",
        "postoffice.qmgr",
        "postoffice.delivery",
        "postoffice.policy",
        "postoffice.accounts",
        "postoffice.app",
        "postoffice.config",
    ),
    # The sans-I/O POP3 core, like the SMTP one: bytes in, events out.
    "postoffice.pop3": ("asyncio", "socket", "ssl", "os", "time", "postoffice.net", "postoffice.storage"),
    "postoffice.errors": (
        "postoffice.net",
        "postoffice.spool",
        "postoffice.qmgr",
        "postoffice.delivery",
        "postoffice.config",
    ),
    # Shared defaults, imported by the sans-I/O core and by config alike: constants, no imports.
    "postoffice.defaults": ("postoffice", "os", "socket", "time"),
    "postoffice.config": (
        "ssl",
        "logging",
        "postoffice.net",
        "postoffice.spool",
        "postoffice.qmgr",
        "postoffice.delivery",
    ),
    "postoffice.policy": (
        "postoffice.net",
        "postoffice.spool",
        "postoffice.qmgr",
        "postoffice.delivery",
        "postoffice.web",
    ),
    "postoffice.accounts": (
        "postoffice.net",
        "postoffice.delivery",
        "postoffice.web",
        "postoffice.spool",
        "postoffice.qmgr",
    ),
    # Storage only: what is done with queued mail is the queue manager's, above it.
    "postoffice.spool": (
        "postoffice.net",
        "postoffice.delivery",
        "postoffice.qmgr",
        "postoffice.web",
        "postoffice.cli",
    ),
    # The queue manager: spool, the agent protocol (never a concrete agent: app injects them),
    # config, errors, smtp.
    "postoffice.qmgr": (
        "postoffice.net",
        "postoffice.web",
        "postoffice.app",
        "postoffice.cli",
        "postoffice.delivery",
        "postoffice.client",
        "postoffice.policy",
        "postoffice.accounts",
    ),
    "postoffice.delivery": ("postoffice.net", "postoffice.web", "postoffice.policy", "postoffice.qmgr"),
    # The transaction layer: sans-I/O like the core it drives (no sockets, TLS, or event loop:
    # the transport hands it bytes and awaits what it returns); storage only through the
    # storage seam's writer protocol.
    "postoffice.smtpd": (
        "asyncio",
        "socket",
        "ssl",
        "selectors",
        "postoffice.net",
        "postoffice.spool.files",
        "postoffice.spool.writer",
        "postoffice.maildir",
        "postoffice.runtime",
        "postoffice.delivery",
        "postoffice.qmgr",
        "postoffice.web",
        "postoffice.app",
        "postoffice.cli",
    ),
    "postoffice.net": (
        "postoffice.delivery",
        "postoffice.qmgr",
        "postoffice.web",
        "postoffice.app",
        "postoffice.cli",
    ),
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
        "postoffice.qmgr",
        "postoffice.delivery",
        "postoffice.policy",
        "postoffice.accounts",
        "postoffice.web",
        "postoffice.cli",
    ),
}

# Exceptions to FORBIDDEN: layer prefix -> imports it may make although a prefix above forbids them.
PERMITTED: dict[str, tuple[str, ...]] = {
    "postoffice.qmgr": ("postoffice.delivery.agent",),  # the DeliveryAgent protocol and its results
}

# The layers, bottom first. A unit (a package or module, named by its longest prefix here) may
# import units of lower layers only: nothing above (an arrow back up) and nothing beside it
# in its own layer. Every module in src/postoffice belongs to one unit. Moving a unit, or
# adding one, is a design decision: say why in the commit message.
LAYERS: tuple[tuple[str, ...], ...] = (
    # Our stdlib-only foundations: the package's version, the reply codes (every layer speaks
    # them), log output and the metrics registry.
    # Shared defaults: plain constants, imported by the sans-I/O core and by config alike.
    # The canonical form of a mail address and the checks a configured one passes.
    (
        "postoffice",
        "postoffice.smtp.replies",
        "postoffice.logs",
        "postoffice.metrics",
        "postoffice.defaults",
        "postoffice.addresses",
    ),
    # The one exception tree; an error may carry a Reply.
    ("postoffice.errors",),
    # Typed settings; the sans-I/O protocol; the trace header fields (Received:, RFC 5321 §4.4);
    # the write-fsync-rename recipe every durable file is made with (its errors are the tree's);
    # the one DNS resolver construction (MX routing and mail authentication share it); the
    # shared PostgreSQL database's connections and schema versions (no postoffice types).
    (
        "postoffice.config",
        "postoffice.smtp",
        "postoffice.pop3",
        "postoffice.imap",
        "postoffice.trace",
        "postoffice.durable",
        "postoffice.dns_resolver",
        "postoffice.pg",
    ),
    # Users and secrets, and the logins' sessions and failure counts (kept in memory, or a
    # cluster's by pgstore); durable storage of the queue; the sending side (and `status`, a client
    # of a running server's API); ACME certificates (its files, orders and renewal schedule,
    # which net's TLS follows).
    (
        "postoffice.accounts",
        "postoffice.logins",
        "postoffice.spool",
        "postoffice.client",
        "postoffice.status",
        "postoffice.acme",
    ),
    # Where an address goes (users and aliases from accounts, local domains from config): asked
    # by the SMTP policy for RCPT and by the composition root for reports, so both route alike.
    ("postoffice.recipients",),
    # Accept/reject decisions (they ask accounts); the delivery agent protocol (spool's types);
    # the storage seam: the MessageStore and MailboxStore protocols (spool's types) through
    # which the session, the queue manager, delivery and the web side reach stored mail;
    # mail authentication (SPF, DKIM, ...: checks and signatures the stages above use).
    # What every MailboxStore shares with the Maildir one: which addresses can have a mailbox
    # (maildir/names.py) and what a folder may be called (maildir/folders.py).
    (
        "postoffice.policy",
        "postoffice.delivery.agent",
        "postoffice.storage",
        "postoffice.mailauth",
        "postoffice.maildir.names",
        "postoffice.maildir.folders",
    ),
    # The embedded MailboxStore: Maildirs under the mail root (below delivery and web, which
    # use it, and written against the seam above it); beside it, the stores of a cluster in
    # the shared PostgreSQL database, written against the same seams.
    ("postoffice.maildir", "postoffice.pgstore"),
    # The transaction layer: the SMTP core's events through stages of checks (policy, limits,
    # trace fields, mail authentication), into the storage seam's writer; below the transport
    # that drives it.
    ("postoffice.smtpd", "postoffice.imapd"),
    # Receiving (net), the agents that deliver (delivery), the queue manager that drives them
    # through the protocol (qmgr), and what workers report to the one serving /metrics.
    ("postoffice.net", "postoffice.delivery", "postoffice.qmgr", "postoffice.worker_reports"),
    # What people see: the web side, and the operator's status of a running server; the daily
    # TLS reports (RFC 8460), made from delivery's counts and queued like any mail we write.
    # Which stores a process runs on (embedded, or a cluster's database), for the root below.
    ("postoffice.web", "postoffice.operations", "postoffice.tlsrpt", "postoffice.stores"),
    # The composition root: one server process's parts, built from a Config. Beside it, moving
    # one set of stores into another (migrate-store), written against the seams alone.
    ("postoffice.app", "postoffice.migration"),
    # Running it as a process: the pid file, binding as root then becoming the user, workers,
    # signals, the banner. It starts the composition root, which never reaches back. Beside it,
    # running it inside a test process (the pytest plugin's capture server).
    ("postoffice.runtime", "postoffice.testing"),
    ("postoffice.cli",),
    ("postoffice.__main__",),
)

# Modules over MAX_MODULE_LINES and functions over MAX_FUNCTION_LINES that are known, as
# "path" or "path::Qualified.name" (paths under src/). To be split under the structure issue;
# when one is, its entry goes (test_known_long_entries_are_still_long says so). Add none.
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
KNOWN_LONG: set[str] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every name a module imports, anywhere in it (functions, TYPE_CHECKING blocks too);
    ``from a import b`` gives both ``a`` and ``a.b``; relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
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
            permitted = PERMITTED.get(layer, ())
            for name in _imports(path):
                if any(_matches(name, prefix) for prefix in permitted):
                    continue
                for prefix in forbidden:
                    if _matches(name, prefix):
                        violations.append(f"{module} imports {name}")
        # The composition root is started by runtime/ (a process) and testing/ (a test's server).
        if not any(
            _matches(module, unit) for unit in ("postoffice.runtime", "postoffice.testing", "postoffice.app")
        ):
            violations += [f"{module} imports {n}" for n in _imports(path) if _matches(n, "postoffice.app")]
    assert violations == []


# --- the package-level import graph --------------------------------------------------------------


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> str | None:
    """The unit of :data:`LAYERS` a module belongs to: its longest prefix there (the package
    root, ``postoffice``, holds only its own ``__init__``)."""
    units = [unit for layer in LAYERS for unit in layer if unit != "postoffice"]
    owners = [unit for unit in units if _matches(module, unit)]
    if owners:
        return max(owners, key=len)
    return "postoffice" if module == "postoffice" else None


def _imported_module(name: str, modules: Collection[str]) -> str | None:
    """The module of ours an imported name is, or is in (``a.b.C`` -> ``a.b``); None if not ours."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _unit_graph() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the modules of the first that import the second."""
    modules = _modules()
    graph: dict[str, dict[str, set[str]]] = {}
    for module, path in modules.items():
        source = _unit(module)
        assert source is not None, f"{module} is in no unit of LAYERS"
        for name in _imports(path):
            target_module = _imported_module(name, modules)
            target = _unit(target_module) if target_module else None
            if target is not None and target != source:
                graph.setdefault(source, {}).setdefault(target, set()).add(module)
    return graph


def _cycles(graph: dict[str, dict[str, set[str]]]) -> Iterator[list[str]]:
    """One cycle through each back edge a depth-first search meets."""
    done: set[str] = set()
    path: list[str] = []

    def visit(unit: str) -> Iterator[list[str]]:
        path.append(unit)
        for target in sorted(graph.get(unit, {})):
            if target in path:
                yield [*path[path.index(target) :], target]
            elif target not in done:
                yield from visit(target)
        path.pop()
        done.add(unit)

    for unit in sorted(graph):
        if unit not in done:
            yield from visit(unit)


def test_every_module_is_in_a_layer() -> None:
    units = [unit for layer in LAYERS for unit in layer]
    assert len(units) == len(set(units)), "a unit is in two layers"
    assert [module for module in _modules() if _unit(module) is None] == []


def test_no_cycle_between_packages() -> None:
    graph = _unit_graph()
    cycles = [" -> ".join(cycle) for cycle in _cycles(graph)]
    assert cycles == []


def test_imports_follow_the_layers() -> None:
    """Each unit imports only units of lower layers (LAYERS): never up, never sideways."""
    rank = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}
    violations = [
        f"{source} (layer {rank[source]}) imports {target} (layer {rank[target]}): {', '.join(sorted(importers))}"
        for source, targets in sorted(_unit_graph().items())
        for target, importers in sorted(targets.items())
        if rank[target] >= rank[source]
    ]
    assert violations == []


# --- size -------------------------------------------------------------------------------------------


def _long_things() -> dict[str, int]:
    """Modules and functions over the limits, by KNOWN_LONG's names, with their line counts."""
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found[name] = lines
        for qualname, length in _function_lengths(ast.parse(text)):
            if length > MAX_FUNCTION_LINES:
                found[f"{name}::{qualname}"] = length
    return found


def _function_lengths(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(qualified name, lines from ``def`` to the last line) of every function, nested too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            yield f"{prefix}{node.name}", node.end_lineno - node.lineno + 1
            yield from _function_lengths(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _function_lengths(node, f"{prefix}{node.name}.")
        else:
            yield from _function_lengths(node, prefix)


def test_modules_and_functions_are_short() -> None:
    """ARCHITECTURE.md rule 7: small modules of one concept; functions that fit on a screen."""
    offenders = [f"{name}: {lines} lines" for name, lines in _long_things().items() if name not in KNOWN_LONG]
    assert offenders == []


def test_known_long_entries_are_still_long() -> None:
    """An entry of KNOWN_LONG that has been split is taken off, so the list only shrinks."""
    assert sorted(KNOWN_LONG - _long_things().keys()) == []


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
