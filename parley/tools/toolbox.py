"""The tools of one response, and which of them Parley runs itself.

Client-side function tools are handed back to the caller; server-side tools
(MCP servers now; file_search and web_search later) are run by Parley. The
toolbox lists the MCP servers' tools once per response, or takes the listing
from the previous turn when the server's label and URL have not changed,
and tells the agent loop, for every name the model may call, who answers it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from parley.config import MCPSettings
from parley.ids import new_id
from parley.tools.definitions import FunctionTool, MCPTool
from parley.tools.mcp import ListedTool, MCPServerConnection, MCPServerError, MCPSessionPool


@dataclass(slots=True, frozen=True)
class ServerToolRoute:
    """A name the model may call that an MCP server answers."""

    server: MCPServerConnection
    tool: ListedTool

    @property
    def needs_approval(self) -> bool:
        return self.server.definition.needs_approval(self.tool.name, self.tool.read_only)


class Toolbox:
    def __init__(
        self,
        functions: list[FunctionTool],
        servers: list[MCPTool],
        settings: MCPSettings,
        pool: MCPSessionPool | None = None,
    ) -> None:
        self.functions = functions
        self.servers = [MCPServerConnection(definition, settings, pool) for definition in servers]
        self.listings: dict[str, list[ListedTool]] = {}
        self._routes: dict[str, ServerToolRoute] = {}

    @property
    def has_servers(self) -> bool:
        return bool(self.servers)

    async def list_servers(
        self, history: list[dict[str, Any]], previous_tools: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Lists every server's tools; returns the new `mcp_list_tools` items (reused listings make none)."""
        reusable = _reusable_listings(history, previous_tools)
        to_list = []
        for server in self.servers:
            key = (server.label, server.definition.server_url)
            if key in reusable:
                self.listings[server.label] = reusable[key]
            else:
                to_list.append(server)
        results = await asyncio.gather(*(server.list_tools() for server in to_list), return_exceptions=True)
        items = []
        for server, result in zip(to_list, results, strict=True):
            item: dict[str, Any] = {
                "id": new_id("mcpl"),
                "type": "mcp_list_tools",
                "server_label": server.label,
                "tools": [],
                "error": None,
                "status": "completed",
            }
            if isinstance(result, MCPServerError):
                item["error"] = str(result)
                item["status"] = "failed"
            elif isinstance(result, BaseException):
                raise result
            else:
                self.listings[server.label] = result
                item["tools"] = [tool.as_item_entry() for tool in result]
            items.append(item)
        self._route_names()
        return items

    def _route_names(self) -> None:
        taken = {function.name for function in self.functions}
        for server in self.servers:
            for tool in self.listings.get(server.label, ()):
                if not server.definition.allows(tool.name, tool.read_only):
                    continue
                name = tool.name if tool.name not in taken else f"{server.label}__{tool.name}"
                taken.add(name)
                self._routes[name] = ServerToolRoute(server, tool)

    def route(self, name: str) -> ServerToolRoute | None:
        """Who answers a call to `name`: an MCP server, or (None) the caller."""
        return self._routes.get(name)

    def route_for(self, server_label: str, tool_name: str) -> ServerToolRoute | None:
        for route in self._routes.values():
            if route.server.label == server_label and route.tool.name == tool_name:
                return route
        server = next((s for s in self.servers if s.label == server_label), None)
        if server is None:
            return None
        return ServerToolRoute(server, ListedTool(tool_name, None, {}, None))

    def model_name(self, server_label: str, tool_name: str) -> str:
        for name, route in self._routes.items():
            if route.server.label == server_label and route.tool.name == tool_name:
                return name
        return tool_name

    def server_functions(self) -> list[dict[str, Any]]:
        """The servers' tools, as chat-completions function definitions."""
        definitions = []
        for name, route in self._routes.items():
            function: dict[str, Any] = {"name": name, "parameters": route.tool.input_schema or {"type": "object"}}
            description = route.tool.description or route.server.definition.server_description
            if description:
                function["description"] = description
            definitions.append({"type": "function", "function": function})
        return definitions

    async def close(self) -> None:
        await asyncio.gather(*(server.close() for server in self.servers), return_exceptions=True)


def _reusable_listings(
    history: list[dict[str, Any]], previous_tools: list[dict[str, Any]]
) -> dict[tuple[str, str | None], list[ListedTool]]:
    """Listings in the history whose server the previous turn named with the same URL."""
    urls = {tool.get("server_label"): tool.get("server_url") for tool in previous_tools if tool.get("type") == "mcp"}
    found: dict[tuple[str, str | None], list[ListedTool]] = {}
    for item in history:
        if item["type"] == "mcp_list_tools" and not item.get("error") and item["server_label"] in urls:
            label = item["server_label"]
            found[(label, urls[label])] = [ListedTool.from_item_entry(entry) for entry in item.get("tools") or ()]
    return found
