"""postoffice's IMAP server side by side with Dovecot on the same Maildir.

A small corpus (plain text, multipart/alternative with a disposition, a nested message/rfc822
holding a multipart, 8-bit UTF-8 header fields and body, several recipients, a reply, a
message sent with SMTPUTF8 whose addresses and header fields are raw UTF-8, RFC 6532, and one
with a 20 MB attachment) is delivered over SMTP; postoffice's IMAP server and Debian's Dovecot (set up as docs/dovecot.md
says, by tests/test_dovecot.py's fixtures) then answer the same questions, and the answers
that must agree do: folder names, message count, ENVELOPE, BODYSTRUCTURE, BODY[] and part
octets (partials of the big one), RFC822.SIZE, SEARCH results. Both are read through IMAPClient's parser, so quoting
a string or sending it as a literal does not count as a difference.
"""

from __future__ import annotations

import base64
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from conftest import RunningServer
from postoffice.accounts import Accounts
from postoffice.config import Listener
from test_dovecot import ALICE, DOMAIN, PASSWORD, Dovecot, dovecot, shared_dir  # noqa: F401 - fixtures

PLAIN = (
    "From: Bob <bob@elsewhere.test>\r\nTo: alice@example.test\r\nSubject: plain\r\n"
    "Date: Sun, 06 Dec 2026 10:00:00 +0000\r\nMessage-ID: <plain@elsewhere.test>\r\n\r\n"
    "Just text.\r\nTwo lines.\r\n"
)
ALTERNATIVE = (
    'From: "Carol C." <carol@elsewhere.test>\r\nTo: alice@example.test, Dan <dan@example.test>\r\n'
    "Cc: eve@elsewhere.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nIn-Reply-To: <plain@elsewhere.test>\r\n"
    'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="alt"\r\n\r\n'
    "--alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    "caf=C3=A9\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n"
    'Content-Disposition: inline; filename="x.html"\r\n\r\n<p>caf\xc3\xa9</p>\r\n--alt--\r\n'
)
NESTED = (
    "From: bob@elsewhere.test\r\nTo: alice@example.test\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=outer\r\n\r\npreamble\r\n--outer\r\n"
    "Content-Type: text/plain\r\n\r\nSee attached.\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n"
    "From: zed@elsewhere.test\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=inner\r\n\r\n"
    "--inner\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--inner\r\n"
    "Content-Type: application/octet-stream; name=data.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    "AAECAwQ=\r\n--inner--\r\n\r\n--outer--\r\n"
)
EIGHT_BIT = (
    "From: =?utf-8?q?J=C3=B6rg?= <jorg@elsewhere.test>\r\nTo: alice@example.test\r\n"
    "Subject: Gr\xc3\xbc\xc3\x9fe\r\nContent-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\nSch\xc3\xb6ne Gr\xc3\xbc\xc3\x9fe.\r\n"
)
SMTPUTF8 = (
    "From: J\xc3\xb6rg M\xc3\xbcller <j\xc3\xb6rg@b\xc3\xbccher.test>\r\n"
    "To: alice@example.test, \xe6\x9d\x8e <\xe6\x9d\x8e@\xe4\xbe\x8b\xe5\xad\x90.test>\r\n"
    "Subject: \xc3\x9cber caf\xc3\xa9 \xe2\x98\x95\r\nMessage-ID: <\xc3\xa9t\xc3\xa9@b\xc3\xbccher.test>\r\n"
    'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="u"\r\n\r\n'
    "--u\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Gr\xc3\xbc\xc3\x9fe aus M\xc3\xbcnchen.\r\n--u\r\n"
    'Content-Type: text/plain; charset=utf-8; name="r\xc3\xa9sum\xc3\xa9.txt"\r\n'
    'Content-Disposition: attachment; filename="r\xc3\xa9sum\xc3\xa9.txt"\r\n\r\nCV\r\n--u--\r\n'
)
# 15 MB of data, base64 in 76-character lines: a 20.5 MB message.
_DATA = base64.encodebytes(bytes(range(256)) * (15_000_000 // 256)).replace(b"\n", b"\r\n").decode("ascii")
BIG = (
    "From: bob@elsewhere.test\r\nTo: alice@example.test\r\nSubject: big attachment\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=big\r\n\r\n"
    "--big\r\nContent-Type: text/plain\r\n\r\nThe data is attached.\r\n--big\r\n"
    'Content-Type: application/octet-stream; name="data.bin"\r\nContent-Transfer-Encoding: base64\r\n'
    'Content-Disposition: attachment; filename="data.bin"\r\n\r\n' + _DATA + "--big--\r\n"
)
CORPUS = [PLAIN, ALTERNATIVE, NESTED, EIGHT_BIT, SMTPUTF8, BIG]
ITEMS = ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "BODY.PEEK[]", "BODY.PEEK[1]", "BODY.PEEK[2.HEADER]"]
# The big message is compared in pieces: its start, a stretch in the middle of the attachment
# and its end, by offsets Dovecot and postoffice must both count from the same octets.
BIG_ITEMS = [
    "ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "BODY.PEEK[HEADER]", "BODY.PEEK[]<0.4096>",
    "BODY.PEEK[1]", "BODY.PEEK[2]<10000000.5000>", "BODY.PEEK[2.MIME]", "BODY.PEEK[]<20400000.1000000>",
]  # fmt: skip
SEARCHES: list[list[Any]] = [
    ["ALL"],
    ["FROM", "bob"],
    ["SUBJECT", "inner"],
    ["BODY", "attached"],
    ["NOT", "FROM", "bob"],
    ["SUBJECT", "attachment"],
    ["LARGER", 1_000_000],
    ["TO", "example.test"],
]
# Searches for raw UTF-8 (SMTPUTF8 header fields) and encoded words alike (RFC 9051 §6.4.4).
UTF8_SEARCHES: list[list[Any]] = [["FROM", "Jörg"], ["SUBJECT", "café"], ["TO", "例子"], ["BODY", "München"]]


@pytest.fixture
def mail_server(shared_dir: Path, server_factory: Callable[..., RunningServer]) -> RunningServer:  # noqa: F811
    running = server_factory(
        data_dir=shared_dir / "data", domains=(DOMAIN,), imap_listeners=(Listener("imap", "127.0.0.1", 0),)
    )
    Accounts(running.config.accounts_file).add_user(ALICE, PASSWORD)
    return running


def answers(client: IMAPClient) -> dict[str, Any]:
    folders = sorted(name for _flags, _delimiter, name in client.list_folders())
    count = client.select_folder("INBOX", readonly=True)[b"EXISTS"]
    order = sorted(client.search(["ALL"]))
    fetched = client.fetch(order[:-1], ITEMS)
    fetched.update(client.fetch(order[-1:], BIG_ITEMS))  # the big one, last delivered
    per_message = [
        {key: value for key, value in fetched[uid].items() if key not in (b"SEQ", b"UID")} for uid in order
    ]
    found = {
        str(criteria): [order.index(uid) + 1 for uid in client.search(criteria)] for criteria in SEARCHES
    }
    for criteria in UTF8_SEARCHES:
        found[str(criteria)] = [order.index(uid) + 1 for uid in client.search(criteria, charset="UTF-8")]
    return {"folders": folders, "count": count, "messages": per_message, "search": found}


def next_second() -> None:
    """Wait for the clock's next second. Dovecot numbers new files by name (delivery second,
    then the unique part), postoffice by delivery time: each message in a second of its own
    gets the same UID order from both."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


@pytest.fixture
def delivered(mail_server: RunningServer) -> RunningServer:
    with smtplib.SMTP("127.0.0.1", mail_server.port, timeout=10) as smtp:
        for message in CORPUS:
            next_second()
            options = ["SMTPUTF8"] if message is SMTPUTF8 else []
            smtp.sendmail("bob@elsewhere.test", [ALICE], message.encode("latin-1"), mail_options=options)
    mail_server.wait_idle()
    return mail_server


def ours(server: RunningServer) -> Iterator[IMAPClient]:
    assert server.app.imap is not None
    client = IMAPClient("127.0.0.1", port=server.app.imap.bound[0].port, ssl=False)
    client.login(ALICE, PASSWORD)
    yield client
    client.logout()


def test_postoffice_answers_as_dovecot_does(delivered: RunningServer, dovecot: Dovecot) -> None:  # noqa: F811
    [ours_client] = list(_once(delivered))
    mine = answers(ours_client)
    ours_client.logout()
    dovecot.hand_over(delivered.data_dir)
    theirs_client = IMAPClient("127.0.0.1", port=dovecot.port, ssl=False)
    theirs_client.starttls(ssl_context=dovecot.tls)
    theirs_client.login(ALICE, PASSWORD)
    theirs = answers(theirs_client)
    theirs_client.logout()
    assert mine["folders"] == theirs["folders"]
    assert mine["count"] == theirs["count"] == len(CORPUS)
    assert mine["search"] == theirs["search"]
    assert all(mine["search"][str(criteria)] for criteria in UTF8_SEARCHES), mine["search"]
    for number, (a, b) in enumerate(zip(mine["messages"], theirs["messages"], strict=True), 1):
        for key in b:
            assert a.get(key) == b[key], (
                f"message {number} {key!r}:\n ours   {a.get(key)!r}\n dovecot {b[key]!r}"
            )


def _once(server: RunningServer) -> Iterator[IMAPClient]:
    assert server.app.imap is not None
    client = IMAPClient("127.0.0.1", port=server.app.imap.bound[0].port, ssl=False)
    client.login(ALICE, PASSWORD)
    yield client


def _keywords(client: IMAPClient) -> dict[int, set[bytes]]:
    order = sorted(client.search(["ALL"]))
    fetched = client.get_flags(order)
    return {
        order.index(uid) + 1: {flag for flag in fetched[uid] if not flag.startswith(b"\\")} for uid in order
    }


def test_keywords_are_kept_as_dovecot_keeps_them(delivered: RunningServer, dovecot: Dovecot) -> None:  # noqa: F811
    [mine] = list(_once(delivered))
    mine.select_folder("INBOX")
    first, second, third = sorted(mine.search(["ALL"]))[:3]
    mine.add_flags([first], [b"$Junk", b"Project-X"])
    mine.add_flags([second], [b"project-x"])  # keywords match without regard to case
    next_second()
    mine.append("INBOX", PLAIN, flags=[b"\\Seen", b"$Forwarded"])
    ours_before = _keywords(mine)
    found = mine.search(["KEYWORD", "project-x"])
    mine.logout()
    assert ours_before[1] == {b"$Junk", b"Project-X"} and ours_before[2] == {b"Project-X"}
    assert ours_before[len(CORPUS) + 1] == {b"$Forwarded"}
    assert sorted(found) == [first, second]
    inbox = delivered.config.mail_dir / DOMAIN / "alice"
    assert (inbox / "dovecot-keywords").read_text() == "0 $Junk\n1 Project-X\n2 $Forwarded\n"
    dovecot.hand_over(delivered.data_dir)
    theirs = IMAPClient("127.0.0.1", port=dovecot.port, ssl=False)
    theirs.starttls(ssl_context=dovecot.tls)
    theirs.login(ALICE, PASSWORD)
    theirs.select_folder("INBOX")
    assert _keywords(theirs) == ours_before
    assert len(theirs.search(["KEYWORD", "Project-X"])) == 2
    theirs.add_flags(sorted(theirs.search(["ALL"]))[2:3], [b"$Junk"])  # Dovecot sets one: we read it
    theirs.logout()
    [again] = list(_once(delivered))
    again.select_folder("INBOX", readonly=True)
    assert _keywords(again)[3] == {b"$Junk"} and sorted(again.search(["KEYWORD", "$junk"]))[1] == third
    again.logout()
