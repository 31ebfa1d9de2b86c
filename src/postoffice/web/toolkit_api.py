"""The testing toolkit's endpoints: wait for a message, and read its links and codes.

Untrusted input seen here: the query string of ``/api/v1/messages/wait`` (``q`` goes through
:mod:`postoffice.web.search`; ``after`` and ``timeout`` are bounded here) and, through
:mod:`postoffice.web.extract`, the content of the messages asked about. Who may see what is
decided as for every other endpoint (:class:`~postoffice.web.api.MailApi`'s login and
:class:`~postoffice.web.auth.Principal`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from postoffice.web import extract, message
from postoffice.web.api import _MAX_ID, ApiError, MailApi
from postoffice.web.auth import Principal
from postoffice.web.index import Row
from postoffice.web.search import SearchError, compile_query
from postoffice.web.wait import DEFAULT_WAIT, MAX_WAIT, WaitEnded, after_id, wait_for_row


class ToolkitApi:
    """``/api/v1/messages/wait``, ``/api/v1/messages/{id}/links`` and ``.../codes``."""

    def __init__(self, api: MailApi) -> None:
        self.api = api

    def routes(self) -> list[BaseRoute]:
        wrap = self.api._handle
        return [
            Route("/api/v1/messages/wait", wrap(self.wait), methods=["GET"]),
            Route("/api/v1/messages/{message_id:int}/links", wrap(self.links), methods=["GET"]),
            Route("/api/v1/messages/{message_id:int}/codes", wrap(self.codes), methods=["GET"]),
        ]

    @staticmethod
    def _timeout(text: str | None) -> float:
        if text is None or text == "":
            return DEFAULT_WAIT
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise ApiError(400, "timeout must be a number of seconds, 0 or more")
        return min(seconds, MAX_WAIT)  # a bigger one is cut to the bound, not refused

    async def wait(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        api = self.api
        api._known_params(request, "q", "after", "timeout")
        try:
            query = compile_query(api._param(request, "q") or "")
        except SearchError as exc:
            raise ApiError(400, str(exc)) from None
        after = api._int_param(request, "after", 0, 0, _MAX_ID)
        timeout = self._timeout(api._param(request, "timeout"))
        wanted = after_id(query, after)
        scope = principal.visible()

        async def find() -> Row | None:
            page = await api._run(functools.partial(api.index.page, scope, wanted, limit=1, offset=0))
            return page.rows[0] if page.rows else None

        try:
            row = await wait_for_row(find, api.hub, timeout)
        except WaitEnded:
            raise ApiError(503, "the server is stopping; wait again once it is back") from None
        if row is None:
            raise ApiError(408, f"no matching message arrived within {timeout:g} seconds")
        # The answer is GET /api/v1/messages/{id}'s, made by that endpoint itself.
        scope_of_message = {**request.scope, "path_params": {"message_id": row.id}}
        response: Response = await api.message(Request(scope_of_message, request.receive), principal)
        return response

    def _bodies(self, principal: Principal, message_id: int) -> tuple[str | None, str | None]:
        _, stream = self.api._open(principal, message_id)
        with stream:
            return message.bodies(message.parse(stream))

    async def links(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        text, html = await self.api._run(self._bodies, principal, self.api._message_id(request))
        found = extract.links(text, html)
        body: list[dict[str, Any]] = [{"url": x.url, "text": x.text, "source": x.source} for x in found]
        return JSONResponse({"links": body})

    async def codes(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        text, html = await self.api._run(self._bodies, principal, self.api._message_id(request))
        found = extract.codes(text, extract.html_text(html) if html else None)
        return JSONResponse({"codes": [{"code": x.code, "context": x.context} for x in found]})
