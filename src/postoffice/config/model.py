"""The configuration's schema: :class:`Config` (the top level of the file) and :data:`SECTIONS`.

Untrusted input seen here: none; this module declares. :mod:`postoffice.config.loader` reads
the file against it.

Every key is declared once, as a dataclass field made with
:func:`~postoffice.config.schema.setting` (the tables' keys are in
:mod:`postoffice.config.tables`): type, default, floor, ceiling, help and the overriding
``serve`` option in one place, from which the loader, its error messages, ``check-config`` and
``docs/config-reference.md`` (``python -m postoffice.config``) are derived. :data:`SECTIONS`
maps the TOML tables onto the dataclasses.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postoffice.config.kinds import (
    ADDRESS,
    BOOLEAN,
    DOMAIN,
    DOMAINS,
    FILE_MODE,
    GROUP,
    LOG_FORMAT,
    PATH,
    USER,
    WORKERS,
)
from postoffice.config.listen import ListenKeys, ProxyProtocol, ProxyProtocolKeys
from postoffice.config.names import (
    DEFAULT_ACME_HTTP_LISTENER,
    DEFAULT_HTTP_LISTENER,
    DEFAULT_SMTP_LISTENER,
    IMAP_KINDS,
    LISTENER_KINDS,
    POP3_LISTENER_KINDS,
    Listener,
)
from postoffice.config.schema import Bound, Section, computed_setting, setting
from postoffice.config.storage import StorageSettings
from postoffice.config.tables import (
    AcmeSettings,
    AuthConfig,
    AuthenticationSettings,
    DeliverySettings,
    Limits,
    MtaStsSettings,
    QueueSettings,
    RetentionSettings,
    TLSConfig,
    Webhook,
)
from postoffice.config.tls_reporting import TlsReporting
from postoffice.config.values import MAX_WORKERS, usable_cores


def default_data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/postoffice`` (``~/.local/share/postoffice``), like other user daemons."""
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "postoffice"


def local_socket_path(data_dir: Path) -> Path:
    """The local socket of the server of ``data_dir`` (see Config.local_socket)."""
    return data_dir / "run" / "submit.sock"


