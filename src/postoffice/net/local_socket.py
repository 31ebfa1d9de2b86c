"""The server's local socket: ``<data-dir>/run/submit.sock``, where ``postoffice sendmail``
hands over mail as the local system, without AUTH.

Untrusted input seen here: the path's directory entries (a stale socket left by a crash, or
something else in its place) and the connecting process's credentials, which the kernel gives
(SO_PEERCRED, unix(7)), not the client.

Who may connect is decided by file permissions alone, since every session on this socket is
trusted as local submission (signed, never verified, may relay and send as anyone): the
``run`` directory is 0700 and the socket 0600, both owned by the server's user, so only that
user and root can open it (connect(2) needs write permission on the socket, and search
permission on every directory above it). Anyone else's ``sendmail`` falls back to the MX
port, where its mail is checked like any client's.

A Unix socket's path is limited to 107 octets (``sun_path``); a longer one (a deep data
directory) is reached through ``/proc/self/fd`` and a descriptor of its directory, on Linux.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from postoffice.smtpd import LocalPeer

RUN_DIRECTORY_MODE = 0o700
SOCKET_MODE = 0o600
# sun_path is 108 octets on Linux, the terminating NUL included (unix(7)).
_SUN_PATH_MAX = 107
# struct ucred: pid, uid, gid, each a C int (unix(7), SO_PEERCRED).
_UCRED = struct.Struct("3i")


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits a Unix socket address: itself, or, when too long, the same
    file through ``/proc/self/fd/N/`` and a descriptor of its directory (open meanwhile)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


def bind_local_socket(path: Path) -> socket.socket:
    """A Unix stream socket bound (not yet listening) at ``path``, mode 0600 in a 0700
    directory. A socket already there is a previous run's (the data directory's lock says no
    other server uses it) and is replaced; anything else there is an error. OSError names the path."""
    directory = path.parent
    directory.mkdir(mode=RUN_DIRECTORY_MODE, parents=True, exist_ok=True)
    os.chmod(directory, RUN_DIRECTORY_MODE)  # made by an older run or a person: ours again
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(status.st_mode):
            raise FileExistsError(0, "not a socket, and in the way of the local socket", str(path))
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with reachable(path) as name:
            sock.bind(name)
        os.chmod(path, SOCKET_MODE)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    return sock


def remove_local_socket(path: Path) -> None:
    """Take the socket's name away at shutdown, so ``sendmail`` goes to the MX port meanwhile."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()


class _Sockopts(Protocol):
    """A connection's socket as its transport shows it (asyncio's TransportSocket, uvloop's
    PseudoSocket): getsockopt is what is needed of it."""

    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


def peer_of(sock: _Sockopts | None) -> LocalPeer:
    """Who is at the other end of a connection on the local socket (SO_PEERCRED); unknown
    fields when the kernel does not say (not Linux)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return LocalPeer(None, None)
    try:
        pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))
    except (OSError, struct.error):
        return LocalPeer(None, None)
    return LocalPeer(uid, pid)
