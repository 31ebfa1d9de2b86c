"""The first hour with ``postoffice serve``: what a person sees when it works and when it fails.

Every failure here runs the real command as a process and checks standard error whole: one
line that says what went wrong and which option changes it, and the exit status.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import spawn_server

pytestmark = pytest.mark.timeout(60)


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # XDG_DATA_HOME in tmp_path: nothing can reach the real default data directory.
    return subprocess.run(
        [sys.executable, "-m", "postoffice", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")},
    )


@contextlib.contextmanager
def occupied(port: int = 0) -> Iterator[int]:
    """A port another program listens on, as Mailpit or MailHog would."""
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", port))
        occupier.listen()
        yield occupier.getsockname()[1]


# -- a port someone else has -----------------------------------------------------------------


def test_a_taken_web_port_is_one_line_naming_the_options(tmp_path: Path) -> None:
    with occupied() as port:
        result = serve(
            tmp_path,
            "--data-dir",
            str(tmp_path / "data"),
            "--smtp",
            "127.0.0.1:0",
            "--http",
            f"127.0.0.1:{port}",
        )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"postoffice: cannot listen on http 127.0.0.1:{port}: Address already in use;"
        " choose another address with --http HOST:PORT, or --no-http for no web UI\n"
    )


def test_the_default_web_port_taken_as_by_mailpit(tmp_path: Path) -> None:
    # 8025 is Mailpit's and MailHog's port too: the likeliest first failure of all.
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):  # something here has it already: just as good
            stack.enter_context(occupied(8025))
        result = serve(tmp_path, "--data-dir", str(tmp_path / "data"), "--smtp", "127.0.0.1:0")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "postoffice: cannot listen on http 127.0.0.1:8025: Address already in use;"
        " choose another address with --http HOST:PORT, or --no-http for no web UI\n"
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_smtp_port_is_one_line_naming_the_option(tmp_path: Path, workers: str) -> None:
    with occupied() as port:
        result = serve(
            tmp_path,
            "--data-dir",
            str(tmp_path / "data"),
            "--smtp",
            f"127.0.0.1:{port}",
            "--no-http",
            "--workers",
            workers,
        )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"postoffice: cannot listen on smtp 127.0.0.1:{port}: Address already in use;"
        " choose another address with --smtp HOST:PORT\n"
    )


@pytest.mark.parametrize("kind", ["submission", "smtps"])
def test_a_taken_submission_port_names_its_option(tmp_path: Path, kind: str) -> None:
    with occupied() as port:
        result = serve(
            tmp_path, "--data-dir", str(tmp_path / "data"), f"--{kind}", f"127.0.0.1:{port}", "--no-http"
        )
    assert (result.returncode, result.stdout) == (1, "")
    # Before it, only the lines saying which certificate was made or loaded for the listener.
    *before, last = result.stderr.splitlines()
    assert all(" postoffice.tls event=tls-" in line for line in before), result.stderr
    assert last == (
        f"postoffice: cannot listen on {kind} 127.0.0.1:{port}: Address already in use;"
        f" choose another address with --{kind} HOST:PORT"
    )


def test_a_taken_port_from_the_config_file_names_the_file_too(tmp_path: Path) -> None:
    config = tmp_path / "postoffice.toml"
    with occupied() as port:
        config.write_text(f'[listen]\nsmtp = ["127.0.0.1:{port}"]\nhttp = []\n', encoding="utf-8")
        result = serve(tmp_path, "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"postoffice: cannot listen on smtp 127.0.0.1:{port}: Address already in use;"
        f" choose another address with --smtp HOST:PORT (or [listen] smtp in {config})\n"
    )


@pytest.mark.parametrize(
    ("flag", "extra"), [("--smtp", ["--no-http"]), ("--http", ["--smtp", "127.0.0.1:0"])]
)
def test_a_listen_name_that_does_not_resolve(tmp_path: Path, flag: str, extra: list[str]) -> None:
    # RFC 6761 §6.4: names under .invalid never resolve.
    result = serve(tmp_path, "--data-dir", str(tmp_path / "data"), flag, "nowhere.invalid:2525", *extra)
    kind = flag.removeprefix("--")
    advice = ", or --no-http for no web UI" if kind == "http" else ""
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"postoffice: cannot listen on {kind} nowhere.invalid:2525: the name nowhere.invalid does not"
        f" resolve to an address; choose another address with {flag} HOST:PORT{advice}\n"
    )


# -- the banner -------------------------------------------------------------------------------


def test_the_banner_gives_the_web_ui_url(tmp_path: Path) -> None:
    running = spawn_server(tmp_path / "data")
    try:
        port = running.http_port()
        deadline = time.monotonic() + 30
        while not any(line.startswith("data in ") for line in running.output):
            assert time.monotonic() < deadline, running.output
            time.sleep(0.02)
        assert f"web UI  http://127.0.0.1:{port}/\n" in running.output
    finally:
        assert running.terminate() == 0


def test_a_cluster_nodes_banner_names_the_database_and_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from postoffice.config import load_config
    from postoffice.runtime.banner import banner

    path = tmp_path / "postoffice.toml"
    path.write_text(
        '[storage]\nbackend = "postgresql"\nnode_name = "mx2"\n'
        'database = "postgresql://po:s3cret@db.example:5433/mail"\n'
    )
    banner(load_config(path, data_dir=tmp_path / "data"), [], [], None)
    shown = capsys.readouterr().out
    assert f"data in {tmp_path / 'data'} (node mx2; mail in the database po@db.example:5433/mail)\n" in shown
    assert "s3cret" not in shown and "mail in " + str(tmp_path) not in shown


# -- usage and paths --------------------------------------------------------------------------


def test_an_unknown_serve_option_shows_serves_usage(tmp_path: Path) -> None:
    result = serve(tmp_path, "--prot", "2525")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("usage: postoffice serve [-h] [--config FILE] [--data-dir DIR]")
    assert "--smtp HOST:PORT" in result.stderr  # the options that do exist
    assert result.stderr.endswith("\npostoffice serve: error: unrecognized arguments: --prot 2525\n")


def test_a_mistyped_data_dir_is_not_made_with_its_parents(tmp_path: Path) -> None:
    wrong = tmp_path / "srv" / "mial" / "data"
    result = serve(tmp_path, "--data-dir", str(wrong), "--smtp", "127.0.0.1:0", "--no-http")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"postoffice: --data-dir: {wrong} cannot be made: {wrong.parent} does not exist"
        " (create it first if the path is right)\n"
    )
    assert not (tmp_path / "srv").exists()


def test_a_mistyped_data_dir_in_the_config_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text('data_dir = "srv/mial/data"\n', encoding="utf-8")
    wrong = tmp_path / "srv" / "mial" / "data"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "postoffice",
            "user",
            "add",
            "--config",
            str(config),
            "--password-stdin",
            "a@example.test",
        ],
        input="secret\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"postoffice: {config}: data_dir: {wrong} cannot be made: {wrong.parent} does not exist"
        " (create it first if the path is right)\n"
    )
    assert not (tmp_path / "srv").exists()


def test_the_data_dir_itself_is_made(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "postoffice",
            "alias",
            "add",
            "--data-dir",
            str(tmp_path / "new"),
            "a@example.test",
            "b@example.test",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert (tmp_path / "new" / "accounts.json").is_file()


def test_the_default_data_dir_is_made_with_its_parents(tmp_path: Path) -> None:
    # A fresh account may have no ~/.local/share yet; nobody typed the default, so no typo.
    xdg = tmp_path / "home" / ".local" / "share"
    result = subprocess.run(
        [sys.executable, "-m", "postoffice", "alias", "add", "a@example.test", "b@example.test"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "XDG_DATA_HOME": str(xdg)},
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert (xdg / "postoffice" / "accounts.json").is_file()


def test_each_banner_line_is_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A log line from another thread or worker shares the pipe: `print` wrote "listening smtp
    # HOST:PORT" and its newline apart, and a log line between them once broke the line a
    # script (the test harness in CI) was waiting for.
    from postoffice.config import load_config
    from postoffice.net.server import BoundAddress
    from postoffice.runtime import banner as banner_module
    from postoffice.web.server import HttpAddress

    writes: list[str] = []

    class Recorder:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Recorder())
    config = load_config(data_dir=tmp_path / "data")
    banner_module.banner(
        config, [BoundAddress("smtp", "127.0.0.1", 2525)], [HttpAddress("127.0.0.1", 8025)], None
    )
    assert "listening smtp 127.0.0.1:2525\n" in writes
    assert all(text.endswith("\n") and text.count("\n") == 1 for text in writes), writes