def default_hostname() -> str:
    return socket.getfqdn() or "localhost"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs, resolved and validated; the top level of the file."""

    hostname: str = computed_setting(
        default_hostname,
        DOMAIN,
        "Our name in the greeting, the EHLO reply and Received: lines (RFC 5321 §4.1.3: a"
        " fully-qualified domain name).",
        default_text="the machine's FQDN",
        flag="--hostname",
    )
    data_dir: Path = computed_setting(
        default_data_dir,
        PATH,
        "Where the spool, the Maildirs and accounts.json are kept.",
        default_text="$XDG_DATA_HOME/postoffice (~/.local/share/postoffice)",
        flag="--data-dir",
    )
    listeners: tuple[Listener, ...] = (DEFAULT_SMTP_LISTENER,)
    # Local domains, lower-case. Empty means capture mode: accept every recipient, relay nothing.
    domains: tuple[str, ...] = setting(
        (),
        DOMAINS,
        "Local domains: their mail goes to users and aliases. None is capture mode: every recipient"
        " is accepted and nothing is relayed.",
        flag="--domain",
    )
    # None: postmaster@<first domain>.
    postmaster: str | None = setting(
        None,
        ADDRESS,
        "Where mail to postmaster@<a local domain> and to <postmaster> goes (RFC 5321 §4.5.1).",
        default_text="postmaster@<the first domain>",
    )
    limits: Limits = field(default_factory=Limits)
    transcript_log: Path | None = setting(
        None,
        PATH,
        "Append every SMTP command and reply here, AUTH secrets replaced by *** (reopened on SIGHUP).",
        default_text="none",
        flag="--transcript-log",
    )
    queue: QueueSettings = field(default_factory=QueueSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    tls: TLSConfig = field(default_factory=TLSConfig)
    mta_sts: MtaStsSettings = field(default_factory=MtaStsSettings)
    auth: AuthConfig = field(default_factory=AuthConfig)
    authentication: AuthenticationSettings = field(default_factory=AuthenticationSettings)
    tls_reporting: TlsReporting = field(default_factory=TlsReporting)
    storage: StorageSettings = field(default_factory=StorageSettings)
    proxy_protocol: ProxyProtocol = field(default_factory=ProxyProtocol)
    acme: AcmeSettings = field(default_factory=AcmeSettings)
    # [listen] acme_http as given; empty: the default, when [acme] is enabled (acme_listeners).
    acme_http_listeners: tuple[Listener, ...] = ()
    log_format: str = setting(
        "text",
        LOG_FORMAT,
        "Log lines as key=value text or one JSON object each.",
        flag="--log-format",
    )
    log_file: Path | None = setting(
        None,
        PATH,
        "Append the log here; SIGHUP reopens it by name, for logrotate.",
        default_text="standard error",
    )
    # Web UI and JSON API listeners, [listen] http and https (each listener's kind says which);
    # empty turns the web side off.
    http_listeners: tuple[Listener, ...] = (DEFAULT_HTTP_LISTENER,)
    # POP3 listeners ([listen] pop3 and pop3s); none unless asked.
    pop3_listeners: tuple[Listener, ...] = ()
    # IMAP listeners ([listen] imap and imaps); none unless asked for.
    imap_listeners: tuple[Listener, ...] = ()
    # None is "auto": decided when the server starts (worker_count), from the machine and the mode.
    workers: int | None = setting(
        None,
        WORKERS,
        'Server processes sharing the listeners (SO_REUSEPORT) and the data directory; "auto" is'
        " one per core this process may run on (1 off Linux); 1 is a single process.",
        default_text='"auto"',
        ceiling=Bound(MAX_WORKERS),
        flag="--workers",
    )
    # Started as root, the server binds its listeners and then becomes this user (and group:
    # None is the user's own) for good, before it opens the data directory (privileges.py).
    # None: it stays as started. Both are looked up when the file is read.
    user: str | None = setting(
        None,
        USER,
        "Started as root, `serve` binds every listener, then runs as this user for good, before it"
        " touches data_dir; the commands that write data_dir become it too. Never root.",
        default_text="none: keep the account that started the server",
        flag="--user",
    )
    group: str | None = setting(
        None,
        GROUP,
        "The group to run as with `user` (needs `user`; never gid 0): a group Dovecot is in, with"
        ' mail_file_mode = "0660".',
        default_text="the user's own group",
        flag="--group",
    )
    # Every file delivered into a Maildir gets this mode: 0o600, or 0o660 with a group shared
    # with a reader such as Dovecot. Directories follow (values.maildir_directory_mode).
    mail_file_mode: int = setting(
        0o600,
        FILE_MODE,
        'Mode of every delivered mail file, octal (0o660 or "0660"): 0o600, or 0o660 so `group` can'
        " read and flag the mail (Maildir directories then 0o770, a new data_dir 0o710). No bits for"
        " other users.",
    )
    # Programs of this machine (postoffice sendmail) hand mail over here as the local system.
    local_socket: bool = setting(
        True,
        BOOLEAN,
        "Listen on <data_dir>/run/submit.sock (mode 0600: the server's user and root only) for"
        " `postoffice sendmail`, whose mail is then trusted as submission is: DKIM-signed, never"
        " verified, relayed.",
    )
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    webhooks: tuple[Webhook, ...] = ()
    allow_chaos: bool = setting(
        False,
        BOOLEAN,
        "Allow fault injection (PUT /api/v1/chaos, `postoffice chaos`) outside capture mode. In"
        " capture mode it is always allowed; a real mail server refuses it unless this is true.",
    )
    # The file this came from, for messages; None when built from defaults and flags only.
    source: Path | None = None

    @property
    def capture_mode(self) -> bool:
        return not self.domains

    @property
    def worker_count(self) -> int:
        """How many server processes ``serve`` runs: ``workers``, or for "auto" one per usable
        core (1 on one core, and off Linux)."""
        return self.workers if self.workers is not None else usable_cores()

    @property
    def clustered(self) -> bool:
        """Whether mail is kept in a database shared with other nodes ([storage] backend)."""
        return self.storage.backend == "postgresql"

    @property
    def node_name(self) -> str:
        """This node's name in the cluster (its host name unless [storage] node_name says)."""
        return self.storage.node_name or self.hostname

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
    def acme_dir(self) -> Path:
        """The ACME account key, the certificate's key and the certificate (postoffice.acme)."""
        return self.data_dir / "acme"

    @property
    def acme_domains(self) -> tuple[str, ...]:
        """The names the ACME certificate is for: ``[acme] domains``; by default the host name,
        and with ``[mta_sts]`` on, ``mta-sts.DOMAIN`` for each local domain: senders fetch our
        policy from that name over HTTPS and check the certificate for it (RFC 8461 §3.3)."""
        if self.acme.domains:
            return self.acme.domains
        names = [self.hostname.lower()]
        if self.mta_sts.mode != "off":
            names += [f"mta-sts.{domain}" for domain in self.domains if f"mta-sts.{domain}" not in names]
        return tuple(names)

    @property
    def acme_challenges(self) -> tuple[str, ...]:
        """The ACME challenge types answered, most preferred first (``[acme] challenge``):
        HTTP-01 where port 80 is ours, TLS-ALPN-01 (RFC 8737) on the HTTPS listener."""
        https = any(listener.kind == "https" for listener in self.http_listeners)
        alpn = ("tls-alpn-01",) if https else ()
        chosen = self.acme.challenge
        if chosen == "auto":
            chosen = "http-01" if self.acme_http_listeners or not https else "tls-alpn-01"
        return ("tls-alpn-01",) if chosen == "tls-alpn-01" else ("http-01", *alpn)

    @property
    def acme_listeners(self) -> tuple[Listener, ...]:
        """Where the HTTP-01 challenge responder listens: none unless ``[acme]`` is enabled and
        HTTP-01 is among its challenges."""
        if not self.acme.enabled or "http-01" not in self.acme_challenges:
            return ()
        return self.acme_http_listeners or (DEFAULT_ACME_HTTP_LISTENER,)

    @property
    def local_socket_path(self) -> Path:
        """Where ``local_socket`` listens, and where ``postoffice sendmail`` looks for it."""
        return local_socket_path(self.data_dir)

    @property
    def index_file(self) -> Path:
        """The web side's mailbox index: a cache of the Maildirs, rebuilt by ``reindex``."""
        return self.data_dir / "index.sqlite3"

    @property
    def verify_authentication(self) -> bool:
        """Whether mail from outside gets SPF, DKIM, DMARC and ARC verified (``[authentication]
        verify``; unset: on unless in capture mode)."""
        verify = self.authentication.verify
        return not self.capture_mode if verify is None else verify

    @property
    def chaos_allowed(self) -> bool:
        """Fault injection may be switched on (smtpd/chaos.py)."""
        return self.capture_mode or self.allow_chaos

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains

    @property
    def srs_secret_file(self) -> Path:
        """Where the SRS secrets are (``[authentication] srs_secret_file``, else in data_dir)."""
        given = self.authentication.srs_secret_file
        return self.data_dir / "srs.secret" if given is None else given


