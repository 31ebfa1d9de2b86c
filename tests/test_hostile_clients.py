"""Hostile clients over real sockets: slowloris, junk, floods of garbage, connection storms.

The claim under test: over a limit a client gets a clear reply (``421 4.4.2``, ``421 4.7.0``)
or is dropped, memory stays bounded (the server's own ``VmRSS`` from ``/proc``), and a normal
client is still served. Deadlines here are hang guards, never speed assertions.
"""

from __future__ import annotations

import random
import smtplib
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import RawSmtp, RunningServer, ServerProcess
from postoffice.config import Limits
from postoffice.smtp import replies

pytestmark = pytest.mark.timeout(120)

# Generous: an idle server is ~30 MiB; a leak of a few hundred octets per connection over
# 10,000 connections, or buffering the floods below, would go far past it.
RSS_BOUND_KIB = 150 * 1024
HANG_GUARD = 5.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def served_normally(port: int) -> None:
    """A well-behaved client gets its message accepted (HANG_GUARD only stops a hang)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=HANG_GUARD) as smtp:
        refused = smtp.sendmail("a@client.test", ["b@capture.test"], b"Subject: still here\r\n\r\nok\r\n")
    assert refused == {}


def served_after_the_backlog(port: int) -> None:
    """As :func:`served_normally`, once the server has worked through connections still queued
    in its listen backlog: until then a full house answers 421 4.7.0, which is right."""
    deadline = time.monotonic() + 2 * HANG_GUARD
    while True:
        try:
            served_normally(port)
            return
        except smtplib.SMTPConnectError as exc:
            assert exc.smtp_code == 421 and time.monotonic() < deadline
            time.sleep(0.1)


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    received = bytearray()
    try:
        while len(received) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    return bytes(received)


def test_slowloris_is_cut_off_while_others_are_served(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory(limits=Limits(command_timeout=1.0))
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert sock.recv(1024).startswith(b"220 ")
    closed_at: list[float] = []
    answer = bytearray()

    def trickle() -> None:
        # One byte every 0.3 s: always inside the 1 s timeout, never a whole command.
        for byte in b"EHLO slow.client.example.with.a.long.name":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.3)
            sock.setblocking(False)
            try:
                chunk = sock.recv(1024)
            except BlockingIOError:
                chunk = None
            except OSError:
                chunk = b""
            sock.setblocking(True)
            if chunk is not None:
                answer.extend(chunk)
                if not chunk:
                    closed_at.append(time.monotonic())
                    break

    thread = threading.Thread(target=trickle)
    thread.start()
    served_normally(server.port)  # meanwhile, another client is served
    thread.join(20)
    sock.close()
    assert bytes(answer).startswith(replies.TIMEOUT.render(enhanced=False))
    assert closed_at, "the slow client was never disconnected"


def test_junk_commands_end_the_session(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(junk_commands=4))
    client = smtp_client(server.port)
    client.ehlo()
    for command in ("NOOP", "RSET", "VRFY someone"):
        assert client.command(command)[:1] == b"2"
    assert client.command("NOOP") == replies.OK.render(enhanced=True)
    assert client.read_reply() == replies.TOO_MANY_JUNK_COMMANDS.render(enhanced=True)
    assert client.read_rest() == b""
    served_normally(server.port)


def test_unknown_commands_reach_the_error_limit(
    server_factory: Callable[..., RunningServer], smtp_client: Callable[..., RawSmtp]
) -> None:
    server = server_factory(limits=Limits(errors_per_session=3))
    client = smtp_client(server.port)
    client.ehlo()
    client.send(b"XYZZY\r\nFOO bar\r\nGET / HTTP/1.0\r\nNOOP\r\n")
    rest = client.read_rest()
    assert rest.count(replies.UNRECOGNIZED_COMMAND.render(enhanced=True)) == 3
    assert rest.endswith(replies.TOO_MANY_ERRORS.render(enhanced=True))
    served_normally(server.port)


@pytest.fixture
def hostile_server(server_process: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    config = tmp_path / "hostile.toml"
    # Small timeouts so that silent connections go quickly; the default connection limits.
    config.write_text('[limits]\ncommand_timeout = "2s"\ndata_block_timeout = "2s"\n')
    return server_process("--config", str(config))


def _garbage_client(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # dropped by the server mid-flood: that is an answer too
        return read_until_closed(sock)


def test_floods_of_garbage_keep_memory_bounded(hostile_server: ServerProcess) -> None:
    pid, port = hostile_server.process.pid, hostile_server.port
    served_normally(port)
    rng = random.Random(8)
    payloads = [b"\x00" * (1 << 20), bytes(rng.getrandbits(8) for _ in range(1 << 18)) * 4, b"A" * (1 << 20)]
    payloads += [b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n" + b"\x00" * (1 << 20)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda p: _garbage_client(port, p), payloads * 4))
    for answer in answers:
        # Only whole reply lines come back; none of them positive for the garbage itself.
        assert answer.startswith(b"220 ")
        for line in answer.split(b"\r\n")[1:-1]:
            assert line[:1] in (b"2", b"3", b"4", b"5"), line[:60]
    assert rss_kib(pid) < RSS_BOUND_KIB
    served_normally(port)


def test_ten_thousand_connections_opened_and_dropped(hostile_server: ServerProcess) -> None:
    pid, port = hostile_server.process.pid, hostile_server.port
    served_normally(port)
    before = rss_kib(pid)
    reset = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
    deadline = time.monotonic() + 90  # hang guard for the whole storm
    opened = 0
    while opened < 10_000:
        assert time.monotonic() < deadline
        batch = []
        for _ in range(200):
            sock = socket.socket()
            sock.connect(("127.0.0.1", port))
            batch.append(sock)
        for sock in batch:
            # Dropped with RST, as a crashed or hostile client does; it also leaves no
            # TIME_WAIT sockets behind to change how the kernel sizes later tests' buffers.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
            sock.close()
        opened += len(batch)
    served_after_the_backlog(port)
    after = rss_kib(pid)
    assert after < RSS_BOUND_KIB, (before, after)
    assert after - before < 64 * 1024, (before, after)  # no per-connection leak of note
    assert hostile_server.process.poll() is None
