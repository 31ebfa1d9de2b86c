"""Every file delivered into a Maildir gets ``mail_file_mode`` (0600, or 0660 for a shared group),
and new Maildir directories the matching mode, whatever the umask; directly at the end of DATA
or through the queue.
"""

from __future__ import annotations

import os
import smtplib
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import RunningServer, maildir_messages, wait_until
from postoffice.cli import main
from postoffice.config import DeliverySettings

pytestmark = pytest.mark.timeout(90)


def write(directory: Path, text: str) -> Path:
    path = directory / "postoffice.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, which takes group write away: the modes must be set regardless."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _delivered_modes(running: RunningServer, recipient: str) -> tuple[int, list[int]]:
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.sendmail("sender@example.org", [recipient], "Subject: mode\r\n\r\nbody\r\n")
    wait_until(lambda: len(running.messages(recipient)) == 1, what="delivered")
    maildir = running.data_dir / "mail" / "mx.test" / recipient.split("@")[0]
    (message,) = list((maildir / "new").iterdir())
    directories = [maildir.parent, maildir, maildir / "tmp", maildir / "new", maildir / "cur"]
    return stat.S_IMODE(message.stat().st_mode), [stat.S_IMODE(d.stat().st_mode) for d in directories]


@pytest.mark.parametrize("local_before_reply", [True, False], ids=["direct", "queued"])
def test_mail_files_are_0600_by_default(
    server_factory: Callable[..., RunningServer], umask_022: None, local_before_reply: bool
) -> None:
    running = server_factory(delivery=DeliverySettings(local_before_reply=local_before_reply))
    file_mode, directory_modes = _delivered_modes(running, "kim@mx.test")
    assert file_mode == 0o600
    assert directory_modes == [0o700] * 5
    assert stat.S_IMODE((running.data_dir / "mail").stat().st_mode) == 0o700


@pytest.mark.parametrize("local_before_reply", [True, False], ids=["direct", "queued"])
def test_mail_file_mode_0660_gives_the_group_files_and_directories(
    server_factory: Callable[..., RunningServer], umask_022: None, local_before_reply: bool
) -> None:
    running = server_factory(
        mail_file_mode=0o660, delivery=DeliverySettings(local_before_reply=local_before_reply)
    )
    file_mode, directory_modes = _delivered_modes(running, "kim@mx.test")
    assert file_mode == 0o660
    assert directory_modes == [0o770] * 5
    assert stat.S_IMODE((running.data_dir / "mail").stat().st_mode) == 0o770
    assert maildir_messages(running.data_dir / "mail", "kim@mx.test")[0]["Subject"] == "mode"


def test_user_add_makes_the_mailbox_with_the_directory_mode(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "data"
    path = write(tmp_path, f'data_dir = "{data}"\ndomains = ["example.test"]\nmail_file_mode = "0640"\n')
    secret = tmp_path / "password"
    secret.write_text("correct horse\n")
    assert (
        main(["user", "add", "kim@example.test", "--password-file", str(secret), "--config", str(path)]) == 0
    )
    maildir = data / "mail" / "example.test" / "kim"
    assert [stat.S_IMODE(d.stat().st_mode) for d in (maildir, maildir / "new")] == [0o750, 0o750]
