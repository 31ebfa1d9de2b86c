"""The SRS secrets: a file of them, one a line, made with a random one on first use.

Untrusted input seen here: the secret file's text (an operator's, or ours); each non-blank line
that does not start with ``#`` is a secret, the first signs and every one verifies, so a secret
is replaced by putting the new one on top and removing the old one once its addresses have
expired (21 days). postsrsd reads its secrets the same way.

The file is read again when it changes (a stat per use, its size and mtime), so a rotation needs
no restart. When it does not exist and ``create`` allows, a secret of 32 random octets is
written (mode 0600: whoever knows it can make our server send mail anywhere as a bounce).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import threading
from pathlib import Path

from postoffice.durable import fsync_directory, write_all
from postoffice.errors import PostofficeError

SECRET_OCTETS = 32


class SrsSecretError(PostofficeError):
    """The secret file cannot be read or made, or holds no secret."""


class SrsSecrets:
    """The secrets of ``path``, cached until the file changes."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._create = create
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._secrets: tuple[bytes, ...] = ()

    def current(self) -> tuple[bytes, ...]:
        """The secrets, the signing one first. Raises SrsSecretError."""
        with self._lock:
            try:
                status = os.stat(self.path)
            except FileNotFoundError:
                if not self._create:
                    raise SrsSecretError(f"{self.path}: no such file") from None
                status = self._make()
            except OSError as exc:
                raise SrsSecretError(f"{self.path}: {exc.strerror}") from None
            stamp = (status.st_ino, status.st_size, status.st_mtime_ns)
            if stamp != self._stamp:
                self._secrets = self._read()
                self._stamp = stamp
            return self._secrets

    def _read(self) -> tuple[bytes, ...]:
        try:
            text = self.path.read_bytes()
        except OSError as exc:
            raise SrsSecretError(f"{self.path}: {exc.strerror}") from None
        found = tuple(
            line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith(b"#")
        )
        if not found:
            raise SrsSecretError(f"{self.path}: holds no secret")
        return found

    def _make(self) -> os.stat_result:
        """A new file with one random secret, whole or not at all (written aside, then linked
        into place); when another process made it first, theirs is kept."""
        secret = base64.b64encode(secrets.token_bytes(SECRET_OCTETS)) + b"\n"
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                write_all(fd, secret)
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(temporary, self.path)
            fsync_directory(self.path.parent)
            return os.stat(self.path)
        except OSError as exc:
            raise SrsSecretError(f"{self.path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
