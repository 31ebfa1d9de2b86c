"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temporary directory.

Never a shared server: each test session (each xdist worker) makes its own cluster with Debian's
``postgresql`` package (``/usr/lib/postgresql/*/bin``), listening on a Unix socket in that
directory and on a free port of 127.0.0.1, and removes it at the end. PostgreSQL refuses to run
as root, so as root the cluster belongs to the ``postgres`` system user the package creates and
its programs run through ``runuser``.

Clients connect as ``postoffice``, the cluster's superuser: over the socket with no password
(``trust``), over TCP with ``PASSWORD`` (``scram-sha-256``), so a wrong password can be tested.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

USER = "postoffice"
PASSWORD = "test-password"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's program directory, or None when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """One cluster: :meth:`start`, :meth:`url` of a database, :meth:`restart`, :meth:`stop`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="postoffice-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._databases = 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120, check=check)

    def start(self) -> None:
        """Make the cluster on first call, then start it; returns once it takes connections."""
        if not self.data.exists():
            password_file = self.root / "password"
            password_file.write_text(PASSWORD + "\n")
            if self._as:
                shutil.chown(password_file, "postgres")
            self._run(
                str(self.bindir / "initdb"),
                *("-D", str(self.data), "-U", USER, "-E", "UTF8", "--locale=C.UTF-8"),
                *("--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}"),
                "--no-sync",
            )
        options = f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c max_connections=200"
        done = self._run(
            str(self.bindir / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"),
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}{self.log_text()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are ended; ``immediate``: like a crash)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        """The socket URL of ``database`` (no password needed)."""
        return f"postgresql://{USER}@/{database}?host={quote(str(self.root), safe='')}&port={self.port}"

    def tcp_url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        """The TCP URL of ``database`` with ``password`` (a wrong one fails to log in)."""
        return f"postgresql://{USER}:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database: its name."""
        import psycopg

        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name
