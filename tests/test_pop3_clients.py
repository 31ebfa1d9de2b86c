"""POP3 against a running postoffice with real clients: Python's poplib (USER/PASS, STLS,
POP3_SSL, UIDL, TOP, RETR, DELE) and Debian's fetchmail, all on loopback."""

from __future__ import annotations

import asyncio
import base64
import os
import poplib
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import RunningServer, ServerProcess, require_tool, wait_until
from postoffice.config import AuthConfig, Limits, Listener, TLSConfig, load_config
from postoffice.maildir.store import MaildirStore
from postoffice.net.listeners import Security
from postoffice.net.pop3_maildrop import FileLocks
from postoffice.net.pop3_server import Pop3Server
from submission_support import ALICE, ALICE_PASSWORD, Certs, add_accounts

POP3_LISTENERS = (Listener("pop3", "127.0.0.1", 0), Listener("pop3s", "127.0.0.1", 0))


def pop3_port(server: RunningServer, kind: str = "pop3") -> int:
    assert server.app.pop3 is not None
    return next(bound.port for bound in server.app.pop3.bound if bound.kind == kind)


def deliver(server: RunningServer, recipient: str, subject: str, body: str = "hello\r\n") -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.sendmail("sender@elsewhere.test", [recipient], f"Subject: {subject}\r\n\r\n{body}")
    server.wait_idle()


def maildir_files(server: RunningServer, address: str) -> dict[str, list[str]]:
    local, _, domain = address.partition("@")
    root = server.config.mail_dir / domain / local
    return {sub: sorted(os.listdir(root / sub)) for sub in ("new", "cur")}


