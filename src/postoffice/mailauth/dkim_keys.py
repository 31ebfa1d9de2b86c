"""DKIM signing keys: made, stored and listed under ``<data-dir>/dkim/DOMAIN/SELECTOR.key``
(or, for a cluster, in its database: :class:`KeyStore` is the seam).

Untrusted input seen here: the domain and selector an operator types (they become a directory
and a file name, so both are checked to be DNS names: no "/", no "..", nothing but letters,
digits, hyphens and dots), and the key files in the directory, read back as PEM.

Which keys sign: every key in the directory, unless a file ``SELECTOR.retired`` stands beside
it. Several selectors for one domain give several signatures (rotation: the new key signs
beside the old one while its DNS record spreads; then the old one is retired); an RSA and an
Ed25519 key give RFC 8463 §3's dual signing, which verifiers that know only RSA still accept.
A signature whose key is not (yet) in DNS is harmless: RFC 6376 §6.1 "a signature that fails
verification ... MUST be treated the same as no signature".

Keys are RSA 2048 by default (RFC 8301 §3.2: "Signers MUST use RSA keys of at least 1024 bits
for all keys. Signers SHOULD use RSA keys of at least 2048 bits.") or Ed25519 (RFC 8463).
Each is written 0600 through a temporary file, flushed, then linked into place, so a crash
leaves either the whole key or none, and an existing key is never overwritten.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postoffice.durable import commit_file, fsync_directory
from postoffice.errors import DkimError

KEY_DIRECTORY = "dkim"
KEY_SUFFIX = ".key"
RETIRED_SUFFIX = ".retired"
ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048  # RFC 8301 §3.2 "SHOULD use RSA keys of at least 2048 bits"
# A TXT record is a sequence of strings of at most 255 octets each (RFC 1035 §3.3.14);
# RFC 6376 §3.6.2.2: the verifier joins them again.
TXT_STRING_LIMIT = 255

# RFC 1035 §2.3.1 labels (letters, digits, hyphens inside); selectors are sub-domains too
# (RFC 6376 §3.1: selector = sub-domain *( "." sub-domain )).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One key of the directory; ``signing`` is False once it is retired."""

    domain: str
    selector: str
    path: Path | None  # None: kept in a cluster's database
    signing: bool
    private_key: PrivateKey = field(repr=False, compare=False)

    @property
    def algorithm(self) -> str:
        """The k= of its record, "rsa" or "ed25519" (RFC 6376 §3.6.1, RFC 8463 §4.2)."""
        return "rsa" if isinstance(self.private_key, rsa.RSAPrivateKey) else "ed25519"

    @property
    def bits(self) -> int:
        return self.private_key.key_size if isinstance(self.private_key, rsa.RSAPrivateKey) else 256

    @property
    def location(self) -> str:
        """Where the key is kept, for a person: its file, or the database."""
        return str(self.path) if self.path is not None else "(in the database)"

    @property
    def record_name(self) -> str:
        """Where verifiers look for the public key (RFC 6376 §3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"

    def record(self) -> str:
        """The TXT record's text: ``v=DKIM1; k=...; p=...`` (RFC 6376 §3.6.1)."""
        return f"v=DKIM1; k={self.algorithm}; p={public_key_base64(self.private_key)}"

    def zone_line(self) -> str:
        """The record as a zone file line, ready to paste, the text in 255-octet strings."""
        strings = " ".join(f'"{piece}"' for piece in txt_strings(self.record()))
        return f"{self.record_name}. IN TXT {strings}"


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Every key in the directory, and a line for each file that could not be read."""

    keys: tuple[DkimKey, ...]
    problems: tuple[str, ...] = ()

    def signing(self, domain: str) -> list[DkimKey]:
        """The keys that sign mail from ``domain`` (its d=), in selector order."""
        wanted = domain.lower().rstrip(".")
        return [key for key in self.keys if key.domain == wanted and key.signing]


def public_key_base64(private_key: PrivateKey) -> str:
    """p=: for RSA the DER SubjectPublicKeyInfo, as OpenDKIM and dkimpy publish and read it;
    for Ed25519 the 32 raw octets (RFC 8463 §4.2)."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        data = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(data).decode("ascii")


