"""Giving up root: the server becomes the configured ``user`` before it opens the data directory.

Untrusted input seen here: none. The user and group names are the operator's, the user
database (NSS: /etc/passwd, /etc/group) is trusted, and entries of the data directory are only
looked at (their owner and whether the user may write them).

Ports below 1024 (25, 465, 587) need root or CAP_NET_BIND_SERVICE, but a server that goes on as
root while it parses what strangers send turns any bug into a root compromise. Started as root
with ``user`` set, ``postoffice serve`` therefore binds every listener first
(:mod:`postoffice.runtime.prebound`) and then drops root for good, as Postfix's master does for its
daemons (set_ugid) and in the only order that works, since setgid is refused once the user id
is gone: the supplementary groups (initgroups(3), the user's memberships plus the group, as
systemd's ``User=`` sets them, so membership of ssl-cert still opens the TLS key), then the
group, then the user. It then checks that root cannot be taken back (SEI CERT POS37-C, "Ensure
that privilege relinquishment is successful") before it opens the data directory, so every
file it makes there is that user's.

The administration commands (``user add``, ``queue delete``, ...) started as root become the
user in the same way, so what they write (accounts.json, Maildirs, queue files) stays readable
and writable for the server.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from postoffice.config import Config
from postoffice.errors import ConfigError, PostofficeError

log = logging.getLogger("postoffice")


class PrivilegeError(PostofficeError):
    """Root could not be given up, or could be taken back: the server must not run."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Whom the server becomes: a user name, its uid and the gid it runs with."""

    name: str
    uid: int
    gid: int


def _where(config: Config) -> str | None:
    return str(config.source) if config.source is not None else None


def target(config: Config) -> Identity | None:
    """Whom this process must become; None when ``user`` is unset or it is that user already.

    Raises ConfigError when the user or group is unknown, or when this process is neither root
    nor that user (it could not become it).
    """
    if config.user is None:
        return None
    try:
        entry = pwd.getpwnam(config.user)
    except KeyError:
        raise ConfigError(
            f"no user {config.user!r} on this machine", key="user", path=_where(config)
        ) from None
    gid = entry.pw_gid
    if config.group is not None:
        try:
            gid = grp.getgrnam(config.group).gr_gid
        except KeyError:
            raise ConfigError(
                f"no group {config.group!r} on this machine", key="group", path=_where(config)
            ) from None
    identity = Identity(config.user, entry.pw_uid, gid)
    euid = os.geteuid()
    if euid == 0:
        return identity
    if euid == identity.uid:
        return None  # started as that user (systemd User=, with CAP_NET_BIND_SERVICE)
    raise ConfigError(
        f"this process runs as {_user_name(euid)!r}, not as root, so it cannot become {config.user!r};"
        " start it as root or as that user",
        key="user",
        path=_where(config),
    )


def warn_if_root(config: Config) -> None:
    """One warning when root serves a public address with no ``user`` to become."""
    if os.geteuid() != 0 or config.user is not None:
        return
    public = [
        listener for listener in (*config.listeners, *config.http_listeners) if not listener.is_loopback
    ]
    if public:
        log.warning(
            "event=running-as-root listener=%r: whoever breaks in through it is root;"
            " set user in the configuration so the server gives up root once it listens",
            str(public[0]),
        )


def data_dir_mode(mail_file_mode: int) -> int:
    """A new data directory's mode: 0o700, or 0o710 when mail files grant their group access,
    so that group (Dovecot's) can pass through to ``mail/`` without listing the rest."""
    return 0o710 if mail_file_mode & 0o070 else 0o700


def become(identity: Identity, config: Config) -> None:
    """As root: give up root for good, then check that the user may write the data directory
    (made by :func:`make_data_dir`). Raises ConfigError (one line) or PrivilegeError."""
    libraries = _python_libraries()
    drop(identity)
    _check_python(identity, libraries)
    _check_data_dir(config, identity)


