"""The MCP tools (Model Context Protocol) over a running server's mail, for ``postoffice mcp``
(stdio) and the web listener's ``/mcp`` (web/mcp_http.py): they let an AI agent
read and wait for the mail a running postoffice captured.

Untrusted input seen here: the tools' arguments, from the agent (checked by the SDK against
each tool's signature, then by the server's API as any API call is), and the API's answers.
Message content reaches the agent as text: the HTML part only as text (tags dropped), never
as markup.

It is a client of the JSON API (:class:`~postoffice.client.api.ApiClient`: ``--api``, logging
in with ``POSTOFFICE_ADDRESS`` and ``POSTOFFICE_PASSWORD`` when the API asks), so it sees what
that login may see and nothing more. Built with the official SDK (``mcp``, version 2).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mcp.server.mcpserver import MCPServer

from postoffice import __version__
from postoffice.client.api import ApiClient
from postoffice.web.extract import html_text

INSTRUCTIONS = (
    "Tools over a postoffice mail server's captured mail: list mailboxes, search (Mailpit's syntax:"
    ' words, "phrases", from:, to:, subject:, has:attachment, is:unread, before:/after:YYYY-MM-DD),'
    " read a message, wait for one to arrive, get its links and one-time codes, delete it."
)
_SUMMARY = ("id", "mailbox", "from", "to", "subject", "date", "read", "has_attachments", "snippet")


def _summary(message: dict[str, Any]) -> dict[str, Any]:
    return {name: message.get(name) for name in _SUMMARY}


def _readable(message: dict[str, Any]) -> dict[str, Any]:
    html = message.get("html")
    return {
        **_summary(message),
        "headers": message.get("headers", []),
        "text": message.get("text"),
        "html_as_text": html_text(html) if html else None,
        "attachments": [
            {name: item.get(name) for name in ("name", "content_type", "size")}
            for item in message.get("attachments", [])
        ],
    }


def _quietly_made() -> MCPServer:
    """The SDK's server, without the logging it sets up: MCPServer() calls logging.basicConfig
    with a rich handler (multi-line records, tracebacks), which on a root logger with no handler
    would print every postoffice log line a second time. basicConfig does nothing where the root
    logger has a handler, so it gets one for that moment."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        return MCPServer("postoffice", instructions=INSTRUCTIONS, version=__version__)
    finally:
        root.removeHandler(guard)


def build(api: ApiClient) -> MCPServer:
    """The MCP server with its tools, over ``api``."""
    server = _quietly_made()

    async def call(method: str, path: str, **options: Any) -> Any:
        return await asyncio.to_thread(api.call, method, path, **options)

    @server.tool()
    async def list_mailboxes() -> list[dict[str, Any]]:
        """Every mailbox (address) with its total and unread counts."""
        return list(await call("GET", "/api/v1/mailboxes"))

    @server.tool()
    async def search_messages(query: str = "", mailbox: str = "", limit: int = 20) -> list[dict[str, Any]]:
        """Messages matching the query (empty: all), newest first, as summaries with their ids."""
        params = {"q": query, "mailbox": mailbox or None, "limit": max(1, min(limit, 500))}
        return [_summary(item) for item in (await call("GET", "/api/v1/messages", params=params))["messages"]]

    @server.tool()
    async def read_message(id: int) -> dict[str, Any]:
        """One message: headers, the text part, the HTML part as text, attachments' names."""
        return _readable(await call("GET", f"/api/v1/messages/{int(id)}"))

    @server.tool()
    async def wait_for_message(query: str = "", after: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        """The newest message matching the query with an id above 'after', waiting up to
        'timeout' seconds (at most 300) for one to arrive."""
        found = await asyncio.to_thread(api.wait, query, after=after, timeout=max(0.0, min(timeout, 300.0)))
        if found is None:
            raise TimeoutError(f"no message matching {query!r} arrived within {timeout:g} seconds")
        return _readable(found)

    @server.tool()
    async def message_links(id: int) -> list[dict[str, Any]]:
        """Every link of a message (url, anchor text, and whether from the HTML or text part)."""
        return list((await call("GET", f"/api/v1/messages/{int(id)}/links"))["links"])

    @server.tool()
    async def message_codes(id: int) -> list[dict[str, Any]]:
        """One-time codes and tokens in a message, each with the words around it."""
        return list((await call("GET", f"/api/v1/messages/{int(id)}/codes"))["codes"])

    @server.tool()
    async def delete_message(id: int) -> str:
        """Delete a message."""
        await call("DELETE", f"/api/v1/messages/{int(id)}")
        return f"deleted message {int(id)}"

    return server
