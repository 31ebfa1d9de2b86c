"""The JSON API under ``/api/v1``: mailboxes, messages, search, read state, deletion, events.

Untrusted input seen here: every part of every request: path parameters, query strings
(``q`` goes through :mod:`postoffice.web.search`), JSON bodies, cookies and headers. Who may
see what is decided by :class:`~postoffice.web.auth.Principal` on every call; a message the
caller may not see answers 404 exactly as a message that does not exist.

Message HTML reaches a browser only through ``/messages/{id}/html``: sanitised, inside a
document whose Content-Security-Policy forbids scripts, forms, frames and every remote request
(``img-src https:`` is added only when the person asks to load remote content), and which
carries its own ``sandbox`` directive, so it stays inert even if opened outside the UI's
sandboxed iframe. Raw messages and attachments are always downloads, never rendered here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from postoffice.errors import DatabaseError, MessageGone
from postoffice.maildir.folders import folder_of
from postoffice.smtpd.chaos import ChaosRules
from postoffice.storage import with_seen
from postoffice.web import message
from postoffice.web.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_LIFETIME,
    Authenticator,
    LoginRefused,
    LoginThrottled,
    Principal,
)
from postoffice.web.events import Event, EventHub
from postoffice.web.index import MAX_PAGE, MailIndex, Row
from postoffice.web.search import SearchError, compile_query

_T = TypeVar("_T")

# SQLite integers are signed 64-bit; a larger id cannot name a message.
_MAX_ID = 2**63 - 1
MAX_OFFSET = 10_000_000
DEFAULT_LIMIT = 50
# A JSON body of the API is a few fields; anything larger is not one of ours.
MAX_JSON_BODY = 16 * 1024
# Raw downloads are streamed in blocks of this size: memory does not grow with the message.
STREAM_BLOCK = 64 * 1024
# A comment line on the event stream this often keeps proxies and browsers from timing out.
HEARTBEAT_SECONDS = 15.0
# Attachment types a browser may be told as they are; anything else downloads as octets.
_SAFE_DOWNLOAD_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain", "text/calendar"}
)
# The policy of the document that shows a message's HTML (see the module docstring).
MESSAGE_CSP = (
    "default-src 'none'; img-src data: cid:{remote}; style-src 'unsafe-inline'; font-src data:;"
    " form-action 'none'; base-uri 'none'; frame-ancestors 'self';"
    " sandbox allow-popups allow-popups-to-escape-sandbox"
)
DOWNLOAD_CSP = "default-src 'none'; sandbox"
_FRAME_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:12px;color:#111;background:#fff;overflow-wrap:anywhere}"
    "img{max-width:100%;height:auto}"
)


class ApiError(Exception):
    """An answer other than success: ``status`` and a one-line ``message`` for the caller."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status, headers=headers)


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


INBOX = "INBOX"


def summary_json(row: Row) -> dict[str, Any]:
    return {
        "id": row.id,
        "mailbox": row.mailbox,
        "from": row.sender,
        "to": row.recipients,
        "subject": row.subject,
        "date": iso_time(row.date if row.date is not None else row.received),
        "received": iso_time(row.received),
        "size": row.size,
        "read": row.seen,
        "has_attachments": row.has_attachments,
        "snippet": row.snippet,
        # "INBOX" (IMAP's name, RFC 9051 §5.1) or a Maildir++ folder: "Junk" for a copy the
        # server filed there (DMARC quarantine), listed with the rest, never counted as unread.
        "folder": folder_of(row.location),
        # What the server found checking the message on arrival (SPF, DKIM, DMARC, ARC); null
        # for mail it did not check (submitted by a user, captured).
        "authentication": row.auth.to_json() if row.auth is not None else None,
        # Labels from X-Tags, the plus-address or PUT .../tags (web/tags.py); searched with tag:.
        "tags": list(row.tags),
    }


def content_disposition(name: str) -> str:
    # RFC 6266 §4.3: an ASCII fallback, and the real name in RFC 8187 encoding.
    return f"attachment; filename=\"{message.ascii_name(name)}\"; filename*=UTF-8''{urllib.parse.quote(name)}"


def _by_method(handlers: dict[str, Callable[[Request], Any]]) -> Callable[[Request], Any]:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        response: Response = await handlers[method](request)
        return response

    return dispatch


@dataclass(frozen=True, slots=True)
class WebContext:
    """What the API works with; built once by the composition root."""

    index: MailIndex
    hub: EventHub
    auth: Authenticator
    executor: Executor
    # Fault injection's rules (web/chaos_api.py); None where the server has none.
    chaos: ChaosRules | None = None
    # Sends a captured message on (web/release_api.py): content, sender, recipients -> queue ID.
    release: Callable[[bytes, str, list[str]], Awaitable[str]] | None = None


