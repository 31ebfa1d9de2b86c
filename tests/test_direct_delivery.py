"""A message for one local mailbox is in that mailbox before its 250 (delivery/direct.py).

Real server on an ephemeral loopback port, real smtplib client; what the tests look at is the
Maildir and the spool on disk, and the server's own log lines.
"""

from __future__ import annotations

import logging
import os
import smtplib
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import NOWHERE, RunningServer, maildir_messages
from postoffice.config import DeliverySettings, load_config
from postoffice.delivery.direct import DirectReceiver
from postoffice.delivery.local import delivery_headers
from postoffice.errors import ConfigError
from postoffice.maildir.store import MaildirStore
from postoffice.spool.envelope import Envelope, Recipient, Route
from postoffice.spool.files import FileSpool
from web_helpers import client, messages

MESSAGE = b"From: a@client.test\r\nTo: bob@example.test\r\nSubject: direct\r\n\r\nHello.\r\n"


def _maildir(running: RunningServer, address: str) -> Path:
    local, _, domain = address.rpartition("@")
    return running.config.mail_dir / domain / local


def _files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def _send(
    running: RunningServer, recipients: list[str], message: bytes = MESSAGE, **options: list[str]
) -> None:
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.sendmail("a@client.test", recipients, message, **options)


def _statuses(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage().split(" ", 1)[1]
        for record in caplog.records
        if record.name == "postoffice.spool" and record.getMessage().startswith("queue_id=")
    ]


