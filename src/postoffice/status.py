"""``postoffice status``: fetch ``/api/v1/status`` from a running server and summarise it.

Untrusted input seen here: the JSON answer of whatever listens at the given address; every
field is read defensively and printed as text, so a wrong server gives a clear error line.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from postoffice.errors import PostofficeError


class StatusError(PostofficeError):
    """The server could not be asked, or its answer is not a postoffice status."""


def fetch_status(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"http://{netloc}/api/v1/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(1_000_000)
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach {url}: {reason}; is the server running with --http?") from None
    try:
        status = json.loads(body)
    except ValueError:
        raise StatusError(f"{url}: the answer is not JSON") from None
    if not isinstance(status, dict) or "queue" not in status:
        raise StatusError(f"{url}: the answer is not a postoffice status")
    return status


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s"


def _cluster_lines(status: dict[str, Any]) -> list[str]:
    """A cluster node's name, its database, the cluster's queue and nodes (docs/cluster.md)."""
    cluster = status.get("cluster")
    if not isinstance(cluster, dict):
        return []
    queue = cluster.get("queue")
    lines = [
        f"  node {status.get('node', '?')} of a cluster; database {cluster.get('database', '?')}"
        + (f"; cluster queue: {queue} messages" if isinstance(queue, int) else "")
    ]
    for node in cluster.get("nodes", []):
        if isinstance(node, dict):
            state = "up" if node.get("up") else "GONE"
            lines.append(
                f"    {node.get('name', '?')}: {state}, {node.get('version', '?')},"
                f" started {node.get('started', '?')}, seen {node.get('seen_seconds_ago', '?')}s ago"
            )
    return lines


def render_status(status: dict[str, Any]) -> str:
    """One screen: who, where, how busy, what went wrong lately."""
    lines = [
        f"postoffice {status.get('version', '?')} on {status.get('hostname', '?')}"
        f" (pid {status.get('pid', '?')}, up {_duration(float(status.get('uptime_seconds', 0)))})"
        f" {'ready' if status.get('ready') else 'NOT READY'}",
    ]
    for listener in status.get("listeners", []):
        lines.append(f"  listening {listener}")
    workers = status.get("workers", 1)
    if isinstance(workers, int) and workers > 1:
        lines.append(f"  workers: {workers} (the figures below are their sum)")
    lines.append(f"  sessions open: {status.get('sessions', 0)}")
    queue = status.get("queue", {})
    if isinstance(queue, dict) and queue:  # a node waiting for its database has none yet
        lines.append("  queue: " + ", ".join(f"{state} {count}" for state, count in queue.items()))
    lines += _cluster_lines(status)
    for certificate in status.get("certificates", []):
        if isinstance(certificate, dict):
            names = certificate.get("names") or [certificate.get("subject", "?")]
            lines.append(
                f"  certificate ({certificate.get('source', '?')}): {', '.join(map(str, names))}"
                f" expires {certificate.get('not_after', '?')}"
            )
    errors = status.get("recent_errors", [])
    if errors:
        lines.append(f"  recent errors ({len(errors)}, newest last):")
        for error in errors[-10:]:
            if isinstance(error, dict):
                lines.append(
                    f"    {error.get('time', '')} {error.get('level', '')} {error.get('message', '')}"[:200]
                )
    else:
        lines.append("  recent errors: none")
    return "\n".join(lines)
