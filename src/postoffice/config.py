"""Frozen, typed settings for postoffice, loaded from TOML.

Untrusted input seen here: the configuration file and command-line overrides, written by the
operator. A mistake is reported as one :class:`~postoffice.errors.ConfigError` line naming the
file and the key, never as a traceback.

Every limit below names its precedent (RFC section or Postfix default) next to its default.

The TOML schema (every key optional; ``examples/postoffice.toml`` documents each one)::

    hostname = "mail.example.com"        # our name in the greeting and Received: lines
    data_dir = "/var/lib/postoffice"     # ~ expanded; relative to the config file's directory
    domains = ["example.com"]            # local domains; none means capture mode
    postmaster = "admin@example.com"
    transcript_log = "/var/log/postoffice/transcript.log"   # every command and reply; off by default
    workers = 2                          # server processes sharing the listeners (SO_REUSEPORT)
    user = "postoffice"                  # started as root: bind, then become this user
    group = "mail"                       # its group (default: the user's own)
    mail_file_mode = "0660"              # delivered files; 0600 by default, never world bits
    [listen]
    smtp = ["127.0.0.1:2525", "[::1]:2525"]   # MX service: STARTTLS offered
    submission = ["127.0.0.1:2587"]           # RFC 6409: STARTTLS, then AUTH, then MAIL
    smtps = ["127.0.0.1:2465"]                # RFC 8314: implicit TLS, then AUTH, then MAIL
    http = ["127.0.0.1:8025"]                 # web UI and JSON API; [] turns them off
    [tls]
    cert = "fullchain.pem"               # relative to the file's directory; none: self-signed
    key = "privkey.pem"
    min_version = "TLSv1.2"
    [auth]
    allow_plaintext_on_loopback = false
    max_failures = 5                     # failed logins per client in failure_window, then 421
    [limits]                             # the fields of Limits, by name
    message_size = "25MiB"               # sizes: integer octets or "512KiB", "10MB", "25MiB"
    command_timeout = "5m"               # times: seconds, or "300s", "5m", "10min", "1h", "5d"
    [queue]                              # the fields of QueueSettings (Postfix names)
    maximal_queue_lifetime = "5d"
    [delivery]                           # outbound SMTP: DeliverySettings
    dns = "127.0.0.1:5353"
    relay_host = "smtp.example.net:587"
    [delivery.tls_policy]
    "example.net" = "require"

Validation collects every problem (one :class:`ConfigError` per key) so ``check-config`` can
list them all; :func:`load_config` raises the first.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import grp
import ipaddress
import math
import os
import pwd
import re
import socket
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from postoffice.errors import ConfigError

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for SMTP sessions; each is named in config under ``[limits]``."""

    # RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
    command_line: int = 512
    # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF. 0 disables the check.
    text_line: int = 1000
    # RFC 1870 SIZE; 25 MiB is what large providers accept today (Postfix: 10 MB).
    message_size: int = 25 * MiB
    # RFC 5321 §4.5.3.1.8 requires at least 100; Postfix smtpd_recipient_limit is 1000.
    recipients: int = 1000
    # Total concurrent SMTP sessions across all listeners.
    connections: int = 1000
    # Postfix smtpd_client_connection_count_limit = 50; trusted networks are exempt.
    connections_per_client: int = 50
    # Postfix smtpd_hard_error_limit = 20: after this many error replies, 421 and close.
    errors_per_session: int = 20
    # Postfix smtpd_junk_command_limit = 100: NOOP, VRFY, EXPN, ETRN and RSET without a message
    # accepted in between; then 421 and close.
    junk_commands: int = 100
    # RFC 5321 §4.5.3.2.7 server timeout: 5 minutes waiting for the next command.
    command_timeout: float = 300.0
    # RFC 5321 §4.5.3.2.5-6 client side (DATA block 3 min); we wait as long for each block.
    data_block_timeout: float = 180.0
    # RFC 5321 §4.5.3.2.6: DATA termination, 10 minutes for the whole message.
    data_done_timeout: float = 600.0
    # Postfix smtpd_client_event_limit_exceptions: clients exempt from per-client limits.
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.trusted_networks)


