"""The settings of each table of the file: ``[limits]``, ``[queue]``, ``[delivery]``, ``[tls]``, ...

Untrusted input seen here: none; this module declares. :mod:`postoffice.config.loader` reads
the file against it.

Each key is a field made with :func:`~postoffice.config.schema.setting`: its type, default,
floor, ceiling, one line of help and the ``serve`` option that overrides it, in one place.
Defaults that the protocol core, the queue or the remote agent also use come from
:mod:`postoffice.defaults`. The top level of the file, and the map from tables to these
classes, are in :mod:`postoffice.config.model`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from postoffice import defaults as d
from postoffice.config.kinds import (
    ADDRESS,
    BOOLEAN,
    COUNT,
    DNS_SERVER,
    DOMAINS,
    DURATION,
    EVENTS,
    HTTPS_URL,
    NETWORKS,
    PATH,
    PORT,
    RELAY_HOST,
    RELAY_TLS_MODES,
    RELAY_USER,
    SECRET,
    SIZE,
    STS_MODES,
    TLS_POLICY,
    TLS_VERSION,
    WEBHOOK_EVENTS,
    WEBHOOK_URL,
    choice_of,
)
from postoffice.config.schema import Bound, setting


def in_networks(address: str, networks: tuple[str, ...]) -> bool:
    """Whether the client ``address`` (an IPv4-mapped IPv6 address counts as its IPv4 one; a
    scope suffix is ignored) lies in one of ``networks`` (CIDRs)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for SMTP sessions; ``[limits]`` in the file."""

    command_line: int = setting(
        d.COMMAND_LINE,
        SIZE,
        "Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).",
        floor=Bound(
            d.MIN_COMMAND_LINE,
            f"RFC 5321 §4.5.3.1.4 requires accepting command lines of {d.MIN_COMMAND_LINE} octets",
        ),
    )
    text_line: int = setting(
        d.TEXT_LINE,
        SIZE,
        "Longest line of message text, CRLF included (RFC 5321 §4.5.3.1.6); 0 accepts any length.",
        floor=Bound(
            d.MIN_TEXT_LINE,
            f"RFC 5321 §4.5.3.1.6 requires accepting text lines of {d.MIN_TEXT_LINE} octets"
            " (0 turns the check off)",
        ),
        off=0,
    )
    message_size: int = setting(
        d.MESSAGE_SIZE,
        SIZE,
        "Largest message, announced with SIZE (RFC 1870); large providers accept 25 MiB today.",
        floor=Bound(d.MIN_MESSAGE_SIZE, "RFC 5321 §4.5.3.1.7 requires at least 64KiB"),
    )
    recipients: int = setting(
        d.RECIPIENTS,
        COUNT,
        "Recipients per message (Postfix smtpd_recipient_limit).",
        floor=Bound(
            d.MIN_RECIPIENTS,
            f"RFC 5321 §4.5.3.1.8 requires accepting at least {d.MIN_RECIPIENTS} recipients",
        ),
    )
    connections: int = setting(1000, COUNT, "Concurrent SMTP sessions, all listeners together.")
    connections_per_client: int = setting(
        50,
        COUNT,
        "Concurrent sessions from one client address (Postfix smtpd_client_connection_count_limit);"
        " trusted_networks are exempt.",
    )
    errors_per_session: int = setting(
        d.ERRORS_PER_SESSION,
        COUNT,
        "Error replies in one session before 421 and close (Postfix smtpd_hard_error_limit).",
    )
    junk_commands: int = setting(
        100,
        COUNT,
        "NOOP, RSET, VRFY, EXPN and ETRN without a message accepted in between; the last is"
        " answered, then 421 and close (Postfix smtpd_junk_command_limit).",
    )
    command_timeout: float = setting(
        300.0,
        DURATION,
        "Waiting for the next command (RFC 5321 §4.5.3.2.7: at least 5 minutes); only a complete"
        " command restarts it.",
    )
    data_block_timeout: float = setting(
        180.0, DURATION, "Waiting for each block of message data (RFC 5321 §4.5.3.2.5)."
    )
    data_done_timeout: float = setting(
        600.0, DURATION, "Waiting for the whole message after DATA (RFC 5321 §4.5.3.2.6)."
    )
    trusted_networks: tuple[str, ...] = setting(
        ("127.0.0.0/8", "::1/128"),
        NETWORKS,
        "Clients exempt from the per-client limits (Postfix smtpd_client_event_limit_exceptions).",
    )

    def is_trusted(self, address: str) -> bool:
        return in_networks(address, self.trusted_networks)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How the queue retries and how many deliveries run at once; ``[queue]`` in the file.

    Names and defaults are Postfix's (postconf(5)), so an operator's intuition carries over.
    """

    minimal_backoff_time: float = setting(
        d.MINIMAL_BACKOFF_TIME,
        DURATION,
        "The first retry after a temporary failure; then twice as long each time.",
    )
    maximal_backoff_time: float = setting(
        d.MAXIMAL_BACKOFF_TIME, DURATION, "The longest wait between two attempts."
    )
    maximal_queue_lifetime: float = setting(
        d.MAXIMAL_QUEUE_LIFETIME,
        DURATION,
        "After this long in the queue the sender gets a non-delivery report (RFC 3464; RFC 5321"
        " §4.5.4.1: at least 4-5 days).",
    )
    delay_warning_time: float = setting(
        d.DELAY_WARNING_TIME,
        DURATION,
        'A "still trying" report to the sender once mail has waited this long.',
        off=0.0,
    )
    concurrency: int = setting(
        d.CONCURRENCY,
        COUNT,
        "Deliveries running at once, all destinations together; local ones share disk flushes.",
    )
    destination_concurrency: int = setting(
        d.DESTINATION_CONCURRENCY,
        COUNT,
        "Deliveries running at once to one remote destination, a domain or the relay host, to begin"
        " with (Postfix initial_destination_concurrency); it grows while the destination answers.",
    )
    destination_concurrency_limit: int = setting(
        d.DESTINATION_CONCURRENCY_LIMIT,
        COUNT,
        "The most deliveries at once to one remote destination: from destination_concurrency, one"
        " more with each delivery that reached it, and back when one could not (Postfix"
        " default_destination_concurrency_limit).",
    )
    group_commit: bool = setting(
        False,
        BOOLEAN,
        "Make accepted messages and local deliveries durable in groups: the commits of the same"
        " few milliseconds share one syncfs(2) of the file system instead of an fsync of each file"
        " and its directory. Faster where the data directory's file system is otherwise quiet,"
        " slower where other programs keep it busy (docs/delivery.md, Group commit).",
    )


