"""Maildir delivery: complete files only, readable by mailbox.Maildir, once per recipient."""

from __future__ import annotations

import mailbox
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import small_tmpfs
from postoffice.delivery.agent import Delivered, PermFail, TempFail
from postoffice.delivery.local import LocalAgent
from postoffice.maildir.layout import ensure_maildir
from postoffice.maildir.store import MaildirStore
from postoffice.smtp import replies
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool
from postoffice.storage import StoredMessage

HOSTNAME = "mx.example.com"
CONTENT = b"Received: from client\r\nSubject: Hello\r\nFrom: a@example.org\r\n\r\nBody line\r\n"


def local(*addresses: str) -> tuple[Recipient, ...]:
    return tuple(Recipient(address, address, Route.LOCAL) for address in addresses)


async def queue(spool: FileSpool, recipients: tuple[Recipient, ...], *, mail_from: str = "a@example.org",
                content: bytes = CONTENT) -> QueuedMessage:  # fmt: skip
    writer = spool.put(Envelope(mail_from, recipients, received_at=1_700_000_000.9))
    writer.write(content)
    return await writer.commit()


@pytest.fixture
def spool(tmp_path: Path) -> FileSpool:
    return FileSpool(tmp_path / "spool")


@pytest.fixture
def mail_root(tmp_path: Path) -> Path:
    root = tmp_path / "mail"
    root.mkdir()
    return root


def messages(mail_root: Path, address: str) -> list[mailbox.MaildirMessage]:
    folder = mailbox.Maildir(ensure_maildir(mail_root, address), create=False)
    return [folder.get_message(key) for key in sorted(folder.keys())]


def test_ensure_maildir_creates_private_tmp_new_cur(mail_root: Path) -> None:
    path = ensure_maildir(mail_root, "User@Example.com")
    assert path == mail_root / "example.com" / "user"
    for sub in ("tmp", "new", "cur"):
        assert (path / sub).is_dir()
        assert (path / sub).stat().st_mode & 0o777 == 0o700
    assert ensure_maildir(mail_root, "user@example.com") == path  # idempotent


async def test_delivered_message_is_readable_by_mailbox_maildir(spool: FileSpool, mail_root: Path) -> None:
    message = await queue(spool, local("alice@example.com", "bob@example.com"))
    agent = LocalAgent(MaildirStore(mail_root, HOSTNAME), spool)

    results = await agent.deliver(message, message.envelope.recipients)

    assert [type(r) for r in results] == [Delivered, Delivered]
    assert [r.recipient for r in results] == list(message.envelope.recipients)
    for address in ("alice@example.com", "bob@example.com"):
        [received] = messages(mail_root, address)
        assert received["Return-Path"] == "<a@example.org>"
        assert received["Delivered-To"] == address
        assert received["Subject"] == "Hello"
        assert str(received.get_payload()).rstrip("\r\n") == "Body line"
        assert received.get_subdir() == "new"
    [name] = os.listdir(mail_root / "example.com" / "alice" / "new")
    size = (mail_root / "example.com" / "alice" / "new" / name).stat().st_size
    assert name.endswith(f".{HOSTNAME},S={size}")
    assert name.startswith(f"{int(message.envelope.received_at)}.{message.queue_id}_0.")
    assert os.listdir(mail_root / "example.com" / "alice" / "tmp") == []


async def test_null_sender_gets_an_empty_return_path(spool: FileSpool, mail_root: Path) -> None:
    message = await queue(spool, local("alice@example.com"), mail_from="")
    await LocalAgent(MaildirStore(mail_root, HOSTNAME), spool).deliver(message, message.envelope.recipients)
    [received] = messages(mail_root, "alice@example.com")
    assert received["Return-Path"] == "<>"


async def test_large_message_is_copied_whole(spool: FileSpool, mail_root: Path) -> None:
    content = b"Subject: big\r\n\r\n" + b"".join(b"line %07d\r\n" % i for i in range(300_000))
    message = await queue(spool, local("alice@example.com"), content=content)
    await LocalAgent(MaildirStore(mail_root, HOSTNAME), spool).deliver(message, message.envelope.recipients)
    [name] = os.listdir(mail_root / "example.com" / "alice" / "new")
    delivered = (mail_root / "example.com" / "alice" / "new" / name).read_bytes()
    assert delivered.endswith(content) and len(delivered) > len(content)