DAY = 86400.0


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How the queue retries and how many deliveries run at once; ``[queue]`` in the file.

    Names and defaults are Postfix's (postconf(5)), so an operator's intuition carries over.
    """

    # First retry 5 minutes after a temporary failure (Postfix minimal_backoff_time = 300s).
    minimal_backoff_time: float = 300.0
    # The delay doubles up to this (Postfix maximal_backoff_time = 4000s, about 67 minutes).
    maximal_backoff_time: float = 4000.0
    # Then the sender is told it failed (Postfix maximal_queue_lifetime = 5d; RFC 5321
    # §4.5.4.1: "the give-up time generally needs to be at least 4-5 days").
    maximal_queue_lifetime: float = 5 * DAY
    # A "still trying" notice after this long in the queue; 0 sends none (Postfix
    # delay_warning_time = 0h).
    delay_warning_time: float = 0.0
    # Deliveries running at once, all destinations together. Postfix allows 100 processes;
    # one of ours costs a coroutine and at most a connection. Local deliveries running together
    # share disk flushes, so under load this is also how many one flush covers.
    concurrency: int = 64
    # Deliveries running at once to one remote destination (Postfix
    # initial_destination_concurrency = 5: a receiving site never gets more parallel
    # connections than that). Local mailboxes are limited by ``concurrency`` only.
    destination_concurrency: int = 5


# Per-destination TLS: "none" never, "may" when offered (opportunistic, RFC 3207 §4, no
# certificate check, as Postfix "may"), "require" encrypted or not at all (Postfix
# "encrypt"), "verify" encrypted with a certificate valid for the MX host name.
TLS_POLICIES = ("none", "may", "require", "verify")
# Towards a relay host: "none", "starttls" (RFC 3207, required) or "tls" (implicit TLS from
# the first byte, RFC 8314 §3.3); with either TLS mode the relay's certificate is verified.
RELAY_TLS_MODES = ("none", "starttls", "tls")


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """How mail for other domains leaves; ``[delivery]`` in the file."""

    # The DNS server for MX lookups as (IP, port); None uses the system's (/etc/resolv.conf).
    dns: tuple[str, int] | None = None
    # The TCP port of every mail exchanger (RFC 5321 §2.3.5: 25); tests point it elsewhere.
    mx_port: int = 25
    # Send everything through this host instead of looking up MX records (a smarthost).
    relay_host: tuple[str, int] | None = None
    relay_user: str | None = None
    # A file holding the relay password on its first line (never the password itself here).
    relay_password_file: Path | None = None
    relay_tls: str = "starttls"
    # Domain -> one of TLS_POLICIES; every other domain gets "may".
    tls_policy: tuple[tuple[str, str], ...] = ()
    # CA certificates (PEM) for "verify" and for the relay, instead of the system's.
    tls_ca_file: Path | None = None
    # Postfix smtp_connect_timeout = 30s.
    connect_timeout: float = 30.0
    # Each command's reply; RFC 5321 §4.5.3.2 asks for 5 minutes (MAIL, RCPT, DATA end: 10).
    command_timeout: float = 300.0
    # A message for one local mailbox is written into it before the 250, as an LMTP server
    # delivers (delivery/direct.py); false sends every message through the queue first.
    local_before_reply: bool = True

    def tls_policy_for(self, domain: str) -> str:
        return dict(self.tls_policy).get(domain.lower(), "may")


# What each kind of listener is (the net layer decides what it offers):
#   smtp        the MX service other servers deliver to (port 25): STARTTLS offered, AUTH after TLS
#   submission  RFC 6409 message submission (port 587): STARTTLS, then AUTH, then MAIL
#   smtps       RFC 8314 §3 implicit TLS submission (port 465): TLS from the first byte
LISTENER_KINDS = ("smtp", "submission", "smtps")


@dataclass(frozen=True, slots=True)
class Listener:
    """One address to listen on; ``kind`` is one of :data:`LISTENER_KINDS`."""

    kind: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


# RFC 8996 deprecates TLS 1.0 and 1.1; RFC 8314 §4.1 asks for TLS 1.2 or later.
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The server certificate under ``[tls]``; with no ``cert`` a self-signed one is made."""

    cert: Path | None = None
    # None: the key is in the ``cert`` file (one PEM with both, as ssl.load_cert_chain allows).
    key: Path | None = None
    min_version: str = "TLSv1.2"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """SMTP AUTH settings under ``[auth]``."""

    # RFC 4954 §4 / RFC 8314: passwords only inside TLS. Local programs that cannot do TLS may
    # be let in over loopback, where nobody can listen on the wire.
    allow_plaintext_on_loopback: bool = False
    # fail2ban's defaults (maxretry 5 in findtime 10 minutes): after this many failed logins
    # from one client address within failure_window, 421 and disconnect; later AUTH attempts
    # from it get 421 until the oldest failure is older than the window.
    max_failures: int = 5
    failure_window: float = 600.0
    # Dovecot auth_failure_delay = 2 s: the n-th failure in the window waits n times this long
    # before its 535, so guessing gets slower with every miss. 0 turns the delay off.
    failure_delay: float = 2.0


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/postoffice`` (``~/.local/share/postoffice``), like other user daemons."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "postoffice"


def default_hostname() -> str:
    return socket.getfqdn() or "localhost"


DEFAULT_SMTP_LISTENER = Listener("smtp", "127.0.0.1", 2525)
# Mailpit's and MailHog's web port, so tools and habits carry over.
DEFAULT_HTTP_LISTENER = Listener("http", "127.0.0.1", 8025)

LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class ProxyProtocol:
    """Which listener kinds expect a PROXY protocol header (HAProxy v1/v2), and from whom.

    A PROXY header names the client's address, so it is only believed from ``trusted``
    networks (the load balancers); a connection from elsewhere on such a listener is closed.
    """

    kinds: frozenset[str] = frozenset()
    trusted: tuple[str, ...] = ()

    def expects_header(self, kind: str) -> bool:
        return kind in self.kinds

    def is_trusted(self, address: str) -> bool:
        return Limits(trusted_networks=self.trusted).is_trusted(address)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs, resolved and validated."""

    hostname: str = field(default_factory=default_hostname)
    data_dir: Path = field(default_factory=default_data_dir)
    listeners: tuple[Listener, ...] = (DEFAULT_SMTP_LISTENER,)
    # Local domains, lower-case. Empty means capture mode: accept every recipient, relay nothing.
    domains: tuple[str, ...] = ()
    # Where postmaster@<local domain> and <postmaster> go (RFC 5321 §4.5.1); None: postmaster@<first domain>.
    postmaster: str | None = None
    limits: Limits = field(default_factory=Limits)
    # Append every SMTP command and reply here (AUTH secrets redacted); None: no transcript log.
    transcript_log: Path | None = None
    queue: QueueSettings = field(default_factory=QueueSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    proxy_protocol: ProxyProtocol = field(default_factory=ProxyProtocol)
    # Log lines as key=value text or one JSON object each; to standard error, or log_file.
    log_format: str = "text"
    log_file: Path | None = None
    # Web UI and JSON API listeners; empty turns the web side off.
    http_listeners: tuple[Listener, ...] = (DEFAULT_HTTP_LISTENER,)
    # Server processes sharing the listeners (SO_REUSEPORT) and the data directory; each
    # receives and delivers its own mail. One per core is the usual choice.
    workers: int = 1
    # Started as root, the server binds its listeners and then becomes this user (and group:
    # None is the user's own), before it opens the data directory. None: it stays as started.
    user: str | None = None
    group: str | None = None
    # Every file delivered into a Maildir gets this mode: 0o600, or 0o660 with a group shared
    # with a reader such as Dovecot. Directories follow (maildir_directory_mode).
    mail_file_mode: int = 0o600
    # The file this came from, for messages; None when built from defaults and flags only.
    source: Path | None = None

    @property
    def capture_mode(self) -> bool:
        return not self.domains

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def accounts_file(self) -> Path:
        return self.data_dir / "accounts.json"

    @property
    def tls_dir(self) -> Path:
        """Where a self-signed certificate is kept when ``[tls] cert`` is not set."""
        return self.data_dir / "tls"

    @property
    def index_file(self) -> Path:
        """The web side's mailbox index: a cache of the Maildirs, rebuilt by ``reindex``."""
        return self.data_dir / "index.sqlite3"

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains


