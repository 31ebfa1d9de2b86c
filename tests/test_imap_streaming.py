"""Big IMAP transfers with flat memory: FETCH of a whole big folder is sent as it is made,
and a big APPEND goes to a file in the folder's ``tmp/`` as it arrives.

The server runs in this process, so tracemalloc sees its threads too; the figures in
docs/imap.md come from these tests.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RunningServer, wait_until
from submission_support import ALICE, ALICE_PASSWORD, DOMAIN, Certs, make_certs
from test_imap_clients import imap_ports, start

FOLDER_SIZE = 50_000
_FETCHED = re.compile(rb"\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\)\)")


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def fill(maildir: Path, count: int) -> None:
    """``count`` small messages in ``cur/``, every third one read."""
    body = b"Subject: many\r\n\r\nhello\r\n"
    start_time = int(time.time()) - count
    for number in range(count):
        info = "S" if number % 3 == 0 else ""
        name = f"{start_time + number}.B{number:08d}.many,S={len(body)}:2,{info}"
        fd = os.open(maildir / "cur" / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, body)
        os.close(fd)


def login_and_select(sock: socket.socket) -> None:
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(
        f"a LOGIN {ALICE} {{{len(ALICE_PASSWORD)}+}}\r\n{ALICE_PASSWORD}\r\nb SELECT INBOX\r\n".encode()
    )
    while not reader.readline().startswith(b"b OK"):
        pass
    reader.close()


@dataclass
class Checked:
    count: int = 0
    octets: int = 0
    last_uid: int = 0
    done: bytes = b""


def read_fetch_responses(sock: socket.socket) -> Checked:
    """Read FETCH responses slowly, checking each as it comes (kept whole, they would be what
    tracemalloc sees): sequence numbers 1, 2, ..., UIDs ascending, every third one read."""
    checked, pending, reads = Checked(), b"", 0
    while not checked.done:
        chunk = sock.recv(8192)
        assert chunk, "connection closed"
        checked.octets += len(chunk)
        reads += 1
        if reads % 16 == 0:
            time.sleep(0.002)  # a slow client: the server waits for it
        *lines, pending = (pending + chunk).split(b"\r\n")
        for line in lines:
            match = _FETCHED.fullmatch(line)
            if match is None:
                checked.done = line
                break
            seq, uid, flags = int(match.group(1)), int(match.group(2)), match.group(3)
            assert seq == checked.count + 1 and uid > checked.last_uid, line
            assert (flags == b"\\Seen") == (checked.count % 3 == 0), line
            checked.count, checked.last_uid = seq, uid
    return checked


def test_fetch_of_a_big_folder_streams_with_flat_memory(
    server_factory: Callable[..., RunningServer], certs: Certs
) -> None:
    server = start(server_factory, certs, http_listeners=())  # no web index reading the folder
    maildir = server.config.mail_dir / DOMAIN / "alice"
    for name in ("tmp", "new", "cur"):
        (maildir / name).mkdir(parents=True, exist_ok=True)
    fill(maildir, FOLDER_SIZE)
    with socket.socket() as sock:
        # A small receive buffer and slow reads: the server must wait for the client.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", imap_ports(server)["imap"]))
        login_and_select(sock)
        tracemalloc.start()
        try:
            sock.sendall(b"c FETCH 1:* (UID FLAGS)\r\n")
            checked = read_fetch_responses(sock)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert checked.count == FOLDER_SIZE and checked.done.startswith(b"c OK"), checked
    # The whole answer is about 1.9 MB (and several times that as Python objects when it was
    # made whole); streamed, the server holds a 64 KiB chunk and what asyncio buffers on top.
    assert checked.octets > 35 * FOLDER_SIZE
    assert peak < 1024 * 1024, f"peak {peak} bytes for {checked.octets} bytes sent"
    print(f"FETCH 1:* (UID FLAGS) of {FOLDER_SIZE} messages: {checked.octets} bytes, peak {peak} bytes")


APPEND_CLIENT = """
import imaplib, sys
message = open(sys.argv[2], "rb").read()
with imaplib.IMAP4("127.0.0.1", int(sys.argv[1])) as client:
    client.login(sys.argv[3], sys.argv[4])
    typ, data = client.append("Sent", "(\\\\Seen)", None, message)
    print(typ, data[0].decode())
"""


def big_message(path: Path) -> bytes:
    """A 20 MB message with CRLF line ends (imaplib would rewrite bare LFs), and its bytes."""
    with path.open("wb") as out:
        out.write(b"From: bob@example.test\r\nSubject: big append\r\n")
        out.write(b"Content-Type: application/octet-stream\r\n\r\n")
        for number in range(20 * 1024):
            out.write(b"%1022d\r\n" % number)
    return path.read_bytes()


def test_a_20_mb_append_goes_to_tmp_as_it_arrives(
    server_factory: Callable[..., RunningServer], certs: Certs, tmp_path: Path
) -> None:
    server = start(server_factory, certs, http_listeners=())
    source = tmp_path / "big.eml"
    expected = hashlib.sha256(big_message(source)).hexdigest()
    size = source.stat().st_size
    sent = server.config.mail_dir / DOMAIN / "alice" / ".Sent"
    # The client (imaplib) in its own process: tracemalloc sees only the server.
    command = [sys.executable, "-c", APPEND_CLIENT, str(imap_ports(server)["imap"]), str(source)]
    tracemalloc.start()
    try:
        done = subprocess.run(
            [*command, ALICE, ALICE_PASSWORD], capture_output=True, timeout=120, check=False
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.startswith(b"OK [APPENDUID "), done.stdout
    stored = list((sent / "cur").iterdir())
    assert len(stored) == 1 and stored[0].name.endswith(":2,S") and f",S={size}" in stored[0].name
    assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == expected
    assert not list((sent / "tmp").iterdir())
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte APPEND"
    print(f"APPEND of {size} bytes: peak {peak} bytes")


def test_a_big_append_that_fails_leaves_nothing_in_tmp(
    server_factory: Callable[..., RunningServer], certs: Certs
) -> None:
    server = start(server_factory, certs, http_listeners=())
    maildir = server.config.mail_dir / DOMAIN / "alice"
    body = b"Subject: x\r\n\r\n" + b"y" * (1024 * 1024) + b"\r\n"
    with socket.create_connection(("127.0.0.1", imap_ports(server)["imap"]), timeout=30) as sock:
        login_and_select(sock)
        reader = sock.makefile("rb")
        # No such folder: the literal is read (to the mailbox's tmp/), then NO [TRYCREATE].
        sock.sendall(b"c APPEND Nowhere {%d+}\r\n" % len(body) + body + b"\r\n")
        assert reader.readline().startswith(b"c NO [TRYCREATE]")
        wait_until(lambda: not list((maildir / "tmp").iterdir()))  # removed as the NO is sent
        # Cut off halfway: what arrived is dropped when the connection ends.
        sock.sendall(b"d APPEND INBOX {%d+}\r\n" % len(body) + body[: len(body) // 2])
        wait_until(lambda: len(list((maildir / "tmp").iterdir())) == 1)
        reader.close()  # else the socket stays open behind it
    wait_until(lambda: not list((maildir / "tmp").iterdir()))
    assert [path.name for path in (maildir / "cur").iterdir()] == []