async def test_same_mailbox_twice_gets_one_copy(spool: FileSpool, mail_root: Path) -> None:
    message = await queue(spool, local("alice@example.com", "Alice@EXAMPLE.com", "bob@example.com"))
    results = await LocalAgent(MaildirStore(mail_root, HOSTNAME), spool).deliver(
        message, message.envelope.recipients
    )
    assert [type(r) for r in results] == [Delivered, Delivered, Delivered]
    assert [r.recipient for r in results] == list(message.envelope.recipients)
    assert len(messages(mail_root, "alice@example.com")) == 1
    assert len(messages(mail_root, "bob@example.com")) == 1


@pytest.mark.parametrize(
    "address", ["postmaster", "user@../etc", "user@exa/mple", "x@[a/b]", "%" * 90 + "@x.org"]
)
async def test_invalid_mailbox_is_a_permanent_failure(
    spool: FileSpool, mail_root: Path, address: str
) -> None:
    message = await queue(spool, local(address, "alice@example.com"))
    results = await LocalAgent(MaildirStore(mail_root, HOSTNAME), spool).deliver(
        message, message.envelope.recipients
    )
    assert results[0] == PermFail(message.envelope.recipients[0], replies.BAD_DESTINATION_MAILBOX)
    assert isinstance(results[1], Delivered)
    assert sorted(os.listdir(mail_root)) == ["example.com"]


async def test_hostile_local_parts_stay_inside_the_mail_root(
    spool: FileSpool, mail_root: Path, tmp_path: Path
) -> None:
    hostile = ["../x@example.com", "a/b@example.com", ".hidden@example.com", "..@example.com",
               "a\x00b@example.com", '"john doe"@example.com', "ß/../../y@example.com"]  # fmt: skip
    message = await queue(spool, local(*hostile))
    results = await LocalAgent(MaildirStore(mail_root, HOSTNAME), spool).deliver(
        message, message.envelope.recipients
    )
    assert all(isinstance(r, Delivered) for r in results)
    assert sorted(os.listdir(tmp_path)) == ["mail", "spool"]
    assert sorted(os.listdir(mail_root / "example.com")) == sorted(
        ["%2E.%2Fx", "a%2Fb", "%2Ehidden", "%2E.", "a%00b", "%22john%20doe%22", "ß%2F..%2F..%2Fy"]
    )


async def test_recovering_skips_a_copy_already_in_new(spool: FileSpool, mail_root: Path) -> None:
    message = await queue(spool, local("alice@example.com", "bob@example.com"))
    agent = LocalAgent(MaildirStore(mail_root, HOSTNAME), spool)
    await agent.deliver(message, message.envelope.recipients[:1])  # then the process died

    results = await agent.deliver(message, message.envelope.recipients, recovering=True)

    assert all(isinstance(r, Delivered) for r in results)
    assert len(messages(mail_root, "alice@example.com")) == 1
    assert len(messages(mail_root, "bob@example.com")) == 1


async def test_recovering_skips_a_copy_a_reader_moved_to_cur(spool: FileSpool, mail_root: Path) -> None:
    message = await queue(spool, local("alice@example.com"))
    agent = LocalAgent(MaildirStore(mail_root, HOSTNAME), spool)
    await agent.deliver(message, message.envelope.recipients)
    folder = mailbox.Maildir(mail_root / "example.com" / "alice", create=False)
    [key] = folder.keys()
    read = folder.get_message(key)
    read.set_subdir("cur")
    read.add_flag("SR")
    folder[key] = read  # now in cur/ as NAME:2,RS
    assert os.listdir(mail_root / "example.com" / "alice" / "new") == []

    results = await agent.deliver(message, message.envelope.recipients, recovering=True)

    assert isinstance(results[0], Delivered)
    [only] = messages(mail_root, "alice@example.com")
    assert only.get_subdir() == "cur" and only.get_flags() == "RS"


async def test_without_recovering_a_read_copy_is_not_looked_for(spool: FileSpool, mail_root: Path) -> None:
    # Recovery is the only time an earlier copy can exist, so only then is cur/ scanned.
    message = await queue(spool, local("alice@example.com"))
    agent = LocalAgent(MaildirStore(mail_root, HOSTNAME), spool)
    await agent.deliver(message, message.envelope.recipients)
    maildir = mail_root / "example.com" / "alice"
    [name] = os.listdir(maildir / "new")
    os.rename(maildir / "new" / name, maildir / "cur" / f"{name}:2,S")
    await agent.deliver(message, message.envelope.recipients)
    assert os.listdir(maildir / "new") == [name] and os.listdir(maildir / "cur") == [f"{name}:2,S"]


