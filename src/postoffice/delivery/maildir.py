"""Local delivery into Maildirs: one file per message, made visible only when complete.

Untrusted input seen here: recipient and sender addresses from SMTP clients (the recipient
becomes a directory only through :func:`~postoffice.delivery.mailbox_names.mailbox_path`; both
go into header lines with control characters replaced) and the message bytes, copied verbatim
and never parsed.

The delivery recipe is the Maildir specification's (cr.yp.to/proto/maildir.html): write
``tmp/NAME``, fsync it, link it to ``new/NAME``, then (as qmail-local does not, but a crash-safe
queue needs) fsync ``new/`` before the spool forgets the message. A reader never sees a partial
file in ``new/``: the name appears there only after the data is on disk.

Message files keep the bytes as the spool holds them, CRLF line endings included, like the
added header lines; Dovecot, mutt and Python's :mod:`mailbox` read both line-ending styles.

Files get ``mail_file_mode`` (0600 by default; 0660 lets a group such as Dovecot's read and
flag them) and new directories the matching mode (0700; 0770 for 0660), whatever the umask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from postoffice.config import maildir_directory_mode
from postoffice.delivery.agent import Delivered, DeliveryResult, PermFail, TempFail
from postoffice.delivery.mailbox_names import mailbox_path
from postoffice.delivery.store import MailboxStore
from postoffice.durable import fsync_directory, is_storage_full, remove_quietly, write_all
from postoffice.errors import DeliveryError, SpoolError
from postoffice.smtp import replies
from postoffice.spool.base import Spool
from postoffice.spool.durability import IoPool
from postoffice.spool.envelope import QueuedMessage, Recipient

log = logging.getLogger("postoffice.delivery")

# Copy block: the message streams from the spool file and is never held whole in memory.
BLOCK_SIZE = 64 * 1024
# Keys become part of a file name; ours are "<queue ID>_<recipient index>".
_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# File systems without hard links (some FUSE and network mounts) refuse link(2) with these;
# rename(2) is then the way into new/, as Dovecot does by default.
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV})

# copy_file_range(2) across file systems fails with EXDEV on kernels before 5.3, and some file
# systems do not support it at all: then the copy goes through user space.
_NO_COPY_RANGE_ERRNOS = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})
# Files in a Maildir's tmp/ older than this are a crashed delivery's (the specification's 36 hours).
STALE_TMP_AGE = 36 * 3600
# Maildirs remembered as existing; past this many, forget them all (one entry per mailbox).
_MADE_MAILDIRS = 10_000

DeliveryHook = Callable[[str, Path], None]


def ensure_maildir(mail_root: Path, address: str, *, mode: int = 0o700) -> Path:
    """Create the Maildir for ``address`` (``tmp``, ``new``, ``cur``; directories of ``mode``)
    and return it.

    Raises ValueError when the address names no valid mailbox.
    """
    path = mailbox_path(mail_root, address)
    _make_maildir(mail_root, path, mode)
    return path


def make_mail_root(mail_root: Path, mode: int) -> None:
    """The directory of every Maildir (with the directories above it, as ``mkdir -p``)."""
    mail_root.parent.mkdir(parents=True, exist_ok=True)
    _make_directory(mail_root, mode)


def _make_directory(directory: Path, mode: int) -> bool:
    """mkdir with exactly ``mode``; False when it existed (left as it is)."""
    try:
        directory.mkdir(mode=mode)
    except FileExistsError:
        return False
    if mode & 0o077:
        os.chmod(directory, mode)  # the umask (022, 027) takes group bits away
    return True


def _make_maildir(mail_root: Path, path: Path, mode: int) -> None:
    if not mail_root.is_dir():
        make_mail_root(mail_root, mode)
    # new/ last: a reader that finds new/ finds a whole Maildir (Python's mailbox module, for
    # one, wants cur/ as well).
    for directory in (path.parent, path, path / "tmp", path / "cur", path / "new"):
        if _make_directory(directory, mode):
            # A new directory's name is durable only once its parent is synced; without this a
            # crash could take new/ and the message in it away after the spool has let go.
            fsync_directory(directory.parent)


def maildir_name(key: str, received_at: float, hostname: str, size: int) -> str:
    """``<seconds>.<key>.<host>,S=<size>``: a unique name that is the same on every attempt.

    The specification's "time.unique.host", with the queue ID and recipient index as the
    unique part; the host has "/" and ":" written as \\057 and \\072 as the specification asks
    (and "," as \\054, so Dovecot's ",S=" file size, which saves it a stat, parses cleanly).
    """
    if _KEY_RE.fullmatch(key) is None:
        raise DeliveryError(f"delivery key not usable in a file name: {key!r}")
    host = hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")
    return f"{int(received_at)}.{key}.{host},S={size}"


class MaildirStore:
    """:class:`~postoffice.delivery.store.MailboxStore` writing ``mail_root/<domain>/<local>/``."""

    def __init__(self, mail_root: Path, hostname: str, *, file_mode: int = 0o600) -> None:
        """``file_mode``: of every file delivered (a checked ``mail_file_mode``)."""
        self.mail_root = mail_root
        self.hostname = hostname
        self.file_mode = file_mode
        self.directory_mode = maildir_directory_mode(file_mode)
        # Maildirs known to exist, so that a delivery does not try five mkdirs each time.
        self._made: set[Path] = set()

    def prepare(self, maildir: Path, *, again: bool = False) -> None:
        """Make ``maildir`` (a checked :func:`mailbox_path`) unless this store made it already;
        ``again`` when it has gone since (a person removed it)."""
        if again:
            self._made.discard(maildir)
        if maildir in self._made:
            return
        _make_maildir(self.mail_root, maildir, self.directory_mode)
        _remove_stale(maildir / "tmp", time.time() - STALE_TMP_AGE)
        if len(self._made) >= _MADE_MAILDIRS:
            self._made.clear()
        self._made.add(maildir)

    def deliver(
        self,
        address: str,
        headers: bytes,
        content: BinaryIO,
        key: str,
        *,
        received_at: float,
        size: int,
        recovering: bool,
        maildir: Path | None = None,
    ) -> Path:
        """See :class:`~postoffice.delivery.store.MailboxStore`; ``maildir``, when given, is
        :func:`~postoffice.delivery.mailbox_names.mailbox_path` of ``address``, already checked."""
        if maildir is None:
            maildir = mailbox_path(self.mail_root, address)
        name = maildir_name(key, received_at, self.hostname, len(headers) + size)
        self.prepare(maildir)
        if recovering:
            earlier = _find_delivered(maildir, name, f"{int(received_at)}.{key}.")
            if earlier is not None:
                # Synced again: the crash may have come between the link and the sync.
                fsync_directory(earlier.parent)
                return earlier
        temporary = maildir / "tmp" / name
        final = maildir / "new" / name
        try:
            _write_synced(temporary, headers, content, size, self.file_mode)
        except FileNotFoundError:
            # The Maildir went away since it was made (a person removed it): make it again.
            self.prepare(maildir, again=True)
            _write_synced(temporary, headers, content, size, self.file_mode)
        try:
            _publish(temporary, final)
        finally:
            remove_quietly(temporary)
        fsync_directory(final.parent)
        return final


def _remove_stale(tmp: Path, before: float) -> None:
    """Remove files in ``tmp/`` last changed before ``before``: what a crash left half-written.

    The Maildir specification (cr.yp.to/proto/maildir.html) has files in ``tmp/`` untouched
    for 36 hours cleaned away; a live delivery takes seconds.
    """
    try:
        with os.scandir(tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < before:
                        os.unlink(entry.path)
    except OSError:
        return  # unreadable: delivery reports the real problem


def _find_delivered(maildir: Path, name: str, unique_prefix: str) -> Path | None:
    """An earlier copy of this delivery: in ``new/``, or moved to ``cur/`` by a reader.

    In ``cur/`` a reader appends ":2,<flags>" (and Dovecot may add ",W=" fields), so the
    match is on "<time>.<unique>." only, which no other delivery shares.
    """
    candidate = maildir / "new" / name
    if candidate.exists():
        return candidate
    with os.scandir(maildir / "cur") as entries:
        for entry in entries:
            if entry.name.startswith(unique_prefix):
                return Path(entry.path)
    return None


def create_mail_file(path: Path | str, flags: int, mode: int) -> int:
    """``os.open(path, flags | O_CREAT, mode)``, the file getting exactly ``mode``."""
    fd = os.open(path, flags | os.O_CREAT, mode)
    if mode & 0o077:
        # The umask (022, 027) takes group bits away; the owner's read and write no umask in
        # use does, so the default 0600 costs no second call.
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _write_synced(path: Path, headers: bytes, content: BinaryIO, size: int, mode: int) -> None:
    # O_TRUNC: a file left in tmp/ by a crashed attempt of this same delivery is rewritten.
    flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = create_mail_file(path, flags, mode)
    try:
        write_all(fd, headers)
        _copy(content, fd, size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(path)
        raise
    os.close(fd)


def _copy(content: BinaryIO, fd: int, size: int) -> None:
    """Copy ``size`` bytes from ``content`` (a spool file, at the message start) to ``fd``.

    In the kernel (copy_file_range(2)) where it can be, so the message never passes through
    Python's memory; block by block otherwise.
    """
    remaining = size
    offset = content.tell()
    copy_file_range = getattr(os, "copy_file_range", None)
    if copy_file_range is not None:
        try:
            while remaining:
                copied: int = copy_file_range(content.fileno(), fd, remaining, offset)
                if copied == 0:
                    raise DeliveryError(f"spool content ends {remaining} bytes early")
                offset += copied
                remaining -= copied
            return
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE_ERRNOS or remaining != size:
                raise
    content.seek(offset)
    while remaining:
        block = content.read(min(BLOCK_SIZE, remaining))
        if not block:
            raise DeliveryError(f"spool content ends {remaining} bytes early")
        write_all(fd, block)
        remaining -= len(block)


def _publish(temporary: Path, final: Path) -> None:
    try:
        os.link(temporary, final)
    except FileExistsError:
        # The name is unique to this delivery, so an earlier attempt of it got this far; its
        # data was synced before the link, so that copy is whole.
        pass
    except OSError as exc:
        if exc.errno not in _NO_LINK_ERRNOS:
            raise
        os.rename(temporary, final)


def _header_text(value: str) -> str:
    # Addresses passed the SMTP grammar, which has no CR or LF; this keeps a header line one
    # line even if that ever changes (RFC 5322 §2.2: header fields are single lines).
    return "".join("?" if ord(char) < 0x20 or ord(char) == 0x7F else char for char in value)


def delivered_to_maildir(recipient: Recipient, path: Path) -> Delivered:
    """The result of a copy stored at ``path`` (``<maildir>/new/<name>``)."""
    return Delivered(recipient, detail=f"delivered to maildir {path.parent.parent}")


def delivery_headers(mail_from: str, address: str) -> bytes:
    """``Return-Path`` (RFC 5321 §4.4, ``<>`` for the null sender) and ``Delivered-To``.

    Delivered-To is Postfix local(8)'s loop-detection header, written as a bare address.
    UTF-8 addresses stay UTF-8 (RFC 6532 §3.2 allows it in header fields).
    """
    return (f"Return-Path: <{_header_text(mail_from)}>\r\nDelivered-To: {_header_text(address)}\r\n").encode()


class MaildirAgent:
    """:class:`~postoffice.delivery.agent.DeliveryAgent` for LOCAL recipients.

    ``on_delivered(address, path)`` is called on the event loop after each copy is stored,
    including a copy found again while recovering (the crash may have come before the call).

    Each delivery runs in a worker thread of ``io`` (the spool's, in the server), beside the
    spool's own commits, so their flushes are grouped by the file system
    (:mod:`postoffice.spool.durability`).
    """

    def __init__(
        self,
        mail_root: Path,
        spool: Spool,
        hostname: str,
        *,
        store: MailboxStore | None = None,
        on_delivered: DeliveryHook | None = None,
        io: IoPool | None = None,
    ) -> None:
        self.mail_root = mail_root
        self._spool = spool
        self._store: MailboxStore = store if store is not None else MaildirStore(mail_root, hostname)
        self._on_delivered = on_delivered
        self._io = io if io is not None else IoPool()

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
    ) -> list[DeliveryResult]:
        results, stored = await self._io.run(
            functools.partial(self._deliver_all, message, recipients, recovering)
        )
        if self._on_delivered is not None:
            for address, path in stored:
                try:
                    self._on_delivered(address, path)
                except Exception:
                    # The copy is safely stored; a failing observer must not make it a retry.
                    log.exception("queue_id=%s to=<%s> status=hook-failed", message.queue_id, address)
        return results

    def _deliver_all(
        self, message: QueuedMessage, recipients: Sequence[Recipient], recovering: bool
    ) -> tuple[list[DeliveryResult], list[tuple[str, Path]]]:
        try:
            content = self._spool.open_content(message.queue_id)
        except SpoolError as exc:
            log.error("queue_id=%s status=deferred error=%r", message.queue_id, str(exc))
            return [TempFail(r, replies.LOCAL_ERROR) for r in recipients], []
        with content:
            return self._deliver_each(message, recipients, recovering, content)

    def _deliver_each(
        self, message: QueuedMessage, recipients: Sequence[Recipient], recovering: bool, content: BinaryIO
    ) -> tuple[list[DeliveryResult], list[tuple[str, Path]]]:
        start = content.tell()
        mailboxes: dict[str, Path | ValueError] = {}  # each address is checked once
        first_index = self._first_index_by_mailbox(message, recipients, mailboxes)
        results: list[DeliveryResult] = []
        stored: list[tuple[str, Path]] = []
        by_mailbox: dict[Path, DeliveryResult] = {}
        for recipient in recipients:
            mailbox = self._mailbox(recipient.address, mailboxes)
            if isinstance(mailbox, ValueError):
                log.warning("queue_id=%s to=<%s> error=%r", message.queue_id, recipient.address, str(mailbox))
                results.append(PermFail(recipient, replies.BAD_DESTINATION_MAILBOX))
                continue
            earlier = by_mailbox.get(mailbox)
            if earlier is not None:
                # One mailbox named twice (say User@ and user@) gets one copy (RFC 5321 §3.7.2
                # wants no duplicates where they can be avoided).
                results.append(dataclasses.replace(earlier, recipient=recipient))
                continue
            # The lowest index naming this mailbox in the whole envelope, so a retry with
            # fewer recipients derives the same file name.
            key = f"{message.queue_id}_{first_index[mailbox]}"
            content.seek(start)
            result = self._deliver_one(message, recipient, mailbox, content, key, recovering, stored)
            by_mailbox[mailbox] = result
            results.append(result)
        return results, stored

    def _mailbox(self, address: str, known: dict[str, Path | ValueError]) -> Path | ValueError:
        mailbox = known.get(address)
        if mailbox is None:
            try:
                mailbox = mailbox_path(self.mail_root, address)
            except ValueError as exc:
                mailbox = exc
            known[address] = mailbox
        return mailbox

    def _first_index_by_mailbox(
        self, message: QueuedMessage, recipients: Sequence[Recipient], known: dict[str, Path | ValueError]
    ) -> dict[Path, int]:
        # Recipients are the envelope's; any others (a caller's mistake) are numbered after
        # them, so they can never take the name of a real delivery.
        first: dict[Path, int] = {}
        for index, recipient in enumerate((*message.envelope.recipients, *recipients)):
            mailbox = self._mailbox(recipient.address, known)
            if not isinstance(mailbox, ValueError):
                first.setdefault(mailbox, index)
        return first

    def _deliver_one(
        self,
        message: QueuedMessage,
        recipient: Recipient,
        mailbox: Path,
        content: BinaryIO,
        key: str,
        recovering: bool,
        stored: list[tuple[str, Path]],
    ) -> DeliveryResult:
        queue_id, address = message.queue_id, recipient.address
        headers = delivery_headers(message.envelope.mail_from, address)
        try:
            if isinstance(self._store, MaildirStore):
                path = self._store.deliver(
                    address,
                    headers,
                    content,
                    key,
                    received_at=message.envelope.received_at,
                    size=message.size,
                    recovering=recovering,
                    maildir=mailbox,
                )
            else:
                path = self._store.deliver(
                    address,
                    headers,
                    content,
                    key,
                    received_at=message.envelope.received_at,
                    size=message.size,
                    recovering=recovering,
                )
        except ValueError as exc:
            log.warning("queue_id=%s to=<%s> error=%r", queue_id, address, str(exc))
            return PermFail(recipient, replies.BAD_DESTINATION_MAILBOX)
        except OSError as exc:
            log.warning("queue_id=%s to=<%s> error=%r path=%s", queue_id, address, exc.strerror, exc.filename)
            full = is_storage_full(exc)
            return TempFail(recipient, replies.INSUFFICIENT_STORAGE if full else replies.LOCAL_ERROR)
        except Exception:
            # A bug or a damaged spool file: retrying later is the only safe answer.
            log.exception("queue_id=%s to=<%s> status=error", queue_id, address)
            return TempFail(recipient, replies.LOCAL_ERROR)
        stored.append((address, path))
        return delivered_to_maildir(recipient, path)
