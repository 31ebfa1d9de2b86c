"""The file spool: queue IDs, durable commit, read-back, clean-up and storage errors."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import remount_read_only
from postoffice import durable
from postoffice.errors import SpoolError, StorageFullError
from postoffice.spool import headroom
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import MAGIC, FileSpool
from postoffice.spool.ids import is_queue_id, new_queue_id, queue_id_time
from postoffice.spool.writer import FileTarget


def make_envelope(*addresses: str, mail_from: str = "sender@example.org") -> Envelope:
    recipients = tuple(Recipient(a, a, Route.LOCAL) for a in addresses or ("user@example.com",))
    return Envelope(mail_from=mail_from, recipients=recipients, received_at=1_700_000_000.5)


async def spool_message(spool: FileSpool, content: bytes, envelope: Envelope | None = None) -> str:
    writer = spool.put(envelope or make_envelope())
    writer.write(content)
    return (await writer.commit()).queue_id


# --- queue IDs ----------------------------------------------------------------------------------


def test_queue_ids_are_unique_valid_and_sort_by_creation() -> None:
    ids = [new_queue_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(is_queue_id(i) and len(i) == 16 and i.isupper() and i.isalnum() for i in ids)
    assert sorted(ids) == ids


def test_queue_id_encodes_its_creation_time() -> None:
    assert abs(queue_id_time(new_queue_id()) - time.time()) < 5


@pytest.mark.parametrize(
    "text",
    ["", "../x", "a/b", "..", "0" * 15, "0" * 17, "0" * 16 + "\n", "0" * 15 + "/", "0" * 15 + "I",
     "0" * 15 + "O", "0" * 15 + "a", "0" * 15 + "\x00", "０" * 16],
)  # fmt: skip
def test_is_queue_id_refuses_anything_else(text: str) -> None:
    assert not is_queue_id(text)


# --- writing and reading back -------------------------------------------------------------------


async def test_round_trip_envelope_and_content(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    envelope = Envelope(
        mail_from="",
        recipients=(
            Recipient("ü@exämple.com", "Ü@exämple.com", Route.LOCAL, notify=("FAILURE",), orcpt="rfc822;x@y"),
            Recipient("far@example.net", "far@example.net", Route.REMOTE),
        ),
        received_at=1_700_000_123.25,
        client_address="2001:db8::7",
        helo="evil\r\nname",
        smtputf8=True,
        declared_size=10,
        extra={"k": "v"},
    )
    chunks = [b"Received: from x\r\n", b"Subject: hi\r\n\r\n", b"body\r\n" * 30_000]
    writer = spool.put(envelope)
    for chunk in chunks:
        writer.write(chunk)
    queued = await writer.commit()

    content = b"".join(chunks)
    assert queued.size == len(content)
    assert queued.envelope == envelope
    assert spool.pending() == [queued.queue_id]
    loaded = spool.load(queued.queue_id)
    assert loaded == queued
    with spool.open(queued.queue_id) as file:
        assert file.read() == content
    raw = (spool.queue_dir / queued.queue_id).read_bytes()
    assert raw.startswith(MAGIC) and raw.count(b"\n", 0, len(raw) - len(content)) == 2


# --- header fields added above the content (prepend) ----------------------------------------

SMALL = b"Subject: small\r\n\r\nbody\r\n"
LARGE = b"Subject: large\r\n\r\n" + b"0123456789abcdef\r\n" * 10_000  # outgrows the buffer


@pytest.mark.parametrize("content", [SMALL, LARGE], ids=["small", "large"])
async def test_fields_prepended_at_the_end_go_above_the_content(tmp_path: Path, content: bytes) -> None:
    """Received: before the content, Authentication-Results: after it: the stored message
    starts with the last one added, then the first, then the content as written."""
    spool = FileSpool(tmp_path)
    writer = spool.put(make_envelope())
    writer.prepend(b"Received: by us\r\n")
    writer.write(content)
    writer.prepend(b"Authentication-Results: mx.test; spf=pass\r\n")
    queued = await writer.commit()

    expected = b"Authentication-Results: mx.test; spf=pass\r\nReceived: by us\r\n" + content
    with spool.open(queued.queue_id) as file:
        assert file.read() == expected
    assert queued.size == len(expected) == spool.load(queued.queue_id).size
    assert spool.load(queued.queue_id).envelope == make_envelope()


async def test_a_large_message_gets_its_late_fields_in_place_without_a_copy(tmp_path: Path) -> None:
    """The file that outgrew the buffer keeps its inode and size: the fields went into the room
    at the end of the envelope line, nothing was copied."""
    spool = FileSpool(tmp_path)
    writer = spool.put(make_envelope())
    writer.write(LARGE)
    before = os.stat(spool.tmp_dir / writer.queue_id)
    writer.prepend(b"X-Late: 1\r\n")
    queued = await writer.commit()

    after = os.stat(spool.queue_dir / queued.queue_id)
    assert after.st_ino == before.st_ino
    assert after.st_size == before.st_size
    raw = (spool.queue_dir / queued.queue_id).read_bytes()
    header_line = raw[len(MAGIC) : raw.index(b"\n", len(MAGIC)) + 1]
    assert header_line.rstrip(b" \n").endswith(b"}") and b"X-Late" not in header_line
    with spool.open(queued.queue_id) as file:
        assert file.read() == b"X-Late: 1\r\n" + LARGE


async def test_late_fields_larger_than_the_room_are_placed_by_a_copy(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    writer = spool.put(make_envelope())
    writer.write(LARGE)
    big = b"X-Big: " + b"b" * (headroom.ADDED_FIELDS_ROOM + 100) + b"\r\n"
    writer.prepend(big)
    queued = await writer.commit()

    with spool.open(queued.queue_id) as file:
        assert file.read() == big + LARGE
    assert queued.size == len(big + LARGE)
    assert os.listdir(spool.tmp_dir) == []  # neither the old file nor the copy stays


@pytest.mark.parametrize("content", [SMALL, LARGE], ids=["small", "large"])
def test_read_content_gives_the_message_so_far(tmp_path: Path, content: bytes) -> None:
    spool = FileSpool(tmp_path)
    writer = spool.put(make_envelope())
    writer.prepend(b"Received: by us\r\n")
    writer.write(content)
    with writer.read_content() as file:
        assert file.read() == b"Received: by us\r\n" + content
    writer.write(b"more\r\n")  # reading back did not end the message
    with writer.read_content() as file:
        assert file.read().endswith(content + b"more\r\n")
    writer.discard()
    with pytest.raises(SpoolError):
        writer.read_content()
    with pytest.raises(SpoolError):
        writer.prepend(b"X: y\r\n")


async def test_message_is_invisible_until_commit_returns(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    writer = spool.put(make_envelope())
    # More than the writer buffers, so the file exists before the commit.
    writer.write(b"Subject: x\r\n\r\n" + b"body\r\n" * 20_000)
    assert spool.pending() == []
    assert os.listdir(spool.queue_dir) == []
    tmp_file = spool.tmp_dir / writer.queue_id
    assert tmp_file.stat().st_mode & 0o777 == 0o600

    queued = await writer.commit()

    assert spool.pending() == [queued.queue_id] == [writer.queue_id]
    assert not tmp_file.exists()


async def test_commit_syncs_data_before_rename_and_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = FileSpool(tmp_path)
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("rename", str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    writer = spool.put(make_envelope())
    writer.write(b"x" * 100_000)
    await writer.commit()

    tmp_file, queue_file = spool.tmp_dir / writer.queue_id, spool.queue_dir / writer.queue_id
    assert events == [
        ("fsync", str(tmp_file)),
        ("rename", str(queue_file)),
        ("fsync", str(spool.queue_dir)),
    ]


async def test_concurrent_commits_flush_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file system groups fsyncs that are in flight together into one journal commit; that
    # needs them in flight together. Each data fsync here waits until five are: commits made
    # one after another would never get there.
    spool = FileSpool(tmp_path)
    together = threading.Barrier(5, timeout=10)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(spool.tmp_dir)):
            together.wait()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ids = await asyncio.gather(*(spool_message(spool, b"m%d" % i) for i in range(20)))

    assert sorted(spool.pending()) == sorted(ids)
    assert not together.broken


async def test_small_message_touches_no_file_until_commit(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    writer = spool.put(make_envelope())
    writer.write(b"Subject: small\r\n\r\nbody\r\n")
    assert os.listdir(spool.tmp_dir) == [] and os.listdir(spool.queue_dir) == []
    queued = await writer.commit()
    assert os.listdir(spool.tmp_dir) == []
    assert (spool.queue_dir / queued.queue_id).stat().st_mode & 0o777 == 0o600
    with spool.open(queued.queue_id) as file:
        assert file.read() == b"Subject: small\r\n\r\nbody\r\n"


async def test_discarded_message_leaves_nothing(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    small, big = spool.put(make_envelope()), spool.put(make_envelope())
    small.write(b"x" * 100)
    big.write(b"x" * 200_000)
    small.discard()
    big.discard()
    assert os.listdir(spool.tmp_dir) == [] and os.listdir(spool.queue_dir) == []


async def test_pending_lists_oldest_first_and_ignores_strangers(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    ids = [await spool_message(spool, b"m") for _ in range(5)]
    (spool.queue_dir / "README").write_text("not a message")
    (spool.queue_dir / ".hidden").write_text("not a message")
    assert spool.pending() == ids


async def test_complete_removes_the_message_and_may_be_repeated(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    queue_id = await spool_message(spool, b"m")
    spool.complete(queue_id)
    spool.complete(queue_id)
    assert spool.pending() == []
    with pytest.raises(SpoolError):
        spool.load(queue_id)


async def test_a_delivered_small_message_file_is_reused_emptied(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    first = await spool_message(spool, b"the first message, longer than the second" * 10)
    inode = (spool.queue_dir / first).stat().st_ino
    spool.complete(first)
    assert spool.pending() == []
    assert os.listdir(spool.free_dir) != []

    second = await spool_message(spool, b"second")

    path = spool.queue_dir / second
    assert path.stat().st_ino == inode  # the same file, not a new one
    assert path.stat().st_mode & 0o777 == 0o600
    with spool.open(second) as file:
        assert file.read() == b"second"  # nothing of the first is left
    assert os.listdir(spool.free_dir) == [] and os.listdir(spool.tmp_dir) == []


async def test_large_files_are_not_kept_and_kept_files_go_at_start_up(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    big = await spool_message(spool, b"x" * 200_000)
    small = await spool_message(spool, b"x")
    spool.complete(big)
    spool.complete(small)
    assert len(os.listdir(spool.free_dir)) == 1

    FileSpool(tmp_path)  # a new start
    assert os.listdir(spool.free_dir) == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a/b", "..", "", "0" * 15 + "\x00"])
def test_invalid_ids_are_refused_before_touching_files(tmp_path: Path, bad: str) -> None:
    spool = FileSpool(tmp_path / "spool")
    for operation in (spool.load, spool.open, spool.complete):
        with pytest.raises(SpoolError, match="not a queue ID"):
            operation(bad)
    assert sorted(os.listdir(tmp_path / "spool")) == ["corrupt", "free", "queue", "state", "tmp"]


# --- discarding and clean-up --------------------------------------------------------------------


async def test_discard_removes_the_partial_message(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    writer = spool.put(make_envelope())
    writer.write(b"partial")
    writer.discard()
    writer.discard()
    assert os.listdir(spool.tmp_dir) == [] and spool.pending() == []
    with pytest.raises(SpoolError):
        writer.write(b"more")
    with pytest.raises(SpoolError):
        await writer.commit()


async def test_discard_after_commit_keeps_the_message(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    writer = spool.put(make_envelope())
    writer.write(b"whole")
    queued = await writer.commit()
    writer.discard()
    assert spool.pending() == [queued.queue_id]


async def test_cancelled_commit_leaves_no_message(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    writer = spool.put(make_envelope())
    writer.write(b"x" * 1000)
    task = asyncio.create_task(writer.commit())
    await asyncio.sleep(0)  # the commit is under way in a worker thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    writer.discard()
    # The shielded commit finishes (an fsync: on a loaded machine that can take seconds), then
    # takes the message back.
    for _ in range(1000):
        if not os.listdir(spool.queue_dir) and not os.listdir(spool.tmp_dir):
            break
        await asyncio.sleep(0.01)
    assert os.listdir(spool.queue_dir) == [] and os.listdir(spool.tmp_dir) == []


async def test_leftovers_in_tmp_are_removed_at_start_up(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    committed = await spool_message(spool, b"kept")
    unfinished = spool.put(make_envelope())
    unfinished.write(b"never got its 250" * 10_000)  # and then the process dies

    FileSpool(tmp_path, clean_tmp=False)
    assert os.listdir(spool.tmp_dir) == [unfinished.queue_id]

    restarted = FileSpool(tmp_path)
    assert os.listdir(restarted.tmp_dir) == []
    assert restarted.pending() == [committed]


# --- damaged files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"GARBAGE\n{}\nbody",
        MAGIC + b'{"mail_from": "a@b"',  # envelope line cut short
        MAGIC + b"not json\nbody",
        MAGIC + b"[1, 2]\nbody",
        MAGIC + b'{"mail_from": "a@b"}\nbody',  # no recipients
        MAGIC + b'{"mail_from":"","recipients":[{"address":"a@b","original":"a@b","route":"moon"}],'
        b'"received_at":1}\nbody',
    ],
)
def test_corrupt_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture, raw: bytes) -> None:
    spool = FileSpool(tmp_path)
    queue_id = new_queue_id()
    (spool.queue_dir / queue_id).write_bytes(raw)

    with (
        caplog.at_level(logging.WARNING, logger="postoffice.spool"),
        pytest.raises(SpoolError, match="corrupt"),
    ):
        spool.load(queue_id)

    assert spool.pending() == []
    assert (spool.corrupt_dir / queue_id).read_bytes() == raw
    assert any(
        queue_id in record.getMessage() and "corrupt" in record.getMessage() for record in caplog.records
    )


def test_open_content_of_a_corrupt_file_moves_it_aside(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    queue_id = new_queue_id()
    (spool.queue_dir / queue_id).write_bytes(b"XPOSTOFFICE-SPOOL 1\n{}\n")
    with pytest.raises(SpoolError, match="corrupt"):
        spool.open(queue_id)
    assert (spool.corrupt_dir / queue_id).exists()


# --- storage trouble ----------------------------------------------------------------------------


async def test_full_disk_is_storage_full_and_leaves_nothing(tmpfs: Path) -> None:
    spool = FileSpool(tmpfs / "spool")
    writer = spool.put(make_envelope())
    with pytest.raises(StorageFullError):
        for _ in range(64):  # 512 KiB into 64 KiB
            writer.write(b"x" * 8192)
        await writer.commit()
    writer.discard()
    assert os.listdir(spool.tmp_dir) == [] and spool.pending() == []

    # Space freed, the spool works again.
    assert spool.load(await spool_message(spool, b"small")).size == 5


async def test_read_only_spool_is_storage_full(tmpfs: Path) -> None:
    spool = FileSpool(tmpfs / "spool")
    queue_id = await spool_message(spool, b"before")
    remount_read_only(tmpfs)

    with pytest.raises(StorageFullError):
        spool.put(make_envelope())
    with pytest.raises(StorageFullError):
        FileSpool(tmpfs / "other")
    assert spool.load(queue_id).size == len(b"before")  # reading still works


# --- the writer's targets (spool/writer.py) --------------------------------------------------------


class ElsewhereTarget:
    """A FileTarget writing ``header`` + the message to ``directory/out`` (its own tmp name
    first), handing over to ``fallback`` when its directory cannot take the file."""

    delivered = True
    room = 0

    def __init__(self, directory: Path, header: bytes, fallback: FileTarget | None) -> None:
        self.header = header
        self.path = str(directory / "tmp-out")
        self._directory = directory
        self._fallback = fallback
        self.told: list[tuple[str, str]] = []

    def create(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def destination(self, size: int) -> str:
        return str(self._directory / f"out,S={size}")

    def fallback(self, error: OSError) -> FileTarget | None:
        return None if durable.is_storage_full(error) else self._fallback

    def committed(self, message: QueuedMessage, destination: str) -> None:
        self.told.append((message.queue_id, destination))


async def test_a_writer_commits_into_its_target_and_tells_it(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    (tmp_path / "out").mkdir()
    envelope = make_envelope()
    target = ElsewhereTarget(tmp_path / "out", b"Header: 1\r\n", spool.queue_file("Q1", envelope))
    writer = spool.writer("Q1", envelope, target)
    writer.write(b"x" * 100_000)  # past the buffer: the file is made at once
    message = await writer.commit()
    assert message.delivered and message.size == 100_000
    assert os.listdir(tmp_path / "out") == ["out,S=100011"]
    assert (tmp_path / "out" / "out,S=100011").read_bytes() == b"Header: 1\r\n" + b"x" * 100_000
    assert target.told == [("Q1", str(tmp_path / "out" / "out,S=100011"))]
    assert spool.pending() == []


async def test_a_target_that_cannot_make_its_file_hands_over_before_a_byte_is_written(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    envelope = make_envelope()
    queue_id = new_queue_id()
    gone = tmp_path / "no-such-directory"  # create() fails with ENOENT: not storage-full
    writer = spool.writer(
        queue_id, envelope, ElsewhereTarget(gone, b"Header: 1\r\n", spool.queue_file(queue_id, envelope))
    )
    writer.write(b"small")
    message = await writer.commit()
    assert not message.delivered and spool.pending() == [queue_id]
    assert spool.load(queue_id).envelope == envelope  # the spool's header, not the target's
    with spool.open(queue_id) as content:
        assert content.read() == b"small"


@pytest.mark.parametrize("content", [SMALL, LARGE], ids=["small", "large"])
async def test_fields_prepended_to_a_handed_over_message_go_above_it_in_the_spool(
    tmp_path: Path, content: bytes
) -> None:
    """The spool's header replaces the target's; fields added before and after the content are
    above it, a large message's late ones in the room of the spool's envelope line."""
    spool = FileSpool(tmp_path / "spool")
    envelope = make_envelope()
    queue_id = new_queue_id()
    gone = tmp_path / "no-such-directory"
    writer = spool.writer(
        queue_id, envelope, ElsewhereTarget(gone, b"Header: 1\r\n", spool.queue_file(queue_id, envelope))
    )
    writer.prepend(b"Received: by us\r\n")
    writer.write(content)
    writer.prepend(b"X-Late: 1\r\n")
    message = await writer.commit()
    assert not message.delivered and spool.pending() == [queue_id]
    assert spool.load(queue_id).envelope == envelope
    with spool.open(queue_id) as stored:
        assert stored.read() == b"X-Late: 1\r\nReceived: by us\r\n" + content


async def test_storage_full_is_never_handed_over(tmpfs: Path) -> None:
    spool = FileSpool(tmpfs / "spool")
    envelope = make_envelope()
    (tmpfs / "out").mkdir()
    writer = spool.writer(
        "Q2", envelope, ElsewhereTarget(tmpfs / "out", b"", spool.queue_file("Q2", envelope))
    )
    remount_read_only(tmpfs)
    writer.write(b"x")
    with pytest.raises(StorageFullError):
        await writer.commit()
    assert os.listdir(tmpfs / "out") == [] and spool.pending() == []