def test_one_local_recipient_is_in_the_mailbox_when_the_client_hears_250(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    _send(server, ["bob@example.test"])
    # Looked at without waiting for the queue: the 250 came after the delivery.
    new = _files(_maildir(server, "bob@example.test") / "new")
    assert len(new) == 1
    data = new[0].read_bytes()
    assert data.startswith(b"Return-Path: <a@client.test>\r\nDelivered-To: bob@example.test\r\nReceived: ")
    assert data.endswith(b"Subject: direct\r\n\r\nHello.\r\n")
    # Dovecot's ",S=" is the file's size.
    assert new[0].name.endswith(f",S={len(data)}")
    assert _files(_maildir(server, "bob@example.test") / "tmp") == []
    spool = server.config.spool_dir
    assert _files(spool / "queue") == [] and _files(spool / "tmp") == []
    # The log says delivered, after queued, and no queue removal: the queue never held it.
    statuses = _statuses(caplog)
    assert any("status=delivered detail='delivered to maildir " in status for status in statuses)
    assert not any("status=removed" in status for status in statuses)


def test_a_large_message_streams_into_the_mailbox_unchanged(server: RunningServer) -> None:
    body = b"".join(b"line %06d of a large message\r\n" % n for n in range(20_000))  # ~600 KB
    message = b"Subject: large\r\n\r\n" + body
    _send(server, ["bob@example.test"], message)
    new = _files(_maildir(server, "bob@example.test") / "new")
    assert len(new) == 1
    assert new[0].read_bytes().endswith(message)


def test_several_recipients_go_through_the_queue(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    _send(server, ["bob@example.test", "carol@example.test"])
    server.wait_idle()
    for address in ("bob@example.test", "carol@example.test"):
        (copy,) = maildir_messages(server.config.mail_dir, address)
        assert copy["Delivered-To"] == address  # each copy names its own recipient
    assert any("status=removed" in status for status in _statuses(caplog))


def test_a_success_report_request_goes_through_the_queue_and_gets_its_report(server: RunningServer) -> None:
    _send(server, ["bob@example.test"], rcpt_options=["NOTIFY=SUCCESS"])
    server.wait_idle()
    assert len(maildir_messages(server.config.mail_dir, "bob@example.test")) == 1
    # Capture mode files the report for the sender in the sender's own mailbox.
    (report,) = maildir_messages(server.config.mail_dir, "a@client.test")
    assert report.get_content_type() == "multipart/report"
    assert "Action: delivered" in report.as_string()


def test_switched_off_every_message_is_queued_first(
    server_factory: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    running = server_factory(delivery=replace(NOWHERE, local_before_reply=False))
    _send(running, ["bob@example.test"])
    running.wait_idle()
    assert len(maildir_messages(running.config.mail_dir, "bob@example.test")) == 1
    assert any("status=removed" in status for status in _statuses(caplog))


@pytest.mark.parametrize("size", [1_000, 300_000], ids=["in-memory", "streamed"])
def test_a_mailbox_that_cannot_take_the_message_hands_it_to_the_queue(
    server: RunningServer, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    _send(server, ["bob@example.test"])  # makes the Maildir
    maildir = _maildir(server, "bob@example.test")
    (maildir / "tmp").rmdir()
    (maildir / "tmp").write_bytes(b"")  # a file where the directory should be: ENOTDIR, even as root
    message = b"Subject: queued\r\n\r\n" + (b"q" * 98 + b"\r\n") * (size // 100)
    _send(server, ["bob@example.test"], message)  # accepted all the same: a 250
    server.wait_idle()
    statuses = _statuses(caplog)
    assert any("reason=mailbox-unwritable" in status for status in statuses)
    assert any("status=deferred" in status for status in statuses)  # the queue's agent tried
    (queued,) = _files(server.config.spool_dir / "queue")
    assert queued.read_bytes().endswith(message)  # the spool's format: no delivery headers inside
    assert len(_files(maildir / "new")) == 1
    # Repaired, the queue delivers it, with one set of delivery headers.
    (maildir / "tmp").unlink()
    (maildir / "tmp").mkdir()
    server.call(_flush(server))
    server.wait_idle()
    delivered = [path.read_bytes() for path in _files(maildir / "new")]
    (late,) = [data for data in delivered if data.endswith(message)]
    assert late.count(b"Delivered-To: ") == 1 and late.startswith(b"Return-Path: <a@client.test>\r\n")
    assert _files(server.config.spool_dir / "queue") == []


def test_a_symlink_placed_after_rcpt_is_refused_at_the_write(
    server: RunningServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The symlink check is made in the file thread just before the file is created: a
    mailbox replaced by a symlink out of the mail root between RCPT and DATA gets nothing."""
    caplog.set_level(logging.INFO, logger="postoffice")
    _send(server, ["bob@example.test"])  # makes the Maildir
    maildir = _maildir(server, "bob@example.test")
    outside = tmp_path / "outside"
    for part in ("tmp", "new", "cur"):
        (outside / part).mkdir(parents=True)
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo()
        client.mail("a@client.test")
        assert client.rcpt("bob@example.test")[0] == 250
        maildir.rename(tmp_path / "moved")
        maildir.symlink_to(outside, target_is_directory=True)
        assert client.data(MESSAGE)[0] == 250  # the queue has it
    server.wait_idle()
    assert [_files(outside / part) for part in ("tmp", "new", "cur")] == [[], [], []]
    statuses = _statuses(caplog)
    assert any("reason=mailbox-unwritable" in status for status in statuses)
    assert any("outside the mail root" in status for status in statuses)  # the agent's refusal


async def _flush(server: RunningServer) -> None:
    server.app.scheduler.flush()


def test_a_client_gone_before_the_end_of_data_leaves_nothing(server: RunningServer) -> None:
    _send(server, ["bob@example.test"])  # makes the Maildir
    maildir = _maildir(server, "bob@example.test")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for command in (
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@client.test>\r\n",
            b"RCPT TO:<bob@example.test>\r\n",
        ):
            sock.sendall(command)
            while (line := reader.readline())[3:4] == b"-":
                pass
            assert line[:1] in (b"2", b"3")
        sock.sendall(b"DATA\r\n")
        assert reader.readline().startswith(b"354")
        # Past the writer's buffer: the content goes into a file in tmp/, which must appear...
        sock.sendall(b"Subject: cut\r\n\r\n" + (b"x" * 98 + b"\r\n") * 2_000)
        _wait_for(lambda: len(_files(maildir / "tmp")) == 1)
        reader.close()  # the socket's descriptor stays open while its file object is
    # ...and go when the client does.
    _wait_for(lambda: _files(maildir / "tmp") == [])
    assert len(_files(maildir / "new")) == 1


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_a_crashed_delivery_left_in_tmp_is_removed_after_36_hours(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    maildir = data_dir / "mail" / "example.test" / "bob"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    old, recent = maildir / "tmp" / "old", maildir / "tmp" / "recent"
    old.write_bytes(b"half a message")
    recent.write_bytes(b"being written")
    long_ago = time.time() - 37 * 3600
    os.utime(old, (long_ago, long_ago))
    running = server_factory(data_dir=data_dir)
    _send(running, ["bob@example.test"])
    assert not old.exists()
    assert recent.exists()  # younger than 36 hours: perhaps a live delivery of another process


def test_the_web_index_and_metrics_hear_of_a_direct_delivery(server: RunningServer) -> None:
    _send(server, ["bob@example.test"])
    server.index_idle()
    with client(server) as http:
        listed = messages(http)["messages"]
        assert [(m["subject"], m["mailbox"]) for m in listed] == [("direct", "bob@example.test")]
        exposition = http.get("/metrics").text
    assert 'postoffice_messages_total{outcome="delivered"} 1.0' in exposition


def test_the_setting_is_read_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text("[delivery]\nlocal_before_reply = false\n")
    assert load_config(path).delivery.local_before_reply is False
    assert DeliverySettings().local_before_reply is True
    path.write_text('[delivery]\nlocal_before_reply = "no"\n')
    with pytest.raises(ConfigError, match=r"delivery\.local_before_reply"):
        load_config(path)


# --- header fields added at the end of the message (MessageWriter.prepend) ---------------------


@pytest.mark.parametrize("size", [100, 200_000], ids=["in-the-buffer", "copied"])
async def test_fields_added_at_the_end_are_at_the_top_of_the_mailbox_file(tmp_path: Path, size: int) -> None:
    """Below Return-Path and Delivered-To, above Received: and the content; a message that
    outgrew the buffer is copied once at the commit (a Maildir file has no room to leave)."""
    spool = FileSpool(tmp_path / "spool")
    store = MaildirStore(tmp_path / "mail", "mx.test")
    receiver = DirectReceiver(spool, store)
    recipient = Recipient("bob@example.test", "bob@example.test", Route.LOCAL)
    writer = receiver.put(Envelope("a@client.test", (recipient,), received_at=time.time()))
    content = b"Subject: x\r\n\r\n" + b"y" * size + b"\r\n"
    writer.prepend(b"Received: by us\r\n")
    writer.write(content)
    writer.prepend(b"Authentication-Results: mx.test; none\r\n")
    queued = await writer.commit()

    assert queued.delivered
    [path] = _files(tmp_path / "mail" / "example.test" / "bob" / "new")
    expected = b"Authentication-Results: mx.test; none\r\nReceived: by us\r\n" + content
    assert path.read_bytes() == delivery_headers("a@client.test", "bob@example.test") + expected
    assert queued.size == len(expected)
    assert _files(tmp_path / "mail" / "example.test" / "bob" / "tmp") == []