@pytest.fixture
def capture(server_factory: Callable[..., RunningServer]) -> RunningServer:
    """Capture mode with a POP3 listener: from loopback, any password opens any mailbox."""
    return server_factory(pop3_listeners=(Listener("pop3", "127.0.0.1", 0),))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    """A certificate for mx.test and 127.0.0.1 with a common name too (fetchmail reads it)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.test", "127.0.0.1", common_name="mx.test")
    directory = tmp_path / "certs"
    directory.mkdir()
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return Certs(ca, cert, key)


@pytest.fixture
def accounts_server(server_factory: Callable[..., RunningServer], certs: Certs) -> RunningServer:
    """A mail server for example.test with alice's account, POP3 with STLS and on 995's kind."""
    server = server_factory(
        domains=("example.test",),
        tls=TLSConfig(cert=certs.cert, key=certs.key),
        auth=AuthConfig(failure_delay=0.0),
        pop3_listeners=POP3_LISTENERS,
    )
    add_accounts(server)
    return server


def test_poplib_reads_and_deletes_in_capture_mode(capture: RunningServer) -> None:
    deliver(capture, "alice@localhost", "first", "one\r\n.leading dot\r\n")
    deliver(capture, "alice@localhost", "second")
    client = poplib.POP3("127.0.0.1", pop3_port(capture), timeout=10)
    client.user("alice@localhost")
    client.pass_("anything")
    count, octets = client.stat()
    assert count == 2
    listed = client.list()[1]
    assert sum(int(line.split()[1]) for line in listed) == octets
    uids = [line.split()[1].decode() for line in client.uidl()[1]]
    files = maildir_files(capture, "alice@localhost")["new"]
    assert sorted(uids) == sorted(name.split(":")[0] for name in files)  # the Maildir base names
    top = client.top(1, 0)[1]
    assert b"Subject: first" in top and b"one" not in top
    assert maildir_files(capture, "alice@localhost")["cur"] == []  # TOP does not mark seen
    response, lines, size = client.retr(1)
    assert response.startswith(b"+OK") and b".leading dot" in lines and b"one" in lines
    assert size == int(listed[0].split()[1])  # poplib counts what it got, unstuffed: LIST said so
    assert [name.endswith(":2,S") for name in maildir_files(capture, "alice@localhost")["cur"]] == [True]
    assert [line.split()[1].decode() for line in client.uidl()[1]] == uids  # the UIDL survives the rename
    client.dele(1)
    before = maildir_files(capture, "alice@localhost")
    assert len(before["new"]) + len(before["cur"]) == 2  # DELE is applied only at QUIT
    client.quit()
    after = maildir_files(capture, "alice@localhost")
    assert after["cur"] == [] and len(after["new"]) == 1


def test_deletions_without_quit_are_not_applied(capture: RunningServer) -> None:
    deliver(capture, "bob@localhost", "keep me")
    client = poplib.POP3("127.0.0.1", pop3_port(capture), timeout=10)
    client.user("bob@localhost")
    client.pass_("x")
    client.dele(1)
    client.sock.shutdown(socket.SHUT_RDWR)  # gone without QUIT: RFC 1939 §6, no UPDATE
    client.close()
    # The lock is given back with the session, and the message is still there.
    second = poplib.POP3("127.0.0.1", pop3_port(capture), timeout=10)
    second.user("bob@localhost")
    for _ in range(100):
        try:
            second.pass_("x")
            break
        except poplib.error_proto as exc:
            assert b"IN-USE" in exc.args[0]  # until the server has seen the first one go
            time.sleep(0.05)
            second.user("bob@localhost")
    else:
        pytest.fail("the maildrop lock was not given back")
    assert second.stat()[0] == 1
    second.quit()


def test_one_session_per_maildrop(capture: RunningServer) -> None:
    deliver(capture, "carol@localhost", "hi")
    first = poplib.POP3("127.0.0.1", pop3_port(capture), timeout=10)
    first.user("carol@localhost")
    first.pass_("x")
    second = poplib.POP3("127.0.0.1", pop3_port(capture), timeout=10)
    second.user("carol@localhost")
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        second.pass_("x")
    assert second.noop().startswith(b"+OK")  # the session goes on
    first.quit()
    second.user("carol@localhost")
    assert second.pass_("x").startswith(b"+OK")
    second.quit()


def test_malformed_commands_get_err_and_the_session_goes_on(capture: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", pop3_port(capture)), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        for line in (b"HELO there", b"\x00\x01", b"LIST", b"X" * 5000, b"RETR 1"):
            sock.sendall(line + b"\r\n")
            assert reader.readline().startswith(b"-ERR"), line
        sock.sendall(b"CAPA\r\n")
        assert reader.readline() == b"+OK capability list follows\r\n"


def test_accounts_login_with_stls_uidl_top_retr(accounts_server: RunningServer, certs: Certs) -> None:
    deliver(accounts_server, ALICE, "for alice")
    client = poplib.POP3("127.0.0.1", pop3_port(accounts_server), timeout=10)
    assert "STLS" in client.capa()
    client.stls(certs.client_context())
    client.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("wrong password")
    client.user(ALICE)
    client.pass_(ALICE_PASSWORD)
    assert client.stat()[0] == 1
    assert b"Subject: for alice" in client.retr(1)[1]
    client.quit()


def test_pop3s_and_auth_plain(accounts_server: RunningServer, certs: Certs) -> None:
    deliver(accounts_server, ALICE, "over 995")
    client = poplib.POP3_SSL(
        "127.0.0.1", pop3_port(accounts_server, "pop3s"), context=certs.client_context(), timeout=10
    )
    assert "STLS" not in client.capa() and "SASL" in client.capa()
    token = base64.b64encode(f"\0{ALICE}\0{ALICE_PASSWORD}".encode()).decode()
    assert client._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
    uid = client.uidl(1).split()[2]
    assert uid.decode() in "".join(maildir_files(accounts_server, ALICE)["new"])
    client.dele(1)
    client.quit()
    files = maildir_files(accounts_server, ALICE)
    assert files == {"new": [], "cur": []}


def test_fetchmail_downloads_and_deletes_over_stls(
    accounts_server: RunningServer, certs: Certs, tmp_path: Path
) -> None:
    fetchmail = require_tool("fetchmail")
    deliver(accounts_server, ALICE, "fetch me", "line\r\n.dot\r\n")
    deliver(accounts_server, ALICE, "and me")
    out = tmp_path / "fetched.mbox"
    ca = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca))
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 protocol pop3 port {pop3_port(accounts_server)}\n"
        f'  user "{ALICE}" password "{ALICE_PASSWORD}" is "{os.environ.get("USER", "root")}" here\n'
        f"  sslproto tls1.2+ sslcertck sslcertfile {ca} sslcommonname mx.test\n"
        f'  mda "cat >> {out}"\n'
        "  nokeep\n"
    )
    rc.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        [fetchmail, "-f", str(rc), "--nodetach", "--nosyslog", "-v"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STLS" in result.stdout + result.stderr
    fetched = out.read_bytes()
    assert b"Subject: fetch me" in fetched and b"Subject: and me" in fetched
    assert b"\n.dot" in fetched  # unstuffed again by the client
    assert maildir_files(accounts_server, ALICE) == {"new": [], "cur": []}


def test_connections_per_client_are_limited(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(
        pop3_listeners=(Listener("pop3", "127.0.0.1", 0),),
        limits=Limits(connections_per_client=1, trusted_networks=()),
    )
    first = poplib.POP3("127.0.0.1", pop3_port(server), timeout=10)
    with pytest.raises(poplib.error_proto, match=r"too many connections"):
        poplib.POP3("127.0.0.1", pop3_port(server), timeout=10)
    first.quit()


async def test_an_idle_session_is_closed_without_update(tmp_path: Path) -> None:
    """RFC 1939 §3's autologout timer (10 minutes in the server; a fraction of a second here)."""
    store = MaildirStore(tmp_path / "mail", "mx.test")
    pop3 = Pop3Server(
        hostname="mx.test",
        listeners=(Listener("pop3", "127.0.0.1", 0),),
        security=Security(),
        store=store,
        locks=FileLocks(tmp_path / "locks"),
        limits=Limits(),
        capture=True,
        idle_timeout=0.3,
    )
    port = (await pop3.start())[0].port
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"+OK")
        writer.write(b"NOOP\r\n")
        assert await reader.readline() == b"+OK\r\n"
        closing = await asyncio.wait_for(reader.readline(), timeout=5)
        assert closing == b"-ERR [SYS/TEMP] idle for too long, closing\r\n"
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
        writer.close()
    finally:
        await pop3.stop(grace=1)


