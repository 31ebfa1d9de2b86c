"""IMAP keywords kept in the Maildir as Dovecot keeps them: ``dovecot-keywords`` numbers them,
a lower-case info letter marks a message (tests/test_imap_dovecot.py checks Dovecot agrees)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from imapclient import IMAPClient

from conftest import RunningServer
from submission_support import ALICE, ALICE_PASSWORD, DOMAIN, Certs, make_certs
from test_imap_clients import imap_ports, send, start


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def test_keywords_are_stored_and_read_back(
    server_factory: Callable[..., RunningServer], certs: Certs
) -> None:
    server = start(server_factory, certs, http_listeners=())
    send(server, "one")
    send(server, "two")
    server.wait_idle()
    maildir = server.config.mail_dir / DOMAIN / "alice"
    with IMAPClient("127.0.0.1", port=imap_ports(server)["imap"], ssl=False) as client:
        client.login(ALICE, ALICE_PASSWORD)
        selected = client.select_folder("INBOX")
        assert b"\\*" in selected[b"PERMANENTFLAGS"]
        first, second = sorted(client.search(["ALL"]))
        client.add_flags([first, second], [b"$Junk", b"\\Flagged"])
        client.add_flags([second], [b"Later"])
        client.remove_flags([first], [b"$junk"])
        assert client.get_flags([first, second]) == {
            first: (b"\\Flagged",),
            second: (b"\\Flagged", b"$Junk", b"Later"),
        }
        assert client.search(["KEYWORD", "later"]) == [second]
        assert sorted(client.search(["UNKEYWORD", "$Junk"])) == [first]
        assert client.search(["KEYWORD", "never-used"]) == []
    assert (maildir / "dovecot-keywords").read_text() == "0 $Junk\n1 Later\n"
    names = sorted(path.name.rpartition(":2,")[2] for path in (maildir / "cur").iterdir())
    assert names == ["F", "Fab"]
    # A new session (as after a restart) reads them back, and SELECT lists them.
    with IMAPClient("127.0.0.1", port=imap_ports(server)["imap"], ssl=False) as client:
        client.login(ALICE, ALICE_PASSWORD)
        assert b"Later" in client.select_folder("INBOX", readonly=True)[b"FLAGS"]
        assert client.get_flags([second])[second] == (b"\\Flagged", b"$Junk", b"Later")


def test_a_copy_keeps_its_keywords_in_the_other_folders_letters(
    server_factory: Callable[..., RunningServer], certs: Certs
) -> None:
    server = start(server_factory, certs, http_listeners=())
    send(server, "one")
    server.wait_idle()
    with IMAPClient("127.0.0.1", port=imap_ports(server)["imap"], ssl=False) as client:
        client.login(ALICE, ALICE_PASSWORD)
        client.create_folder("Keep")
        client.append("Keep", b"Subject: x\r\n\r\ny\r\n", flags=[b"Other"])  # "a" is Other there
        client.select_folder("INBOX")
        [uid] = client.search(["ALL"])
        client.add_flags([uid], [b"$Junk", b"\\Seen"])
        client.copy([uid], "Keep")
        client.move([uid], "Archive")
        for folder in ("Keep", "Archive"):
            client.select_folder(folder, readonly=True)
            newest = max(client.search(["ALL"]))
            assert client.get_flags([newest])[newest] == (b"\\Seen", b"$Junk"), folder
    keep = server.config.mail_dir / DOMAIN / "alice" / ".Keep"
    assert (keep / "dovecot-keywords").read_text() == "0 Other\n1 $Junk\n"
