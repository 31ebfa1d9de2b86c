"""Prometheus metrics of one postoffice process, and the hooks that update them.

Untrusted input seen here: none; label values come from this code's own fixed vocabularies
(outcomes, states, mechanism names), never from client text, so a client cannot grow the
number of time series.

Every metric the operator can rely on is defined here, once, in its own registry (not the
process-global default one, so that two servers in one test process do not share counts).
Other modules call the small hook functions below instead of touching metric objects, so the
names and labels stay in one place (Prometheus naming practice: ``postoffice_`` prefix, base
units, ``_total`` for counters).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SESSION_OUTCOMES = ("quit", "disconnect", "timeout", "refused", "errors", "shutdown", "proxy-refused")
MESSAGE_OUTCOMES = ("accepted", "rejected", "deferred", "bounced", "delivered")
TLS_OUTCOMES = ("ok", "failed")
AUTH_OUTCOMES = ("ok", "failed", "cancelled")

# Local delivery takes milliseconds, remote delivery seconds to minutes (retries are separate
# observations), so the buckets span both.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The metric objects of one server process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Counter(
            "postoffice_connections", "SMTP connections accepted by the listeners", ["listener"], registry=r
        )
        self.sessions_active = Gauge("postoffice_sessions_active", "SMTP sessions open now", registry=r)
        self.sessions = Counter(
            "postoffice_sessions", "SMTP sessions ended, by how they ended", ["outcome"], registry=r
        )
        self.messages = Counter(
            "postoffice_messages",
            "Messages by outcome: accepted (250 at end of DATA), rejected (5xx at end of data), "
            "deferred and bounced (delivery), delivered",
            ["outcome"],
            registry=r,
        )
        self.recipients_rejected = Counter(
            "postoffice_recipients_rejected", "RCPT commands refused by policy", registry=r
        )
        self.received_bytes = Counter(
            "postoffice_received_bytes", "Octets of message content accepted into the spool", registry=r
        )
        self.delivery_latency = Histogram(
            "postoffice_delivery_latency_seconds",
            "Time from acceptance (250) to final delivery of each recipient",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tls_handshakes = Counter(
            "postoffice_tls_handshakes", "STARTTLS / implicit TLS handshakes", ["outcome"], registry=r
        )
        self.auth_attempts = Counter(
            "postoffice_auth_attempts", "SMTP AUTH attempts", ["mechanism", "outcome"], registry=r
        )
        self.spool_errors = Counter(
            "postoffice_spool_errors", "Messages refused because the spool could not store them", registry=r
        )
        self._testing_toolkit(r)
        self.authentication_results = Counter(
            "postoffice_authentication_results",
            "Mail authentication results of incoming mail, by method (spf, dkim, dmarc, arc) and result",
            ["method", "result"],
            registry=r,
        )
        self.queue_size = _QueueCollector()
        r.register(self.queue_size)
        self.certificates = _CertificateCollector()
        r.register(self.certificates)
        self.cluster = _ClusterCollector()
        r.register(self.cluster)
        # Every series of a fixed vocabulary exists from the start (reads 0, not absent) and is
        # bound once: labels() takes a lock and a dictionary look-up, several times per message.
        self._session_outcomes = {outcome: self.sessions.labels(outcome) for outcome in SESSION_OUTCOMES}
        self._message_outcomes = {outcome: self.messages.labels(outcome) for outcome in MESSAGE_OUTCOMES}
        self._tls_outcomes = {outcome: self.tls_handshakes.labels(outcome) for outcome in TLS_OUTCOMES}
        # Listener kinds and routes are few and known only as they come: bound at first use.
        self._listener_connections: dict[str, Counter] = {}
        self._route_latency: dict[str, Histogram] = {}

    def exposition(self) -> bytes:
        """The text format scraped at ``/metrics``."""
        return generate_latest(self.registry)

    # --- hooks ------------------------------------------------------------------------------

    def connection_opened(self, listener: str) -> None:
        counter = self._listener_connections.get(listener)
        if counter is None:
            counter = self._listener_connections[listener] = self.connections.labels(listener)
        counter.inc()
        self.sessions_active.inc()

    def session_ended(self, outcome: str) -> None:
        self.sessions_active.dec()
        sessions = self._session_outcomes
        sessions.get(outcome, sessions["disconnect"]).inc()

    def proxy_refused(self) -> None:
        """A connection on a PROXY protocol listener closed before any session began."""
        self._session_outcomes["proxy-refused"].inc()

    def message_accepted(self, size: int) -> None:
        self._message_outcomes["accepted"].inc()
        self.received_bytes.inc(size)

    def message_rejected(self) -> None:
        self._message_outcomes["rejected"].inc()

    def recipient_rejected(self) -> None:
        self.recipients_rejected.inc()

    def spool_failed(self) -> None:
        self.spool_errors.inc()

    def delivered(self, route: str, seconds: float) -> None:
        self._message_outcomes["delivered"].inc()
        latency = self._route_latency.get(route)
        if latency is None:
            latency = self._route_latency[route] = self.delivery_latency.labels(route)
        latency.observe(max(seconds, 0.0))

    def deferred(self) -> None:
        self._message_outcomes["deferred"].inc()

    def bounced(self) -> None:
        self._message_outcomes["bounced"].inc()

    def tls_handshake(self, ok: bool) -> None:
        self._tls_outcomes["ok" if ok else "failed"].inc()

    def auth_attempt(self, mechanism: str, outcome: str) -> None:
        # Mechanism names come from our own advertised list; anything else is folded.
        mechanism = mechanism.upper() if mechanism.upper() in ("PLAIN", "LOGIN", "CRAM-MD5") else "other"
        self.auth_attempts.labels(mechanism, outcome if outcome in AUTH_OUTCOMES else "failed").inc()

    def authentication_result(self, method: str, result: str) -> None:
        # Results come from our verifiers' fixed vocabularies (RFC 8601 §2.7).
        self.authentication_results.labels(method, result).inc()

    def _testing_toolkit(self, r: CollectorRegistry) -> None:
        """Webhooks and fault injection (docs/testing-toolkit.md)."""
        self.webhook_deliveries = Counter(
            "postoffice_webhook_deliveries", "Webhook POSTs by outcome", ["outcome"], registry=r
        )
        self.webhook_pending = Gauge("postoffice_webhook_pending", "Webhook deliveries queued", registry=r)
        self.chaos_rules = Gauge("postoffice_chaos_rules", "Fault-injection rules in force", registry=r)
        self.chaos_replies = Counter(
            "postoffice_chaos_injected", "Faults injected, by stage", ["stage"], registry=r
        )

    def webhook_delivery(self, outcome: str) -> None:
        # delivered, retry or failed (web/webhooks.py).
        self.webhook_deliveries.labels(outcome).inc()

    def chaos_injected(self, stage: str) -> None:
        # Stages come from smtpd/chaos.py STAGES, a fixed vocabulary.
        self.chaos_replies.labels(stage).inc()

    def watch_chaos(self, rules: Callable[[], int]) -> None:
        """Report ``rules()`` (fault-injection rules in force) at every scrape."""
        self.chaos_rules.set_function(rules)

    def watch_queue(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Report ``counts()`` (messages by queue state) at every scrape."""
        self.queue_size.source = counts

    def watch_certificates(self, certificates: Callable[[], Sequence[tuple[str, datetime.datetime]]]) -> None:
        """Report each certificate in use, ``(source, not_after)``, at every scrape."""
        self.certificates.source = certificates

    def watch_cluster(self, figures: Callable[[], ClusterFigures | None]) -> None:
        """Report a cluster node's view of the cluster (docs/cluster.md) at every scrape."""
        self.cluster.source = figures


