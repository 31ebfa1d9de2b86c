"""The MCP server driven by the SDK's own client: ``postoffice mcp`` over stdio, and ``/mcp``
on the web listener over streamable HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
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


async def test_the_web_listener_serves_mcp_in_open_capture_mode(server: RunningServer) -> None:
    send(server, make_message("erin@example.com", "Over HTTP", "Your PIN is 7319."))
    async with mcp_client.Client(f"{server.base_url}/mcp") as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
        (found,) = _structured(await client.call_tool("search_messages", {"query": "to:erin@example.com"}))
        message = _structured(await client.call_tool("read_message", {"id": found["id"]}))
        assert message["text"] == "Your PIN is 7319.\n"
        codes = _structured(await client.call_tool("message_codes", {"id": found["id"]}))
        assert [code["code"] for code in codes] == ["7319"]


def test_mcp_over_http_is_refused_where_the_api_needs_a_login(
    server_factory: Callable[..., RunningServer],
) -> None:
    mta = server_factory(domains=("example.test",))
    answer = httpx.post(
        f"{mta.base_url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10
    )
    assert answer.status_code == 403
    assert "postoffice mcp" in answer.json()["error"]


def test_the_sdk_adds_no_log_handler() -> None:
    """MCPServer() calls logging.basicConfig with a rich handler, which would print every
    postoffice log line a second time (tracebacks and all) in a process whose root logger has
    no handler yet, as the server's has not."""
    probe = (
        "import logging; from postoffice.client.api import ApiClient; from postoffice.web.mcp_tools import build;"
        " build(ApiClient()); print(logging.getLogger().handlers)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"
