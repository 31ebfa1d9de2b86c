"""IMAP with real clients on real sockets: Python's imaplib and IMAPClient.

Login over STARTTLS and over implicit TLS, folders with SPECIAL-USE, SELECT, FETCH, STORE,
MOVE to Trash, APPEND to Sent, SEARCH, EXPUNGE, IDLE seeing mail delivered over SMTP, and the
capture-mode login.
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import smtplib
import socket
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from imapclient import IMAPClient

from conftest import RunningServer, spawn_server, wait_until
from postoffice.config import AuthConfig, Limits, Listener, TLSConfig
from postoffice.net import imap as imap_module
from postoffice.net.imap import login_allowed
from submission_support import ALICE, ALICE_PASSWORD, DOMAIN, Certs, add_accounts, make_certs
from web_helpers import client as web_client
from web_helpers import messages as web_messages


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def imap_ports(server: RunningServer) -> dict[str, int]:
    assert server.app.imap is not None
    return {bound.kind: bound.port for bound in server.app.imap.bound}


def start(
    server_factory: Callable[..., RunningServer], certs: Certs, *, accounts: bool = True, **overrides: object
) -> RunningServer:
    settings: dict[str, object] = {
        "domains": (DOMAIN,),
        "tls": TLSConfig(cert=certs.cert, key=certs.key),
        "auth": AuthConfig(failure_delay=0.0),
        "imap_listeners": (Listener("imap", "127.0.0.1", 0), Listener("imaps", "127.0.0.1", 0)),
    }
    settings.update(overrides)
    server = server_factory(**settings)
    if accounts:
        add_accounts(server)
    return server


def send(server: RunningServer, subject: str, to: str = ALICE, body: str = "Hello there.\r\n") -> None:
    message = f"From: Bob <bob@example.test>\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}"
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.sendmail("bob@example.test", [to], message.encode())


@pytest.fixture
def server(server_factory: Callable[..., RunningServer], certs: Certs) -> RunningServer:
    running = start(server_factory, certs)
    send(running, "first")
    send(running, "second", body="The word banana is in here.\r\n")
    running.wait_idle()
    return running


def test_imaplib_over_starttls(server: RunningServer, certs: Certs) -> None:
    with imaplib.IMAP4("127.0.0.1", imap_ports(server)["imap"]) as client:
        assert "STARTTLS" in client.capabilities
        client.starttls(ssl_context=certs.client_context())
        assert client.login(ALICE, ALICE_PASSWORD)[0] == "OK"
        status, folders = client.list()
        assert status == "OK"
        listed = b"\n".join(line for line in folders if isinstance(line, bytes))
        assert b'(\\HasNoChildren \\Sent) "/" "Sent"' in listed
        assert b'"INBOX"' in listed
        status, data = client.select("INBOX")
        assert (status, data) == ("OK", [b"2"])
        status, data = client.fetch("1:2", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert status == "OK"
        subjects = [item[1] for item in data if isinstance(item, tuple)]
        assert subjects == [b"Subject: first\r\n\r\n", b"Subject: second\r\n\r\n"]
        client.logout()


def test_imaplib_wrong_password_is_refused(server: RunningServer) -> None:
    with imaplib.IMAP4("127.0.0.1", imap_ports(server)["imap"]) as client:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login(ALICE, "wrong")
        # The session goes on: a right password works after a wrong one.
        assert client.login(ALICE, ALICE_PASSWORD)[0] == "OK"


def test_imapclient_over_implicit_tls(server: RunningServer, certs: Certs) -> None:
    with IMAPClient(
        "127.0.0.1", port=imap_ports(server)["imaps"], ssl_context=certs.client_context()
    ) as client:
        client.login(ALICE, ALICE_PASSWORD)
        assert client.find_special_folder(b"\\Trash") == "Trash"
        info = client.select_folder("INBOX")
        assert info[b"EXISTS"] == 2
        uids = client.search(["ALL"])
        assert len(uids) == 2
        fetched = client.fetch(uids, ["ENVELOPE", "RFC822.SIZE", "BODY.PEEK[]", "FLAGS"])
        first = fetched[uids[0]]
        assert first[b"ENVELOPE"].subject == b"first"
        assert first[b"ENVELOPE"].from_[0].mailbox == b"bob"
        assert len(first[b"BODY[]"]) == first[b"RFC822.SIZE"]
        assert client.get_flags(uids) == {uids[0]: (), uids[1]: ()}  # PEEK leaves \Seen alone
        assert client.fetch(uids[0], ["BODY[TEXT]<0.5>"])[uids[0]][b"BODY[TEXT]<0>"] == b"Hello"
        assert b"\\Seen" in client.get_flags(uids[0])[uids[0]]  # BODY[...] set \Seen
        assert client.search(["BODY", "banana"]) == [uids[1]]
        assert client.search(["SUBJECT", "first"]) == [uids[0]]
        assert client.search(["UNSEEN"]) == [uids[1]]

        client.add_flags(uids[1], [b"\\Flagged"])
        assert client.search(["FLAGGED"]) == [uids[1]]
        client.move(uids[1], "Trash")
        assert client.search(["ALL"]) == [uids[0]]
        assert client.folder_status("Trash", ["MESSAGES"])[b"MESSAGES"] == 1

        appended = client.append(
            "Sent", b"From: alice@example.test\r\nSubject: sent\r\n\r\nbody\r\n", [b"\\Seen"]
        )
        assert b"APPENDUID" in appended
        assert client.folder_status("Sent", ["MESSAGES"])[b"MESSAGES"] == 1

        client.delete_messages(uids[0])
        assert client.expunge()[1] == [(1, b"EXPUNGE")]
        assert client.search(["ALL"]) == []


def test_flags_are_the_maildir_flags(server: RunningServer, certs: Certs) -> None:
    with IMAPClient(
        "127.0.0.1", port=imap_ports(server)["imaps"], ssl_context=certs.client_context()
    ) as client:
        client.login(ALICE, ALICE_PASSWORD)
        client.select_folder("INBOX")
        uid = client.search(["SUBJECT", "second"])[0]
        client.add_flags(uid, [b"\\Seen", b"\\Answered"])
    names = [path.name for path in (server.config.mail_dir / DOMAIN / "alice" / "cur").iterdir()]
    assert any(name.endswith(":2,RS") for name in names)


def test_idle_sees_mail_delivered_over_smtp(server: RunningServer, certs: Certs) -> None:
    with IMAPClient(
        "127.0.0.1", port=imap_ports(server)["imaps"], ssl_context=certs.client_context()
    ) as client:
        client.login(ALICE, ALICE_PASSWORD)
        client.select_folder("INBOX")
        client.idle()
        sent = time.monotonic()
        send(server, "while idling")
        responses = client.idle_check(timeout=5)
        elapsed = time.monotonic() - sent
        client.idle_done()
        assert (3, b"EXISTS") in responses
        assert elapsed < 1.5


def test_uids_stay_across_restarts(
    server_factory: Callable[..., RunningServer], certs: Certs, tmp_path: Path
) -> None:
    data_dir = tmp_path / "kept"
    first = start(server_factory, certs, data_dir=data_dir)
    send(first, "one")
    send(first, "two")
    first.wait_idle()
    with imaplib.IMAP4("127.0.0.1", imap_ports(first)["imap"]) as client:
        client.login(ALICE, ALICE_PASSWORD)
        client.select("INBOX")
        before = client.uid("SEARCH", "ALL")[1]
        validity = client.response("UIDVALIDITY")
    first.stop()
    second = start(server_factory, certs, data_dir=data_dir, accounts=False)
    with imaplib.IMAP4("127.0.0.1", imap_ports(second)["imap"]) as client:
        client.login(ALICE, ALICE_PASSWORD)
        client.select("INBOX")
        assert client.uid("SEARCH", "ALL")[1] == before
        assert client.response("UIDVALIDITY") == validity


def test_capture_mode_any_password_on_loopback(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(imap_listeners=(Listener("imap", "127.0.0.1", 0),))
    send(server, "captured", to="alice@localhost")
    server.wait_idle()
    with imaplib.IMAP4("127.0.0.1", imap_ports(server)["imap"]) as client:
        assert client.login("alice@localhost", "anything")[0] == "OK"
        assert client.select("INBOX") == ("OK", [b"1"])
        _, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert data[0][1] == b"Subject: captured\r\n\r\n"  # type: ignore[index]


def test_failed_logins_are_throttled(server_factory: Callable[..., RunningServer], certs: Certs) -> None:
    server = start(server_factory, certs, auth=AuthConfig(failure_delay=0.0, max_failures=3))
    port = imap_ports(server)["imap"]
    with imaplib.IMAP4("127.0.0.1", port) as client:
        for _ in range(2):
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                client.login(ALICE, "wrong")
        with pytest.raises(imaplib.IMAP4.abort):
            client.login(ALICE, "wrong")  # the third: BYE, as SMTP AUTH's 421
    with imaplib.IMAP4("127.0.0.1", port) as client, pytest.raises(imaplib.IMAP4.abort):
        client.login(ALICE, ALICE_PASSWORD)  # locked out: refused without trying


def test_passwords_only_inside_tls_or_from_loopback() -> None:
    assert not login_allowed(secure=False, peer="192.0.2.7")
    assert login_allowed(secure=True, peer="192.0.2.7")
    assert login_allowed(secure=False, peer="127.0.0.1")
    assert login_allowed(secure=False, peer="::1")


def test_malformed_commands_get_bad_and_the_session_goes_on(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", imap_ports(server)["imap"]), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
        sock.sendall(b'a1 LOGIN "unterminated\r\n(((\r\na2 FROB\r\na3 LOGIN {5}\r\n')
        assert reader.readline().startswith(b"a1 BAD ")
        assert reader.readline().startswith(b"* BAD ")
        assert reader.readline().startswith(b"a2 BAD ")
        assert reader.readline() == b"+ Ready\r\n"
        sock.sendall(ALICE.encode()[:5] + b' "x"\r\na4 NOOP\r\n')
        assert reader.readline().startswith(b"a3 NO [AUTHENTICATIONFAILED]")
        assert reader.readline() == b"a4 OK NOOP completed\r\n"


def test_authenticate_plain_with_initial_response(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", imap_ports(server)["imap"]), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        token = base64.b64encode(f"\0{ALICE}\0{ALICE_PASSWORD}".encode())
        sock.sendall(b"a1 AUTHENTICATE PLAIN " + token + b"\r\na2 AUTHENTICATE PLAIN\r\n")
        assert reader.readline().startswith(b"a1 OK [CAPABILITY ")
        assert reader.readline().startswith(b"a2 BAD ")  # already logged in


def test_banner_lists_the_imap_listeners(tmp_path: Path) -> None:
    process = spawn_server(tmp_path / "data", "--imap", "127.0.0.1:0", "--imaps", "127.0.0.1:0")
    try:
        wait_until(lambda: any(line.startswith("listening imaps ") for line in process.output), what="banner")
        assert any(line.startswith("listening imap 127.0.0.1:") for line in process.output)
    finally:
        process.terminate()


def test_connections_per_client_are_limited(
    server_factory: Callable[..., RunningServer], certs: Certs
) -> None:
    server = start(server_factory, certs, limits=Limits(connections_per_client=2, trusted_networks=()))
    port = imap_ports(server)["imap"]
    with (
        imaplib.IMAP4("127.0.0.1", port),
        imaplib.IMAP4("127.0.0.1", port),
        socket.create_connection(("127.0.0.1", port), timeout=10) as third,
    ):
        assert third.makefile("rb").readline() == b"* BYE too many connections (per-client)\r\n"
    assert server.app.imap is not None
    imap = server.app.imap
    wait_until(lambda: imap.open_sessions == 0, what="sessions closed")
    with imaplib.IMAP4("127.0.0.1", port) as again:  # the others have gone: room again
        assert again.noop()[0] == "OK"


def test_folder_management(server: RunningServer, certs: Certs) -> None:
    with IMAPClient(
        "127.0.0.1", port=imap_ports(server)["imaps"], ssl_context=certs.client_context()
    ) as client:
        client.login(ALICE, ALICE_PASSWORD)
        assert client.namespace().personal == (("", "/"),)
        client.create_folder("Projects/2026")  # the level above is made too
        names = [name for _flags, _delimiter, name in client.list_folders()]
        assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "Projects", "Projects/2026"} <= set(
            names
        )
        assert [name for _f, _d, name in client.list_folders(pattern="Projects/%")] == ["Projects/2026"]
        with pytest.raises(IMAPClient.Error, match="ALREADYEXISTS"):
            client.create_folder("Projects")
        client.rename_folder("Projects", "Old")
        assert {"Old", "Old/2026"} <= {name for _f, _d, name in client.list_folders()}
        client.subscribe_folder("Old")
        assert "Old" in [name for _f, _d, name in client.list_sub_folders()]
        client.delete_folder("Old/2026")
        assert "Old/2026" not in [name for _f, _d, name in client.list_folders()]
        with pytest.raises(IMAPClient.Error, match="CANNOT"):
            client.create_folder("Not.this")  # the web side's folder names have no dots
        with pytest.raises(IMAPClient.Error, match="NONEXISTENT"):
            client.select_folder("Nowhere")
        status = client.folder_status("INBOX", ["MESSAGES", "UNSEEN", "UIDNEXT", "UIDVALIDITY", "SIZE"])
        assert status[b"MESSAGES"] == 2 and status[b"UNSEEN"] == 2 and status[b"UIDNEXT"] == 3
        client.select_folder("INBOX")
        sizes = client.fetch(client.search(["ALL"]), ["RFC822.SIZE"])
        assert status[b"SIZE"] == sum(item[b"RFC822.SIZE"] for item in sizes.values())
    assert (server.config.mail_dir / DOMAIN / "alice" / ".Old" / "maildirfolder").exists()


def test_copy_uid_expunge_and_examine(server: RunningServer, certs: Certs) -> None:
    with IMAPClient(
        "127.0.0.1", port=imap_ports(server)["imaps"], ssl_context=certs.client_context()
    ) as client:
        client.login(ALICE, ALICE_PASSWORD)
        client.select_folder("INBOX")
        first, second = client.search(["ALL"])
        client.copy([first, second], "Archive")
        validity = client.folder_status("Archive", ["UIDVALIDITY"])[b"UIDVALIDITY"]
        # imaplib keeps the tagged response's code (RFC 4315 COPYUID validity sources copies).
        assert client._imap.response("COPYUID")[1] == [f"{validity} {first},{second} 1,2".encode()]
        assert client.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"] == 2
        client.set_flags([first, second], [b"\\Deleted"])
        client.uid_expunge([second])  # only the one named goes (UIDPLUS)
        assert client.search(["ALL"]) == [first]
        client.unselect_folder()

        client.select_folder("Archive", readonly=True)
        with pytest.raises(IMAPClient.Error, match="READ-ONLY"):
            client.add_flags(client.search(["ALL"]), [b"\\Seen"])
        assert client.fetch(client.search(["ALL"]), ["BODY[HEADER.FIELDS (SUBJECT)]"])  # no \Seen in EXAMINE
        assert client.search(["SEEN"]) == []
        assert client.search(["LARGER", "10", "SMALLER", "100000", "SINCE", "1-Jan-2020"]) != []
        client._imap.uid("SEARCH", "RETURN (COUNT MIN)", "ALL")
        assert client._imap.response("ESEARCH")[1][0].endswith(b'") UID MIN 1 COUNT 2')
        assert client.id_({"name": "test"}) == ((b"name", b"postoffice"),)


def test_idle_sees_a_flag_set_by_another_session(server: RunningServer, certs: Certs) -> None:
    port = imap_ports(server)["imaps"]
    with (
        IMAPClient("127.0.0.1", port=port, ssl_context=certs.client_context()) as watcher,
        IMAPClient("127.0.0.1", port=port, ssl_context=certs.client_context()) as other,
    ):
        for client in (watcher, other):
            client.login(ALICE, ALICE_PASSWORD)
            client.select_folder("INBOX")
        watcher.idle()
        other.add_flags(other.search(["SUBJECT", "first"]), [b"\\Flagged"])
        responses = watcher.idle_check(timeout=3)
        watcher.idle_done()
        # IMAPClient gives an untagged FETCH as (seq, b"FETCH", (b"UID", uid, b"FLAGS", flags)).
        flagged = [item for item in responses if item[1] == b"FETCH" and b"\\Flagged" in item[2][3]]
        assert len(flagged) == 1, responses


def test_a_message_removed_behind_the_sessions_back(server: RunningServer) -> None:
    with imaplib.IMAP4("127.0.0.1", imap_ports(server)["imap"]) as client:
        client.login(ALICE, ALICE_PASSWORD)
        client.select("INBOX")
        maildir = server.config.mail_dir / DOMAIN / "alice"
        first = min(
            (path for sub in ("new", "cur") for path in (maildir / sub).iterdir()), key=lambda p: p.name
        )
        first.unlink()  # mutt, or another server, removes it
        status, data = client.fetch("1:2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert status == "OK"  # what is still there is answered; the gone one is left out
        assert [item[1] for item in data if isinstance(item, tuple)] == [b"Subject: second\r\n\r\n"]
        status, data = client.noop()
        assert client.response("EXPUNGE") == ("EXPUNGE", [b"1"])
        assert (
            client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][1] == b"Subject: second\r\n\r\n"
        )  # type: ignore[index]


def test_condstore_and_qresync(server: RunningServer, certs: Certs) -> None:
    """RFC 7162: mod-sequences per message, CHANGEDSINCE, UNCHANGEDSINCE, and a QRESYNC SELECT
    that tells a returning client what vanished and what changed."""
    port = imap_ports(server)["imaps"]
    with IMAPClient("127.0.0.1", port=port, ssl_context=certs.client_context()) as client:
        client.login(ALICE, ALICE_PASSWORD)
        assert client.has_capability("CONDSTORE") and client.has_capability("QRESYNC")
        info = client.select_folder("INBOX")
        validity, before = info[b"UIDVALIDITY"], info[b"HIGHESTMODSEQ"]
        first, second = client.search(["ALL"])
        client.add_flags(first, [b"\\Flagged"])
        changed = client.fetch([first, second], ["FLAGS"], modifiers=[f"CHANGEDSINCE {before}"])
        assert list(changed) == [first] and changed[first][b"MODSEQ"][0] > before
        now = changed[first][b"MODSEQ"][0]
        assert client.search(["MODSEQ", str(now)]) == [first]
        assert client.folder_status("INBOX", ["HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"] == now

        # A STORE that raced with another client's change is refused for that message.
        typ, _ = client._imap.uid("STORE", str(first), f"(UNCHANGEDSINCE {before})", "+FLAGS", "(\\Seen)")
        assert typ == "OK" and client._imap.response("MODIFIED")[1] == [str(first).encode()]
        assert b"\\Seen" not in client.get_flags(first)[first]

        client.delete_messages(second)
        client.expunge()
    with IMAPClient("127.0.0.1", port=port, ssl_context=certs.client_context()) as client:
        client.login(ALICE, ALICE_PASSWORD)
        assert client.enable("QRESYNC") == [b"QRESYNC"]
        imap = client._imap
        typ, _ = imap._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {before} {first}:{second}))")
        assert typ == "OK"
        assert imap.response("VANISHED")[1] == [f"(EARLIER) {second}".encode()]
        fetched = imap.response("FETCH")[1]  # the flags changed since `before`, with MODSEQ
        assert len(fetched) == 1 and b"\\Flagged" in fetched[0] and b"MODSEQ" in fetched[0]  # type: ignore[operator]

        imap.state = "SELECTED"  # imaplib does not know a SELECT it did not send itself
        imap.uid("FETCH", "1:*", "(FLAGS) (CHANGEDSINCE 1 VANISHED)")
        assert imap.response("VANISHED")[1] == [f"(EARLIER) {second}".encode()]
        imap.uid("STORE", str(first), "+FLAGS.SILENT", "(\\Deleted)")
        imap.expunge()  # with QRESYNC on, an expunge is told as VANISHED (RFC 7162 §3.2.10)
        assert imap.response("VANISHED")[1] == [str(first).encode()]


def test_an_idle_client_is_logged_out(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imap_module, "LOGIN_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", imap_ports(server)["imap"]), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        assert reader.readline() == b"* BYE autologout, idle too long\r\n"
        assert reader.readline() == b""


def test_subscriptions_and_list_status(server: RunningServer, certs: Certs) -> None:
    port = imap_ports(server)["imaps"]
    with IMAPClient("127.0.0.1", port=port, ssl_context=certs.client_context()) as client:
        client.login(ALICE, ALICE_PASSWORD)
        everything = {name for _f, _d, name in client.list_sub_folders()}
        assert {"INBOX", "Sent", "Trash"} <= everything  # until the user chooses, all of them
        client.unsubscribe_folder("Junk")
    with IMAPClient("127.0.0.1", port=port, ssl_context=certs.client_context()) as client:
        client.login(ALICE, ALICE_PASSWORD)
        assert {name for _f, _d, name in client.list_sub_folders()} == everything - {"Junk"}
        typ, _ = client._imap._simple_command("LIST", "(SUBSCRIBED)", '""', '"*"')
        listed = client._imap.response("LIST")[1]
        assert typ == "OK" and not any(b'"Junk"' in line for line in listed)
        assert all(b"\\Subscribed" in line for line in listed)
        typ, _ = client._imap._simple_command("LIST", '""', "INBOX", "RETURN", "(STATUS (MESSAGES UNSEEN))")
        assert typ == "OK"
        assert client._imap.response("STATUS")[1] == [b'"INBOX" (MESSAGES 2 UNSEEN 2)']
        with pytest.raises(IMAPClient.Error, match="NONEXISTENT"):
            client.subscribe_folder("Nowhere")


def test_binary_fetch_undoes_the_transfer_encoding(server: RunningServer, certs: Certs) -> None:
    content = bytes(range(256))
    message = (
        b"From: bob@example.test\r\nSubject: bin\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(content).replace(b"\n", b"\r\n")
        + b"--b--\r\n"
    )
    with IMAPClient(
        "127.0.0.1", port=imap_ports(server)["imaps"], ssl_context=certs.client_context()
    ) as client:
        client.login(ALICE, ALICE_PASSWORD)
        assert client.has_capability("BINARY")
        uid = int(client.append("INBOX", message).split()[2].rstrip(b"]"))
        client.select_folder("INBOX")
        fetched = client.fetch(uid, ["BINARY.PEEK[1]", "BINARY.SIZE[2]", "BINARY.PEEK[2]<250.10>"])[uid]
        assert fetched[b"BINARY[1]"] == "café".encode()
        assert fetched[b"BINARY.SIZE[2]"] == 256
        assert fetched[b"BINARY[2]<250>"] == content[250:]


def test_idle_sees_the_web_ui_mark_a_message_read(server: RunningServer, certs: Certs) -> None:
    """The web UI's read state and IMAP's \\Seen are the Maildir's one flag."""
    server.index_idle()
    with IMAPClient(
        "127.0.0.1", port=imap_ports(server)["imaps"], ssl_context=certs.client_context()
    ) as client:
        client.login(ALICE, ALICE_PASSWORD)
        client.select_folder("INBOX")
        client.idle()
        with web_client(server) as http:
            response = http.post("/api/v1/login", json={"address": ALICE, "password": ALICE_PASSWORD})
            token = {"X-CSRF-Token": response.json()["csrf_token"]}
            first = next(m for m in web_messages(http, mailbox=ALICE)["messages"] if m["subject"] == "first")
            assert (
                http.patch(f"/api/v1/messages/{first['id']}", json={"read": True}, headers=token).status_code
                == 200
            )
        responses = client.idle_check(timeout=3)
        client.idle_done()
        assert any(item[1] == b"FETCH" and b"\\Seen" in item[2][3] for item in responses), responses