# ---------------------------------------------------------------------------------------------
# Names: domains, addresses, listener addresses
# ---------------------------------------------------------------------------------------------

# RFC 1035 §2.3.1 "preferred name syntax" as relaxed by RFC 1123 §2.1 (labels may start with a
# digit): letters, digits and inner hyphens, 1 to 63 octets.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# RFC 5321 §4.5.3.1.2: a domain is at most 255 octets; the dotted text form of that is 253.
_MAX_DOMAIN_TEXT = 253
# RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
_MAX_LOCAL_PART = 64
# RFC 5322 §3.2.3 atext, the characters of a dot-atom besides letters and digits.
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")


def normalize_domain(name: str) -> str:
    """Return ``name`` lower-cased if it is a valid domain name; raise ``ValueError`` if not.

    Labels are LDH (RFC 1035/1123) or IDNA U-labels (RFC 5890), checked through their ASCII
    form so the length limits hold on the wire. Address literals are not domain names.
    """
    if not name:
        raise ValueError("empty domain name")
    lowered = name.lower()
    ascii_labels: list[str] = []
    for label in lowered.split("."):
        if not label:
            raise ValueError(f"{name!r} has an empty label")
        if label.isascii():
            ascii_label = label
        else:
            try:
                ascii_label = label.encode("idna").decode("ascii")
            except UnicodeError:
                raise ValueError(f"{name!r}: {label!r} is not a valid internationalised label") from None
        if not _LDH_LABEL.fullmatch(ascii_label):
            raise ValueError(f"{name!r}: labels are letters, digits and inner hyphens, at most 63 characters")
        ascii_labels.append(ascii_label)
    if len(".".join(ascii_labels)) > _MAX_DOMAIN_TEXT:
        raise ValueError(f"{name[:40]!r}...: longer than {_MAX_DOMAIN_TEXT} characters")
    # RFC 3696 §2: a top-level domain is never all-numeric, which also keeps "10.0.0.1" out.
    if ascii_labels[-1].isdigit():
        raise ValueError(f"{name!r} is not a domain name (the last label is all digits)")
    return lowered


def _is_atext(char: str) -> bool:
    if char.isascii():
        return char.isalnum() or char in _ATEXT_SPECIALS
    # RFC 6531 §3.3 adds UTF8-non-ascii to atext; controls and spaces stay out.
    return char.isprintable() and not char.isspace()


def normalize_address(address: str, *, fold_local: bool = False) -> str:
    """Return ``local@domain`` with the domain lower-cased; raise ``ValueError`` if invalid.

    The local part must be a dot-atom (RFC 5322 §3.2.3, UTF-8 allowed by RFC 6531): quoted
    local parts are legal on the wire but nobody needs one to configure a server. Local parts
    are case-sensitive in general (RFC 5321 §2.4); ``fold_local`` lower-cases it anyway, for
    addresses this server owns.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{address!r} is not an address of the form local@domain")
    atoms = local.split(".")
    if not all(atom and all(_is_atext(char) for char in atom) for atom in atoms):
        raise ValueError(f"{address!r}: the local part has a character or dot that is not allowed")
    if len(local.encode("utf-8")) > _MAX_LOCAL_PART:
        raise ValueError(f"{address!r}: the local part is longer than {_MAX_LOCAL_PART} octets")
    try:
        domain = normalize_domain(domain)
    except ValueError as exc:
        raise ValueError(f"{address!r}: {exc}") from None
    return f"{local.lower() if fold_local else local}@{domain}"


_PORT = re.compile(r"[0-9]{1,5}")


def parse_hostport(text: str, *, key: str = "listen.smtp") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[IPV6]:PORT`` for IPv6, as in RFC 3986 §3.2.2) into its parts.

    The host is an IP address or a host name (lower-cased); port 0 asks the OS for a free port.
    Errors are :class:`ConfigError` for ``key``.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ConfigError(f"{text!r}: expected [IPV6-ADDRESS]:PORT", key=key)
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{text!r}: {host!r} is not an IPv6 address", key=key) from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ConfigError(f"{text!r}: expected HOST:PORT, as in 127.0.0.1:2525", key=key)
        if ":" in host:
            raise ConfigError(f"{text!r}: put an IPv6 address in brackets, as in [::1]:2525", key=key)
        host = _listen_host(text, host, key)
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise ConfigError(f"{text!r}: the port must be a number from 0 to 65535", key=key)
    return host, int(port_text)


def _listen_host(text: str, host: str, key: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return normalize_domain(host)
    except ValueError:
        raise ConfigError(f"{text!r}: {host!r} is neither an IP address nor a host name", key=key) from None


# ---------------------------------------------------------------------------------------------
# Values with units
# ---------------------------------------------------------------------------------------------

# IEC binary units and SI decimal units are both common in mail configs (Postfix takes plain
# octets; Exim takes K/M with binary meaning). Spelling the unit out removes the doubt.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
# A decimal number, then an optional unit: "25MiB", "1.5 h", "300".
_NUMBER_UNIT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)")
_TIME_UNITS = {
    "": 1,
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
}


class _Invalid(ValueError):
    """A value is wrong; the message says why, the caller adds file and key."""


def _kind(value: object) -> str:
    # Named as TOML calls them (TOML v1.0.0 spec), since that is what the operator wrote.
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_kind(value)}")
    return value


def parse_size(value: object) -> int:
    """Octets from an integer or a string such as ``"25MiB"``, ``"10MB"`` or ``"512KiB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        match = _NUMBER_UNIT.fullmatch(value.strip().lower())
        if not match or match.group(2) not in _SIZE_UNITS:
            raise _Invalid(
                f"{value!r} is not a size; write octets or a number with B, KB, KiB, MB, MiB, GB, GiB"
            )
        number = Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise _Invalid(f"expected an integer or a string such as '25MiB', got {_kind(value)}")
    if number < 0:
        raise _Invalid(f"{value!r} is negative")
    return int(number)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"300s"``, ``"5m"``, ``"10min"`` or ``"1h"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _NUMBER_UNIT.fullmatch(value.strip().lower())
        if not match or match.group(2) not in _TIME_UNITS:
            raise _Invalid(f"{value!r} is not a duration; write seconds or a number with s, m, min, h, d")
        seconds = float(match.group(1)) * _TIME_UNITS[match.group(2)]
    else:
        raise _Invalid(f"expected a number of seconds or a string such as '5m', got {_kind(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise _Invalid(f"{value!r}: a timeout must be a positive, finite number of seconds")
    return seconds


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(f"expected an integer, got {_kind(value)}")
    if value < 1:
        raise _Invalid(f"{value} is too small; the least is 1")
    return value


def _network(value: object) -> str:
    text = _string(value)
    try:
        return str(ipaddress.ip_network(text))
    except ValueError:
        pass
    try:
        # Host bits set ("10.1.2.3/8") is almost always a typo for the network; say which.
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Invalid(
            f"{text!r} is not an IP network in CIDR notation (10.0.0.0/8, 2001:db8::/32)"
        ) from None
    raise _Invalid(f"{text!r} has host bits set; did you mean {str(loose)!r}?")


# ---------------------------------------------------------------------------------------------
# The [limits] table
# ---------------------------------------------------------------------------------------------

_SIZE_LIMITS = ("command_line", "text_line", "message_size")
_COUNT_LIMITS = ("recipients", "connections", "connections_per_client", "errors_per_session", "junk_commands")
_TIME_LIMITS = ("command_timeout", "data_block_timeout", "data_done_timeout")
LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(Limits))

