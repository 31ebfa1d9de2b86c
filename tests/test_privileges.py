"""Running as root: bind every listener, then become ``user`` for good before the data directory
is opened.

The privilege tests start real ``python -m postoffice serve`` processes as root (they are
skipped when the tests do not run as root) with ``user = "nobody"`` on ports below 1024, which
only root can bind: a listener that works afterwards was bound before root was given up.
"""

from __future__ import annotations

import dataclasses
import imaplib
import json
import logging
import os
import poplib
import pwd
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RunningServer, require_tool, wait_until
from postoffice.runtime import privileges

pytestmark = pytest.mark.timeout(90)

TARGET = "nobody"
# Debian's group for mail readers; the shared group of the 0660 tests.
SHARED_GROUP = "mail"


def test_an_unknown_user_flag_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "postoffice",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--user",
            "no-such-user",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (result.stdout + result.stderr).splitlines() == [
        "postoffice: --user: no user 'no-such-user' on this machine (getent passwd no-such-user)"
    ]


def test_a_reload_keeps_the_user_and_the_mode(
    server_factory: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Files already made are the old user's, with the old mode: a change needs a restart."""
    running = server_factory()
    changed = dataclasses.replace(running.config, user=TARGET, mail_file_mode=0o660)

    async def reload() -> None:
        running.app.apply(changed)

    with caplog.at_level(logging.WARNING, logger="postoffice"):
        running.call(reload())
    ignored = {record.getMessage() for record in caplog.records if "reload-ignored" in record.getMessage()}
    assert ignored == {
        "event=reload-ignored key=user reason=restart-needed",
        "event=reload-ignored key=mail_file_mode reason=restart-needed",
    }
    assert (running.app.config.user, running.app.config.mail_file_mode) == (None, 0o600)
    assert running.app.mailboxes.file_mode == 0o600


# -- running as root ---------------------------------------------------------------------------


@pytest.fixture
def target() -> pwd.struct_passwd:
    """The user to become; the test is skipped unless it runs as root."""
    if os.geteuid() != 0:
        pytest.skip("giving up root needs root")
    try:
        return pwd.getpwnam(TARGET)
    except KeyError:
        pytest.skip(f"no user {TARGET} on this machine")


@pytest.fixture
def shared(target: pwd.struct_passwd) -> Iterator[Path]:
    """A directory the target user can reach (pytest's tmp_path is inside a 0700 directory)."""
    base = Path(tempfile.mkdtemp(prefix="postoffice-privileges-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _python_readable_by_target() -> bool:
    try:
        probe = subprocess.run([sys.executable, "-c", "import uvicorn"], user=TARGET, capture_output=True)
    except OSError:
        return False
    return probe.returncode == 0


def readable_python(base: Path) -> list[str]:
    """The prefix of a command that lets the target user read this interpreter's files.

    A server that gave up root loads modules from then on as that user; an interpreter under
    /root (pyenv's, say) is closed to it. The prefix then runs the server in a mount namespace
    of its own where that one directory is opened (a bind mount): nothing changes outside it.
    """
    if _python_readable_by_target():
        return []
    require_tool("unshare")
    blocked = next(
        (parent for parent in Path(sys.prefix).resolve().parents if not parent.stat().st_mode & 0o001), None
    )
    if blocked is None:
        pytest.skip(f"{TARGET} cannot run {sys.executable}")
    inside = Path(sys.prefix).resolve().relative_to(blocked).parts[0]
    shadow = base / "shadow"
    (shadow / inside).mkdir(parents=True)
    shadow.chmod(0o711)
    script = 'mount --bind "$1" "$2" && mount --rbind "$3" "$4" && shift 4 && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    prefix += [str(blocked / inside), str(shadow / inside), str(shadow), str(blocked)]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("mount namespaces (unshare --mount) are needed for this interpreter")
        pytest.skip("this interpreter is closed to nobody and mount namespaces are not available")
    return prefix


def privileged_ports(count: int) -> list[int]:
    """Free loopback ports below 1024: only root can bind them."""
    found: list[int] = []
    for port in random.sample(range(600, 1000), 400):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    pytest.skip("no free ports below 1024")


@dataclass
class RootServer:
    process: subprocess.Popen[str]
    output: list[str]
    data_dir: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


_BANNER_END = re.compile(r"^data in ")


def start_root_server(
    base: Path, config: str, *args: str, wait: bool = True, own_network: bool = False
) -> RootServer:
    """``postoffice serve`` as root with ``config``; waits for the banner unless not ``wait``.
    ``own_network``: in a network namespace of its own, where a wildcard address reaches no
    interface but its own loopback (nothing is exposed beyond this test)."""
    path = base / "postoffice.toml"
    path.write_text(config, encoding="utf-8")
    path.chmod(0o644)
    command = [
        *(["unshare", "--net"] if own_network else []),
        *readable_python(base),
        sys.executable,
        "-m",
        "postoffice",
        "serve",
        "--config",
        str(path),
        *args,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    running = RootServer(process, output, base / "data")
    assert process.stdout is not None
    if not wait:
        output += process.stdout.readlines()
        process.wait(30)
        return running
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if _BANNER_END.match(line):
            threading.Thread(target=output.extend, args=(process.stdout,), daemon=True).start()
            return running
    process.kill()
    raise AssertionError("server did not start:\n" + "".join(output))


def ids_of(pid: int) -> dict[str, list[int]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    found = {}
    for line in lines:
        name, _, values = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            found[name] = [int(value) for value in values.split()]
    return found


def owners_under(directory: Path) -> set[tuple[int, int]]:
    owners = {(directory.stat().st_uid, directory.stat().st_gid)}
    for parent, directories, files in os.walk(directory):
        for name in directories + files:
            status = os.lstat(os.path.join(parent, name))
            owners.add((status.st_uid, status.st_gid))
    return owners


def _send(port: int, recipient: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("sender@example.org", [recipient], f"Subject: {subject}\r\n\r\nbody\r\n")


def _files(maildir: Path) -> list[Path]:
    return list((maildir / "new").iterdir()) if (maildir / "new").is_dir() else []


def test_root_binds_every_listener_then_runs_as_the_user(target: pwd.struct_passwd, shared: Path) -> None:
    smtp, submission, smtps, http, pop3, imap = privileged_ports(6)
    running = start_root_server(
        shared,
        f'data_dir = "{shared / "data"}"\nhostname = "mx.test"\nuser = "{TARGET}"\n'
        f'[listen]\nsmtp = ["127.0.0.1:{smtp}"]\nsubmission = ["127.0.0.1:{submission}"]\n'
        f'smtps = ["127.0.0.1:{smtps}"]\nhttp = ["127.0.0.1:{http}"]\npop3 = ["127.0.0.1:{pop3}"]\n'
        f'imap = ["127.0.0.1:{imap}"]\n',
    )
    try:
        uid, gid = target.pw_uid, target.pw_gid
        assert ids_of(running.process.pid) == {"Uid": [uid] * 4, "Gid": [gid] * 4, "Groups": [gid]}

        _send(smtp, "kim@mx.test", "as nobody")
        maildir = running.data_dir / "mail" / "mx.test" / "kim"
        wait_until(lambda: len(_files(maildir)) == 1, what="delivered")
        (delivered,) = _files(maildir)
        status = delivered.stat()
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (uid, gid, 0o600)
        with smtplib.SMTP("127.0.0.1", submission, timeout=10) as client:
            assert client.ehlo()[0] == 250 and client.has_extn("starttls")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP_SSL("127.0.0.1", smtps, timeout=10, context=context) as client:
            assert client.ehlo()[0] == 250  # with the self-signed certificate made as nobody
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/livez", timeout=10) as response:
            assert response.status == 200
        pop = poplib.POP3("127.0.0.1", pop3, timeout=10)  # bound as root, served as the user
        assert pop.getwelcome().startswith(b"+OK")
        pop.quit()
        with imaplib.IMAP4("127.0.0.1", imap, timeout=10) as client:  # bound as root, too
            assert client.noop()[0] == "OK"

        # The data directory and everything in it is the user's, made by the user.
        assert stat.S_IMODE(running.data_dir.stat().st_mode) == 0o700
        assert owners_under(running.data_dir) == {(uid, gid)}
        assert not any("running-as-root" in line for line in running.output)
    finally:
        assert running.stop() == 0, "".join(running.output)


def test_workers_bind_as_root_and_run_as_the_user_with_a_shared_group(
    target: pwd.struct_passwd, shared: Path
) -> None:
    smtp, http = privileged_ports(2)
    mail_gid = _group_id(SHARED_GROUP)
    running = start_root_server(
        shared,
        f'data_dir = "{shared / "data"}"\nhostname = "mx.test"\nuser = "{TARGET}"\n'
        f'group = "{SHARED_GROUP}"\nmail_file_mode = "0660"\n'
        f'[listen]\nsmtp = ["127.0.0.1:{smtp}"]\nhttp = ["127.0.0.1:{http}"]\n',
        "--workers",
        "2",
    )
    try:
        workers = _children(running.process.pid)
        assert len(workers) == 2
        for pid in [running.process.pid, *workers]:
            assert ids_of(pid) == {"Uid": [target.pw_uid] * 4, "Gid": [mail_gid] * 4, "Groups": [mail_gid]}
        for index in range(10):  # one connection each: the kernel spreads them over the workers
            _send(smtp, "kim@mx.test", f"message {index}")
        maildir = running.data_dir / "mail" / "mx.test" / "kim"
        wait_until(lambda: len(_files(maildir)) == 10, what="every message delivered")
        for delivered in _files(maildir):
            status = delivered.stat()
            assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (
                target.pw_uid,
                mail_gid,
                0o660,
            )
        for directory in (maildir, maildir / "new", running.data_dir / "mail"):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o770
        assert stat.S_IMODE(running.data_dir.stat().st_mode) == 0o710
        assert owners_under(running.data_dir) == {(target.pw_uid, mail_gid)}
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/livez", timeout=10) as response:
            assert response.status == 200
    finally:
        assert running.stop() == 0, "".join(running.output)


def _group_id(name: str) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pytest.skip(f"no group {name} on this machine")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def test_root_cannot_be_taken_back(target: pwd.struct_passwd) -> None:
    """In a forked child: after drop(), setuid(0) and setgid(0) are refused."""
    identity = privileges.Identity(TARGET, target.pw_uid, target.pw_gid)
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        os.close(reading)
        report: dict[str, object] = {}
        try:
            privileges.drop(identity)
            report["ids"] = [os.getresuid(), os.getresgid(), os.getgroups()]
            for name, take_back in (("setuid", os.setuid), ("setgid", os.setgid)):
                try:
                    take_back(0)
                    report[name] = "allowed"
                except PermissionError:
                    report[name] = "refused"
        except BaseException as exc:
            report["error"] = repr(exc)
        finally:
            os.write(writing, json.dumps(report).encode())
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as stream:
        report = json.loads(stream.read())
    os.waitpid(pid, 0)
    uid, gid = target.pw_uid, target.pw_gid
    assert report == {"ids": [[uid] * 3, [gid] * 3, [gid]], "setuid": "refused", "setgid": "refused"}


@pytest.mark.parametrize("owned_by_root", ["data", "data/accounts.json"])
def test_a_data_directory_the_user_cannot_write_is_one_line(
    target: pwd.struct_passwd, shared: Path, owned_by_root: str
) -> None:
    data = shared / "data"
    data.mkdir(mode=0o700)
    (data / "accounts.json").write_text("{}")
    os.chmod(data / "accounts.json", 0o600)
    if owned_by_root != "data":
        os.chown(data, target.pw_uid, target.pw_gid)
    smtp = privileged_ports(1)[0]
    running = start_root_server(
        shared,
        f'data_dir = "{data}"\nuser = "{TARGET}"\n[listen]\nsmtp = ["127.0.0.1:{smtp}"]\nhttp = []\n',
        wait=False,
    )
    assert running.process.returncode == 1
    assert len(running.output) == 1, running.output
    offender = shared / owned_by_root
    mode = "0700" if owned_by_root == "data" else "0600"
    assert running.output[0].strip() == (
        f"postoffice: {shared / 'postoffice.toml'}: data_dir: {offender} is not writable by user"
        f" '{TARGET}' (owner root, mode {mode}); chown -R {TARGET}: {data}"
    )


def test_root_on_a_public_address_without_a_user_warns_once(target: pwd.struct_passwd, shared: Path) -> None:
    require_tool("unshare")
    # The warning comes once the listeners are open (a listener that fails says only why), so
    # the server really listens on wildcard addresses: inside a network namespace of its own.
    running = start_root_server(
        shared,
        f'data_dir = "{shared / "data"}"\n[listen]\nsmtp = ["0.0.0.0:0"]\nsubmission = ["0.0.0.0:0"]\n'
        'http = ["0.0.0.0:0"]\n',
        own_network=True,
    )
    assert running.stop() == 0
    warnings = [line for line in running.output if "event=running-as-root" in line]
    assert len(warnings) == 1, running.output
    assert "WARNING" in warnings[0] and "set user in the configuration" in warnings[0]


def test_root_on_loopback_only_does_not_warn(target: pwd.struct_passwd, shared: Path) -> None:
    running = start_root_server(
        shared, f'data_dir = "{shared / "data"}"\n[listen]\nsmtp = ["127.0.0.1:0"]\nhttp = ["127.0.0.1:0"]\n'
    )
    assert running.stop() == 0
    assert not any("running-as-root" in line for line in running.output)


def test_administration_commands_as_root_write_as_the_user(target: pwd.struct_passwd, shared: Path) -> None:
    data = shared / "data"
    path = shared / "postoffice.toml"
    path.write_text(f'data_dir = "{data}"\ndomains = ["example.test"]\nuser = "{TARGET}"\n')
    secret = shared / "password"
    secret.write_text("correct horse\n")
    secret.chmod(0o644)
    command = [*readable_python(shared), sys.executable, "-m", "postoffice"]
    added = subprocess.run(
        [*command, "user", "add", "kim@example.test", "--password-file", str(secret), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    assert owners_under(data) == {(target.pw_uid, target.pw_gid)}
    assert (data / "mail" / "example.test" / "kim" / "new").is_dir()


def test_a_user_other_than_root_cannot_become_another(target: pwd.struct_passwd, shared: Path) -> None:
    """Started as nobody with user = "daemon": one line, nothing bound, nothing written."""
    command = [*readable_python(shared), "runuser", "-u", TARGET, "--", sys.executable, "-m", "postoffice"]
    result = subprocess.run(
        [*command, "serve", "--data-dir", str(shared / "data"), "--user", "daemon", "--smtp", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (result.stdout + result.stderr).splitlines() == [
        f"postoffice: user: this process runs as '{TARGET}', not as root, so it cannot become 'daemon';"
        " start it as root or as that user"
    ]
    assert not (shared / "data").exists()


def test_an_interpreter_the_user_cannot_read_is_refused_at_start(
    target: pwd.struct_passwd, shared: Path
) -> None:
    if _python_readable_by_target():
        pytest.skip(f"this interpreter is readable by {TARGET}")
    smtp = privileged_ports(1)[0]
    path = shared / "postoffice.toml"
    path.write_text(
        f'data_dir = "{shared / "data"}"\nuser = "{TARGET}"\n[listen]\nsmtp = ["127.0.0.1:{smtp}"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "postoffice", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"postoffice: user '{TARGET}' cannot read /\S+, where Python loads modules from;.*", lines[0]
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_acme_challenge_listener_is_bound_as_root_and_served_as_the_user(
    target: pwd.struct_passwd, shared: Path, workers: str
) -> None:
    smtp, acme_http = privileged_ports(2)
    running = start_root_server(
        shared,
        f'data_dir = "{shared / "data"}"\nhostname = "mx.test"\nuser = "{TARGET}"\n'
        # A CA nobody answers at: the listener is what is tested here (tests/test_acme.py orders).
        '[acme]\nenabled = true\ndirectory = "https://127.0.0.1:9/dir"\n'
        f'[listen]\nsmtp = ["127.0.0.1:{smtp}"]\nacme_http = ["127.0.0.1:{acme_http}"]\nhttp = []\n',
        "--workers",
        workers,
    )
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{acme_http}/.well-known/acme-challenge/x", timeout=10)
        assert refused.value.code == 404
        wait_until(
            lambda: any("event=acme-failed" in line for line in running.output), what="a first attempt"
        )
        acme = running.data_dir / "acme"
        assert owners_under(acme) == {(target.pw_uid, target.pw_gid)}
    finally:
        assert running.stop() == 0, "".join(running.output)