def test_sessions_per_user_are_limited(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imap_module, "SESSIONS_PER_USER", 1)
    port = imap_ports(server)["imap"]
    with imaplib.IMAP4("127.0.0.1", port) as first, imaplib.IMAP4("127.0.0.1", port) as second:
        first.login(ALICE, ALICE_PASSWORD)
        with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\]"):
            second.login(ALICE, ALICE_PASSWORD)


THUNDERBIRD_LIKE = [
    b'A2 ID ("name" "Thunderbird" "version" "115.0")',
    b"A4 NAMESPACE",
    b'A5 LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)',
    b'A6 LIST "" "INBOX"',
    b'A7 SELECT "INBOX" (CONDSTORE)',
    b"A8 UID fetch 1:* (FLAGS)",
    b"A9 UID fetch 1 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID"
    b" Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])",
    b"A10 UID fetch 1 (UID RFC822.SIZE BODY.PEEK[])",
    b"A11 UID store 1 +Flags (\\Seen)",
    b'A12 UID MOVE 1 "Trash"',
    b'A13 STATUS "Trash" (UIDNEXT MESSAGES UNSEEN RECENT)',
    b'A14 APPEND "Sent" (\\Seen) {23+}\r\nSubject: x\r\n\r\nsent it\r\n',
    b"A15 LOGOUT",
]


