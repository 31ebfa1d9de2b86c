"""The folder endpoints of the JSON API: a mailbox's folders, and moving a message to one.

Untrusted input seen here: the mailbox in the path, the message id, and the JSON body of a
move (``{"folder": "Trash"}``), whose name becomes a directory only through
:func:`~postoffice.maildir.folders.directory_of` (inside the store). Who may see what is the
caller's :class:`~postoffice.web.auth.Principal`'s, as for every other endpoint.

Folders are Maildir++ (maildir/folders.py): ``INBOX`` and ``.Junk``, ``.Trash``, ... inside the
mailbox. A move is one rename into the other folder (made when missing); the index row keeps
its id and takes the new location at once, and the watch of the Maildirs sees the same
rename, as it sees Dovecot's or mutt's.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from postoffice.errors import MessageGone
from postoffice.maildir.folders import INBOX, MOVE_TARGETS, directory_of, special_use
from postoffice.web.api import ApiError, MailApi, summary_json
from postoffice.web.auth import Principal
from postoffice.web.events import Event
from postoffice.web.index import Row


class FolderApi:
    """``GET /api/v1/mailboxes/{mailbox}/folders`` and ``POST /api/v1/messages/{id}/move``."""

    def __init__(self, api: MailApi) -> None:
        self._api = api
        self.index = api.index

    def routes(self) -> list[BaseRoute]:
        wrap = self._api._handle
        return [
            Route("/api/v1/mailboxes/{address:path}/folders", wrap(self.folders), methods=["GET"]),
            Route("/api/v1/messages/{message_id:int}/move", wrap(self.move), methods=["POST"]),
        ]

    async def folders(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        address = self.index.mailbox_name(str(request.path_params["address"]))
        if not principal.can_see(address):
            raise ApiError(403, "not your mailbox")
        return JSONResponse(await self._api._run(self._folders, address))

    def _folders(self, address: str) -> list[dict[str, Any]]:
        try:
            names = self.index.store.folders(address)
        except ValueError:
            raise ApiError(404, "no such mailbox") from None
        counts = self.index.folder_counts(address)
        # The special-use folders a message can be moved to are listed even before they exist.
        listed = [INBOX, *sorted({*names, *MOVE_TARGETS} - {INBOX})]
        return [
            {
                "name": name,
                "special_use": special_use(name),
                "total": counts.get(directory_of(name), (0, 0))[0],
                "unread": counts.get(directory_of(name), (0, 0))[1],
            }
            for name in listed
        ]

    async def move(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        message_id = self._api._message_id(request)
        body = await self._api._json_body(request)
        folder = body.get("folder")
        if set(body) != {"folder"} or not isinstance(folder, str):
            raise ApiError(400, 'send {"folder": "Trash"} (or INBOX, Archive, Junk, another folder)')
        try:
            directory_of(folder)
        except ValueError:
            raise ApiError(400, f"not a folder name: {folder[:64]!r}") from None
        row = await self._api._run(self._move, principal, message_id, folder)
        data = {"id": row.id, "mailbox": row.mailbox, "read": row.seen, "folder": summary_json(row)["folder"]}
        self._api.hub.publish(Event("updated", row.mailbox, data))
        return JSONResponse(summary_json(row))

    def _move(self, principal: Principal, message_id: int, folder: str) -> Row:
        row = self._api._visible_row(principal, message_id)
        for _ in range(3):
            stored = self.index.locate(row)
            if stored is None:
                break
            try:
                moved = self.index.store.move(stored, folder)
            except MessageGone:
                continue  # renamed by another reader just now: find it again
            except OSError as exc:
                raise ApiError(503, f"cannot move the message now: {exc.strerror or exc}") from None
            self.index.set_location(row.id, moved)
            updated = self.index.get(row.id)
            if updated is not None:
                return updated
            break
        raise ApiError(404, "no such message")
