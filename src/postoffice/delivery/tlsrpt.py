"""TLS reporting (RFC 8460): the outbound TLS results of each day, counted per policy domain.

Untrusted input seen here: the names and addresses of remote mail servers (from DNS) and the
policy strings of their domains (MTA-STS or TLSA records, once those are looked up); they are
stored as data (SQLite parameters), never interpreted.

Every process that delivers (``serve --workers N`` runs several) adds to one SQLite database
in the data directory, ``<data-dir>/tlsrpt.sqlite3``, in WAL mode: a count is one UPSERT, so
concurrent writers never lose an increment, and what was counted survives a restart. The daily
report (:mod:`postoffice.tlsrpt`) reads a finished day from it and claims the day's report for
a domain with one INSERT, so two processes never send the same report twice.

The result types are RFC 8460 §4.3's; the policy types §4.4's (``sts``, ``tlsa``,
``no-policy-found``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from postoffice.client.connection import SmtpClient
from postoffice.delivery.dns import Endpoint

log = logging.getLogger("postoffice.tlsrpt")

FILE_NAME = "tlsrpt.sqlite3"
# Another process holding the write lock is waited for this long (a write takes microseconds).
BUSY_TIMEOUT_MS = 5000

# RFC 8460 §4.3.
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
VALIDATION_FAILURE = "validation-failure"
RESULT_TYPES = frozenset(
    {
        STARTTLS_NOT_SUPPORTED,
        CERTIFICATE_HOST_MISMATCH,
        CERTIFICATE_EXPIRED,
        CERTIFICATE_NOT_TRUSTED,
        VALIDATION_FAILURE,
        "tlsa-invalid",
        "dnssec-invalid",
        "dane-required",
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    }
)
POLICY_TYPES = frozenset({"sts", "tlsa", "no-policy-found"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    day TEXT NOT NULL,
    domain TEXT NOT NULL,
    policy_type TEXT NOT NULL,
    policy_string TEXT NOT NULL,
    mx_host TEXT NOT NULL,
    result_type TEXT NOT NULL,
    sending_ip TEXT NOT NULL,
    receiving_mx TEXT NOT NULL,
    receiving_ip TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, domain, policy_type, policy_string, mx_host, result_type,
                 sending_ip, receiving_mx, receiving_ip)
);
CREATE TABLE IF NOT EXISTS sent (
    day TEXT NOT NULL,
    domain TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (day, domain)
);
"""


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """The policy a session was held to (RFC 8460 §4.4 "policy"): its type, and for ``sts`` and
    ``tlsa`` the policy's text, one string per line or record, and the MX patterns of ``sts``."""

    type: str = "no-policy-found"
    strings: tuple[str, ...] = ()
    mx_hosts: tuple[str, ...] = ()


NO_POLICY = TlsPolicy()


@dataclass(frozen=True, slots=True)
class Count:
    """One row of a day: successes have ``result_type`` "" and no addresses."""

    domain: str
    policy: TlsPolicy
    result_type: str
    sending_ip: str
    receiving_mx: str
    receiving_ip: str
    count: int


def day_of(at: float) -> str:
    """The UTC day (YYYY-MM-DD) a result is counted under (RFC 8460 §4.4: UTC date ranges)."""
    return time.strftime("%Y-%m-%d", time.gmtime(at))


