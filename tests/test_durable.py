"""The write-fsync-rename recipe (durable.py), on real files, a real full disk and a real
read-only one (a 64 KiB tmpfs, which needs root; skipped otherwise)."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import remount_read_only
from postoffice import durable
from postoffice.errors import SpoolError, StorageFullError


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --- write_all --------------------------------------------------------------------------------


def test_write_all_writes_every_byte_and_lets_the_buffer_be_reused(tmp_path: Path) -> None:
    buffer = bytearray(os.urandom(300_000))
    expected = bytes(buffer)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        durable.write_all(fd, buffer)
        buffer.clear()  # no view of it is left alive: a bytearray with one cannot shrink
        durable.write_all(fd, memoryview(b"tail"))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == expected + b"tail"


def test_a_full_disk_stops_write_all_with_a_storage_full_error(tmpfs: Path) -> None:
    fd = os.open(tmpfs / "big", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as raised:
            durable.write_all(fd, b"x" * 200_000)  # the first write takes what fits, the next fails
    finally:
        os.close(fd)
    assert raised.value.errno == errno.ENOSPC and durable.is_storage_full(raised.value)
    error = durable.storage_error(raised.value, "cannot write")
    assert isinstance(error, StorageFullError) and str(error) == f"cannot write: {os.strerror(errno.ENOSPC)}"


def test_read_only_storage_is_storage_full_and_other_errors_are_not(tmpfs: Path, tmp_path: Path) -> None:
    remount_read_only(tmpfs)
    with pytest.raises(OSError) as read_only:
        os.open(tmpfs / "new", os.O_WRONLY | os.O_CREAT, 0o600)
    assert isinstance(durable.storage_error(read_only.value, "x"), StorageFullError)
    with pytest.raises(OSError) as missing:
        os.open(tmp_path / "no" / "such", os.O_RDONLY)
    other = durable.storage_error(missing.value, "cannot open")
    assert type(other) is SpoolError and not durable.is_storage_full(missing.value)


# --- commit_file ------------------------------------------------------------------------------


def test_commit_file_flushes_the_data_then_publishes_then_flushes_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    real_fsync = os.fsync

    def observed_fsync(fd: int) -> None:
        steps.append("fsync directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", observed_fsync)
    source, target = tmp_path / "tmp-name", tmp_path / "real-name"
    fd = os.open(source, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        durable.write_all(fd, b"data")

        def publish() -> None:
            steps.append("rename")
            os.rename(source, target)

        durable.commit_file(fd, tmp_path, publish)
    finally:
        os.close(fd)
    assert steps == ["fsync file", "rename", "fsync directory"]
    assert target.read_bytes() == b"data" and not source.exists()


def test_commit_file_takes_the_name_back_when_the_directory_cannot_be_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def failing_for_directories(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_for_directories)
    source, target = tmp_path / "tmp-name", tmp_path / "real-name"
    fd = os.open(source, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match=os.strerror(errno.EIO)):
            durable.commit_file(
                fd, tmp_path, lambda: os.rename(source, target), undo=lambda: durable.remove_quietly(target)
            )
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == []


# --- remove_quietly ---------------------------------------------------------------------------


def test_remove_quietly_says_whether_it_removed_and_never_raises(
    tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmpfs / "there").write_bytes(b"x")
    assert durable.remove_quietly(tmpfs / "there") is True
    assert durable.remove_quietly(tmpfs / "there") is False  # already gone: nothing said
    assert caplog.text == ""
    (tmpfs / "stuck").write_bytes(b"x")
    remount_read_only(tmpfs)
    with caplog.at_level(logging.WARNING, logger="postoffice.durable"):
        assert durable.remove_quietly(tmpfs / "stuck") is False
    assert f"path={tmpfs / 'stuck'} status=unremovable error={os.strerror(errno.EROFS)}" in caplog.text


# --- replace_file -----------------------------------------------------------------------------


def test_replace_file_gives_exactly_the_mode_whatever_the_umask(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "shared.json"
    status = durable.replace_file(path, b"one", mode=0o640)
    assert path.read_bytes() == b"one" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert (status.st_ino, status.st_size) == (path.stat().st_ino, 3)
    durable.replace_file(path, b"two")
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["shared.json"]


def test_replace_file_replaces_a_temporary_file_a_crashed_writer_left(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    (tmp_path / ".accounts.json.tmp").write_bytes(b"half")
    durable.replace_file(path, b"whole")
    assert path.read_bytes() == b"whole" and os.listdir(tmp_path) == ["accounts.json"]


def test_replace_file_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmpfs: Path) -> None:
    path = tmpfs / "accounts.json"
    durable.replace_file(path, b"old")
    with pytest.raises(OSError) as raised:
        durable.replace_file(path, b"x" * 200_000)
    assert durable.is_storage_full(raised.value)
    assert path.read_bytes() == b"old" and os.listdir(tmpfs) == ["accounts.json"]


def test_replace_file_on_read_only_storage_is_storage_full(tmpfs: Path) -> None:
    path = tmpfs / "key.pem"
    durable.replace_file(path, b"old")
    remount_read_only(tmpfs)
    with pytest.raises(OSError) as raised:
        durable.replace_file(path, b"new")
    assert isinstance(durable.storage_error(raised.value, "cannot write"), StorageFullError)
    assert path.read_bytes() == b"old"
