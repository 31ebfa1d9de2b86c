"""Serving our MTA-STS policy (RFC 8461 §3.2) at ``/.well-known/mta-sts.txt`` to ``Host:
mta-sts.DOMAIN`` for each local domain, on the web listener.

Untrusted input seen here: the request's method, path and ``Host`` header, only compared with
fixed strings. The policy is answered before the web application's own checks (which answer
only loopback names when the API is open), since other mail servers ask for it by its public
name; every other request goes on to the application unchanged.

Senders fetch the policy over HTTPS with a certificate valid for ``mta-sts.DOMAIN`` (§3.3):
``[listen] https`` serves it with the server's certificate (ACME's includes those names), or a
TLS-terminating proxy in front of the plain HTTP listener does.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

WELL_KNOWN = "/.well-known/mta-sts.txt"


def _host_name(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            return host.rpartition(":")[0] if host.count(":") == 1 else host
    return ""


class MtaStsPolicy:
    """ASGI wrapper: the policy for the policy hosts' names, the application for the rest."""

    def __init__(self, app: ASGIApp, policy: str, domains: Iterable[str]) -> None:
        self.app = app
        self.policy = policy
        self.hosts = frozenset(f"mta-sts.{domain.lower().removesuffix('.')}" for domain in domains)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == WELL_KNOWN
            and scope["method"] in ("GET", "HEAD")
            and _host_name(scope["headers"]).removesuffix(".") in self.hosts
        ):
            # §3.3: a sender caches by max_age, not by HTTP caching; keep proxies from mixing
            # an old policy with a new record id.
            response = PlainTextResponse(self.policy, headers={"Cache-Control": "no-cache"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def with_policy(app: ASGIApp, policy: str | None, domains: Iterable[str]) -> ASGIApp:
    """``app`` answering the policy too, or ``app`` itself when none is published."""
    return app if policy is None else MtaStsPolicy(app, policy, domains)
