"""Shared fixtures: a real postoffice server on an ephemeral loopback port.

``server`` runs :class:`postoffice.app.Application` in a background thread with its own event
loop, so tests can use blocking clients (smtplib, swaks) and async ones (aiosmtplib) alike.
``server_process`` runs ``python -m postoffice serve`` as a real process, for signal and crash
tests. Nothing here ever talks to an address outside 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import contextlib
import mailbox
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pg_server import PostgresServer, postgres_bin
from postoffice import logs
from postoffice.app import Application
from postoffice.config import AuthenticationSettings, Config, DeliverySettings, Limits, Listener

if TYPE_CHECKING:
    from postoffice.pgstore.mailboxes import PgMailboxStore

# Subprocesses (`python -m postoffice ...`) run this checkout's sources, like the tests do.
_SOURCES = str(Path(__file__).resolve().parent.parent / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCES, os.environ.get("PYTHONPATH")]))


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        time.sleep(0.05)


def require_tool(name: str) -> str:
    """The path of an external program; skipped locally when absent, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return path


@dataclass
class RunningServer:
    """An Application running in a background thread."""

    config: Config
    app: Application
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    port: int
    stopped: bool = field(default=False)

    @property
    def host(self) -> str:
        return self.config.listeners[0].host

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def http_port(self) -> int:
        return self.app.http_addresses[0].port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def index_idle(self) -> None:
        """Until delivery has settled and every delivered message is in the web index."""
        self.wait_idle()
        if self.app.web is not None:
            self.call(self.app.web.idle())

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def wait_idle(self) -> None:
        """Until every queued message has been delivered (or deferred)."""
        self.call(self.app.scheduler.wait_idle())

    def messages(self, address: str) -> list[mailbox.MaildirMessage]:
        """Messages in ``address``'s Maildir, after delivery settled."""
        self.wait_idle()
        return maildir_messages(self.config.mail_dir, address)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            with contextlib.suppress(Exception):
                self.call(self.app.stop(grace=2.0))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            # The lines its loop held for the next write (logs.py), while this test's streams
            # are still open, as `serve` writes them when its loop ends.
            logs.flush()


def maildir_messages(mail_dir: Path, address: str) -> list[mailbox.MaildirMessage]:
    local, _, domain = address.rpartition("@")
    path = mail_dir / domain.lower() / local.lower()
    if not path.exists():
        return []
    box = mailbox.Maildir(path, factory=None, create=False)
    return sorted(box, key=lambda m: m.get_date())


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def start_server(
    config: Config, loop_factory: LoopFactory | None = None, **app_options: Any
) -> RunningServer:
    """Run an Application; ``app_options`` go to its constructor (``observer``, ``clock``).

    ``loop_factory``: the event loop to run it on (``uvloop.new_event_loop``); asyncio's by default.
    """
    loop = (loop_factory or asyncio.new_event_loop)()
    ready: Future[int] = Future()
    holder: dict[str, Application] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            try:
                app = Application(config, **app_options)
                holder["app"] = app
                bound = await app.start()
                ready.set_result(bound[0].port)
            except BaseException as exc:  # surface start-up errors to the test
                ready.set_exception(exc)

        loop.run_until_complete(boot())
        if ready.exception() is None:
            loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="postoffice-test-server", daemon=True)
    thread.start()
    port = ready.result(30)
    return RunningServer(config, holder["app"], loop, thread, port)


# Mail for other domains goes to a closed port on loopback unless a test says otherwise: no
# test ever looks up or reaches a real mail server, and such mail is deferred at once.
NOWHERE = DeliverySettings(relay_host=("127.0.0.1", 9), relay_tls="none")


NO_VERIFICATION = AuthenticationSettings(verify=False)