def become_configured_user(config: Config) -> None:
    """For the administration commands: become ``user`` when started as root."""
    identity = target(config)
    if identity is not None:
        become(identity, config)


def make_data_dir(config: Config, *, parents: bool) -> None:
    """Create the data directory, and its missing parents only when ``parents``
    (FileNotFoundError otherwise). Started as root with ``user`` set, a new data directory is
    made that user's; the directories above it (/var/lib) stay root's."""
    identity = target(config)
    path = config.data_dir
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o777 if identity is None else data_dir_mode(config.mail_file_mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return  # an existing one is checked once we are the user, and never changed as root
    if identity is None:
        return
    # Through a descriptor opened without following links: the name cannot be swapped for a
    # link to something else between the mkdir and the chown.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, identity.uid, identity.gid)
        os.fchmod(fd, mode)  # mkdir's mode went through the umask
    finally:
        os.close(fd)


def drop(identity: Identity) -> None:
    """Become ``identity`` for good (groups, group, user), then check that root cannot be
    taken back; PrivilegeError if it could, or if the user is in root's group."""
    uid, gid = identity.uid, identity.gid
    os.initgroups(identity.name, gid)
    if 0 in os.getgroups():
        raise PrivilegeError(
            f"user {identity.name!r} is a member of root's group (gid 0); it would keep root's files"
        )
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PrivilegeError(f"could not become user {identity.name!r} (uid {uid}, gid {gid})")
    for take_back in (os.setuid, os.setgid):
        try:
            take_back(0)
        except PermissionError:
            continue
        raise PrivilegeError(f"root could be taken back after becoming {identity.name!r}; stopping")


def _python_libraries() -> list[str]:
    """Where modules are loaded from: the standard library, site-packages and this package."""
    places = (os.path.dirname(os.__file__), sysconfig.get_path("purelib"), str(Path(__file__).parent))
    return [place for place in dict.fromkeys(places) if os.path.isdir(place)]


def _check_python(identity: Identity, libraries: list[str]) -> None:
    """Python loads modules when they are first needed (uvicorn's protocols at start, a codec
    for the first message in that charset): a library the user cannot read would make the
    server fail later, at some random message, instead of now."""
    for place in libraries:
        if not os.access(place, os.R_OK | os.X_OK):
            raise PrivilegeError(
                f"user {identity.name!r} cannot read {place}, where Python loads modules from;"
                " install Python and postoffice where that user can read them"
            )


def _check_data_dir(config: Config, identity: Identity) -> None:
    """The data directory and what is directly in it must be the user's to write: one line
    naming the first that is not (a Maildir deeper down is reported when mail comes for it)."""
    path = config.data_dir
    if not path.exists():
        return  # a command that only reads, on a data directory no server has made yet
    try:
        _check_writable(path, identity, path)
        with os.scandir(path) as found:
            entries = sorted(Path(entry.path) for entry in found)
        for entry in entries:
            _check_writable(entry, identity, path)
    except OSError as exc:
        raise ConfigError(
            f"{exc.filename}: {exc.strerror} for user {identity.name!r}; it and every directory"
            " above it must let that user in",
            key="data_dir",
            path=_where(config),
        ) from None
    except _NotWritable as exc:
        raise ConfigError(str(exc), key="data_dir", path=_where(config)) from None


class _NotWritable(Exception):
    pass


def _check_writable(entry: Path, identity: Identity, data_dir: Path) -> None:
    try:
        status = entry.stat()
    except FileNotFoundError:
        if entry == data_dir:
            raise
        return  # removed meanwhile (a -journal file of SQLite, say)
    wanted = os.R_OK | os.W_OK | (os.X_OK if stat.S_ISDIR(status.st_mode) else 0)
    if not os.access(entry, wanted):
        raise _NotWritable(
            f"{entry} is not writable by user {identity.name!r} (owner {_user_name(status.st_uid)},"
            f" mode {stat.S_IMODE(status.st_mode):04o}); chown -R {identity.name}: {data_dir}"
        )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
