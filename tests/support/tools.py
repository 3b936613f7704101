"""Tool definitions the agent-loop tests send Parley, and the MCP tool that points at the test tool server."""

from __future__ import annotations

from typing import Any

from tests.mcp_servers import ToolServer

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLOCK = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


def mcp_tool(server: ToolServer, **fields: Any) -> dict[str, Any]:
    """An `mcp` tool on the test server's streamable-HTTP endpoint, approval never required, plus `fields`."""
    return {"type": "mcp", "server_label": "tools", "server_url": server.url, "require_approval": "never", **fields}