def make_config(data_dir: Path, **overrides: Any) -> Config:
    limits = overrides.pop("limits", None) or Limits()
    base = Config(
        hostname="mx.test",
        data_dir=data_dir,
        listeners=(Listener("smtp", "127.0.0.1", 0),),
        http_listeners=(Listener("http", "127.0.0.1", 0),),
        limits=limits,
        delivery=NOWHERE,
        # No mail authentication (DNS lookups) unless a test asks: a server with domains would
        # verify by default, and tests never reach a real resolver.
        authentication=NO_VERIFICATION,
    )
    return replace(base, **overrides)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for this test session (tests/pg_server.py)."""
    bindir = postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required in CI (.ci/run installs the postgresql package)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    cluster = PostgresServer(bindir)
    cluster.start()
    yield cluster
    cluster.remove()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """The URL of a new, empty database of the session's cluster: one per test."""
    return postgres.url(postgres.create_database())


@pytest.fixture
def pg_mailbox_nodes(pg_url: str) -> Iterator[Callable[[], PgMailboxStore]]:
    """Makes mailbox stores on the test's database, each with pools of its own: nodes of one cluster."""
    from postoffice.pg.database import Database
    from postoffice.pg.migrate import migrate
    from postoffice.pgstore.mailboxes import PgMailboxStore

    opened: list[Database] = []

    def node() -> PgMailboxStore:
        database = Database(pg_url, pool_size=4, name=f"node{len(opened)}")
        database.open()
        migrate(database)
        opened.append(database)
        return PgMailboxStore(database)

    yield node
    for database in opened:
        database.close()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with config overrides: ``server_factory(domains=("example.test",))``;
    ``app_options={"clock": ...}`` goes to the Application, ``loop_factory`` picks the event loop."""
    servers: list[RunningServer] = []

    def factory(
        *,
        app_options: dict[str, Any] | None = None,
        loop_factory: LoopFactory | None = None,
        **overrides: Any,
    ) -> RunningServer:
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(servers)}")
        running = start_server(make_config(data_dir, **overrides), loop_factory, **(app_options or {}))
        servers.append(running)
        return running

    yield factory
    for running in servers:
        running.stop()


@pytest.fixture
def server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    """A capture-mode server (no domains): accepts every recipient into its own Maildir."""
    return server_factory()


def children_of(pid: int) -> list[int]:
    """The processes ``pid`` started and that still live (a ``serve``'s workers)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def crash_tree(process: subprocess.Popen[Any]) -> int:
    """SIGKILL a server and all its workers at once, as a power cut would; its exit status.

    ``process.kill()`` alone kills the parent only, and the kernel then sends each worker
    SIGTERM (PR_SET_PDEATHSIG), which stops gracefully: not a crash. All are stopped first,
    so none sees another die."""
    family = [process.pid, *children_of(process.pid)] if process.poll() is None else []
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in reversed(family):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    return process.wait(10)


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    data_dir: Path
    output: list[str]

    def http_port(self, timeout: float = 30.0) -> int:
        """The web listener's port, from the start-up banner."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.output):
                match = _LISTENING_HTTP.match(line.strip())
                if match:
                    return int(match["port"])
            time.sleep(0.02)
        raise AssertionError("no http listener in:\n" + "".join(self.output))

    def workers(self) -> list[int]:
        """The worker processes of ``serve`` (none for a single process)."""
        return children_of(self.process.pid)

    def crash(self) -> int:
        """SIGKILL the server and all its workers at once, as a power cut would (crash_tree)."""
        return crash_tree(self.process)

    def terminate(self, sig: int | None = None) -> int:
        if self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
        return self.process.wait(30)


_LISTENING = re.compile(r"^listening smtp (?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:]+)):(?P<port>\d+)$")
_LISTENING_HTTP = re.compile(r"^listening http (?:\[[^\]]+\]|[^:]+):(?P<port>\d+)\b")


# `python -m postoffice` with uvloop made unimportable: the server runs on asyncio's own loop
# (runtime.loop.event_loop_factory picks uvloop whenever it can be imported).
_WITHOUT_UVLOOP = (
    "import runpy, sys; sys.modules['uvloop'] = None; "
    "runpy.run_module('postoffice', run_name='__main__', alter_sys=True)"
)


def spawn_server(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None, loop: str = "default"
) -> ServerProcess:
    """``python -m postoffice serve`` on an ephemeral port; waits until it listens.

    ``loop="asyncio"`` runs it on asyncio's event loop even where uvloop is installed."""
    start = ["-c", _WITHOUT_UVLOOP] if loop == "asyncio" else ["-m", "postoffice"]
    command = [
        sys.executable,
        *start,
        "serve",
        "--data-dir",
        str(data_dir),
        "--smtp",
        "127.0.0.1:0",
        "--hostname",
        "mx.test",
        *(() if any(arg.startswith(("--http", "--no-http")) for arg in extra) else ("--http", "127.0.0.1:0")),
        *extra,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # faulthandler: a server that hangs is made to print where (see _dump_and_kill).
        env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
    )
    output: list[str] = []
    # The output is read on a thread from the start, so a server that hangs before it listens
    # fails here, at the deadline, with what it printed (a blocking readline would wait on).
    threading.Thread(target=_drain, args=(process, output), daemon=True).start()
    deadline = time.monotonic() + 45
    seen = 0
    while time.monotonic() < deadline:
        for line in output[seen:]:
            seen += 1
            match = _LISTENING.match(line.strip())
            if match:
                return ServerProcess(process, int(match["port"]), data_dir, output)
        if process.poll() is not None and seen == len(output):
            time.sleep(0.1)  # the last lines may still be on their way
            if seen == len(output):
                break
        time.sleep(0.02)
    _dump_and_kill(process)
    raise AssertionError("server did not start:\n" + "".join(output))


def _dump_and_kill(process: subprocess.Popen[str]) -> None:
    """Have a hung server and its workers print every thread's stack (SIGABRT, which
    faulthandler answers), then kill it."""
    if process.poll() is None:
        pids = [process.pid]
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{process.pid}/task").iterdir():
                pids += [int(pid) for pid in (task / "children").read_text().split()]
        for pid in reversed(pids):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGABRT)
        time.sleep(1)
    process.kill()