class MailApi:
    """The ``/api/v1`` endpoints over one :class:`WebContext`."""

    def __init__(self, context: WebContext) -> None:
        self.index = context.index
        self.hub = context.hub
        self.auth = context.auth
        self._executor = context.executor

    def routes(self) -> list[BaseRoute]:
        wrap = self._handle
        # One route per path, so a wrong method gets 405 with an Allow header naming them all.
        table: list[tuple[str, dict[str, Callable[[Request], Any]]]] = [
            ("/api/v1/session", {"GET": wrap(self.session)}),
            ("/api/v1/login", {"POST": wrap(self.login, authenticated=False)}),
            ("/api/v1/logout", {"POST": wrap(self.logout)}),
            ("/api/v1/mailboxes", {"GET": wrap(self.mailboxes)}),
            ("/api/v1/mailboxes/{address:path}/messages", {"DELETE": wrap(self.clear_mailbox)}),
            ("/api/v1/messages", {"GET": wrap(self.messages)}),
            (
                "/api/v1/messages/{message_id:int}",
                {"GET": wrap(self.message), "PATCH": wrap(self.update), "DELETE": wrap(self.delete)},
            ),
            ("/api/v1/messages/{message_id:int}/raw", {"GET": wrap(self.raw)}),
            ("/api/v1/messages/{message_id:int}/html", {"GET": wrap(self.html)}),
            ("/api/v1/messages/{message_id:int}/attachments/{number:int}", {"GET": wrap(self.attachment)}),
            ("/api/v1/events", {"GET": wrap(self.events)}),
        ]
        return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in table]

    # -- plumbing ----------------------------------------------------------------------------

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    def _handle(
        self, endpoint: Callable[[Request, Principal | None], Any], *, authenticated: bool = True
    ) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            try:
                principal = await self.auth.principal(request.cookies.get(SESSION_COOKIE))
                if authenticated:
                    if principal is None:
                        raise ApiError(401, "log in first")
                    if request.method not in ("GET", "HEAD") and not principal.csrf_ok(
                        request.headers.get(CSRF_HEADER)
                    ):
                        raise ApiError(403, "missing or wrong X-CSRF-Token header")
                response: Response = await endpoint(request, principal)
                return response
            except ApiError as exc:
                return error_response(exc.status, exc.message, exc.headers)

        return handler

    async def _json_body(self, request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "send the body as application/json")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BODY:
                raise ApiError(413, "the body is too large")
        try:
            value = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise ApiError(400, "the body must be a JSON object")
        return value

    def _message_id(self, request: Request) -> int:
        message_id = int(request.path_params["message_id"])
        if message_id > _MAX_ID:
            raise ApiError(404, "no such message")
        return message_id

    def _visible_row(self, principal: Principal, message_id: int) -> Row:
        row = self.index.get(message_id)
        if row is None or not principal.can_see(row.mailbox):
            raise ApiError(404, "no such message")
        return row

    def _open(self, principal: Principal, message_id: int) -> tuple[Row, BinaryIO]:
        """The row and an open file of a message the caller may see (runs in a worker)."""
        row = self._visible_row(principal, message_id)
        for _ in range(3):  # a reader may rename it between finding and opening
            stored = self.index.locate(row)
            if stored is None:
                break
            try:
                return row, self.index.store.read(stored)
            except MessageGone:
                continue
        raise ApiError(404, "no such message")

    def _view(self, principal: Principal, message_id: int) -> tuple[Row, message.MessageView]:
        row, stream = self._open(principal, message_id)
        with stream:
            return row, message.view(message.parse(stream))

    def _publish_deleted(self, row: Row) -> None:
        self.hub.publish(Event("deleted", row.mailbox, {"id": row.id, "mailbox": row.mailbox}))

    # -- session -----------------------------------------------------------------------------

    @staticmethod
    def _session_json(principal: Principal, *, open_access: bool) -> dict[str, Any]:
        return {
            "address": principal.address,
            "mailbox": principal.mailbox,
            "admin": principal.admin,
            "csrf_token": principal.csrf_token,
            "login_required": not open_access,
        }

    async def session(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        return JSONResponse(self._session_json(principal, open_access=self.auth.open_access))

    async def login(self, request: Request, principal: Principal | None) -> Response:
        body = await self._json_body(request)
        address, password = body.get("address"), body.get("password")
        if not isinstance(address, str) or not isinstance(password, str) or not address or not password:
            raise ApiError(400, 'send {"address": ..., "password": ...}')
        if self.auth.open_access:
            assert principal is not None
            return JSONResponse(self._session_json(principal, open_access=True))
        client = request.client.host if request.client else "unknown"
        try:
            principal = await self.auth.login(address, password, client)
        except LoginThrottled as exc:
            raise ApiError(429, str(exc), {"Retry-After": str(int(exc.retry_after) + 1)}) from None
        except LoginRefused as exc:
            raise ApiError(401, str(exc)) from None
        except DatabaseError as exc:  # a cluster's sessions cannot be written now
            raise ApiError(503, str(exc)) from None
        response = JSONResponse(self._session_json(principal, open_access=False))
        response.set_cookie(
            SESSION_COOKIE,
            principal.session or "",
            max_age=int(SESSION_LIFETIME),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request, principal: Principal | None) -> Response:
        await self.auth.logout(request.cookies.get(SESSION_COOKIE))
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # -- mailboxes ---------------------------------------------------------------------------

    async def mailboxes(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        boxes = await self._run(self.index.mailboxes, principal.visible())
        return JSONResponse([{"address": b.address, "total": b.total, "unread": b.unread} for b in boxes])

    async def clear_mailbox(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        address = self.index.mailbox_name(str(request.path_params["address"]))
        if not principal.can_see(address):
            raise ApiError(403, "not your mailbox")
        deleted = await self._run(self._clear, address)
        self.hub.publish(Event("cleared", address, {"mailbox": address}))
        return JSONResponse({"deleted": deleted})

    def _clear(self, address: str) -> int:
        known = {box.address for box in self.index.mailboxes([address])}
        if address not in known:
            raise ApiError(404, "no such mailbox")
        store = self.index.store
        # Only what was listed goes, file and row alike: a message delivered meanwhile stays.
        deleted = [stored.key for stored in store.list_messages(address) if store.expunge(stored)]
        self.index.remove_keys(address, deleted)
        return len(deleted)

    # -- messages ----------------------------------------------------------------------------

    @staticmethod
    def _param(request: Request, name: str) -> str | None:
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise ApiError(400, f"{name} is given more than once")
        return values[0] if values else None

    def _int_param(self, request: Request, name: str, default: int, low: int, high: int) -> int:
        text = self._param(request, name)
        if text is None or text == "":
            return default
        if not text.isascii() or not text.isdigit() or len(text) > 12 or not low <= int(text) <= high:
            raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
        return int(text)

    @staticmethod
    def _known_params(request: Request, *names: str) -> None:
        # A misspelt parameter (mailbx=) silently widening a listing would be worse than a 400.
        unknown = sorted(set(request.query_params) - set(names))
        if unknown:
            raise ApiError(400, f"unknown parameter {unknown[0][:40]!r}; expected one of {', '.join(names)}")

    async def messages(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        self._known_params(request, "mailbox", "q", "limit", "offset")
        limit = self._int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_PAGE)
        offset = self._int_param(request, "offset", 0, 0, MAX_OFFSET)
        mailbox = self._param(request, "mailbox") or None
        if mailbox is not None:
            mailbox = self.index.mailbox_name(mailbox)
        if mailbox is not None and not principal.can_see(mailbox):
            raise ApiError(403, "not your mailbox")
        try:
            query = compile_query(self._param(request, "q") or "")
        except SearchError as exc:
            raise ApiError(400, str(exc)) from None
        scope = [mailbox] if mailbox is not None else principal.visible()
        page = await self._run(functools.partial(self.index.page, scope, query, limit=limit, offset=offset))
        return JSONResponse({"total": page.total, "messages": [summary_json(row) for row in page.rows]})

    async def message(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        message_id = self._message_id(request)
        row, view = await self._run(self._view, principal, message_id)
        base = f"/api/v1/messages/{row.id}"
        body = summary_json(row)
        body.update(
            {
                "headers": [{"name": name, "value": value} for name, value in view.headers],
                "text": view.text,
                "html": view.html,
                "remote_content": view.remote_content,
                "attachments": [
                    {
                        "name": item.name,
                        "content_type": item.content_type,
                        "size": item.size,
                        "content_id": item.content_id,
                        "url": f"{base}/attachments/{number}",
                    }
                    for number, item in enumerate(view.attachments)
                ],
            }
        )
        return JSONResponse(body)

    async def update(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        message_id = self._message_id(request)
        body = await self._json_body(request)
        read = body.get("read")
        if set(body) != {"read"} or not isinstance(read, bool):
            raise ApiError(400, 'send {"read": true} or {"read": false}')
        row = await self._run(self._set_read, principal, message_id, read)
        self.hub.publish(
            Event("updated", row.mailbox, {"id": row.id, "mailbox": row.mailbox, "read": row.seen})
        )
        return JSONResponse(summary_json(row))

    def _set_read(self, principal: Principal, message_id: int, read: bool) -> Row:
        row = self._visible_row(principal, message_id)
        for _ in range(3):
            stored = self.index.locate(row)
            if stored is None:
                break
            try:
                moved = self.index.store.set_flags(stored, with_seen(stored.flags, read))
            except MessageGone:
                continue  # renamed by another reader just now: find it again
            self.index.set_location(row.id, moved)
            updated = self.index.get(row.id)
            if updated is not None:
                return updated
            break
        raise ApiError(404, "no such message")

    async def delete(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        row = await self._run(self._delete, principal, self._message_id(request))
        self._publish_deleted(row)
        return Response(status_code=204)

    def _delete(self, principal: Principal, message_id: int) -> Row:
        row = self._visible_row(principal, message_id)
        for _ in range(3):
            stored = self.index.locate(row)
            if stored is None:
                break
            if self.index.store.expunge(stored):
                self.index.remove(row.id)
                return row
        raise ApiError(404, "no such message")

    async def raw(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        row, stream = await self._run(self._open, principal, self._message_id(request))
        size = await self._run(lambda: stream.seek(0, 2))
        await self._run(stream.seek, 0)

        async def blocks() -> AsyncIterator[bytes]:
            try:
                while block := await self._run(stream.read, STREAM_BLOCK):
                    yield block
            finally:
                stream.close()

        return StreamingResponse(
            blocks(),
            media_type="message/rfc822",
            headers={
                "Content-Length": str(size),
                "Content-Disposition": content_disposition(f"message-{row.id}.eml"),
                "Content-Security-Policy": DOWNLOAD_CSP,
            },
        )

    async def html(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        self._known_params(request, "remote")
        remote_param = self._param(request, "remote")
        if remote_param not in (None, "0", "1"):
            raise ApiError(400, "remote must be 0 or 1")
        remote = remote_param == "1"
        _, view = await self._run(self._view, principal, self._message_id(request))
        if view.html is None:
            raise ApiError(404, "this message has no HTML part")
        document = (
            '<!DOCTYPE html><html><head><meta charset="utf-8">'
            f'<meta name="referrer" content="no-referrer"><style>{_FRAME_STYLE}</style></head>'
            f"<body>{view.html}</body></html>"
        )
        return Response(
            document,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": MESSAGE_CSP.format(remote=" https:" if remote else ""),
                "X-Frame-Options": "SAMEORIGIN",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def attachment(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        message_id = self._message_id(request)
        number = int(request.path_params["number"])
        name, content_type, data = await self._run(self._attachment, principal, message_id, number)
        return Response(
            data,
            media_type=content_type if content_type in _SAFE_DOWNLOAD_TYPES else "application/octet-stream",
            headers={
                "Content-Disposition": content_disposition(name),
                "Content-Security-Policy": DOWNLOAD_CSP,
            },
        )

    def _attachment(self, principal: Principal, message_id: int, number: int) -> tuple[str, str, bytes]:
        _, stream = self._open(principal, message_id)
        with stream:
            parsed = message.parse(stream)
        parts = message.attachment_parts(parsed)
        if number >= len(parts):
            raise ApiError(404, "no such attachment")
        part = parts[number]
        return message.attachment_name(part, number), part.get_content_type(), message.attachment_bytes(part)

    # -- events ------------------------------------------------------------------------------

    async def events(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        token = request.cookies.get(SESSION_COOKIE)

        async def stream() -> AsyncIterator[bytes]:
            with self.hub.subscribe() as subscription:
                # retry: how long the browser waits before reconnecting (HTML Living Standard
                # §9.2.6); the comment makes the response start at once.
                yield b"retry: 2000\n: connected\n\n"
                while not subscription.ended:
                    event = await subscription.next(HEARTBEAT_SECONDS)
                    # Asked afresh each time: a logout, a removed account or a lost admin flag
                    # takes effect on an open stream too.
                    viewer = await self.auth.principal(token)
                    if viewer is None:
                        return
                    if event is None:
                        yield b": keep-alive\n\n"
                        continue
                    if not viewer.can_see(event.mailbox):
                        continue
                    data = json.dumps(event.data, separators=(",", ":"))
                    yield f"event: {event.kind}\ndata: {data}\n\n".encode()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
