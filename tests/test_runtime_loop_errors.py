"""What asyncio catches itself, in a real ``postoffice serve`` process: one log line, no traceback.

A callback that raises never reaches our code's own boundaries (the session catches its own
failures): asyncio hands it to the loop's exception handler, whose default prints the traceback
over many lines. The server process installs one that logs ``event=internal-error
where=asyncio`` on one line, and goes on serving.
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Runs `postoffice serve` with Application.start wrapped to schedule a callback that raises,
# once the server listens. The first argument picks the loop: "asyncio" makes uvloop
# unimportable (runtime.loop.event_loop_factory then picks asyncio's own).
_SERVE_WITH_A_FAILING_CALLBACK = """
import asyncio, runpy, sys
from postoffice import app

if sys.argv.pop(1) == "asyncio":
    sys.modules["uvloop"] = None
started = app.Application.start

async def start_then_fail(self, **options):
    bound = await started(self, **options)

    def fail():
        raise RuntimeError("a callback failed\\nsaying so on two lines")

    asyncio.get_running_loop().call_soon(fail)
    return bound

app.Application.start = start_then_fail
runpy.run_module("postoffice", run_name="__main__", alter_sys=True)
"""

_LISTENING = re.compile(r"^listening smtp 127\.0\.0\.1:(?P<port>\d+)$")
_EXPECTED = (
    "event=internal-error where=asyncio error='RuntimeError: a callback failed saying so on two lines'"
)


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("loop", ["asyncio", "default"])
def test_an_asyncio_error_is_one_log_line_and_the_server_goes_on(tmp_path: Path, loop: str) -> None:
    if loop == "default":
        pytest.importorskip("uvloop")  # "default" is uvloop where it is installed
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE_WITH_A_FAILING_CALLBACK, loop, "serve", "--data-dir",
         str(tmp_path / "data"), "--smtp", "127.0.0.1:0", "--no-http", "--hostname", "mx.test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    output: list[str] = []
    assert process.stdout is not None
    stream = process.stdout
    reader = threading.Thread(target=lambda: output.extend(stream), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: any("a callback failed" in line for line in output))
        # With workers the first one fails before the banner, which comes once all listen.
        _wait_for(lambda: any(line.startswith("data in ") for line in output))
        [port] = [int(m["port"]) for line in output if (m := _LISTENING.match(line.strip()))]
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # it still serves
            assert client.noop()[0] == 250
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    reader.join(10)
    text = "".join(output)
    assert "Traceback" not in text, text
    # One line from each server process: the default runs one per core (its banner says so).
    workers = [int(line.split()[1]) for line in output if line.startswith("workers ")]
    mentions = [line for line in output if "internal-error" in line or "callback failed" in line]
    assert len(mentions) == (workers[0] if workers else 1), text
    assert all(_EXPECTED in mention for mention in mentions), text