# RFC 5321 §4.5.3.1.7: "The maximum total length of a message content ... MUST BE at least 64K octets."
_MIN_MESSAGE_SIZE = 64 * 1024


def _limit_value(name: str, value: object) -> object:
    if name in _SIZE_LIMITS:
        size = parse_size(value)
        _check_size_floor(name, size)
        return size
    if name in _COUNT_LIMITS:
        count = _count(value)
        if name == "recipients" and count < 100:
            raise _Invalid(
                f"{count} is too small: RFC 5321 §4.5.3.1.8 requires accepting at least 100 recipients"
            )
        return count
    if name in _TIME_LIMITS:
        return parse_duration(value)
    if name == "trusted_networks":
        if not isinstance(value, list):
            raise _Invalid(f"expected an array of networks, got {_kind(value)}")
        return tuple(_network(item) for item in value)
    raise AssertionError(f"limit {name} has no parser")  # pragma: no cover - a test pins the set


def _check_size_floor(name: str, size: int) -> None:
    if name == "command_line" and size < 512:
        raise _Invalid(
            f"{size} is too small: RFC 5321 §4.5.3.1.4 requires accepting command lines of 512 octets"
        )
    if name == "text_line" and 0 < size < 1000:
        raise _Invalid(
            f"{size} is too small: RFC 5321 §4.5.3.1.6 requires accepting text lines of 1000 octets"
            " (0 turns the check off)"
        )
    if name == "message_size" and size < _MIN_MESSAGE_SIZE:
        raise _Invalid(f"{size} is too small: RFC 5321 §4.5.3.1.7 requires at least 64KiB")


# ---------------------------------------------------------------------------------------------
# The [queue] and [delivery] tables
# ---------------------------------------------------------------------------------------------

QUEUE_NAMES = tuple(f.name for f in dataclasses.fields(QueueSettings))
_DELIVERY_KEYS = (
    "dns",
    "mx_port",
    "relay_host",
    "relay_user",
    "relay_password_file",
    "relay_tls",
    "tls_policy",
    "tls_ca_file",
    "connect_timeout",
    "command_timeout",
    "local_before_reply",
)


def _queue_value(name: str, value: object) -> object:
    if name in ("concurrency", "destination_concurrency"):
        return _count(value)
    if name == "delay_warning_time" and value in (0, "0"):
        return 0.0  # off, as Postfix's 0h
    return parse_duration(value)


