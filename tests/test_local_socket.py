"""The server's local socket, ``<data-dir>/run/submit.sock``: ``postoffice sendmail`` hands mail
over there as the local system, and it is signed and never verified, as a logged-in user's.

End to end: a real server (and, once, real worker processes), ``postoffice sendmail`` run as a
program, mail relayed to an aiosmtpd peer on 127.0.0.2 whose DKIM signature dkimpy verifies
with the key from a dnslib server on loopback; the MX port's mail is still verified.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import smtplib
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import RunningServer, ServerProcess, maildir_messages, wait_until
from dkim_support import txt_dns
from postoffice.config import AuthenticationSettings
from test_cli_sendmail import run_sendmail
from test_outbound_signing import (
    ALICE,
    BOB,
    World,
    dkimpy_results,
    records,
    signature_fields,
    world_factory,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.timeout(90)

AUTHSERV_ID = b"Authentication-Results: mx.local.test"


def config_file(tmp_path: Path, server: RunningServer, *, smtp_port: int | None = None) -> Path:
    """A configuration naming the server's data directory and its MX port, as
    /etc/postoffice.toml would for the programs that run sendmail."""
    port = server.port if smtp_port is None else smtp_port
    path = tmp_path / "postoffice.toml"
    path.write_text(f'data_dir = "{server.config.data_dir}"\n[listen]\nsmtp = ["127.0.0.1:{port}"]\n')
    return path


def letter(subject: str, author: str = ALICE, to: str = BOB) -> bytes:
    # As cron writes it: bare LF line ends, which sendmail turns into CRLF.
    return (
        f"From: Alice <{author}>\nTo: {to}\nSubject: {subject}\n\nHello Bob,\n\nthis is {subject}.\n".encode()
    )


@pytest.fixture
def verifying_world(world_factory: Callable[..., World]) -> World:  # noqa: F811
    return world_factory(authentication=AuthenticationSettings(verify=True, dns_timeout=1.0))


def test_sendmail_through_the_local_socket_is_signed_and_not_verified(
    verifying_world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    world = verifying_world
    [key] = world.generate()
    config = config_file(tmp_path, world.server)
    assert world.server.config.local_socket_path.is_socket()
    result = run_sendmail(f"--config={config}", "-oi", BOB, stdin=letter("from cron"))
    assert result.returncode == 0, result.stderr
    world.server.wait_idle()
    content = world.received()
    head = content.split(b"\r\n\r\n", 1)[0]
    # Relayed to another domain without AUTH, signed, and with no verification of ours.
    assert len(signature_fields(content)) == 1
    with txt_dns(records(key)) as keys_dns:
        assert dkimpy_results(content, keys_dns) == [(b"local.test", True)]
    assert AUTHSERV_ID not in head and b"Received-SPF" not in head
    # Who handed it over, as the kernel said: in the Received field and the connect log line.
    uid = os.getuid()
    assert re.search(rb"Received: from \S+ \(local uid=%d pid=\d+\)" % uid, head), head
    assert any(
        re.search(rf"event=connect client=local uid={uid} pid=\d+", record.getMessage())
        for record in caplog.records
    )


def test_mx_mail_over_tcp_is_still_verified_and_not_signed(verifying_world: World, tmp_path: Path) -> None:
    world = verifying_world
    world.generate()
    # --server names the MX port: sendmail talks TCP, an unauthenticated client like any other,
    # so only a local recipient (an alias that forwards to bob) is accepted, and it is checked.
    result = run_sendmail(
        f"--server=127.0.0.1:{world.server.port}", "-oi", "fwd@local.test", stdin=letter("tcp")
    )
    assert result.returncode == 0, result.stderr
    world.server.wait_idle()
    content = world.received()
    head = content.split(b"\r\n\r\n", 1)[0]
    assert AUTHSERV_ID in head and b"Received-SPF: " in head
    assert signature_fields(content) == []


def test_without_the_socket_sendmail_falls_back_to_the_mx_port(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = server_factory(
        local_socket=False, authentication=AuthenticationSettings(verify=True, dns_timeout=0.2)
    )
    assert not server.config.local_socket_path.exists()
    result = run_sendmail(
        f"--config={config_file(tmp_path, server)}", "-oi", "x@capture.test", stdin=letter("fallback")
    )
    assert result.returncode == 0, result.stderr
    [stored] = maildir_messages(server.config.mail_dir, "x@capture.test")
    assert str(stored["Authentication-Results"]).startswith("mx.test;")  # checked, as TCP mail is
    assert "(local uid=" not in str(stored["Received"])


def test_the_socket_is_for_the_servers_user_and_root_only(server: RunningServer) -> None:
    path = server.config.local_socket_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.stat().st_uid == os.getuid()
    server.stop()
    assert not path.exists()  # gone with the server: sendmail uses the MX port meanwhile


def test_a_stale_socket_is_replaced_and_anything_else_is_left_alone(
    server_factory: Callable[..., RunningServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "stale"
    run = data_dir / "run"
    run.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as left:  # a crashed run's socket, nobody listening
        left.bind(str(run / "submit.sock"))
    server = server_factory(data_dir=data_dir)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(server.config.local_socket_path))
        assert client.recv(100).startswith(b"220 ")
        # SO_PEERCRED of the server as seen from here: this very process is the server.
        pid, uid, _ = struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        assert (pid, uid) == (os.getpid(), os.getuid())
    blocked = tmp_path / "blocked"
    (blocked / "run").mkdir(parents=True)
    (blocked / "run" / "submit.sock").write_text("not a socket")
    other = server_factory(data_dir=blocked)
    assert (blocked / "run" / "submit.sock").read_text() == "not a socket"
    assert other.port > 0  # the server runs; sendmail will use its MX port
    assert any("event=local-socket-failed" in record.getMessage() for record in caplog.records)


def test_the_local_session_needs_no_auth_and_may_relay(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(domains=("local.test",))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.config.local_socket_path))
        with smtplib.SMTP() as client:
            client.sock = sock
            client.file = None
            assert client.getreply()[0] == 220
            code, features = client.ehlo("localhost")
            assert code == 250 and b"AUTH" not in features and b"STARTTLS" not in features
            # Anyone may be the sender, <> included, and another domain may be the recipient.
            assert client.mail("<>")[0] == 250
            assert client.rcpt("someone@elsewhere.test")[0] == 250
            assert client.rset()[0] == 250


def test_workers_share_one_local_socket(server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    running = server_process("--workers", "2", data_dir=data_dir, loop="default")
    path = data_dir / "run" / "submit.sock"
    assert path.is_socket()
    config = tmp_path / "postoffice.toml"
    config.write_text(f'data_dir = "{data_dir}"\n[listen]\nsmtp = ["127.0.0.1:{running.port}"]\n')
    for index in range(6):  # one connection each: the kernel gives each to one of the workers
        result = run_sendmail(f"--config={config}", "-oi", "many@workers.test", stdin=letter(f"w{index}"))
        assert result.returncode == 0, result.stderr
    wait_until(
        lambda: len(maildir_messages(data_dir / "mail", "many@workers.test")) == 6,
        what="every message delivered",
    )
    for message in maildir_messages(data_dir / "mail", "many@workers.test"):
        assert "(local uid=" in str(message["Received"])
    assert sum(f"client=local uid={os.getuid()} pid=" in line for line in running.output) == 6
    assert running.terminate(signal.SIGTERM) == 0
    assert not path.exists()
