"""``postoffice mcp`` driven by the MCP SDK's own client over stdio, against a running server."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from conftest import RunningServer
from web_helpers import make_message, send

mcp_client = pytest.importorskip("mcp.client.client")
stdio = pytest.importorskip("mcp.client.stdio")

pytestmark = pytest.mark.timeout(90)

TOOLS = {
    "list_mailboxes",
    "search_messages",
    "read_message",
    "wait_for_message",
    "message_links",
    "message_codes",
    "delete_message",
}


def _structured(result: Any) -> Any:
    assert not result.is_error, result.content
    content = result.structured_content
    return (
        content.get("result", content)
        if isinstance(content, dict) and set(content) == {"result"}
        else content
    )


async def test_an_agent_lists_the_tools_and_reads_a_message(server: RunningServer) -> None:
    html = '<p>Hi! <a href="https://app.example/confirm?t=1">Confirm</a></p><p>Your code is 482913.</p>'
    send(server, make_message("alice@example.com", "Confirm your address", "Your code is 482913.", html=html))
    parameters = stdio.StdioServerParameters(
        command=sys.executable,
        args=["-m", "postoffice", "mcp", "--api", server.base_url],
        env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )
    async with mcp_client.Client(parameters) as client:
        tools = await client.list_tools()
        assert {tool.name for tool in tools.tools} == TOOLS
        (mailbox,) = _structured(await client.call_tool("list_mailboxes", {}))
        assert mailbox["address"] == "alice@example.com"
        (found,) = _structured(await client.call_tool("search_messages", {"query": "subject:confirm"}))
        message = _structured(await client.call_tool("read_message", {"id": found["id"]}))
        assert message["subject"] == "Confirm your address"
        assert message["html_as_text"] == "Hi! Confirm\nYour code is 482913."
        waited = _structured(
            await client.call_tool("wait_for_message", {"query": "to:alice@example.com", "timeout": 5})
        )
        assert waited["id"] == found["id"]
        links = _structured(await client.call_tool("message_links", {"id": found["id"]}))
        assert links[0]["url"] == "https://app.example/confirm?t=1"
        codes = _structured(await client.call_tool("message_codes", {"id": found["id"]}))
        assert [code["code"] for code in codes] == ["482913"]
        late = await client.call_tool("wait_for_message", {"query": "subject:never", "timeout": 0.2})
        assert late.is_error
        assert (
            _structured(await client.call_tool("delete_message", {"id": found["id"]}))
            == f"deleted message {found['id']}"
        )
        assert _structured(await client.call_tool("search_messages", {})) == []