def txt_strings(text: str) -> list[str]:
    """``text`` in pieces of at most 255 octets, one TXT character-string each."""
    return [text[start : start + TXT_STRING_LIMIT] for start in range(0, len(text), TXT_STRING_LIMIT)]


def check_domain(text: str) -> str:
    """The domain in lower-case A-labels, or DkimError naming the problem."""
    return _dns_name(text, "domain")


def check_selector(text: str) -> str:
    return _dns_name(text, "selector")


def _dns_name(text: str, what: str) -> str:
    name = text.strip().rstrip(".")
    try:
        name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise DkimError(f"{text!r} is not a valid {what}: not a DNS name") from None
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise DkimError(
            f"{text!r} is not a valid {what}: use letters, digits and hyphens, in dot-separated labels"
        )
    return name


def default_selector(algorithm: str, now: float | None = None) -> str:
    """The month the key was made (``202507``), with ``-ed25519`` for an Ed25519 key so that a
    domain's pair made together gets two names."""
    month = time.strftime("%Y%m", time.gmtime(time.time() if now is None else now))
    return month if algorithm == "rsa" else f"{month}-{algorithm}"


def generate(
    target: Path | KeyStore,
    domain: str,
    selector: str | None = None,
    algorithm: str = "rsa",
    *,
    now: float | None = None,
) -> DkimKey:
    """Make a key for ``domain`` and store it (in ``<target>/dkim`` for a data directory); the
    caller prints ``zone_line()`` for the DNS."""
    if algorithm not in ALGORITHMS:
        raise DkimError(f"{algorithm!r} is not a DKIM key algorithm: use {' or '.join(ALGORITHMS)}")
    domain = check_domain(domain)
    selector = check_selector(selector if selector is not None else default_selector(algorithm, now))
    if len(f"{selector}._domainkey.{domain}") > 253:
        raise DkimError(f"{selector}._domainkey.{domain} is longer than a DNS name may be (253)")
    store = KeyDirectory(target) if isinstance(target, Path) else target
    private_key: PrivateKey
    if algorithm == "rsa":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        private_key = ed25519.Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = store.add(domain, selector, pem)
    return DkimKey(domain, selector, path, True, private_key)


class KeyStore(Protocol):
    """Where the keys are kept: ``<data-dir>/dkim`` (:class:`KeyDirectory`), or a cluster's
    database (:mod:`postoffice.pgstore.dkim_keys`), so that every node signs with the same keys.
    ``stamp`` is cheap and changes whenever a key is added or retired."""

    where: str

    def stamp(self) -> Hashable: ...

    def ring(self) -> KeyRing: ...

    def add(self, domain: str, selector: str, pem: bytes) -> Path | None:
        """Keep a new key (DkimError if the selector is taken); its file, if it has one."""
        ...

    def retire(self, domain: str, selector: str) -> str:
        """Stop signing with a key; a line saying where that was recorded."""
        ...


def copy_keys(source: KeyStore, target: KeyStore) -> tuple[list[DkimKey], list[str]]:
    """Copy every key of ``source`` that ``target`` lacks (same domain and selector), retired
    ones retired: moving a server into a cluster keeps the keys its DNS records publish. The
    keys copied, and a line for each one skipped (already there, or unreadable)."""
    have = {(key.domain, key.selector) for key in target.ring().keys}
    ring = source.ring()
    copied: list[DkimKey] = []
    skipped = list(ring.problems)
    for key in ring.keys:
        if (key.domain, key.selector) in have:
            skipped.append(f"{key.record_name}: {target.where} has it already")
            continue
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        target.add(key.domain, key.selector, pem)
        if not key.signing:
            target.retire(key.domain, key.selector)
        copied.append(key)
    return copied, skipped