class TlsReportStore:
    """The counts, in ``<data-dir>/tlsrpt.sqlite3``. Methods block: call them off the event loop."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._connection is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
                )
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(_SCHEMA)
                self._connection = connection
            with self._connection as connection:  # one transaction
                yield connection

    def _exists(self) -> bool:
        return self._connection is not None or self.path.exists()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # --- recording (RFC 8460 §4.4 summary and failure-details) --------------------------------

    def record_success(self, domain: str, policy: TlsPolicy = NO_POLICY, *, at: float | None = None) -> None:
        """A session to ``domain``'s server that met its policy (TLS negotiated)."""
        self._add(domain, policy, "", "", "", "", at)

    def record_failure(
        self,
        domain: str,
        policy: TlsPolicy,
        result_type: str,
        sending_mta_ip: str,
        receiving_mx_hostname: str,
        receiving_ip: str = "",
        *,
        at: float | None = None,
    ) -> None:
        """A session that failed ``policy`` for ``result_type`` (one of :data:`RESULT_TYPES`)."""
        if result_type not in RESULT_TYPES:
            raise ValueError(f"not an RFC 8460 result type: {result_type!r}")
        self._add(domain, policy, result_type, sending_mta_ip, receiving_mx_hostname, receiving_ip, at)

    def _add(
        self,
        domain: str,
        policy: TlsPolicy,
        result_type: str,
        sending_ip: str,
        receiving_mx: str,
        receiving_ip: str,
        at: float | None,
    ) -> None:
        if policy.type not in POLICY_TYPES:
            raise ValueError(f"not an RFC 8460 policy type: {policy.type!r}")
        row = (
            day_of(time.time() if at is None else at),
            domain.lower().rstrip("."),
            policy.type,
            json.dumps(list(policy.strings)),
            json.dumps(list(policy.mx_hosts)),
            result_type,
            sending_ip,
            receiving_mx.lower().rstrip("."),
            receiving_ip,
        )
        with self._db() as db:
            db.execute(
                "INSERT INTO counts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
                " ON CONFLICT DO UPDATE SET count = count + 1",
                row,
            )

    # --- reading and claiming, for the daily report -------------------------------------------

    def pending(self, before: str) -> list[tuple[str, str]]:
        """(day, domain) pairs of days before ``before`` whose report nobody has claimed yet."""
        if not self._exists():
            return []  # nothing counted yet: no database is made just to look
        with self._db() as db:
            rows = db.execute(
                "SELECT DISTINCT day, domain FROM counts WHERE day < ?"
                " AND NOT EXISTS (SELECT 1 FROM sent WHERE sent.day = counts.day"
                " AND sent.domain = counts.domain) ORDER BY day, domain",
                (before,),
            ).fetchall()
        return [(str(day), str(domain)) for day, domain in rows]

    def counts(self, day: str, domain: str) -> list[Count]:
        if not self._exists():
            return []
        with self._db() as db:
            rows = db.execute(
                "SELECT policy_type, policy_string, mx_host, result_type, sending_ip, receiving_mx,"
                " receiving_ip, count FROM counts WHERE day = ? AND domain = ? ORDER BY rowid",
                (day, domain),
            ).fetchall()
        return [
            Count(
                domain,
                TlsPolicy(kind, tuple(json.loads(strings)), tuple(json.loads(mx))),
                result,
                sending,
                mx_name,
                receiving,
                int(count),
            )
            for kind, strings, mx, result, sending, mx_name, receiving, count in rows
        ]

    def claim(self, day: str, domain: str) -> bool:
        """Take the report of ``domain`` for ``day``: True for exactly one caller, ever."""
        with self._db() as db:
            cursor = db.execute("INSERT OR IGNORE INTO sent VALUES (?, ?, ?)", (day, domain, time.time()))
            return cursor.rowcount == 1

    def release(self, day: str, domain: str) -> None:
        """Give a claim back (the report could not be queued; the next round tries again)."""
        with self._db() as db:
            db.execute("DELETE FROM sent WHERE day = ? AND domain = ?", (day, domain))


def classify_tls_error(message: str, *, offered: bool) -> str:
    """The RFC 8460 §4.3 result type of a failed TLS negotiation, from the client's error text
    (:mod:`postoffice.client.session` words certificate errors with OpenSSL's verify message)."""
    if not offered:
        return STARTTLS_NOT_SUPPORTED
    lowered = message.lower()
    if "certificate was not accepted" not in lowered:
        return VALIDATION_FAILURE
    if "mismatch" in lowered:
        return CERTIFICATE_HOST_MISMATCH
    if "expired" in lowered:
        return CERTIFICATE_EXPIRED
    return CERTIFICATE_NOT_TRUSTED


def summarize(counts: Sequence[Count]) -> tuple[int, int]:
    """(successful, failed) session counts."""
    ok = sum(c.count for c in counts if not c.result_type)
    return ok, sum(c.count for c in counts if c.result_type)


@dataclass(frozen=True, slots=True)
class SessionTls:
    """What one outbound connection's TLS came to, as the remote agent saw it."""

    domain: str  # the policy domain: the recipients' domain
    receiving_mx: str
    receiving_ip: str
    sending_ip: str
    tls_active: bool
    starttls_offered: bool
    error: str | None = None  # the TLS error, when the negotiation failed
    policy: TlsPolicy = NO_POLICY


def record_session(store: TlsReportStore, session: SessionTls) -> None:
    """Count one session: a success when TLS was negotiated, else its failure type. Never
    raises: a report database that cannot be written is one log line, and delivery goes on."""
    try:
        if session.error is None and session.tls_active:
            store.record_success(session.domain, session.policy)
            return
        if session.error is None and session.starttls_offered:
            return  # TLS was not asked for (policy "none"): nothing to report
        result = classify_tls_error(session.error or "", offered=session.starttls_offered)
        store.record_failure(
            session.domain,
            session.policy,
            result,
            session.sending_ip,
            session.receiving_mx,
            session.receiving_ip,
        )
    except (sqlite3.Error, OSError, ValueError) as exc:
        log.warning("event=tlsrpt-not-recorded domain=%s reason=%r", session.domain, str(exc))


def local_address(sock: socket.socket) -> str:
    """Our end of a connected socket: the sending MTA's address in a TLS report."""
    try:
        return str(sock.getsockname()[0])
    except OSError:
        return ""


async def note_session(
    store: TlsReportStore | None,
    domain: str | None,
    endpoint: Endpoint,
    local: str,
    client: SmtpClient,
    error: str | None,
    policy: TlsPolicy = NO_POLICY,
) -> None:
    """The remote agent's hook, where a session's TLS outcome is known: count it for ``domain``
    (None: not reported, as for the relay), off the event loop."""
    if store is None or domain is None:
        return
    session = SessionTls(
        domain=domain,
        receiving_mx=endpoint.host,
        receiving_ip=endpoint.address,
        sending_ip=local,
        tls_active=client.tls_active,
        starttls_offered="STARTTLS" in client.extensions,
        error=error,
        policy=policy,
    )
    await asyncio.to_thread(record_session, store, session)