@dataclass(frozen=True, slots=True)
class Webhook:
    """One ``[[webhooks]]`` entry: where events are POSTed, which ones, and the signing key."""

    url: str = setting("", WEBHOOK_URL, "Where each event is POSTed as JSON (required).", default_text="none")
    events: tuple[str, ...] = setting(
        WEBHOOK_EVENTS, EVENTS, "The events to send; delivery.failed is a recipient's final failure."
    )
    secret: str = setting(
        "",
        SECRET,
        "Signs each body: X-Postoffice-Signature: sha256=<hex HMAC-SHA256 of the body with this key>.",
        default_text="none: unsigned",
    )


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """How much captured mail is kept; ``[retention]`` in the file. Pruned in the background by
    the process that keeps the web index, oldest (lowest id) first; 0 keeps everything."""

    max_messages: int = setting(0, COUNT, "Keep at most this many messages in all, the newest.", off=0)
    max_messages_per_mailbox: int = setting(
        0, COUNT, "Keep at most this many messages in each mailbox, the newest.", off=0
    )
    max_age: float = setting(0.0, DURATION, "Delete messages received longer ago than this.", off=0.0)
    check_interval: float = setting(60.0, DURATION, "How often the limits are applied.")
    keep_tagged: bool = setting(
        False,
        BOOLEAN,
        "Never delete a message with a tag (X-Tags, plus-address or the API); it does not count"
        " towards the limits either.",
    )
    keep_flagged: bool = setting(
        False,
        BOOLEAN,
        "Never delete a flagged (starred) message: the Maildir F flag, IMAP's \\Flagged; it does"
        " not count towards the limits either.",
    )

    @property
    def active(self) -> bool:
        return bool(self.max_messages or self.max_messages_per_mailbox or self.max_age)


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """How mail leaves: into local mailboxes, and to other domains; ``[delivery]`` in the file."""

    # The DNS server for MX lookups as (IP, port); None uses the system's.
    dns: tuple[str, int] | None = setting(
        None,
        DNS_SERVER,
        "The DNS server for MX and address lookups (port 53 if not given).",
        default_text="the system's resolvers (/etc/resolv.conf)",
        flag="--dns",
    )
    mx_port: int = setting(
        d.MX_PORT, PORT, "The TCP port of every mail exchanger (RFC 5321 §2.3.5).", flag="--mx-port"
    )
    relay_host: tuple[str, int] | None = setting(
        None,
        RELAY_HOST,
        "Send everything through this host (a smarthost) instead of looking up MX records; a name"
        " is looked up for its addresses only.",
        default_text="none: MX lookups",
        flag="--relay-host",
    )
    relay_user: str | None = setting(
        None,
        RELAY_USER,
        "Log in to the relay as this user (AUTH PLAIN or LOGIN, only inside TLS unless the relay is"
        " on loopback).",
        default_text="none: no login",
    )
    relay_password_file: Path | None = setting(
        None,
        PATH,
        "A file holding the relay password on its first line (never the password itself here).",
        default_text="none",
    )
    relay_tls: str = setting(
        d.RELAY_TLS,
        choice_of(RELAY_TLS_MODES),
        "To the relay: STARTTLS required (RFC 3207), implicit TLS (RFC 8314, usually port 465) or"
        " none; with TLS its certificate must be valid for its name.",
    )
    # Domain -> one of TLS_POLICIES, sorted; every other domain gets "may".
    tls_policy: tuple[tuple[str, str], ...] = setting(
        (),
        TLS_POLICY,
        'TLS per destination domain, as a [delivery.tls_policy] table: "none", "may" (encrypt when'
        " offered, certificate unchecked),"
        ' "require" (encrypted or not at all) or "verify" (and a certificate valid for the MX host).',
        default_text='"may" for every domain',
    )
    tls_ca_file: Path | None = setting(
        None,
        PATH,
        'CA certificates (PEM) for the relay and "verify" destinations, instead of the system\'s.',
        default_text="the system's CA certificates",
    )
    connect_timeout: float = setting(
        d.CONNECT_TIMEOUT, DURATION, "Waiting for a connection (Postfix smtp_connect_timeout)."
    )
    command_timeout: float = setting(
        d.REPLY_TIMEOUT, DURATION, "Waiting for each reply (RFC 5321 §4.5.3.2: 5 minutes)."
    )
    local_before_reply: bool = setting(
        True,
        BOOLEAN,
        "Write a message for one local mailbox into it before the 250, as an LMTP server delivers;"
        " false queues every message first (Postfix's way).",
    )
    mta_sts: bool = setting(
        True,
        BOOLEAN,
        "Honour other domains' MTA-STS policies (RFC 8461): in enforce mode mail goes only to the"
        " MX hosts the policy names, over TLS with a certificate valid for the MX name.",
    )
    mta_sts_port: int = setting(
        443,
        PORT,
        "The HTTPS port policies are fetched from (RFC 8461 §3.3 says 443; another only for tests).",
    )
    dns_validates: bool = setting(
        False,
        BOOLEAN,
        "The DNS server is a validating DNSSEC resolver this host trusts (on loopback or over a"
        " trusted path): its AD bit is believed, which turns on DANE for SMTP (RFC 7672).",
    )

    def tls_policy_for(self, domain: str) -> str:
        return dict(self.tls_policy).get(domain.lower(), "may")


