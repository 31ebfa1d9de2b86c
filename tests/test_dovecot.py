"""Dovecot serves postoffice's Maildirs over IMAP, as docs/dovecot.md describes.

A real postoffice server delivers; Debian's Dovecot (``dovecot-imapd``) reads the same Maildir
with the documentation's own ``dovecot.conf`` and password recipe, taken from docs/dovecot.md
(paths, ports and the mail user replaced for the test, nothing else): passwords from
postoffice's ``accounts.json`` (argon2id hashes, which Dovecot checks as ``{ARGON2ID}``), the
Maildir at ``<data-dir>/mail/<domain>/<local part>``, TLS required. Both sides must then agree
on the flags: Dovecot's ``\\Seen`` is the file's ``:2,S`` suffix, and postoffice's "mark read"
is a ``\\Seen`` Dovecot reports.

Dovecot refuses to access mail as uid 0, so when the tests run as root the Maildirs are handed
to Debian's ``mail`` system user (standing in for the ``postoffice`` user of the documentation)
and Dovecot's mail processes run as that user; otherwise everything runs as the current user
(Dovecot's "rootless" mode). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
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
from submission_support import Certs, make_certs
from web_helpers import client, messages

DOC = Path(__file__).resolve().parent.parent / "docs" / "dovecot.md"
DOMAIN = "example.test"
ALICE = "alice@example.test"
PASSWORD = "correct horse battery staple"


def documented(marker: str) -> str:
    """The fenced block after ``<!-- marker -->`` in docs/dovecot.md."""
    text = DOC.read_text()
    assert f"<!-- {marker} -->" in text, f"docs/dovecot.md has no <!-- {marker} --> block"
    after = text.split(f"<!-- {marker} -->", 1)[1]
    opening = after.index("```")
    body = after.index("\n", opening) + 1
    return after[body : after.index("```", body)]


def substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"docs/dovecot.md no longer says {old!r}: update this test with it"
        text = text.replace(old, new)
    return text


def make_passwd_file(accounts_json: Path, passwd: Path, group: str) -> None:
    """Run the documentation's recipe for Dovecot's password file."""
    recipe = substitute(
        documented("dovecot-passwd"),
        {
            "/var/lib/postoffice/accounts.json": str(accounts_json),
            "/etc/dovecot/postoffice.passwd": str(passwd),
            "chgrp dovecot": f"chgrp {group}",
        },
    )
    subprocess.run(["bash", "-e", "-c", recipe], check=True, timeout=30)


def dovecot_conf(work: Path, mail_root: Path, certs: Certs, port: int, mail_user: pwd.struct_passwd) -> str:
    """The documentation's dovecot.conf, then what a test needs on top of it."""
    conf = substitute(
        documented("dovecot-conf"),
        {
            "/etc/postoffice/tls/fullchain.pem": str(certs.cert),
            "/etc/postoffice/tls/privkey.pem": str(certs.key),
            "/etc/dovecot/postoffice.passwd": str(work / "passwd"),
            "/var/lib/postoffice/mail": str(mail_root),
            "mail_uid = postoffice": f"mail_uid = {mail_user.pw_uid}",
            "mail_gid = postoffice": f"mail_gid = {mail_user.pw_gid}",
            "first_valid_uid = 100": f"first_valid_uid = {mail_user.pw_uid}",
        },
    )
    lines = [
        # A private instance: its own sockets, state and log, and one loopback port.
        f"base_dir = {work}/run",
        f"state_dir = {work}/state",
        f"log_path = {work}/dovecot.log",
        "listen = 127.0.0.1",
        "service imap-login {",
        f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}",
        "  inet_listener imaps {\n    port = 0\n  }",
        "}",
    ]
    if os.geteuid() != 0:
        # Without root, Dovecot runs every process as this user and cannot chroot.
        group = grp.getgrgid(mail_user.pw_gid).gr_name
        lines += [
            f"default_internal_user = {mail_user.pw_name}",
            f"default_internal_group = {group}",
            f"default_login_user = {mail_user.pw_name}",
            "service imap-login {\n  chroot =\n}",
            "service anvil {\n  chroot =\n}",
        ]
    return conf + "\n".join(lines) + "\n"


@dataclass
class Dovecot:
    port: int
    work: Path
    mail_user: pwd.struct_passwd
    process: subprocess.Popen[bytes]
    tls: ssl.SSLContext

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

    def connect(self) -> imaplib.IMAP4:
        """An IMAP connection after STARTTLS (the documented ssl = required)."""
        connection = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        connection.starttls(ssl_context=self.tls)
        return connection

    @contextlib.contextmanager
    def imap(self, user: str, password: str) -> Iterator[imaplib.IMAP4]:
        connection = self.connect()
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
    # Dovecot's auth process reads the password file as its internal user: "dovecot" when the
    # master runs as root (the documented chgrp), the mail user otherwise.
    auth_group = "dovecot" if os.geteuid() == 0 else grp.getgrgid(mail_user.pw_gid).gr_name
    make_passwd_file(mail_server.config.accounts_file, work / "passwd", auth_group)
    certs = make_certs(work / "tls")
    port = free_port("127.0.0.1")
    conf = dovecot_conf(work, mail_server.config.mail_dir, certs, port, mail_user)
    (work / "dovecot.conf").write_text(conf)
    stderr = (work / "stderr").open("wb")
    process = subprocess.Popen(
        [binary, "-F", "-c", str(work / "dovecot.conf")],
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
        start_new_session=True,  # its own process group, so teardown can reach every child
    )
    running = Dovecot(port, work, mail_user, process, certs.client_context())
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
    connection = dovecot.connect()
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            connection.login(ALICE, "not the password")
    finally:
        connection.shutdown()