def test_a_thunderbird_like_session(server: RunningServer, certs: Certs) -> None:
    """The commands a desktop client sends, as it writes them; each gets its tagged OK."""
    with socket.create_connection(("127.0.0.1", imap_ports(server)["imap"]), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        token = base64.b64encode(f"\0{ALICE}\0{ALICE_PASSWORD}".encode())
        sock.sendall(b"A3 AUTHENTICATE PLAIN\r\n")
        assert reader.readline() == b"+ \r\n"
        sock.sendall(token + b"\r\n")
        assert reader.readline().startswith(b"A3 OK ")
        for command in THUNDERBIRD_LIKE:
            sock.sendall(command + b"\r\n")
            tag = command.split(b" ", 1)[0] + b" "
            while not (line := reader.readline()).startswith(tag):
                assert line, f"connection closed after {command!r}"
                if line.rstrip().endswith(b"}"):  # a literal: read its octets
                    reader.read(int(line.rstrip()[:-1].rsplit(b"{", 1)[1]))
            assert line.startswith(tag + b"OK"), (command, line)


def test_a_20_mb_message_is_sent_without_being_held_whole(server: RunningServer) -> None:
    """BODY[] of a big message is copied from its file a block at a time (tracemalloc sees the
    server's threads too, as the server runs in this process)."""
    maildir = server.config.mail_dir / DOMAIN / "alice"
    big = maildir / "cur" / "1700000000.big.mx,S=1:2,S"
    with big.open("wb") as out:
        out.write(b"Subject: big\r\nContent-Type: application/octet-stream\r\n\r\n")
        for number in range(20 * 1024):
            out.write(b"%1023d\n" % number)
    expected = hashlib.sha256(big.read_bytes()).hexdigest()
    with socket.create_connection(("127.0.0.1", imap_ports(server)["imap"]), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(
            f"a LOGIN {ALICE} {{{len(ALICE_PASSWORD)}+}}\r\n{ALICE_PASSWORD}\r\nb SELECT INBOX\r\n".encode()
        )
        while not reader.readline().startswith(b"b OK"):
            pass
        tracemalloc.start()
        try:
            sock.sendall(b"c FETCH 1 BODY.PEEK[]\r\n")
            header = reader.readline()
            size = int(header.rsplit(b"{", 1)[1].rstrip(b"}\r\n"))
            digest, remaining = hashlib.sha256(), size
            while remaining:
                block = reader.read(min(65536, remaining))
                digest.update(block)
                remaining -= len(block)
            assert reader.readline() == b")\r\n"
            assert reader.readline().startswith(b"c OK")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert size == big.stat().st_size and digest.hexdigest() == expected
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"


def test_search_decodes_encoded_words_and_takes_utf8(server: RunningServer, certs: Certs) -> None:
    message = b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.test>\r\nSubject: =?utf-8?q?caf=C3=A9_au_lait?=\r\n\r\nx\r\n"
    with IMAPClient(
        "127.0.0.1", port=imap_ports(server)["imaps"], ssl_context=certs.client_context()
    ) as client:
        client.login(ALICE, ALICE_PASSWORD)
        uid = int(client.append("INBOX", message).split()[2].rstrip(b"]"))
        client.select_folder("INBOX")
        assert client.search(["SUBJECT", "Café"], charset="UTF-8") == [uid]
        assert client.search(["FROM", "jörg"], charset="UTF-8") == [uid]
        assert client.search(["SUBJECT", "thé"], charset="UTF-8") == []


def test_commands_sent_with_starttls_in_plaintext_are_dropped(server: RunningServer, certs: Certs) -> None:
    """CVE-2011-0411's family: what follows STARTTLS in the same plaintext packet must not be
    taken as if it came inside TLS."""
    with socket.create_connection(("127.0.0.1", imap_ports(server)["imap"]), timeout=10) as raw:
        raw.recv(4096)
        raw.sendall(b"a STARTTLS\r\nb LOGOUT\r\n")
        assert raw.recv(4096).startswith(b"a OK ")
        with certs.client_context().wrap_socket(raw, server_hostname="mx.test") as tls:
            tls.sendall(b"c NOOP\r\n")
            reply = tls.recv(4096)
            assert reply.startswith(b"c OK"), reply  # b LOGOUT was never run
