"""Postfix itself as a benchmark peer: a private instance under the run's directory.

What a reader can reproduce with ``apt-get install postfix`` (choosing "No configuration") and
root: its own ``main.cf``/``master.cf``, queue and data directories, ``smtpd`` on a free port
of 127.0.0.1, every recipient delivered by ``virtual(8)`` into one Maildir (Postfix's
defaults otherwise, its queue-file fsync before 250 included). The system's Postfix, if one
runs, is not touched: the instance is started and stopped with ``postfix -c DIR``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

# The Maildir (under the instance's mail directory) that every message is delivered into.
MAILDIR = "rcpt/"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.test
mydestination =
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
# Whatever the recipient, one Maildir, as postoffice's capture mode files the benchmark's mail.
virtual_mailbox_domains = static:all
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = static:{maildir}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
# No syslog is assumed: postlogd writes here.
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
"""

# The stock services (Postfix 3.7's master.cf without comments and chroot), smtpd on our port.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> bool:
    """Postfix is installed and we may start an instance of it (its master runs as root)."""
    return os.geteuid() == 0 and shutil.which("postfix") is not None and _postfix_user() is not None


def _postfix_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postfix")
    except KeyError:
        return None


def configure(root: Path, port: int) -> Path:
    """Write the instance's configuration under ``root``; returns its config directory."""
    user = _postfix_user()
    assert user is not None
    etc = root / "etc"
    for directory in (etc, root / "spool", root / "data", root / "mail"):
        directory.mkdir(parents=True, exist_ok=True)
    _let_postfix_through(root)
    for owned in (root / "data", root / "mail"):
        os.chown(owned, user.pw_uid, user.pw_gid)
    (etc / "main.cf").write_text(MAIN_CF.format(root=root, maildir=MAILDIR, uid=user.pw_uid, gid=user.pw_gid))
    (etc / "master.cf").write_text(MASTER_CF.format(port=port))
    return etc


def _let_postfix_through(root: Path) -> None:
    """Postfix's daemons run as the postfix user and must reach the instance's directories:
    a temporary directory (mkdtemp makes it 0700) gets search permission for others."""
    temporary = Path(tempfile.gettempdir()).resolve()
    for directory in [root.resolve(), *root.resolve().parents]:
        if directory == temporary or temporary not in directory.parents:
            break
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def start(root: Path, port: int) -> int:
    """Configure and start an instance under ``root`` with smtpd on ``port``; its master's pid."""
    etc = configure(root, port)
    postfix(etc, "post-install", "create-missing")
    try:
        postfix(etc, "start")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc} {_log_tail(root)}") from None
    pid_file = root / "spool" / "pid" / "master.pid"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            pid = int(pid_file.read_text().split()[0])
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return pid
        except (OSError, ValueError, IndexError):
            time.sleep(0.05)
    raise RuntimeError(f"postfix did not start: {_log_tail(root)}")


def _log_tail(root: Path) -> str:
    try:
        return " | ".join((root / "maillog").read_text().splitlines()[-3:])
    except OSError:
        return f"no {root / 'maillog'}"


def stop(root: Path) -> None:
    postfix(root / "etc", "stop")


def postfix(etc: Path, *command: str) -> None:
    done = subprocess.run(["postfix", "-c", str(etc), *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"postfix {' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")


def maildir_new(root: Path) -> Path:
    return root / "mail" / MAILDIR / "new"
