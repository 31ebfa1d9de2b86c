"""Map a mail address to its Maildir directory without letting the address choose the path.

Untrusted input seen here: recipient addresses from SMTP clients (``RCPT TO``), checked by the
SMTP grammar but still able to hold ``/``, ``..``, quotes, spaces, ``%`` and any Unicode letter
(RFC 5321 §4.1.2 quoted strings, RFC 6531 UTF-8 mailboxes). None of that may reach the file
system as a path separator, a ``.``/``..`` name, a hidden file, or a byte the file system
mangles: the result is always ``mail_root/<domain>/<local>``, two plain names inside the root.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from postoffice.addresses import fold, split

# Characters of RFC 5322 ``atext`` (and the dot of dot-atom) that are harmless in a file name;
# everything else, `%` included, is percent-encoded so the mapping stays one-to-one.
_KEEP_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&'*+-=?^_`{|}~.")
# Linux NAME_MAX: a longer component fails with ENAMETOOLONG at delivery time; refuse it here,
# where the error says why.
NAME_MAX = 255


def mailbox_location(mail_root: Path, address: str) -> Path:
    """Where :func:`mailbox_path` puts ``address``'s mailbox, from the names alone: no file
    system call, and so no check for symlinks. ValueError if the address names no mailbox.

    For deciding early where a message will go; whoever writes there calls
    :func:`mailbox_path` first, as close to the write as it can.
    """
    domain_name, local_name = _names(address)
    if not (_plain(domain_name) and _plain(local_name)):
        return mailbox_path(mail_root, address)
    return _joined(mail_root, domain_name, local_name)


def mailbox_path(mail_root: Path, address: str) -> Path:
    """``mail_root/<domain>/<encoded local part>`` for ``address``; ValueError if it has none.

    ``User@Example.COM`` and ``user@example.com`` share a mailbox: the directory names are the
    address's canonical form (:func:`postoffice.addresses.canonical`: lower case, NFC), so a
    sender's capitalisation never splits one user's mail.
    """
    domain_name, local_name = _names(address)
    path = _joined(mail_root, domain_name, local_name)
    # Both names are plain components by construction; this guard keeps it so if that ever
    # changes, and refuses a symlink (placed by someone else) that leads out of the root. The
    # symlinks are looked for on every call, never cached: one can appear at any time.
    if _plain(domain_name) and _plain(local_name):
        # Formatted once, and kept by the Path for whoever opens it next.
        mailbox = os.fspath(path)
        if not _symlink_among(mailbox[: -len(local_name) - 1], mailbox):
            return path  # two plain names, neither a symlink: inside the root by construction
    root = mail_root.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise ValueError(f"mailbox for {address!r} is outside the mail root")
    return path


# The mapping depends on the address alone, and a server sees the same few recipients again and
# again (each RCPT, then delivery); bounded, so a client sending many addresses cannot grow it.
@functools.lru_cache(maxsize=1024)
def _names(address: str) -> tuple[str, str]:
    """The directory names ``(<domain>, <encoded local part>)`` for ``address``: its
    canonical form (:mod:`postoffice.addresses`), encoded."""
    local, domain = split(address)
    return _domain_name(fold(domain)), _local_name(fold(local))


@functools.lru_cache(maxsize=1024)
def _joined(mail_root: Path, domain_name: str, local_name: str) -> Path:
    """``mail_root/<domain>/<local>``: made once per mailbox (a Path costs microseconds to join
    and to format), then the same immutable object for every message to it."""
    return mail_root.joinpath(domain_name, local_name)


def _plain(name: str) -> bool:
    return "/" not in name and name not in (".", "..")


def _symlink_among(domain_dir: str, mailbox: str) -> bool:
    """Whether ``<domain>`` or ``<domain>/<local>`` under the root is a symlink (two lstats,
    where resolving the whole path would stat every component of the root too)."""
    for candidate in (domain_dir, mailbox):
        try:
            if stat.S_ISLNK(os.lstat(candidate).st_mode):
                return True
        except FileNotFoundError:
            return False  # nothing there yet, so nothing below it either
        except OSError:
            return True  # cannot tell: take the careful path
    return False


def _local_name(local: str) -> str:
    """The directory name of a canonical local part."""
    out = []
    for char in local:
        if char in _KEEP_ASCII or (not char.isascii() and char.isalnum()):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    # A leading dot would make "." and ".." and hidden names, and Dovecot's Maildir++ keeps
    # its folders as ".Name" directories inside a mailbox; "%2E" is none of those.
    if out[0] == ".":
        out[0] = "%2E"
    return _bounded("".join(out), "local part")


def _domain_name(name: str) -> str:
    """The directory name of a canonical domain."""
    if name.startswith("["):
        _check_address_literal(name)
    else:
        _check_domain(name)
    return _bounded(name, "domain")


def _check_domain(name: str) -> None:
    # RFC 5321 §4.1.2 Domain: dot-separated labels of letters, digits and hyphens; RFC 6531
    # §3.3 allows U-labels, so any Unicode letter or digit. No empty label: that refuses a
    # leading dot (".", "..", hidden names) and "a..b".
    for label in name.split("."):
        if not label:
            raise ValueError(f"empty label in domain {name!r}")
        for char in label:
            if not (char == "-" or char.isalnum()):
                raise ValueError(f"character {char!r} not allowed in domain {name!r}")


def _check_address_literal(name: str) -> None:
    # RFC 5321 §4.1.3 address-literal: "[" then dcontent (printable ASCII except "[", "\" and
    # "]") then "]", e.g. [192.0.2.1] or [ipv6:2001:db8::1]. "/" is refused too: a path
    # separator has no place in a directory name.
    inner = name[1:-1]
    if not name.endswith("]") or not inner:
        raise ValueError(f"malformed address literal {name!r}")
    for char in inner:
        if not ("!" <= char <= "~") or char in "[]\\/":
            raise ValueError(f"character {char!r} not allowed in address literal {name!r}")


def _bounded(name: str, what: str) -> str:
    if len(os.fsencode(name)) > NAME_MAX:
        raise ValueError(f"{what} is too long for a directory name")
    return name


# Every delivery the index takes is named back into its address; the same few mailboxes come
# again and again. Bounded, like _names; a ValueError is not kept (it is raised again).
@functools.lru_cache(maxsize=1024)
def mailbox_address(domain_name: str, local_name: str) -> str:
    """The address whose mailbox is ``<domain_name>/<local_name>``: the inverse of the encoding.

    For directories this module made, ``mailbox_path(root, mailbox_address(d, l))`` is
    ``root/d/l``; ValueError if the names are not ones :func:`mailbox_path` could have made.
    """
    raw = bytearray()
    index = 0
    while index < len(local_name):
        char = local_name[index]
        if char == "%":
            hex_digits = local_name[index + 1 : index + 3]
            if len(hex_digits) != 2 or not all(c in "0123456789ABCDEF" for c in hex_digits):
                raise ValueError(f"not an encoded local part: {local_name!r}")
            raw.append(int(hex_digits, 16))
            index += 3
        else:
            raw.extend(char.encode("utf-8"))
            index += 1
    try:
        local = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"not an encoded local part: {local_name!r}") from None
    address = f"{local}@{domain_name}"
    if not local or not domain_name:
        raise ValueError(f"not a mailbox directory: {domain_name}/{local_name}")
    # Only the names _names makes: the canonical form of the address, encoded the one way.
    if _names(address) != (domain_name, local_name):
        raise ValueError(f"not a mailbox directory: {domain_name}/{local_name}")
    return address
