"""The servers a benchmark compares, each started as its own process on 127.0.0.1.

- ``postoffice``: ``python -m postoffice serve`` in capture mode with its durable default
  (fsync before 250, then delivery into a Maildir), from a config file written here;
  ``postoffice-wN`` is the same with ``--workers N``; ``postoffice-verify`` is the same with
  ``[authentication] verify = true``, its ``[delivery] dns`` a server on 127.0.0.1 started here
  (dns_zone.py) that gives the load generator's sender domain SPF and DMARC records;
- ``aiosmtpd-maildir``: aiosmtpd storing each message in a Maildir with fsync before 250;
- ``aiosmtpd-discard``: aiosmtpd answering 250 and storing nothing;
- ``smtp-sink``: Postfix's C test server, storing nothing (when Debian's ``postfix`` is installed);
- ``postfix``: Postfix itself, a private instance delivering into a Maildir with ``virtual(8)``
  (postfix_peer.py; needs Debian's ``postfix`` and root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import postfix_peer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# The checkout's own sources, whatever is installed.
SOURCES = REPO / "src"

SERVER_NAMES = ("postoffice", "postoffice-w2", "postfix", "aiosmtpd-maildir", "aiosmtpd-discard", "smtp-sink")
# Not run unless named: the cost of verifying SPF, DKIM, DMARC and ARC on every message.
VERIFY = "postoffice-verify"


def is_postoffice(name: str) -> bool:
    """``postoffice`` (one process), ``postoffice-wN`` (``serve --workers N``) or
    ``postoffice-verify``."""
    return name in ("postoffice", VERIFY) or (
        name.startswith("postoffice-w") and name[12:].isdigit() and int(name[12:]) > 0
    )


def workers_of(name: str) -> int:
    return int(name[12:]) if name.startswith("postoffice-w") else 1


RECIPIENT = "rcpt@bench.test"
# The mailbox capture mode files RECIPIENT under (maildir/names.py).
POSTOFFICE_MAILBOX = Path("mail") / "bench.test" / "rcpt"


@dataclass
class RunningServer:
    name: str
    # None for a server that daemonizes (Postfix): then ``master`` and ``stopper`` say the rest.
    process: subprocess.Popen[bytes] | None
    port: int
    workdir: Path
    # Messages stored so far (None for servers that store nothing).
    stored: Callable[[], int] | None
    # Run after the server has stopped (the DNS server of postoffice-verify).
    cleanup: Callable[[], None] | None = None
    # The daemon's main process (whose tree is measured) and how it is stopped.
    master: int | None = None
    stopper: Callable[[], None] | None = None

    @property
    def pid(self) -> int:
        if self.master is not None:
            return self.master
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.stopper is not None:
            self.stopper()
            self.stopper = None
        elif self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.cleanup is not None:
            self.cleanup()
            self.cleanup = None

    def wait_stored(self, count: int, timeout: float) -> float | None:
        """Seconds until ``count`` messages are stored (None: never, or nothing is stored)."""
        if self.stored is None:
            return None
        start = time.perf_counter()
        deadline = start + timeout
        while time.perf_counter() < deadline:
            if self.stored() >= count:
                return time.perf_counter() - start
            time.sleep(0.02)
        return None


def available(name: str) -> bool:
    if name == "postfix":
        return postfix_peer.available()
    if name == "smtp-sink":
        return shutil.which("smtp-sink") is not None
    if name.startswith("aiosmtpd"):
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            return False
    return True


def _count_files(directory: Path) -> Callable[[], int]:
    def count() -> int:
        try:
            with os.scandir(directory) as entries:
                return sum(1 for _ in entries)
        except FileNotFoundError:
            return 0

    return count


def _read_port(process: subprocess.Popen[bytes], prefix: str, timeout: float = 30.0) -> int:
    """The port from the first stdout line starting with ``prefix`` (its last ``:``/space field)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        raw = process.stdout.readline()
        if not raw:
            break
        line = raw.decode(errors="replace").strip()
        seen.append(line)
        if line.startswith(prefix):
            return int(line.replace(":", " ").split()[-1])
    process.kill()
    raise RuntimeError(f"server did not start: {' | '.join(seen)}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


POSTOFFICE_CONFIG = """\
hostname = "postoffice.bench.test"
data_dir = "{data_dir}"

[listen]
smtp = ["127.0.0.1:0"]
# The web side stays on (it indexes every delivery, as by default), on a port of its own.
http = ["127.0.0.1:0"]

[limits]
# Above the 5,000 idle sessions of W4.
connections = 6000
"""


def start(name: str, workdir: Path) -> RunningServer:
    workdir.mkdir(parents=True, exist_ok=True)
    if is_postoffice(name):
        if name == VERIFY:
            return _start_verifying(workdir)
        return _start_postoffice(name, workdir, workers_of(name))
    if name == "aiosmtpd-maildir":
        return _start_aiosmtpd(workdir, maildir=True)
    if name == "aiosmtpd-discard":
        return _start_aiosmtpd(workdir, maildir=False)
    if name == "smtp-sink":
        return _start_smtp_sink(workdir)
    if name == "postfix":
        return _start_postfix(workdir)
    raise ValueError(f"unknown server {name!r}")


VERIFY_CONFIG = """
[authentication]
verify = true

[delivery]
dns = "127.0.0.1:{dns_port}"
"""


def _start_verifying(workdir: Path) -> RunningServer:
    import dns_zone

    # The DNS server lives as long as postoffice: RunningServer.stop closes it.
    zone = contextlib.ExitStack()
    port = zone.enter_context(dns_zone.serving())
    try:
        server = _start_postoffice(VERIFY, workdir, 1, VERIFY_CONFIG.format(dns_port=port))
    except BaseException:
        zone.close()
        raise
    server.cleanup = zone.close
    return server


def _start_postoffice(name: str, workdir: Path, workers: int, settings: str = "") -> RunningServer:
    data_dir = workdir / "data"
    config = workdir / "postoffice.toml"
    # More settings for a comparison run: TOML appended to the file, from the environment.
    extra = os.environ.get("POSTOFFICE_BENCH_EXTRA_CONFIG", "")
    config.write_text(POSTOFFICE_CONFIG.format(data_dir=data_dir) + settings + extra)
    command = [sys.executable, "-m", "postoffice", "serve", "--config", str(config)]
    if workers > 1:
        command += ["--workers", str(workers)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCES), os.environ.get("PYTHONPATH")])),
    }
    log = (workdir / "postoffice.log").open("wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env, cwd=workdir)
    log.close()
    port = _read_port(process, "listening smtp ")
    _drain(process)
    return RunningServer(name, process, port, workdir, _count_files(data_dir / POSTOFFICE_MAILBOX / "new"))


def _start_aiosmtpd(workdir: Path, *, maildir: bool) -> RunningServer:
    args = ["maildir", str(workdir / "Maildir")] if maildir else ["discard"]
    process = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "aiosmtpd_peer.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )
    port = _read_port(process, "listening ")
    _drain(process)
    name = "aiosmtpd-maildir" if maildir else "aiosmtpd-discard"
    stored = _count_files(workdir / "Maildir" / "new") if maildir else None
    return RunningServer(name, process, port, workdir, stored)


def _start_smtp_sink(workdir: Path) -> RunningServer:
    port = _free_port()
    command = ["smtp-sink", "-m", "6000"]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
    command += [f"127.0.0.1:{port}", "1024"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    _wait_listening(port, process)
    return RunningServer("smtp-sink", process, port, workdir, None)


def _start_postfix(workdir: Path) -> RunningServer:
    root = workdir / "postfix"
    port = _free_port()
    master = postfix_peer.start(root, port)
    return RunningServer(
        "postfix",
        None,
        port,
        workdir,
        _count_files(postfix_peer.maildir_new(root)),
        master=master,
        stopper=lambda: postfix_peer.stop(root),
    )


def _drain(process: subprocess.Popen[bytes]) -> None:
    """Keep reading stdout so the server never blocks on a full pipe."""
    import threading

    def run() -> None:
        assert process.stdout is not None
        for _ in process.stdout:
            pass

    threading.Thread(target=run, daemon=True).start()


@contextlib.contextmanager
def running(name: str, workdir: Path) -> Iterator[RunningServer]:
    server = start(name, workdir)
    try:
        yield server
    finally:
        server.stop()
