"""The tag endpoints of the JSON API: ``GET`` and ``PUT /api/v1/messages/{id}/tags``.

Untrusted input seen here: the message id and the JSON body of a PUT (``{"tags": [...]}``),
each tag checked by :func:`~postoffice.web.tags.normal`. Who may see what is the caller's
:class:`~postoffice.web.auth.Principal`'s, and a PUT needs the CSRF header, as every other
write (MailApi._handle).

Tags live in the index (web/index_schema.py, by mailbox and Maildir key): ``postoffice
reindex`` keeps them, deleting the index file loses those set here (X-Tags and plus-address
tags come back with the next indexing).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from postoffice.web import tags
from postoffice.web.api import ApiError, MailApi, summary_json
from postoffice.web.auth import Principal
from postoffice.web.events import Event
from postoffice.web.index import Row

_USAGE = 'send {"tags": ["signup", "welcome"]} (letters, digits, ".", "_" and "-")'


def tags_of_body(body: dict[str, Any]) -> list[str]:
    """The tags a PUT body names, normal and each once; ApiError(400) naming what is wrong."""
    values = body.get("tags")
    if set(body) != {"tags"} or not isinstance(values, list):
        raise ApiError(400, _USAGE)
    if len(values) > tags.MAX_TAGS:
        raise ApiError(400, f"at most {tags.MAX_TAGS} tags")
    for value in values:
        if not isinstance(value, str) or tags.normal(value) is None:
            raise ApiError(400, f"not a tag: {str(value)[:64]!r}; {_USAGE}")
    return tags.normalise(values)


class TagApi:
    """``GET`` and ``PUT /api/v1/messages/{id}/tags``."""

    def __init__(self, api: MailApi) -> None:
        self._api = api
        self.index = api.index

    def routes(self) -> list[BaseRoute]:
        wrap = self._api._handle
        handlers = {"GET": wrap(self.get), "PUT": wrap(self.put)}

        async def dispatch(request: Request) -> Response:
            response: Response = await handlers["GET" if request.method == "HEAD" else request.method](
                request
            )
            return response

        return [Route("/api/v1/messages/{message_id:int}/tags", dispatch, methods=list(handlers))]

    async def get(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        row = await self._api._run(self._api._visible_row, principal, self._api._message_id(request))
        return JSONResponse({"id": row.id, "tags": list(row.tags)})

    async def put(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        message_id = self._api._message_id(request)
        wanted = tags_of_body(await self._api._json_body(request))
        row = await self._api._run(self._set, principal, message_id, wanted)
        data = {"id": row.id, "mailbox": row.mailbox, "read": row.seen, "tags": list(row.tags)}
        self._api.hub.publish(Event("updated", row.mailbox, data))
        return JSONResponse(summary_json(row))

    def _set(self, principal: Principal, message_id: int, wanted: list[str]) -> Row:
        self._api._visible_row(principal, message_id)
        row = self.index.set_tags(message_id, wanted)
        if row is None:
            raise ApiError(404, "no such message")
        return row
