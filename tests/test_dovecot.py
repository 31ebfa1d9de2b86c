"""Dovecot serves postoffice's Maildirs over IMAP, as docs/dovecot.md describes.

A real postoffice server delivers; Debian's Dovecot (``dovecot-imapd``) reads the same Maildir
with a minimal configuration of the shape the documentation gives: passwords from postoffice's
own ``accounts.json`` (its argon2id hashes, which Dovecot checks as ``{ARGON2ID}``), the
Maildir at ``<data-dir>/mail/<domain>/<local part>``, and one unprivileged user owning the mail.
Both sides must then agree on the flags: Dovecot's ``\\Seen`` is the file's ``:2,S`` suffix,
and postoffice's "mark read" is a ``\\Seen`` Dovecot reports.

Dovecot refuses to access mail as uid 0, so when the tests run as root the Maildirs are handed
to Debian's ``mail`` system user (standing in for the user postoffice runs as in production)
and Dovecot's mail processes run as that user; otherwise everything runs as the current user.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from conftest import RunningServer, require_tool, wait_until
from mail_peers import free_port
from postoffice.accounts import Accounts
from web_helpers import client, messages

DOMAIN = "example.test"
ALICE = "alice@example.test"
PASSWORD = "correct horse battery staple"


def dovecot_passwd(accounts_json: Path) -> str:
    """A Dovecot passwd-file from accounts.json: the recipe of docs/dovecot.md."""
    users = json.loads(accounts_json.read_text())["users"]
    return "".join(f"{address}:{{ARGON2ID}}{user['password']}\n" for address, user in users.items())


def dovecot_conf(work: Path, mail_root: Path, port: int, mail_user: pwd.struct_passwd) -> str:
    """A minimal dovecot.conf: the documented one, with a private base_dir, state and log."""
    lines = [
        f"base_dir = {work}/run",
        f"state_dir = {work}/state",
        f"log_path = {work}/dovecot.log",
        "protocols = imap",
        "listen = 127.0.0.1",
        # Loopback only, and a test: no certificate. Production sets ssl = required.
        "ssl = no",
        "disable_plaintext_auth = no",
        "auth_mechanisms = plain",
        # postoffice folds addresses to lower case, and so must the lookups and the paths.
        "auth_username_format = %Lu",
        f"mail_uid = {mail_user.pw_uid}",
        f"mail_gid = {mail_user.pw_gid}",
        f"first_valid_uid = {mail_user.pw_uid}",
        f"first_valid_gid = {mail_user.pw_gid}",
        f"mail_location = maildir:{mail_root}/%Ld/%Ln",
        f"passdb {{\n  driver = passwd-file\n  args = {work}/passwd\n}}",
        f"userdb {{\n  driver = static\n  args = home={mail_root}/%Ld/%Ln\n}}",
        f"service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}",
        "service imap {\n  process_limit = 4\n}",
    ]
    if os.geteuid() != 0:
        # Without root, Dovecot runs every process as this user and cannot chroot (its
        # "rootless installation").
        lines += [
            f"default_internal_user = {mail_user.pw_name}",
            f"default_login_user = {mail_user.pw_name}",
            f"default_internal_group = {mail_user.pw_name}",
            "service imap-login {\n  chroot =\n}",
            "service anvil {\n  chroot =\n}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Dovecot:
    port: int
    work: Path
    mail_user: pwd.struct_passwd
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        path = self.work / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def hand_over(self, data_dir: Path) -> None:
        """Give the Maildirs to the mail user, as if postoffice ran as that user."""
        if os.geteuid() != 0:
            return
        mail_root = data_dir / "mail"
        for path in [mail_root, *mail_root.rglob("*")]:
            os.chown(path, self.mail_user.pw_uid, self.mail_user.pw_gid, follow_symlinks=False)

    @contextlib.contextmanager
    def imap(self, user: str, password: str) -> Iterator[imaplib.IMAP4]:
        connection = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        try:
            connection.login(user, password)
            yield connection
            connection.logout()
        except imaplib.IMAP4.error as exc:
            raise AssertionError(f"IMAP: {exc}\ndovecot.log:\n{self.log()}") from None
        finally:
            with contextlib.suppress(OSError):
                connection.shutdown()


def _mail_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("mail")  # Debian's system user for mail spools (uid 8)
    except KeyError:
        return pwd.getpwnam("nobody")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the mail user can enter (pytest's tmp_path is private to the test user)."""
    path = Path(tempfile.mkdtemp(prefix="postoffice-dovecot-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mail_server(shared_dir: Path, server_factory: Callable[..., RunningServer]) -> RunningServer:
    """postoffice for example.test, with alice's account."""
    running = server_factory(data_dir=shared_dir / "data", domains=(DOMAIN,))
    Accounts(running.config.accounts_file).add_user(ALICE, PASSWORD)
    return running


@pytest.fixture
def dovecot(shared_dir: Path, mail_server: RunningServer) -> Iterator[Dovecot]:
    """Dovecot on a free loopback port, reading mail_server's Maildirs; stopped even on failure."""
    binary = require_tool("dovecot")
    work = shared_dir / "dovecot"
    for directory in (work, work / "run", work / "state"):
        directory.mkdir(mode=0o755)
    mail_user = _mail_user()
    port = free_port("127.0.0.1")
    (work / "passwd").write_text(dovecot_passwd(mail_server.config.accounts_file))
    (work / "dovecot.conf").write_text(dovecot_conf(work, mail_server.config.mail_dir, port, mail_user))
    stderr = (work / "stderr").open("wb")
    process = subprocess.Popen(
        [binary, "-F", "-c", str(work / "dovecot.conf")],
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
        start_new_session=True,  # its own process group, so teardown can reach every child
    )
    running = Dovecot(port, work, mail_user, process)
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"dovecot did not listen on {port}:\n{(work / 'stderr').read_text()}\n{running.log()}"
                )
            time.sleep(0.05)
        yield running
    finally:
        _stop(process)
        stderr.close()
        wait_until(lambda: not _listening(port), timeout=10, what=f"port {port} freed")


def _stop(process: subprocess.Popen[bytes]) -> None:
    # SIGTERM makes the master stop its children; the process group is the fallback.
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def deliver(server: RunningServer, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = "Bob <bob@elsewhere.test>"
    message["To"] = ALICE
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        smtp.send_message(message)
    server.index_idle()


def log_in(http: httpx.Client) -> dict[str, str]:
    """Log in to the web API as alice; the header that state-changing calls need."""
    response = http.post("/api/v1/login", json={"address": ALICE, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"X-CSRF-Token": response.json()["csrf_token"]}


def flags(connection: imaplib.IMAP4, number: str = "1") -> str:
    status, data = connection.fetch(number, "(FLAGS)")
    assert status == "OK", data
    first = data[0]
    return first.decode() if isinstance(first, bytes) else str(first)


def test_dovecot_reads_a_delivered_message_and_its_flags(
    mail_server: RunningServer, dovecot: Dovecot
) -> None:
    deliver(mail_server, "Lunch", "Noon at the usual place.")
    dovecot.hand_over(mail_server.data_dir)
    maildir = mail_server.config.mail_dir / DOMAIN / "alice"
    assert len(list((maildir / "new").iterdir())) == 1

    # The same password postoffice checks, and the address in any case.
    with dovecot.imap("Alice@Example.Test", PASSWORD) as imap:
        status, count = imap.select("INBOX")
        assert (status, count) == ("OK", [b"1"]), dovecot.log()
        status, data = imap.fetch("1", "(FLAGS BODY.PEEK[])")
        assert status == "OK", data
        envelope, content = data[0]
        assert isinstance(envelope, bytes) and isinstance(content, bytes)
        assert b"\\Recent" in envelope and b"\\Seen" not in envelope
        assert b"Subject: Lunch" in content
        assert b"Delivered-To: alice@example.test" in content
        assert b"Noon at the usual place." in content

        status, data = imap.store("1", "+FLAGS", "(\\Seen)")
        assert status == "OK", data
        assert "\\Seen" in flags(imap)

    # Dovecot keeps \Seen where postoffice, mutt and every Maildir reader look: the file name.
    assert list((maildir / "new").iterdir()) == []
    names = [path.name for path in (maildir / "cur").iterdir()]
    assert len(names) == 1 and names[0].endswith(":2,S"), names

    # And postoffice's web side follows the file and reports it read.
    with client(mail_server) as http:
        log_in(http)
        (summary,) = messages(http, mailbox=ALICE)["messages"]
        assert http.get(f"/api/v1/messages/{summary['id']}").status_code == 200
        assert messages(http, mailbox=ALICE)["messages"][0]["read"] is True


def test_a_message_marked_read_in_postoffice_is_seen_in_dovecot(
    mail_server: RunningServer, dovecot: Dovecot
) -> None:
    deliver(mail_server, "Minutes", "Attached below.")
    dovecot.hand_over(mail_server.data_dir)
    with dovecot.imap(ALICE, PASSWORD) as imap:
        imap.select("INBOX")
        assert "\\Seen" not in flags(imap)

    with client(mail_server) as http:
        token = log_in(http)
        (summary,) = messages(http, mailbox=ALICE)["messages"]
        response = http.patch(f"/api/v1/messages/{summary['id']}", json={"read": True}, headers=token)
        assert response.status_code == 200, response.text

    with dovecot.imap(ALICE, PASSWORD) as imap:
        imap.select("INBOX")
        assert "\\Seen" in flags(imap)


def test_a_wrong_password_is_refused_by_dovecot(dovecot: Dovecot) -> None:
    connection = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            connection.login(ALICE, "not the password")
    finally:
        connection.shutdown()