def parse_dns_server(text: str, *, key: str = "delivery.dns") -> tuple[str, int]:
    """``IP:PORT``, ``[IPV6]:PORT`` or a bare IP (port 53): where MX lookups are sent."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        host, port = parse_hostport(text, key=key)
    else:
        host, port = text, 53
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{text!r}: a DNS server is given by IP address, not by name", key=key) from None
    if port == 0:
        raise ConfigError(f"{text!r}: port 0 names no server", key=key)
    return str(address), port


def parse_relay_host(text: str, *, key: str = "delivery.relay_host") -> tuple[str, int]:
    host, port = parse_hostport(text, key=key)
    if port == 0:
        raise ConfigError(f"{text!r}: port 0 names no server (587 is submission, 465 implicit TLS)", key=key)
    return host, port


def _port(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(f"expected an integer, got {_kind(value)}")
    if not 1 <= value <= 65535:
        raise _Invalid(f"{value}: a port is a number from 1 to 65535")
    return value


def _choice(value: object, choices: Sequence[str]) -> str:
    text = _string(value).lower()
    if text not in choices:
        raise _Invalid(f"{text!r} is not one of {', '.join(choices)}")
    return text


def _tls_policy(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _Invalid(f'expected a table of "domain" = "policy", got {_kind(value)}')
    policy: dict[str, str] = {}
    for domain, level in value.items():
        try:
            name = normalize_domain(domain)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        try:
            policy[name] = _choice(level, TLS_POLICIES)
        except _Invalid as exc:
            raise _Invalid(f"{domain!r}: {exc}") from None
    return tuple(sorted(policy.items()))


def _file_path(value: object, base: Path) -> Path:
    text = _string(value)
    if not text:
        raise _Invalid("empty path")
    return (base / Path(text).expanduser()).resolve()


def _delivery_value(name: str, value: object, base: Path) -> object:
    if name == "dns":
        return parse_dns_server(_string(value))
    if name == "mx_port":
        return _port(value)
    if name == "relay_host":
        return parse_relay_host(_string(value))
    if name == "relay_user":
        user = _string(value)
        if not user or not user.isprintable():
            raise _Invalid("expected a non-empty user name of printable characters")
        return user
    if name in ("relay_password_file", "tls_ca_file"):
        return _file_path(value, base)
    if name == "relay_tls":
        return _choice(value, RELAY_TLS_MODES)
    if name == "tls_policy":
        return _tls_policy(value)
    if name in ("connect_timeout", "command_timeout"):
        return parse_duration(value)
    if name == "local_before_reply":
        return _boolean(value)
    raise AssertionError(f"delivery key {name} has no parser")  # pragma: no cover


def _check_relay(delivery: dict[str, Any], problems: _Problems) -> None:
    """Credentials come in pairs, and never cross a network in the clear."""
    has_user = "relay_user" in delivery
    has_password = "relay_password_file" in delivery
    if has_user != has_password:
        missing = "relay_password_file" if has_user else "relay_user"
        problems.add(f"delivery.{missing}", "relay_user and relay_password_file go together")
        return
    relay = delivery.get("relay_host")
    if has_user and relay is None:
        problems.add("delivery.relay_user", "credentials without a relay_host: nothing would use them")
    elif has_user and relay is not None and delivery.get("relay_tls", "starttls") == "none":
        try:
            loopback = ipaddress.ip_address(relay[0]).is_loopback
        except ValueError:
            loopback = relay[0] == "localhost"
        if not loopback:
            problems.add(
                "delivery.relay_tls",
                '"none" would send the relay password in the clear; use "starttls" or "tls"',
            )


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------

_TOP_KEYS = (
    "hostname",
    "data_dir",
    "domains",
    "postmaster",
    "transcript_log",
    "listen",
    "limits",
    "queue",
    "delivery",
    "tls",
    "auth",
    "proxy_protocol",
    "log_format",
    "log_file",
    "workers",
    "user",
    "group",
    "mail_file_mode",
)
# More processes than this is a typo, not a machine (Postfix default_process_limit is 100).
MAX_WORKERS = 256
_LISTEN_KEYS = (*LISTENER_KINDS, "http")
_PROXY_KEYS = (*LISTENER_KINDS, "trusted")
_TLS_KEYS = ("cert", "key", "min_version")
_AUTH_KEYS = tuple(f.name for f in dataclasses.fields(AuthConfig))

_T = TypeVar("_T")


class _Problems:
    """Collects one ConfigError per bad key, so a person sees every mistake in one run."""

    def __init__(self, label: str | None) -> None:
        self.label = label
        self.errors: list[ConfigError] = []

    def add(self, key: str | None, message: str) -> None:
        # One line each, whatever a quoted TOML key or a parser message holds.
        if key is not None and not key.isprintable():
            key = repr(key)
        message = " ".join(message.splitlines())
        self.errors.append(ConfigError(message, key=key, path=self.label))

    def check(self, key: str, parse: Callable[[], _T]) -> _T | None:
        """``parse()``, or None after recording why it failed."""
        try:
            return parse()
        except ValueError as exc:  # _Invalid and the ValueError of normalize_*
            self.add(key, str(exc))
        except ConfigError as exc:
            self.add(key, exc.detail)
        return None

    def unknown_keys(self, table: dict[str, Any], known: Sequence[str], prefix: str) -> None:
        for name in table:
            if name in known:
                continue
            hint = ""
            close = difflib.get_close_matches(name, known, n=1)
            if prefix == "" and name in LIMIT_NAMES:
                hint = "; it belongs in the [limits] table"
            elif prefix == "" and name in _LISTEN_KEYS:
                hint = "; it belongs in the [listen] table"
            elif close:
                hint = f"; did you mean {prefix + close[0]!r}?"
            self.add(prefix + name, f"unknown key{hint}")


def _table(problems: _Problems, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.add(key, f"expected a table ([{key}]), got {_kind(value)}")
        return {}
    return value


def _domain_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid(f"expected an array of domain names, got {_kind(value)}")
    domains: list[str] = []
    for item in value:
        domain = normalize_domain(_string(item))
        if domain not in domains:
            domains.append(domain)
    return tuple(domains)


def _listeners(value: object, kind: str = "smtp") -> tuple[Listener, ...]:
    if not isinstance(value, list):
        raise _Invalid(f'expected an array of "HOST:PORT" strings, got {_kind(value)}')
    if not value and kind != "http":  # [] is how the web side is turned off
        default = " for the default 127.0.0.1:2525" if kind == "smtp" else ""
        raise _Invalid(f"no addresses; leave the key out{default}")
    listeners: list[Listener] = []
    for item in value:
        listener = Listener(kind, *parse_hostport(_string(item), key=f"listen.{kind}"))
        # Port 0 twice is two ephemeral ports, not a clash.
        if listener in listeners and listener.port != 0:
            raise _Invalid(f"{item!r} is listed twice")
        listeners.append(listener)
    return tuple(listeners)


def _workers(value: object) -> int:
    if value == "auto":
        # One per core this process may run on (its CPU affinity, as nginx's "auto" counts).
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS) if hasattr(os, "sched_getaffinity") else 1
    if isinstance(value, str):
        raise _Invalid(f'expected an integer or "auto", got {value!r}')
    count = _count(value)
    if count > MAX_WORKERS:
        raise _Invalid(f"{count} is too many; the most is {MAX_WORKERS}")
    return count


def _data_dir(value: object, base: Path) -> Path:
    return _path(value, base)


def _path(value: object, base: Path) -> Path:
    text = _string(value)
    if not text:
        raise _Invalid("empty path")
    # Relative to the file, not to wherever the server happens to be started (like nginx's
    # include paths): the same file then means the same thing from any working directory.
    return (base / Path(text).expanduser()).resolve()


def _tls_version(value: object) -> str:
    text = _string(value).strip()
    # "1.2" is how people say it; "TLSv1.2" is how OpenSSL and Python's ssl.TLSVersion spell it.
    normal = text if text.startswith("TLSv") else f"TLSv{text}"
    if normal not in TLS_VERSIONS:
        raise _Invalid(
            f"{text!r} is not a TLS version postoffice accepts; write one of {', '.join(TLS_VERSIONS)}"
        )
    return normal


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_kind(value)}")
    return value


def _delay(value: object) -> float:
    """A duration that may be 0 (no delay)."""
    if value == 0 or (isinstance(value, str) and value.strip() in ("0", "0s")):
        return 0.0
    return parse_duration(value)


def _auth_value(name: str, value: object) -> object:
    if name == "allow_plaintext_on_loopback":
        return _boolean(value)
    if name == "max_failures":
        return _count(value)
    if name == "failure_window":
        return parse_duration(value)
    if name == "failure_delay":
        return _delay(value)
    raise AssertionError(f"auth setting {name} has no parser")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Who the server runs as, and the modes of the mail files it writes
# ---------------------------------------------------------------------------------------------


def _user(value: object) -> str:
    name = _string(value)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise _Invalid(f"no user {name!r} on this machine (getent passwd {name})") from None
    if entry.pw_uid == 0:
        raise _Invalid(f"{name!r} is root, which keeps every privilege; name an unprivileged user")
    return name


def _group(value: object) -> str:
    name = _string(value)
    try:
        entry = grp.getgrnam(name)
    except KeyError:
        raise _Invalid(f"no group {name!r} on this machine (getent group {name})") from None
    if entry.gr_gid == 0:
        raise _Invalid(f"{name!r} is root's group (gid 0); name an unprivileged group")
    return name


def parse_file_mode(value: object) -> int:
    """A mail file's mode: ``0o660`` in TOML, or ``"0660"``; owner read-write, group at most."""
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if not text or any(char not in "01234567" for char in text):
            raise _Invalid(f'{value!r} is not an octal mode; write one such as "0600" or "0660"')
        mode = int(text, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise _Invalid(f'expected an octal mode such as "0660" or 0o660, got {_kind(value)}')
    if mode & 0o007 and not mode & ~0o777:
        raise _Invalid(f"{mode:#o} lets every user of this machine read the mail; 0o660 at most")
    if mode & ~0o666:
        hint = ""
        if isinstance(value, int) and _octal_reading(value) is not None:
            # TOML reads 660 as a decimal number (0o1224): say how to write it in octal.
            hint = f'; an octal mode is written 0o{value} or "0{value}"'
        raise _Invalid(f"{mode:#o} is not a mail file mode (read and write bits only){hint}")
    if mode & 0o600 != 0o600:
        raise _Invalid(f"{mode:#o} does not let the server read and write its own files; 0o600 at least")
    return mode


def _octal_reading(value: int) -> int | None:
    """``value``'s decimal digits read as octal, when that is a mode we would accept."""
    digits = str(value)
    if any(char not in "01234567" for char in digits):
        return None
    mode = int(digits, 8)
    return mode if not mode & ~0o660 and mode & 0o600 == 0o600 else None


def maildir_directory_mode(file_mode: int) -> int:
    """The mode of Maildir directories for files of ``file_mode``: 0o700, or with group bits
    (and the group's search bit) when the files grant the group access: 0o660 gives 0o770."""
    group = file_mode & 0o070
    return 0o700 | group | (0o010 if group else 0)


def _parse_identity(data: dict[str, Any], problems: _Problems, settings: _Settings) -> None:
    if "user" in data:
        settings.user = problems.check("user", lambda: _user(data["user"]))
    if "group" in data:
        settings.group = problems.check("group", lambda: _group(data["group"]))
    if "mail_file_mode" in data:
        settings.mail_file_mode = problems.check(
            "mail_file_mode", lambda: parse_file_mode(data["mail_file_mode"])
        )


def _check_identity(settings: _Settings, problems: _Problems) -> None:
    if settings.group is not None and settings.user is None:
        problems.add("group", "a group needs its user; set user too")
    elif settings.user is not None and settings.group is None and pwd.getpwnam(settings.user).pw_gid == 0:
        problems.add("user", f"{settings.user!r} has root's group (gid 0) as its own; set group too")


@dataclass(slots=True)
class _Settings:
    """What the file said, before command-line overrides; None means "not set or invalid"."""

    hostname: str | None = None
    data_dir: Path | None = None
    domains: tuple[str, ...] | None = None
    postmaster: str | None = None
    listeners: dict[str, tuple[Listener, ...]] = field(default_factory=dict)
    transcript_log: Path | None = None
    http_listeners: tuple[Listener, ...] | None = None
    workers: int | None = None
    user: str | None = None
    group: str | None = None
    mail_file_mode: int | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    queue: dict[str, Any] = field(default_factory=dict)
    delivery: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, Any] = field(default_factory=dict)
    auth: dict[str, Any] = field(default_factory=dict)
    proxy_protocol: ProxyProtocol | None = None
    log_format: str | None = None
    log_file: Path | None = None