def _listen(given: dict[str, Any]) -> dict[str, Any]:
    # In the order given (the file's, then flags adding kinds it had not set). The default
    # listener applies only when no listener of any kind is configured.
    # Only SMTP listeners count: HTTP, the ACME responder and POP3 are beside them (a server
    # that lets mail be read still receives it).
    found = tuple(listener for kind, group in given.items() if kind in LISTENER_KINDS for listener in group)
    built: dict[str, Any] = {"listeners": found or (DEFAULT_SMTP_LISTENER,)}
    if "http" in given or "https" in given:
        # HTTPS serves the same web side: its listeners join HTTP's (or are alone, with
        # http = []); each listener's kind says which it is.
        http = tuple(given["http"]) if "http" in given else (DEFAULT_HTTP_LISTENER,)
        built["http_listeners"] = http + tuple(given.get("https", ()))
    if "acme_http" in given:
        built["acme_http_listeners"] = tuple(given["acme_http"])
    built["pop3_listeners"] = tuple(
        listener for kind in POP3_LISTENER_KINDS for listener in given.get(kind, ())
    )
    built["imap_listeners"] = tuple(listener for kind in IMAP_KINDS for listener in given.get(kind, ()))
    return built


def _proxy_protocol(given: dict[str, Any]) -> dict[str, Any]:
    kinds = frozenset(kind for kind in LISTENER_KINDS if given.get(kind))
    return {"proxy_protocol": ProxyProtocol(kinds, given.get("trusted", ()))}