@dataclass(frozen=True, slots=True)
class MtaStsSettings:
    """Our own MTA-STS policy (RFC 8461 §3.2), served to other servers; ``[mta_sts]`` in the file."""

    mode: str = setting(
        "off",
        choice_of(STS_MODES),
        'The policy served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt: "enforce", "testing",'
        ' "none" (withdraws one published before) or "off" (nothing served).',
    )
    max_age: float = setting(
        604800.0,
        DURATION,
        "How long senders keep the policy (RFC 8461 §3.2 recommends weeks).",
        floor=Bound(86400, "RFC 8461 §3.2 recommends weeks; less than a day defeats the cache"),
        ceiling=Bound(31557600, "RFC 8461 §3.2: at most 31557600 seconds"),
    )
    mx: tuple[str, ...] = setting(
        (),
        DOMAINS,
        "The MX host names the policy allows.",
        default_text="the host name",
    )


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The server certificate under ``[tls]``; with no ``cert`` a self-signed one is made."""

    cert: Path | None = setting(
        None,
        PATH,
        "The certificate chain (PEM) for STARTTLS and implicit TLS; re-read on SIGHUP.",
        default_text="none: a self-signed certificate for hostname, made once in <data_dir>/tls/",
        flag="--tls-cert",
    )
    # None: the key is in the ``cert`` file (one PEM with both, as ssl.load_cert_chain allows).
    key: Path | None = setting(
        None,
        PATH,
        "The private key (PEM) for cert; needs cert.",
        default_text="in the cert file",
        flag="--tls-key",
    )
    min_version: str = setting(
        "TLSv1.2",
        TLS_VERSION,
        'The oldest TLS version accepted ("1.2" also works); RFC 8996 retired 1.0 and 1.1.',
    )


# RFC 8555 directories of Let's Encrypt: production (the default) and staging (for trying out:
# higher rate limits, certificates no client trusts).
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


# [acme] challenge: how the CA validates each name.
ACME_CHALLENGES = ("auto", "http-01", "tls-alpn-01")


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    """Automatic certificates under ``[acme]`` (RFC 8555; HTTP-01 or TLS-ALPN-01 challenges)."""

    enabled: bool = setting(
        False,
        BOOLEAN,
        "Obtain the certificate from an ACME CA and renew it at two thirds of its lifetime; needs"
        " [listen] acme_http reachable as http://<each domain>/ (port 80), or [listen] https on"
        " port 443 (see challenge). Not with [tls] cert.",
    )
    email: str | None = setting(
        None,
        ADDRESS,
        "The contact address the CA is given for the account (expiry and policy notices).",
        default_text="none",
    )
    directory: str = setting(
        LETS_ENCRYPT,
        HTTPS_URL,
        f"The CA's directory URL; Let's Encrypt's staging is {LETS_ENCRYPT_STAGING}.",
    )
    domains: tuple[str, ...] = setting(
        (),
        DOMAINS,
        "The names the certificate is for (one certificate, all of them as subjectAltNames).",
        default_text='[hostname], plus "mta-sts.DOMAIN" for each local domain when [mta_sts] mode is not'
        ' "off" (the name senders fetch our policy from over HTTPS)',
    )
    challenge: str = setting(
        "auto",
        choice_of(ACME_CHALLENGES),
        "How the CA checks that each name is ours: http-01 (RFC 8555 §8.3, on [listen] acme_http,"
        " port 80), tls-alpn-01 (RFC 8737, on [listen] https, port 443), or auto: http-01 when"
        " [listen] acme_http is given or there is no https listener, else tls-alpn-01. With"
        " http-01 and an https listener, tls-alpn-01 is used where the CA offers no http-01.",
    )
    ca_file: Path | None = setting(
        None,
        PATH,
        "CA certificates (PEM) that the directory's HTTPS certificate is checked against: a private CA's.",
        default_text="the system's trust store",
    )
    retry_min: float = setting(
        600.0, DURATION, "The wait after a failed attempt; each further failure doubles it."
    )
    retry_max: float = setting(
        d.DAY, DURATION, "The longest wait between attempts (Let's Encrypt limits failed validations)."
    )


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """SMTP AUTH settings under ``[auth]``."""

    allow_plaintext_on_loopback: bool = setting(
        False,
        BOOLEAN,
        "Let programs on this machine log in over plaintext loopback connections; elsewhere AUTH"
        " is only offered inside TLS (RFC 4954 §4, RFC 8314).",
    )
    max_failures: int = setting(
        5,
        COUNT,
        "Failed logins from one client address (IPv6: its /64) within failure_window before 421 and"
        " disconnect (fail2ban's maxretry).",
    )
    failure_window: float = setting(
        600.0, DURATION, "How long a failed login counts against its client (fail2ban's findtime)."
    )
    failure_delay: float = setting(
        2.0,
        DURATION,
        "The n-th failure in the window waits n times this long before its 535 (Dovecot's"
        " auth_failure_delay).",
        off=0.0,
    )


@dataclass(frozen=True, slots=True)
class AuthenticationSettings:
    """Mail authentication under ``[authentication]``: DKIM-signing what leaves, and verifying
    the mail that arrives from outside.

    SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489) and ARC (RFC 8617) results go into one
    Authentication-Results field (RFC 8601). Authenticated submission is never checked.
    """

    sign: bool = setting(
        True,
        BOOLEAN,
        "DKIM-sign mail from a local domain that leaves through us (authenticated submission,"
        " bounces and reports) with its keys from `postoffice dkim generate` (RFC 6376).",
    )

    # None: on when local domains are configured (a real server), off in capture mode, where
    # there is usually no DNS and every captured message would wait on lookups.
    verify: bool | None = setting(
        None,
        BOOLEAN,
        "Verify SPF, DKIM, DMARC and ARC on mail from outside and add an Authentication-Results"
        " field (RFC 8601).",
        default_text="true when domains are configured, false in capture mode",
    )
    enforce: bool = setting(
        True,
        BOOLEAN,
        "Act on DMARC failures: p=reject gets 550 5.7.1 at the end of the message, p=quarantine"
        " files it in the recipient's Junk folder. false only records the results.",
    )
    skip_networks: tuple[str, ...] = setting(
        (),
        NETWORKS,
        "Clients whose mail is not verified (a backup MX, a trusted relay); loopback is checked"
        " like any other client unless listed.",
    )
    skip_domains: tuple[str, ...] = setting(
        (),
        DOMAINS,
        "Sender domains (MAIL FROM or From) whose mail is not verified.",
    )
    dns_timeout: float = setting(
        5.0,
        DURATION,
        "Waiting for one DNS answer while verifying; a lookup that times out is a temperror,"
        " recorded and never a rejection.",
    )
    srs_secret_file: Path | None = setting(
        None,
        PATH,
        "The SRS secrets for mail an alias forwards outside, one a line: the first signs, every"
        " one is accepted on bounces (rotation). Without it <data-dir>/srs.secret is used, made"
        " with a random secret (mode 0600) on first use.",
        default_text="<data-dir>/srs.secret",
    )

    def skips_network(self, address: str) -> bool:
        return in_networks(address, self.skip_networks)
