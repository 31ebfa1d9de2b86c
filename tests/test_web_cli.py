"""``postoffice serve`` with the web side: --http, --no-http, [listen] http, busy ports, and a
shutdown that does not wait for open event streams."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess
from postoffice import cli
from postoffice.config import DEFAULT_HTTP_LISTENER, Listener, check_config, load_config

pytestmark = pytest.mark.timeout(60)


def test_serve_announces_and_serves_http(server_process: Callable[..., ServerProcess]) -> None:
    running = server_process()
    port = running.http_port()
    response = httpx.get(f"http://127.0.0.1:{port}/api/v1/mailboxes", timeout=10)
    assert response.status_code == 200 and response.json() == []
    assert any(line.startswith(f"listening http 127.0.0.1:{port}") for line in running.output)


def test_no_http(server_process: Callable[..., ServerProcess]) -> None:
    running = server_process("--no-http")
    with pytest.raises(AssertionError):
        running.http_port(timeout=1.0)
    assert not any("http" in line for line in running.output if line.startswith("listening"))


def test_sigterm_does_not_wait_for_open_event_streams(server_process: Callable[..., ServerProcess]) -> None:
    running = server_process()
    port = running.http_port()
    with (
        httpx.Client(timeout=10) as http,
        http.stream("GET", f"http://127.0.0.1:{port}/api/v1/events") as stream,
    ):
        assert next(stream.iter_lines()).startswith("retry:")
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(20) == 0
        # Bounded, not timed: the process ended well inside its own 5 s grace for requests.
        assert time.monotonic() - started < 15


@pytest.mark.parametrize("workers", ["1", "2"])  # with workers the parent binds it
def test_busy_http_port_is_one_line_and_exit_1(tmp_path: Path, workers: str) -> None:
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        port = occupier.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "postoffice",
                "serve",
                "--hostname",
                "mx.test",
                "--data-dir",
                str(tmp_path / "data"),
                "--smtp",
                "127.0.0.1:0",
                "--http",
                f"127.0.0.1:{port}",
                "--workers",
                workers,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    # One line, nothing logged around it: the listeners open before anything starts.
    assert result.stderr == (
        f"postoffice: cannot listen on http 127.0.0.1:{port}: Address already in use;"
        " choose another address with --http HOST:PORT, or --no-http for no web UI\n"
    )


def test_http_flags_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--http", "nonsense"]) == 2
    assert "--http" in capsys.readouterr().err
    assert cli.main(["serve", "--http", "127.0.0.1:0", "--no-http"]) == 2


def test_listen_http_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text('[listen]\nhttp = ["127.0.0.1:9025", "[::1]:9025"]\n', encoding="utf-8")
    assert load_config(path).http_listeners == (
        Listener("http", "127.0.0.1", 9025),
        Listener("http", "::1", 9025),
    )
    path.write_text("[listen]\nhttp = []\n", encoding="utf-8")
    assert load_config(path).http_listeners == ()
    assert load_config(None).http_listeners == (DEFAULT_HTTP_LISTENER,)
    # The command line wins over the file.
    assert load_config(path, http_listeners=[Listener("http", "127.0.0.1", 1)]).http_listeners == (
        Listener("http", "127.0.0.1", 1),
    )
    path.write_text('[listen]\nhttp = ["localhost"]\n', encoding="utf-8")
    (problem,) = check_config(path)
    assert problem.startswith(f"{path}: listen.http: ")


def test_http_sockets_ask_for_tcp_nodelay() -> None:
    """Regression: asyncio sets TCP_NODELAY only on sockets created with IPPROTO_TCP; without
    it every response written in two parts waited out the client's delayed ACK."""
    from postoffice.web.server import bind_http

    sock = bind_http("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_the_example_file_documents_listen_http() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "postoffice.toml"
    assert load_config(example).http_listeners == (DEFAULT_HTTP_LISTENER,)
