"""``POST /api/v1/messages/{id}/release``: send a captured message on to real addresses.

Untrusted input seen here: the JSON body (``to``, and ``from``), whose addresses
:mod:`postoffice.qmgr.release` parses; the message itself is the stored one. Only an
administrator may release (in capture mode on loopback everyone is one): a release sends mail
out under someone else's From.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from postoffice.qmgr.release import ReleaseError, recipients, sender
from postoffice.web.api import ApiError, MailApi
from postoffice.web.auth import Principal

log = logging.getLogger("postoffice.web")

Release = Callable[[bytes, str, list[str]], Awaitable[str]]
_RETURN_PATH = re.compile(rb"\Areturn-path:[ \t]*<([^>\r\n]*)>", re.IGNORECASE)


class ReleaseApi:
    def __init__(self, api: MailApi, release: Release | None) -> None:
        self.api = api
        self.release_to = release

    def routes(self) -> list[BaseRoute]:
        wrap = self.api._handle
        return [Route("/api/v1/messages/{message_id:int}/release", wrap(self.release), methods=["POST"])]

    def _content(self, principal: Principal, message_id: int) -> bytes:
        _, stream = self.api._open(principal, message_id)
        with stream:
            return stream.read()

    async def release(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        if not principal.admin:
            raise ApiError(403, "only an administrator may release a message")
        if self.release_to is None:
            raise ApiError(404, "releasing is not available on this server")
        message_id = self.api._message_id(request)
        body = await self.api._json_body(request)
        if not set(body) <= {"to", "from"}:
            raise ApiError(400, 'send {"to": ["address", ...]} and, if you like, "from"')
        content = await self.api._run(self._content, principal, message_id)
        try:
            to = recipients(body.get("to"))
            found = _RETURN_PATH.match(content)
            mail_from = sender(body["from"] if "from" in body else found.group(1).decode() if found else "")
        except (ReleaseError, UnicodeDecodeError) as exc:
            raise ApiError(400, str(exc)) from None
        queue_id = await self.release_to(content, mail_from, list(to))
        log.info("event=released id=%d queue_id=%s to=%s", message_id, queue_id, ",".join(to))
        return JSONResponse({"queue_id": queue_id, "from": mail_from, "to": list(to)}, status_code=202)