def _drain(process: subprocess.Popen[str], output: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def factory(*extra: str, data_dir: Path | None = None, loop: str = "default") -> ServerProcess:
        running = spawn_server(data_dir or tmp_path / "data", *extra, loop=loop)
        started.append(running)
        return running

    yield factory
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(10)


class RawSmtp:
    """A blocking SMTP client that sends exactly the bytes it is given and reads whole replies.

    For exchanges the client libraries cannot express: pipelining by hand, BDAT, over-long
    lines, silence until a timeout. Replies come back as the bytes on the wire, so a test can
    compare them with ``Reply.render()``.
    """

    def __init__(self, port: int, *, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def read_reply(self) -> bytes:
        """One complete reply (every ``NNN-`` line and the final ``NNN `` line), CRLFs included."""
        lines: list[bytes] = []
        while True:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if not self._fill():
                    raise ConnectionError(f"connection closed inside a reply: {b''.join(lines)!r}")
                continue
            line, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: str | bytes) -> bytes:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.read_reply()

    def greeting(self) -> bytes:
        return self.read_reply()

    def ehlo(self, name: str = "client.test") -> bytes:
        self.greeting()
        return self.command(f"EHLO {name}")

    def read_rest(self) -> bytes:
        """Everything until the server closes the connection (bounded by the socket timeout)."""
        while self._fill():
            pass
        rest, self._buffer = self._buffer, b""
        return rest

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@pytest.fixture
def smtp_client() -> Iterator[Callable[..., RawSmtp]]:
    """Open raw SMTP connections to a port: ``smtp_client(server.port)``; closed afterwards."""
    opened: list[RawSmtp] = []

    def connect(port: int, *, timeout: float = 10.0) -> RawSmtp:
        client = RawSmtp(port, timeout=timeout)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


@contextlib.contextmanager
def small_tmpfs(mount_point: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at ``mount_point``: a real file system that really runs out of space
    (needs root and mount(8); the test is skipped otherwise). Unmounted however the test ends."""
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (see :func:`small_tmpfs`)."""
    with small_tmpfs(tmp_path / "small") as mount_point:
        yield mount_point


def remount_read_only(mount_point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