class KeyDirectory:
    """The keys of one machine: ``<data-dir>/dkim/DOMAIN/SELECTOR.key``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.root = data_dir / KEY_DIRECTORY
        self.where = str(self.root)

    def stamp(self) -> Hashable:
        """The mtimes of dkim/ and of each domain directory in it (a key file made, removed or
        retired changes its directory's)."""
        try:
            entries = [("", os.stat(self.root).st_mtime_ns)]
            with os.scandir(self.root) as found:
                for entry in found:
                    if entry.is_dir(follow_symlinks=False):
                        entries.append((entry.name, entry.stat().st_mtime_ns))
        except OSError:
            return ()
        return tuple(sorted(entries))

    def ring(self) -> KeyRing:
        return list_keys(self.data_dir)

    def add(self, domain: str, selector: str, pem: bytes) -> Path:
        directory = self.root / domain
        path = directory / f"{selector}{KEY_SUFFIX}"
        if path.exists():
            raise DkimError(f"{path} already exists: choose another --selector")
        _make_directories(self.data_dir, directory)
        _write_new(path, pem)
        return path

    def retire(self, domain: str, selector: str) -> str:
        return str(retire(self.data_dir, domain, selector))


def _make_directories(data_dir: Path, directory: Path) -> None:
    """``dkim/`` and ``dkim/DOMAIN/``, 0700, each name flushed into its parent."""
    for path in (directory.parent, directory):
        if not path.is_dir():
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_directory(path.parent)


def _write_new(path: Path, data: bytes) -> None:
    """Write ``path`` durably, 0600, failing if it exists (FileExistsError from link(2))."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        commit_file(fd, path.parent, lambda: os.link(temporary, path), undo=path.unlink)
    except FileExistsError:
        raise DkimError(f"{path} already exists: choose another --selector") from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            temporary.unlink()


def retire(data_dir: Path, domain: str, selector: str) -> Path:
    """Stop signing with a key (its file stays, so ``list`` still shows it); the marker's path."""
    key = data_dir / KEY_DIRECTORY / check_domain(domain) / f"{check_selector(selector)}{KEY_SUFFIX}"
    if not key.is_file():
        raise DkimError(f"no key {key}")
    marker = key.with_suffix(RETIRED_SUFFIX)
    if not marker.exists():
        _write_new(marker, b"")
    return marker


def list_keys(data_dir: Path) -> KeyRing:
    """Every key under ``<data-dir>/dkim``, by domain then selector."""
    root = data_dir / KEY_DIRECTORY
    keys: list[DkimKey] = []
    problems: list[str] = []
    if not root.is_dir():
        return KeyRing(())
    for directory in sorted(root.iterdir()):
        if directory.is_dir():
            _read_domain(directory, keys, problems)
    return KeyRing(tuple(keys), tuple(problems))


def _read_domain(directory: Path, keys: list[DkimKey], problems: list[str]) -> None:
    try:
        domain = check_domain(directory.name)
        if domain != directory.name:
            raise DkimError(f"{directory.name!r} is not a domain in lower case")
    except DkimError as exc:
        problems.append(f"{directory}: skipped: {exc}")
        return
    for path in sorted(directory.glob(f"*{KEY_SUFFIX}")):
        selector = path.name.removesuffix(KEY_SUFFIX)
        try:
            if check_selector(selector) != selector:
                raise DkimError(f"{selector!r} is not a selector in lower case")
            private_key = load_private_key(path.read_bytes(), path)
        except (DkimError, OSError) as exc:
            problems.append(f"{path}: skipped: {exc}")
            continue
        signing = not path.with_suffix(RETIRED_SUFFIX).exists()
        keys.append(DkimKey(domain, selector, path, signing, private_key))


def load_private_key(pem: bytes, path: Path | str = "key") -> PrivateKey:
    """An RSA or Ed25519 private key from PEM (PKCS#8 or PKCS#1), or DkimError."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise DkimError(f"{path}: a {type(key).__name__}, not an RSA or Ed25519 key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 1024:
        raise DkimError(f"{path}: RSA keys of {key.key_size} bits are too short (RFC 8301 §3.2)")
    return key
