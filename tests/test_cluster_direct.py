"""Direct delivery in a cluster (delivery/direct_pg.py), on real nodes sharing one database
(tests/cluster_support.py): a message for one local mailbox is in the database's mailbox before
its 250 with no queue row ever written, and another node lists it within a second; several
recipients still go through the queue; a mailbox that refuses the message (here a quota
trigger) sends it to the queue; the database down at the end of DATA is a 451 and nothing is
stored; a node SIGKILLed under load loses no acknowledged message and stores none twice; a
large message is stored whole; a delivery done again after its commit landed is stored once."""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cluster_support import Cluster, Node, require_cluster_stores
from pg_server import PostgresServer
from postoffice.smtp import replies

pytestmark = pytest.mark.timeout(240)

SEQ = re.compile(rb"X-Test-Seq: (\d+)")

# Every row ever written to the queue, by a trigger the test adds: "no queue row" is then
# "never one", not "none left".
QUEUE_LOG = """
CREATE TABLE test_queued (queue_id text);
CREATE FUNCTION test_log_queued() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO test_queued VALUES (NEW.queue_id); RETURN NEW; END $$;
CREATE TRIGGER test_log_queued AFTER INSERT ON queue_messages
  FOR EACH ROW EXECUTE FUNCTION test_log_queued();
"""

# A mailbox over its quota, as an operator's trigger could say it: the store refuses.
QUOTA = """
CREATE FUNCTION test_quota() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  IF NEW.mailbox_id IN (SELECT id FROM mailboxes WHERE address = 'full@example.com') THEN
    RAISE EXCEPTION 'mailbox full@example.com is over its quota';
  END IF;
  RETURN NEW; END $$;
CREATE TRIGGER test_quota BEFORE INSERT ON mail_messages FOR EACH ROW EXECUTE FUNCTION test_quota();
"""


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def letter(seq: int, to: str = "dev@example.com") -> bytes:
    return f"From: app@example.org\r\nTo: {to}\r\nSubject: seq {seq}\r\nX-Test-Seq: {seq}\r\n\r\nbody {seq}\r\n".encode()


def send(node: Node, seq: int, *to: str) -> tuple[int, bytes]:
    recipients = to or ("dev@example.com",)
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as smtp:
        smtp.ehlo("load.test")
        smtp.mail("app@example.org")
        for address in recipients:
            smtp.rcpt(address)
        return smtp.data(letter(seq, recipients[0]))


def stored(url: str, address: str = "dev@example.com") -> Counter[int]:
    """How many times each X-Test-Seq is in ``address``'s mailbox (its first chunk holds it)."""
    rows = sql(
        url,
        "SELECT c.data FROM mail_messages m JOIN mailboxes b ON b.id = m.mailbox_id"
        " JOIN mail_chunks c ON c.body = m.body AND c.seq = 0 WHERE b.address = %s",
        address,
    )
    return Counter(int(match[1]) for (data,) in rows if (match := SEQ.search(bytes(data))))