async def test_delivery_hook_sees_every_stored_copy(spool: FileSpool, mail_root: Path) -> None:
    seen: list[StoredMessage] = []
    message = await queue(spool, local("alice@example.com", "bob@example.com", "postmaster"))
    agent = LocalAgent(MaildirStore(mail_root, HOSTNAME), spool, on_delivered=seen.append)
    await agent.deliver(message, message.envelope.recipients)
    assert [stored.mailbox for stored in seen] == ["alice@example.com", "bob@example.com"]
    for stored in seen:
        local_part, _, domain = stored.mailbox.partition("@")
        assert stored.location.startswith("new/")
        assert (mail_root / domain / local_part / stored.location).is_file()


async def test_failing_hook_does_not_undo_a_delivery(spool: FileSpool, mail_root: Path) -> None:
    def hook(stored: StoredMessage) -> None:
        raise RuntimeError("index unavailable")

    message = await queue(spool, local("alice@example.com"))
    results = await LocalAgent(MaildirStore(mail_root, HOSTNAME), spool, on_delivered=hook).deliver(
        message, message.envelope.recipients
    )
    assert isinstance(results[0], Delivered)


async def test_missing_spool_file_is_a_temporary_failure(spool: FileSpool, mail_root: Path) -> None:
    message = await queue(spool, local("alice@example.com"))
    spool.complete(message.queue_id)
    results = await LocalAgent(MaildirStore(mail_root, HOSTNAME), spool).deliver(
        message, message.envelope.recipients
    )
    assert results == [TempFail(message.envelope.recipients[0], replies.LOCAL_ERROR)]


async def test_truncated_spool_file_is_not_delivered(spool: FileSpool, mail_root: Path) -> None:
    message = await queue(spool, local("alice@example.com"))
    path = spool.queue_dir / message.queue_id
    os.truncate(path, path.stat().st_size - 5)
    results = await LocalAgent(MaildirStore(mail_root, HOSTNAME), spool).deliver(
        message, message.envelope.recipients
    )
    assert results == [TempFail(message.envelope.recipients[0], replies.LOCAL_ERROR)]
    maildir = mail_root / "example.com" / "alice"
    assert os.listdir(maildir / "new") == [] and os.listdir(maildir / "tmp") == []


def test_store_names_are_the_same_on_every_attempt(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, "host/with:odd,chars")
    body = tmp_path / "body"
    body.write_bytes(b"hello")
    with body.open("rb") as content:
        first = store.deliver("a@b.org", b"", content, "KEY_1", received_at=5.5, size=5, recovering=False)
    with body.open("rb") as content:
        again = store.deliver("a@b.org", b"", content, "KEY_1", received_at=5.5, size=5, recovering=True)
    assert first == again
    assert first.location == "new/5.KEY_1.host\\057with\\072odd\\054chars,S=5"


# --- storage trouble ----------------------------------------------------------------------------


@pytest.fixture
def small_mail_root(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs as the mail root: a disk that really fills up (needs root)."""
    with small_tmpfs(tmp_path / "mail") as mount_point:
        yield mount_point


async def test_full_mail_disk_is_a_temporary_failure_without_a_partial_file(
    spool: FileSpool, small_mail_root: Path
) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 200_000
    message = await queue(spool, local("alice@example.com", "bob@example.com"), content=big)
    results = await LocalAgent(MaildirStore(small_mail_root, HOSTNAME), spool).deliver(
        message, message.envelope.recipients
    )
    assert results == [TempFail(r, replies.INSUFFICIENT_STORAGE) for r in message.envelope.recipients]
    for user in ("alice", "bob"):
        maildir = small_mail_root / "example.com" / user
        assert os.listdir(maildir / "new") == [] and os.listdir(maildir / "tmp") == []


async def test_read_only_mail_disk_is_a_temporary_failure(spool: FileSpool, small_mail_root: Path) -> None:
    ensure_maildir(small_mail_root, "alice@example.com")
    subprocess.run(["mount", "-o", "remount,ro", str(small_mail_root)], check=True)
    message = await queue(spool, local("alice@example.com"))
    results = await LocalAgent(MaildirStore(small_mail_root, HOSTNAME), spool).deliver(
        message, message.envelope.recipients
    )
    assert results == [TempFail(message.envelope.recipients[0], replies.INSUFFICIENT_STORAGE)]


def test_new_is_made_last_so_a_reader_that_sees_it_sees_a_whole_maildir(
    mail_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    mkdir = Path.mkdir

    def recording(self: Path, *args: object, **kwargs: object) -> None:
        mkdir(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self.name)

    monkeypatch.setattr(Path, "mkdir", recording)
    ensure_maildir(mail_root, "reader@example.test")
    assert made[-3:] == ["tmp", "cur", "new"]