def _log_format(value: object) -> str:
    text = _string(value)
    if text not in LOG_FORMATS:
        raise _Invalid(f"{text!r} is not a log format; use one of {', '.join(LOG_FORMATS)}")
    return text


def _proxy_protocol(problems: _Problems, table: dict[str, Any]) -> ProxyProtocol | None:
    problems.unknown_keys(table, _PROXY_KEYS, "proxy_protocol.")
    kinds: set[str] = set()
    for kind in _LISTEN_KEYS:
        if kind in table:
            if not isinstance(table[kind], bool):
                problems.add(f"proxy_protocol.{kind}", f"expected true or false, got {_kind(table[kind])}")
                return None
            if table[kind]:
                kinds.add(kind)
    trusted: tuple[str, ...] | None = ()
    if "trusted" in table:

        def networks() -> tuple[str, ...]:
            value = table["trusted"]
            if not isinstance(value, list):
                raise _Invalid(f"expected an array of networks, got {_kind(value)}")
            return tuple(_network(item) for item in value)

        trusted = problems.check("proxy_protocol.trusted", networks)
    if trusted is None:
        return None
    if kinds and not trusted:
        problems.add(
            "proxy_protocol.trusted",
            "no trusted proxy networks; a PROXY header is only believed from the load balancers listed here",
        )
        return None
    return ProxyProtocol(frozenset(kinds), trusted)


