"""The HTTP application: the API, the UI's static files, the API docs and security headers.

Untrusted input seen here: every HTTP request; in open mode the ``Host`` header is checked
against loopback names so a page on another site cannot reach the API through DNS
rebinding. The UI and the docs are plain files (no build step, no CDN): nothing is ever
fetched from the internet.

:func:`create_app` takes ``extra_routes`` so other parts of the server (operations endpoints
such as ``/metrics``) can live on the same listener; those routes see no login.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postoffice.web import openapi
from postoffice.web.api import MailApi, WebContext
from postoffice.web.chaos_api import ChaosApi
from postoffice.web.folder_api import FolderApi
from postoffice.web.release_api import ReleaseApi
from postoffice.web.tags_api import TagApi
from postoffice.web.toolkit_api import ToolkitApi

UI_DIR = Path(__file__).with_name("ui")
# The UI's own pages: scripts and styles only from files of this origin, nothing inline.
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def is_loopback_host(value: str) -> bool:
    name = _host_name(value)
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class SecurityHeaders:
    """Adds the headers every response needs; refuses foreign Host names when asked to."""

    def __init__(self, app: ASGIApp, *, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_only:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
            if host is not None and not is_loopback_host(host):
                # RFC 9110 §15.5.20: 421 Misdirected Request, "not configured to respond" to this name.
                response = JSONResponse({"error": "this server answers only to loopback names"}, 421)
                await response(scope, receive, send)
                return
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in _COMMON_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", UI_CSP.encode()))
                if b"x-frame-options" not in present:
                    headers.append((b"x-frame-options", b"DENY"))
                if api and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404 and 405 (no such route, wrong method) as JSON like every API answer.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _index(request: Request) -> Response:
    return FileResponse(UI_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _docs(request: Request) -> Response:
    return FileResponse(UI_DIR / "docs.html", headers={"Cache-Control": "no-cache"})


async def _openapi(request: Request) -> Response:
    return JSONResponse(openapi.document())


def create_app(
    context: WebContext,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    loopback_only: bool = False,
) -> ASGIApp:
    """The whole HTTP application. ``extra_routes`` are matched before the UI's files."""
    api = MailApi(context)
    routes: list[BaseRoute] = [
        *api.routes(),
        *FolderApi(api).routes(),
        *TagApi(api).routes(),
        *ToolkitApi(api).routes(),
        *ChaosApi(api, context.chaos).routes(),
        *ReleaseApi(api, context.release).routes(),
        Route("/api/v1/openapi.json", _openapi, methods=["GET"]),
        Route("/api/docs", _docs, methods=["GET"]),
        *extra_routes,
        Route("/", _index, methods=["GET"]),
        Mount("/ui", app=StaticFiles(directory=UI_DIR), name="ui"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return SecurityHeaders(app, loopback_only=loopback_only)
