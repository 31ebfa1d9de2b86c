"""isync's ``mbsync`` mirrors a mailbox from postoffice's IMAP server, both ways.

New mail comes down; a flag set and a message deleted on the mirror go up, and postoffice's
Maildir then has the ``:2,S`` suffix and one message fewer. The server runs in capture mode,
mbsync logs in from loopback with any password (docs/imap.md).
"""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import RunningServer, require_tool
from postoffice.config import Listener

MIRROR_CONFIG = """\
IMAPAccount po
Host 127.0.0.1
Port {port}
User alice@localhost
Pass anything
SSLType None
AuthMechs LOGIN

IMAPStore po-remote
Account po

MaildirStore po-local
Path {mirror}/
Inbox {mirror}/INBOX
SubFolders Verbatim

Channel po
Far :po-remote:
Near :po-local:
Patterns *
Create Near
Sync All
Expunge Both
SyncState *
"""


def sync(binary: str, config: Path) -> None:
    done = subprocess.run([binary, "-c", str(config), "po"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mbsync_mirrors_down_and_flags_and_deletions_go_up(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    binary = require_tool("mbsync")
    server = server_factory(imap_listeners=(Listener("imap", "127.0.0.1", 0),))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        for number in range(2):
            body = f"From: bob@example.test\r\nSubject: m{number}\r\n\r\nbody {number}\r\n"
            client.sendmail("bob@example.test", ["alice@localhost"], body.encode())
    server.wait_idle()
    assert server.app.imap is not None
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(MIRROR_CONFIG.format(port=server.app.imap.bound[0].port, mirror=mirror))

    sync(binary, config)
    inbox = mirror / "INBOX"
    down = sorted((inbox / "new").iterdir())
    assert len(down) == 2
    assert {path.name for path in mirror.iterdir()} >= {"INBOX", "Sent", "Trash", "Junk", "Drafts", "Archive"}

    seen, deleted = down
    seen.rename(inbox / "cur" / (seen.name.removesuffix(":2,") + ":2,S"))
    deleted.unlink()
    sync(binary, config)

    names = [
        path.name
        for sub in ("new", "cur")
        for path in (server.config.mail_dir / "localhost" / "alice" / sub).iterdir()
    ]
    assert len(names) == 1
    assert names[0].endswith(":2,S")
