"""Operations endpoints: ``/metrics``, ``/livez``, ``/readyz`` and ``/api/v1/status``.

Untrusted input seen here: HTTP requests to these four paths (no parameters are read). They
disclose counts, listener addresses and recent error lines, never message content, addresses
of mail or secrets; expose the HTTP port only to operators and the scraper.

:func:`ops_routes` returns plain Starlette routes, so the main web application can mount them
next to its own.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from postoffice.metrics import CONTENT_TYPE


class OpsState(Protocol):
    """What the endpoints read from the running server (implemented by the application)."""

    def metrics_text(self) -> bytes: ...

    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...


def ops_routes(app_state: OpsState) -> list[Route]:
    async def metrics(request: Request) -> Response:
        return Response(app_state.metrics_text(), media_type=CONTENT_TYPE)

    async def livez(request: Request) -> Response:
        # Alive: the event loop answers. Nothing else is checked, so a restart is never
        # triggered by a dependency being slow (Kubernetes liveness-probe guidance).
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if app_state.ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    async def status(request: Request) -> Response:
        return JSONResponse(app_state.status())

    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/api/v1/status", status, methods=["GET"]),
    ]