def listed(node: Node, subject: str) -> bool:
    answer = httpx.get(
        f"http://127.0.0.1:{node.http_port}/api/v1/messages", params={"q": f'subject:"{subject}"'}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    return any(m["subject"] == subject for m in answer.json()["messages"])


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    require_cluster_stores()
    with Cluster(pg_url, tmp_path) as made:
        yield made


def test_one_local_recipient_is_stored_before_the_250_with_no_queue_row_and_seen_by_another_node(
    cluster: Cluster, pg_url: str
) -> None:
    node_a, node_b = cluster.start(2)
    sql(pg_url, QUEUE_LOG)
    for seq in (1, 2):  # the mailbox's first message makes it; the second finds it
        code, text = send(node_a, seq)
        assert code == 250, text
        accepted = time.monotonic()
        assert stored(pg_url) == Counter(range(1, seq + 1))  # in the mailbox at the 250
        wait_until(lambda seq=seq: listed(node_b, f"seq {seq}"), 1.0, "node B lists node A's message")
        assert time.monotonic() - accepted < 1.0
    assert sql(pg_url, "SELECT queue_id FROM test_queued") == []
    queue_id = text.decode().rsplit(" ", 1)[-1]
    assert f"queue_id={queue_id} to=<dev@example.com> status=delivered" in node_a.text
    assert listed(node_a, "seq 2")  # this node's own index was told too (the delivered hook)


def test_several_recipients_still_go_through_the_queue(cluster: Cluster, pg_url: str) -> None:
    (node,) = cluster.start(1)
    sql(pg_url, QUEUE_LOG)
    code, text = send(node, 7, "dev@example.com", "ops@example.com")
    assert code == 250, text
    assert len(sql(pg_url, "SELECT queue_id FROM test_queued")) == 1
    wait_until(lambda: stored(pg_url, "ops@example.com") == Counter({7: 1}), 10, "delivered by the queue")
    assert stored(pg_url, "dev@example.com") == Counter({7: 1})


def test_a_mailbox_that_refuses_the_message_sends_it_to_the_queue(cluster: Cluster, pg_url: str) -> None:
    (node,) = cluster.start(1)
    sql(pg_url, QUEUE_LOG + QUOTA)
    code, text = send(node, 3, "full@example.com")
    assert code == 250, text
    queue_id = text.decode().rsplit(" ", 1)[-1]
    assert sql(pg_url, "SELECT queue_id FROM test_queued") == [(queue_id,)]
    assert stored(pg_url, "full@example.com") == Counter()
    wait_until(lambda: "reason=mailbox-refused" in node.text, 5, "the refusal logged")
    assert "over its quota" in node.text and "Traceback" not in node.text
    # The queue's own attempt meets the same refusal: deferred, to be retried, then bounced.
    wait_until(
        lambda: f"queue_id={queue_id} to=<full@example.com> status=deferred" in node.text, 10, "deferred"
    )


def test_the_database_down_at_the_end_of_data_is_451_and_nothing_is_stored(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    require_cluster_stores()
    url = postgres.url(postgres.create_database())
    with Cluster(url, tmp_path) as cluster:
        (node,) = cluster.start(1)
        assert send(node, 1)[0] == 250
        with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=60) as smtp:
            smtp.ehlo("load.test")
            smtp.mail("app@example.org")
            smtp.rcpt("dev@example.com")
            assert smtp.docmd("DATA")[0] == 354
            smtp.send(letter(2).replace(b"\r\n.", b"\r\n.."))
            postgres.stop()
            try:
                smtp.send(b".\r\n")
                code, text = smtp.getreply()
            finally:
                postgres.start()
        error = replies.LOCAL_ERROR
        assert (code, text.decode()) == (error.code, f"{error.enhanced} {error.lines[0]}")  # 451 4.3.0
        assert stored(url) == Counter({1: 1})
        # Nothing half-stored: no chunk without its message.
        assert sql(url, "SELECT count(*) FROM mail_chunks c WHERE NOT EXISTS"
                   " (SELECT 1 FROM mail_messages m WHERE m.body = c.body)") == [(0,)]  # fmt: skip
        wait_until(lambda: send(node, 3)[0] == 250, 30, "accepting again")
        assert stored(url) == Counter({1: 1, 3: 1})
        assert "Traceback" not in node.text


def test_a_node_killed_under_load_loses_no_acknowledged_message_and_stores_none_twice(
    cluster: Cluster, pg_url: str
) -> None:
    node_a, node_b = cluster.start(2)
    nodes = {"a": node_a, "b": node_b}
    acked: set[int] = set()
    lock = threading.Lock()
    counter = iter(range(10**6))
    stop = threading.Event()

    def load(name: str) -> None:
        while not stop.is_set():
            with lock:
                seq = next(counter)
            try:
                code, _ = send(nodes[name], seq)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # killed under us: no 250, so not ours to keep
                continue
            if code == 250:
                with lock:
                    acked.add(seq)

    threads = [threading.Thread(target=load, args=(name,), daemon=True) for name in ("a", "b", "b", "b")]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            time.sleep(2.0)
            nodes["b"].kill()
            nodes["b"] = cluster.spawn("node-b").wait_listening()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(acked) > 50
    found = stored(pg_url)
    assert acked <= set(found), sorted(acked - set(found))
    assert [seq for seq, count in found.items() if count > 1] == []
    assert "Traceback" not in node_a.text


def test_a_message_past_the_buffer_and_a_chunk_is_stored_whole_in_whole_chunks(
    cluster: Cluster, pg_url: str
) -> None:
    (node,) = cluster.start(1)
    body = b"".join(b"line %06d of a long message\r\n" % n for n in range(12_000))  # ~370 KB
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as smtp:
        smtp.sendmail("app@example.org", ["dev@example.com"], b"Subject: long\r\n\r\n" + body)
    rows = sql(
        pg_url,
        "SELECT m.size, c.seq, c.data FROM mail_messages m JOIN mail_chunks c ON c.body = m.body ORDER BY c.seq",
    )
    content = b"".join(bytes(data) for _, _, data in rows)
    assert content.startswith(b"Return-Path: <app@example.org>\r\nDelivered-To: dev@example.com\r\n")
    assert content.endswith(b"Subject: long\r\n\r\n" + body)
    assert rows[0][0] == len(content) and [len(data) for _, _, data in rows[:-1]] == [256 * 1024]


async def test_a_delivery_done_again_after_its_commit_landed_is_not_stored_twice(pg_url: str) -> None:
    """PgQueue.transact does the work again on another connection when the first broke, which
    may be after the commit landed: the message's key, found, stands for the copy stored."""
    from postoffice.pg.database import Database
    from postoffice.pg.migrate import migrate
    from postoffice.pgstore.mailboxes import PgMailboxStore

    database = Database(pg_url)
    migrate(database)
    store = PgMailboxStore(database)
    place = store.place("Dev@example.com", None)
    assert store.make_place(*place) is True

    async def content() -> AsyncIterator[bytes]:
        yield letter(9)

    try:
        copies = []
        for _ in range(2):
            async with database.aconnection() as connection:
                copies.append(await store.deliver_on(connection, place, "Q1_0", content(), received_at=1.5))
    finally:
        await database.aclose()
    assert copies[0] == copies[1] and copies[0].location == "new/Q1_0"
    assert stored(pg_url) == Counter({9: 1})
