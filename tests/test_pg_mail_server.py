"""A server whose mailboxes are in PostgreSQL (pgstore/mailboxes.py), with another store on the
same database standing for a second node: SMTP delivers into the database; the web API lists,
and its event stream announces, what the other node delivers within a second (each node's own
SQLite index follows LISTEN/NOTIFY); IMAP IDLE sees it; POP3 reads and deletes through the seam.

The queue here is the embedded one (the shared queue is another part of issue 21): the server's
stores are the embedded ones with the mailboxes swapped for the database's.
"""

from __future__ import annotations

import io
import poplib
import smtplib
import time
from collections.abc import Callable

import pytest
from imapclient import IMAPClient

from conftest import RunningServer
from postoffice import app as app_module
from postoffice.config import Config, Listener
from postoffice.pgstore.mailboxes import PgMailboxStore
from postoffice.stores import Stores, open_stores
from test_web_watch import EventLog
from web_helpers import client, messages, wait_for

pytestmark = pytest.mark.timeout(90)

ADDRESS = "ann@example.test"


@pytest.fixture
def server(
    server_factory: Callable[..., RunningServer],
    pg_mailbox_nodes: Callable[[], PgMailboxStore],
    monkeypatch: pytest.MonkeyPatch,
) -> RunningServer:
    """A capture-mode server (any password from loopback) with IMAP and POP3, mailboxes in the database."""
    mailboxes = pg_mailbox_nodes()

    def stores(config: Config, *, clean_tmp: bool = True) -> Stores:
        embedded = open_stores(config, clean_tmp=clean_tmp)
        embedded.mailboxes = mailboxes
        return embedded

    monkeypatch.setattr(app_module, "open_stores", stores)
    return server_factory(
        imap_listeners=(Listener("imap", "127.0.0.1", 0),),
        pop3_listeners=(Listener("pop3", "127.0.0.1", 0),),
    )


def elsewhere(store: PgMailboxStore, key: str, subject: str) -> None:
    """A delivery by another node."""
    body = f"From: bob@example.org\r\nTo: {ADDRESS}\r\nSubject: {subject}\r\n\r\nHi.\r\n".encode()
    store.deliver(
        ADDRESS, b"", io.BytesIO(body), key, received_at=time.time(), size=len(body), recovering=False
    )


def port(server: RunningServer, kind: str) -> int:
    found = server.app.imap if kind == "imap" else server.app.pop3
    assert found is not None
    return next(bound.port for bound in found.bound if bound.kind == kind)


def test_the_web_side_follows_another_nodes_deliveries(
    server: RunningServer, pg_mailbox_nodes: Callable[[], PgMailboxStore]
) -> None:
    other = pg_mailbox_nodes()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        smtp.sendmail("bob@example.org", [ADDRESS], f"To: {ADDRESS}\r\nSubject: by smtp\r\n\r\nx\r\n")
    server.wait_idle()
    assert [m.location.startswith("new/") for m in other.list_messages(ADDRESS)] == [True]
    with client(server) as http:
        wait_for(lambda: messages(http)["messages"], 5, "the SMTP delivery listed")
        events = EventLog(f"{server.base_url}/api/v1/events")
        started = time.monotonic()
        elsewhere(other, "N1_0", "from node two")
        subjects = lambda: {item["subject"] for item in messages(http)["messages"]}  # noqa: E731
        wait_for(lambda: "from node two" in subjects(), 1.0, "listed on this node")
        assert time.monotonic() - started < 1.0
        events.wait("new", lambda data: data["subject"] == "from node two")


def test_imap_idle_and_pop3_over_the_database(
    server: RunningServer, pg_mailbox_nodes: Callable[[], PgMailboxStore]
) -> None:
    other = pg_mailbox_nodes()
    elsewhere(other, "N0_0", "first")
    with IMAPClient("127.0.0.1", port=port(server, "imap"), ssl=False, timeout=10) as imap:
        imap.login(ADDRESS, "anything")
        assert imap.select_folder("INBOX")[b"EXISTS"] == 1
        imap.idle()
        elsewhere(other, "N1_0", "second")
        responses = imap.idle_check(timeout=5)
        imap.idle_done()
        assert (2, b"EXISTS") in responses
        fetched = imap.fetch([2], ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        assert next(iter(fetched.values()))[b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: second\r\n\r\n"
        imap.add_flags([1], [b"\\Flagged"])
    assert [m.flags for m in other.list_messages(ADDRESS)] == ["F", ""]
    pop = poplib.POP3("127.0.0.1", port(server, "pop3"), timeout=10)
    try:
        pop.user(ADDRESS)
        pop.pass_("anything")
        assert pop.stat()[0] == 2
        assert b"Subject: first" in b"\r\n".join(pop.retr(1)[1])
        pop.dele(2)
    finally:
        pop.quit()
    remaining = other.list_messages(ADDRESS)
    assert len(remaining) == 1 and remaining[0].flags == "FS"  # read over POP3: seen