def _table(name: str, cls: type, help: str) -> Section:
    return Section(name, cls, help, lambda given: {name: cls(**given)})


# The file's tables, in the order the loader reads them and the reference lists them.
SECTIONS = (
    Section("", Config, "Where the server lives, what it is called, and how it runs.", dict),
    Section(
        "listen",
        ListenKeys,
        'Listeners as "HOST:PORT" ([IPV6]:PORT for IPv6; port 0 picks a free port); flags replace'
        " the file's listeners of their kind.",
        _listen,
    ),
    _table("tls", TLSConfig, "The server's certificate; paths are relative to the file's directory."),
    _table(
        "acme",
        AcmeSettings,
        "Automatic certificates from an ACME CA (RFC 8555), Let's Encrypt by default; see"
        " docs/certificates.md.",
    ),
    _table("auth", AuthConfig, "SMTP AUTH (PLAIN and LOGIN, RFC 4954), offered only inside TLS."),
    Section(
        "proxy_protocol",
        ProxyProtocolKeys,
        "Listeners behind a load balancer that sends a PROXY protocol header (HAProxy send-proxy,"
        " AWS NLB, ...); the client address in it is used for limits, logs and Received: lines.",
        _proxy_protocol,
    ),
    _table("limits", Limits, "Resource limits for SMTP sessions."),
    _table("retention", RetentionSettings, "How much captured mail is kept (see testing-toolkit.md)."),
    Section(
        "webhooks",
        Webhook,
        "Each event is POSTed as JSON to every webhook that asks for it, queued on disk and retried"
        " for a day (see testing-toolkit.md).",
        lambda given: {"webhooks": tuple(Webhook(**entry) for entry in given.get("entries", ()))},
        many=True,
    ),
    _table(
        "queue",
        QueueSettings,
        "The outbound queue, in Postfix's names and defaults (postconf(5)); see postoffice queue list.",
    ),
    _table(
        "delivery",
        DeliverySettings,
        "How mail leaves: into local mailboxes, and to the MX hosts of other domains (RFC 5321 §5.1)"
        " or through one relay.",
    ),
    _table(
        "authentication",
        AuthenticationSettings,
        "Mail authentication: DKIM signatures on mail that leaves (RFC 6376); verifying mail from"
        " outside (SPF, DKIM, DMARC and ARC into an Authentication-Results field, RFC 8601) and"
        " acting on DMARC policies.",
    ),
    _table(
        "mta_sts",
        MtaStsSettings,
        "Our MTA-STS policy (RFC 8461), served on the HTTP listener to Host mta-sts.DOMAIN for each"
        " local domain; postoffice dns prints its records.",
    ),
    _table(
        "tls_reporting",
        TlsReporting,
        "TLS reporting (RFC 8460): daily reports to the domains we deliver to, and the record that"
        " asks others for theirs.",
    ),
    _table(
        "storage",
        StorageSettings,
        "Where mail is kept: the data directory's files (embedded), or one PostgreSQL database"
        " shared by several nodes (docs/cluster.md).",
    ),
)