class ClusterFigures(NamedTuple):
    """What a cluster node reports of itself and the cluster (labels: node names, which come
    from the nodes' configuration, never from clients)."""

    node: str
    database_up: bool
    nodes: Sequence[tuple[str, float]]  # each node's name and seconds since it was last seen
    queue: int | None  # the shared queue's messages (None: not known)


class _ClusterCollector(Collector):
    """``postoffice_node_info{node}``, ``postoffice_database_up``,
    ``postoffice_cluster_node_seen_seconds{node}`` and ``postoffice_cluster_queue_messages``:
    nothing at all in a server that is not a cluster node."""

    def __init__(self) -> None:
        self.source: Callable[[], ClusterFigures | None] = lambda: None

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("postoffice_node_info", "This cluster node's name", labels=["node"]),
            GaugeMetricFamily("postoffice_database_up", "1 while the cluster's database answers this node"),
            GaugeMetricFamily(
                "postoffice_cluster_node_seen_seconds",
                "Seconds since each node of the cluster last wrote its heartbeat",
                labels=["node"],
            ),
            GaugeMetricFamily("postoffice_cluster_queue_messages", "Messages in the cluster's shared queue"),
        ]

    def collect(self) -> list[GaugeMetricFamily]:
        figures = self.source()
        if figures is None:
            return []
        info, up, seen, queue = self._families()
        info.add_metric([figures.node], 1)
        up.add_metric([], 1 if figures.database_up else 0)
        for name, seconds in figures.nodes:
            seen.add_metric([name], seconds)
        found = [info, up, seen]
        if figures.queue is not None:
            queue.add_metric([], figures.queue)
            found.append(queue)
        return found

    def describe(self) -> list[GaugeMetricFamily]:
        return self._families()


CERTIFICATE_EXPIRY = "postoffice_certificate_expiry_timestamp_seconds"


class _CertificateCollector(Collector):
    """``postoffice_certificate_expiry_timestamp_seconds{source=...}``: when the certificate the
    TLS listeners present stops being valid (its not-after, Unix time), by where it came from
    (acme, self-signed, file); alert on ``... - time() < 14 * 86400``."""

    def __init__(self) -> None:
        self.source: Callable[[], Sequence[tuple[str, datetime.datetime]]] = tuple

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            CERTIFICATE_EXPIRY,
            "When the TLS certificate in use expires (not-after, Unix time)",
            labels=["source"],
        )

    def collect(self) -> list[GaugeMetricFamily]:
        family = self._family()
        for source, not_after in self.source():
            family.add_metric([source], not_after.timestamp())
        return [family]

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]


class _QueueCollector(Collector):
    """``postoffice_queue_messages{state=...}``, read at scrape time rather than kept in step."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "postoffice_queue_messages", "Messages in the queue by state", labels=["state"]
        )
        for state, count in sorted(self.source().items()):
            family.add_metric([state], count)
        return [family]

    def describe(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("postoffice_queue_messages", "Messages in the queue by state", labels=["state"])
        ]


_current = Metrics()


def current() -> Metrics:
    """The process's metrics (replaced by :func:`reset` when an application starts)."""
    return _current


def reset() -> Metrics:
    """Fresh metrics for a new application in this process."""
    global _current
    _current = Metrics()
    return _current