def _read_file(path: Path, problems: _Problems) -> dict[str, Any] | None:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        problems.add(None, "no such file")
    except IsADirectoryError:
        problems.add(None, "is a directory, not a configuration file")
    except OSError as exc:
        problems.add(None, exc.strerror or str(exc))
    except UnicodeDecodeError:
        problems.add(None, "not UTF-8 text (TOML files are UTF-8)")
    except tomllib.TOMLDecodeError as exc:
        problems.add(None, f"not valid TOML: {exc}")
    return None


def _parse(data: dict[str, Any], base: Path, problems: _Problems) -> _Settings:
    settings = _Settings()
    problems.unknown_keys(data, _TOP_KEYS, "")
    if "hostname" in data:
        settings.hostname = problems.check("hostname", lambda: normalize_domain(_string(data["hostname"])))
    if "data_dir" in data:
        settings.data_dir = problems.check("data_dir", lambda: _data_dir(data["data_dir"], base))
    if "domains" in data:
        settings.domains = problems.check("domains", lambda: _domain_list(data["domains"]))
    if "postmaster" in data:
        settings.postmaster = problems.check(
            "postmaster", lambda: normalize_address(_string(data["postmaster"]))
        )
    if "transcript_log" in data:
        settings.transcript_log = problems.check(
            "transcript_log", lambda: _path(data["transcript_log"], base)
        )
    if "workers" in data:
        settings.workers = problems.check("workers", lambda: _workers(data["workers"]))
    _parse_identity(data, problems, settings)
    listen = _table(problems, data, "listen")
    problems.unknown_keys(listen, _LISTEN_KEYS, "listen.")
    for kind in LISTENER_KINDS:
        if kind in listen:
            found = problems.check(f"listen.{kind}", functools.partial(_listeners, listen[kind], kind))
            if found is not None:
                settings.listeners[kind] = found
    tls = _table(problems, data, "tls")
    problems.unknown_keys(tls, _TLS_KEYS, "tls.")
    for name in ("cert", "key"):
        if name in tls:
            path = problems.check(f"tls.{name}", functools.partial(_data_dir, tls[name], base))
            if path is not None:
                settings.tls[name] = path
    if "key" in tls and "cert" not in tls:
        problems.add("tls.key", "a key needs its certificate; set tls.cert too")
    if "min_version" in tls:
        version = problems.check("tls.min_version", lambda: _tls_version(tls["min_version"]))
        if version is not None:
            settings.tls["min_version"] = version
    auth = _table(problems, data, "auth")
    problems.unknown_keys(auth, _AUTH_KEYS, "auth.")
    for name in _AUTH_KEYS:
        if name in auth:
            value = problems.check(f"auth.{name}", functools.partial(_auth_value, name, auth[name]))
            if value is not None:
                settings.auth[name] = value
    if "proxy_protocol" in data:
        settings.proxy_protocol = _proxy_protocol(problems, _table(problems, data, "proxy_protocol"))
    if "log_format" in data:
        settings.log_format = problems.check("log_format", lambda: _log_format(data["log_format"]))
    if "log_file" in data:
        settings.log_file = problems.check("log_file", lambda: _data_dir(data["log_file"], base))
    if "http" in listen:
        settings.http_listeners = problems.check("listen.http", lambda: _listeners(listen["http"], "http"))
    limits = _table(problems, data, "limits")
    problems.unknown_keys(limits, LIMIT_NAMES, "limits.")
    for name in LIMIT_NAMES:
        if name in limits:
            value = problems.check(f"limits.{name}", functools.partial(_limit_value, name, limits[name]))
            if value is not None:
                settings.limits[name] = value
    _parse_outbound(data, base, problems, settings)
    return settings


def _parse_outbound(data: dict[str, Any], base: Path, problems: _Problems, settings: _Settings) -> None:
    queue = _table(problems, data, "queue")
    problems.unknown_keys(queue, QUEUE_NAMES, "queue.")
    for name in QUEUE_NAMES:
        if name in queue:
            value = problems.check(f"queue.{name}", functools.partial(_queue_value, name, queue[name]))
            if value is not None:
                settings.queue[name] = value
    delivery = _table(problems, data, "delivery")
    problems.unknown_keys(delivery, _DELIVERY_KEYS, "delivery.")
    for name in _DELIVERY_KEYS:
        if name in delivery:
            value = problems.check(
                f"delivery.{name}", functools.partial(_delivery_value, name, delivery[name], base)
            )
            if value is not None:
                settings.delivery[name] = value