def test_serve_pop3_flag_is_in_the_banner_and_status(server_process: Callable[..., ServerProcess]) -> None:
    process = server_process("--pop3", "127.0.0.1:0")
    http = process.http_port()
    wait_until(lambda: any(line.startswith("listening pop3 ") for line in process.output), what="pop3 banner")
    line = next(line.strip() for line in process.output if line.startswith("listening pop3 "))
    port = int(line.rsplit(":", 1)[1])
    client = poplib.POP3("127.0.0.1", port, timeout=10)  # capture mode: any password
    client.user("anyone@localhost")
    assert client.pass_("x").startswith(b"+OK maildrop has 0 messages")
    client.quit()
    shown = subprocess.run(
        [sys.executable, "-m", "postoffice", "status", "--http", f"127.0.0.1:{http}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert line in shown.stdout
    assert process.terminate() == 0


def test_no_pop3_unless_asked(server: RunningServer) -> None:
    assert server.app.pop3 is None


def test_listen_pop3_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text('[listen]\npop3 = ["127.0.0.1:1110"]\npop3s = ["[::1]:1995"]\n')
    config = load_config(path)
    assert config.pop3_listeners == (Listener("pop3", "127.0.0.1", 1110), Listener("pop3s", "::1", 1995))
    assert [listener.kind for listener in config.listeners] == ["smtp"]  # SMTP still receives
    flagged = load_config(path, listeners=[Listener("pop3", "127.0.0.1", 2110)])
    assert flagged.pop3_listeners == (Listener("pop3", "127.0.0.1", 2110), Listener("pop3s", "::1", 1995))


def test_retr_is_the_read_state_the_web_ui_shows_and_folders_stay_out(capture: RunningServer) -> None:
    deliver(capture, "dan@localhost", "read me")
    deliver(capture, "dan@localhost", "junk")
    capture.index_idle()
    with httpx.Client(base_url=capture.base_url, timeout=10) as http:
        token = {"X-CSRF-Token": http.get("/api/v1/session").json()["csrf_token"]}
        listed = http.get("/api/v1/messages", params={"mailbox": "dan@localhost"}).json()["messages"]
        junk = next(m for m in listed if m["subject"] == "junk")
        assert http.post(
            f"/api/v1/messages/{junk['id']}/move", json={"folder": "Junk"}, headers=token
        ).is_success
        client = poplib.POP3("127.0.0.1", pop3_port(capture), timeout=10)
        client.user("dan@localhost")
        client.pass_("x")
        assert client.stat()[0] == 1  # INBOX only: Junk is not the maildrop
        assert b"Subject: read me" in client.retr(1)[1]
        client.quit()
        wait_until(
            lambda: all(
                m["read"] for m in http.get("/api/v1/messages", params={"q": "in:INBOX"}).json()["messages"]
            ),
            what="the web index to see RETR's seen flag",
        )


def test_pipelined_commands_from_a_client_that_does_not_read_are_all_answered(capture: RunningServer) -> None:
    count = 20_000
    with socket.create_connection(("127.0.0.1", pop3_port(capture)), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"NOOP\r\n" * count)  # the server stops reading until we catch up
        answers = [reader.readline() for _ in range(count)]
        assert set(answers) == {b"+OK\r\n"}
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"+OK")


def test_failed_logins_are_throttled_like_smtp_auth(
    server_factory: Callable[..., RunningServer], certs: Certs
) -> None:
    server = server_factory(
        domains=("example.test",),
        tls=TLSConfig(cert=certs.cert, key=certs.key),
        auth=AuthConfig(failure_delay=0.0, max_failures=3),
        pop3_listeners=(Listener("pop3", "127.0.0.1", 0),),
    )
    add_accounts(server)
    client = poplib.POP3("127.0.0.1", pop3_port(server), timeout=10)
    for attempt in range(3):
        client.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_(f"guess {attempt}")
    assert client.file.readline() == b""  # the third failure closed the session
    again = poplib.POP3("127.0.0.1", pop3_port(server), timeout=10)
    again.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"too many failed logins"):
        again.pass_(ALICE_PASSWORD)  # locked out: not even the right password is tried
