"""Several real postoffice nodes sharing one PostgreSQL database, for the cluster's tests.

Each node is ``python -m postoffice serve --database URL`` with a data directory of its own
(its certificates, web index and sockets), its name in ``<data-dir>/postoffice.toml``
(``[storage] node_name``), and loopback listeners on ports 0: the ports are read from its
banner (``listening smtp HOST:PORT``, ``listening http HOST:PORT``), or, while it waits for
its database, from its ``waiting http HOST:PORT`` line. Nodes are started together (each
pays its interpreter's start-up at once), stopped with SIGTERM, or killed.

    with Cluster(pg_url, tmp_path) as cluster:
        a, b, c = cluster.start(3)
        smtplib.SMTP("127.0.0.1", a.smtp_port) ...
        b.kill()

Until the cluster's stores exist a node cannot start (``open_stores`` says "not built yet"):
tests that need one call :func:`require_cluster_stores` first, which skips naming what is
missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from conftest import _dump_and_kill, crash_tree

# The stores a node in cluster mode runs on, each an engineer's part of issue 21.
CLUSTER_STORES = ("postoffice.pgstore.queue", "postoffice.pgstore.mailboxes", "postoffice.pgstore.accounts")

_LISTENING = re.compile(
    r"^listening (?P<kind>smtp|submission|smtps|imap|http) (?:\[[^\]]+\]|[^: ]+):(?P<port>\d+)"
)
_WAITING = re.compile(r"^waiting http (?:\[[^\]]+\]|[^: ]+):(?P<port>\d+)")


def require_cluster_stores() -> None:
    """Skip (naming the module) until every store a cluster node runs on exists."""
    for module in CLUSTER_STORES:
        pytest.importorskip(module, reason=f"a cluster node needs {module} (issue 21), not merged yet")


@dataclass
class Node:
    """One ``postoffice serve`` process of the cluster."""

    name: str
    data_dir: Path
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    @property
    def text(self) -> str:
        return "".join(self.output)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 45.0) -> re.Match[str]:
        """The first output line matching ``pattern``; fails with the output if the node exits
        or the deadline passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.output):
                match = pattern.match(line.strip())
                if match:
                    return match
            if self.process.poll() is not None:
                time.sleep(0.1)  # its last lines may still be on their way
                if not any(pattern.match(line.strip()) for line in self.output):
                    raise AssertionError(f"node {self.name} exited {self.process.returncode}:\n{self.text}")
            time.sleep(0.02)
        _dump_and_kill(self.process)
        raise AssertionError(f"node {self.name}: no line matching {pattern.pattern!r} in:\n{self.text}")

    def wait_listening(self, timeout: float = 45.0) -> Node:
        """Until the banner is out (its last line: ``data in ...``); ports read from it."""
        self.wait_for(re.compile(r"^data in "), timeout)
        for line in self.output:
            match = _LISTENING.match(line.strip())
            if match:
                self.ports.setdefault(match["kind"], int(match["port"]))
        return self

    def wait_waiting(self, timeout: float = 45.0) -> Node:
        """Until it says it waits for its database; its web port read from that line."""
        self.ports["http"] = int(self.wait_for(_WAITING, timeout)["port"])
        return self

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """``GET path`` on the node's web listener: status and body (an HTTP error too)."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/api/v1/status")
        assert code == 200, body
        found: dict[str, Any] = json.loads(body)
        return found

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return self.get("/readyz", timeout=2)[0] == 200
        return False

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, and its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> int:
        """SIGKILL, workers and all: a node that dies without a word (a crash, a host lost)."""
        return crash_tree(self.process)


class Cluster:
    """Nodes on loopback sharing the database at ``url``; each in ``root/<name>``."""

    def __init__(
        self, url: str, root: Path, *, hostname: str = "mx.test", extra: tuple[str, ...] = ()
    ) -> None:
        self.url = url
        self.root = root
        self.hostname = hostname
        self.extra = extra
        self.nodes: list[Node] = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop_all()

    def spawn(self, name: str | None = None, *extra: str, url: str | None = None) -> Node:
        """Start a node and return at once (wait with :meth:`Node.wait_listening`)."""
        name = name or f"node-{chr(ord('a') + len(self.nodes))}"
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        config = data_dir / "postoffice.toml"
        config.write_text(f'[storage]\nnode_name = "{name}"\n')
        command = [
            *(sys.executable, "-m", "postoffice", "serve", "--config", str(config)),
            *("--database", self.url if url is None else url, "--data-dir", str(data_dir)),
            *("--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--hostname", self.hostname),
            *self.extra,
            *extra,
        ]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        node = Node(name, data_dir, process)
        threading.Thread(target=_drain, args=(process, node.output), daemon=True).start()
        self.nodes.append(node)
        return node

    def start(self, count: int, *extra: str) -> list[Node]:
        """``count`` nodes started together; returns once every one listens."""
        started = [self.spawn(None, *extra) for _ in range(count)]
        return [node.wait_listening() for node in started]

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.process.wait(20)
            except subprocess.TimeoutExpired:
                _dump_and_kill(node.process)
                node.process.wait(10)


def _drain(process: subprocess.Popen[str], output: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