def _check_outbound(settings: _Settings, problems: _Problems) -> None:
    queue = QueueSettings(**settings.queue)
    if queue.minimal_backoff_time > queue.maximal_backoff_time:
        problems.add("queue.minimal_backoff_time", "is longer than maximal_backoff_time")
    _check_relay(settings.delivery, problems)


def _collect(
    path: Path | None,
    *,
    data_dir: Path | None,
    listeners: Sequence[Listener],
    hostname: str | None,
    domains: Sequence[str],
    transcript_log: Path | None = None,
    delivery: dict[str, Any] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    http_listeners: Sequence[Listener] | None = None,
    workers: int | str | None = None,
    user: str | None = None,
    group: str | None = None,
) -> tuple[Config | None, list[ConfigError]]:
    settings = _Settings()
    problems = _Problems(str(path) if path is not None else None)
    if path is not None:
        data = _read_file(path, problems)
        if data is None:
            return None, problems.errors
        settings = _parse(data, path.absolute().parent, problems)
    # Command-line values override the file; they are checked the same way, under the flag name.
    flags = _Problems(None)
    if hostname is not None:
        settings.hostname = flags.check("--hostname", lambda: normalize_domain(hostname))
    if domains:
        settings.domains = flags.check("--domain", lambda: _domain_list(list(domains)))
    # Listeners given on the command line replace the file's listeners of the same kind.
    for kind in LISTENER_KINDS:
        given = tuple(listener for listener in listeners if listener.kind == kind)
        if given:
            settings.listeners[kind] = given
    if http_listeners is not None:
        settings.http_listeners = tuple(http_listeners)
    if workers is not None:
        settings.workers = flags.check("--workers", lambda: _workers(workers))
    if user is not None:
        settings.user = flags.check("--user", lambda: _user(user))
    if group is not None:
        settings.group = flags.check("--group", lambda: _group(group))
    if not any(error.key in ("user", "--user") for error in problems.errors + flags.errors):
        _check_identity(settings, flags if user is not None or group is not None else problems)
    if data_dir is not None:
        settings.data_dir = data_dir.expanduser().absolute()
    if transcript_log is not None:
        settings.transcript_log = transcript_log.expanduser().absolute()
    settings.delivery.update(delivery or {})
    _check_outbound(settings, problems)
    if tls_cert is not None:
        settings.tls["cert"] = tls_cert.expanduser().absolute()
        # A certificate from the command line never pairs with the file's key.
        settings.tls.pop("key", None)
    if tls_key is not None:
        if tls_cert is None:
            flags.add("--tls-key", "a key needs its certificate; give --tls-cert too")
        settings.tls["key"] = tls_key.expanduser().absolute()
    errors = problems.errors + flags.errors
    if errors:
        return None, errors
    config = Config(
        hostname=settings.hostname or default_hostname(),
        data_dir=settings.data_dir or default_data_dir(),
        # The default listener applies only when no listener of any kind is configured.
        listeners=sum(settings.listeners.values(), ()) or (DEFAULT_SMTP_LISTENER,),
        domains=settings.domains or (),
        postmaster=settings.postmaster,
        workers=settings.workers or 1,
        user=settings.user,
        group=settings.group,
        mail_file_mode=0o600 if settings.mail_file_mode is None else settings.mail_file_mode,
        limits=Limits(**settings.limits),
        transcript_log=settings.transcript_log,
        queue=QueueSettings(**settings.queue),
        delivery=DeliverySettings(**settings.delivery),
        tls=TLSConfig(**settings.tls),
        auth=AuthConfig(**settings.auth),
        proxy_protocol=settings.proxy_protocol or ProxyProtocol(),
        log_format=settings.log_format or "text",
        log_file=settings.log_file,
        http_listeners=(DEFAULT_HTTP_LISTENER,)
        if settings.http_listeners is None
        else settings.http_listeners,
        source=path,
    )
    return config, []


def load_config(
    path: Path | None = None,
    *,
    data_dir: Path | None = None,
    listeners: Sequence[Listener] = (),
    hostname: str | None = None,
    domains: Sequence[str] = (),
    transcript_log: Path | None = None,
    delivery: dict[str, Any] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    http_listeners: Sequence[Listener] | None = None,
    workers: int | str | None = None,
    user: str | None = None,
    group: str | None = None,
) -> Config:
    """Build a :class:`Config` from the TOML file at ``path`` (if any) and command-line values.

    Keyword arguments override the file: ``listeners`` replace the file's listeners of their
    kind, non-empty ``domains`` replace its list, ``tls_cert`` (with ``tls_key``) its
    certificate, and ``delivery`` (parsed values by :class:`DeliverySettings` field name, from
    ``--dns``, ``--mx-port``, ``--relay-host``) replaces those keys of ``[delivery]``, and
    ``http_listeners`` (when not None; empty turns the web side off) replaces ``[listen] http``;
    ``user`` and ``group`` (``--user``, ``--group``) replace the file's.
    Raises the first :class:`ConfigError` found; :func:`check_config` lists all.
    """
    config, errors = _collect(
        path,
        data_dir=data_dir,
        listeners=listeners,
        hostname=hostname,
        domains=domains,
        transcript_log=transcript_log,
        delivery=delivery,
        tls_cert=tls_cert,
        tls_key=tls_key,
        http_listeners=http_listeners,
        workers=workers,
        user=user,
        group=group,
    )
    if config is None:
        raise errors[0]
    return config


def check_config(path: Path | None) -> list[str]:
    """Every problem with the file at ``path``, one line each; empty when it loads."""
    _, errors = _collect(path, data_dir=None, listeners=(), hostname=None, domains=())
    return [str(error) for error in errors]
