"""The tools of one response, and which of them Parley runs itself.

Client-side function tools are handed back to the caller; server-side tools
are run by Parley, each kind behind the `ToolKind` interface (`base.py`):
MCP servers now, file_search and web_search later. The toolbox prepares
every kind (MCP lists its servers' tools), names their tools apart from the
functions and from each other, and tells the agent loop, for every name the
model may call, who answers it, and for every call item, which kind runs it.

A new kind is one module in `parley/tools` and one line in `Toolbox.__init__`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from parley.config import MCPSettings
from parley.tools.base import ServerTool, ToolKind
from parley.tools.definitions import FunctionTool, MCPTool
from parley.tools.mcp import MCPServers, MCPSessionPool


class Toolbox:
    def __init__(
        self,
        functions: list[FunctionTool],
        servers: list[MCPTool],
        settings: MCPSettings,
        pool: MCPSessionPool | None = None,
    ) -> None:
        self.functions = functions
        # Every kind, even with no tools of its own: an approval may still answer an earlier response's request.
        self.kinds: list[ToolKind] = [MCPServers(servers, settings, pool)]
        self._by_call_type = {kind.call_type: kind for kind in self.kinds}
        self._tools: dict[str, ServerTool] = {}
        self._functions: list[dict[str, Any]] = []

    async def prepare(
        self, history: list[dict[str, Any]], previous_tools: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Prepares every kind; returns the items they made (MCP listings), in the order of the kinds.

        The kinds prepare one after the other, each doing its own work at once (MCP
        lists all its servers together): gathering them would cost every response,
        listings or not, two more turns of the event loop before its model call.
        """
        made = [await kind.prepare(history, previous_tools) for kind in self.kinds]
        taken = {function.name for function in self.functions}
        for kind in self.kinds:
            for tool in kind.tools(taken):
                self._tools[tool.name] = tool
        self._functions = [tool.function for tool in self._tools.values()]
        return [item for items in made for item in items]

    def approved_calls(self, history: list[dict[str, Any]], input_items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The call items that the approvals in this request's input let run, not yet run."""
        return [call for kind in self.kinds for call in kind.approved_calls(history, input_items)]

    def tool(self, name: str) -> ServerTool | None:
        """Who answers a call to `name`: a server-side tool, or (None) the caller."""
        return self._tools.get(name)

    def kind_of(self, item_type: str) -> ToolKind | None:
        """The kind that runs call items of `item_type`; None for any other item."""
        return self._by_call_type.get(item_type)

    def server_functions(self) -> list[dict[str, Any]]:
        """The server-side tools, as chat-completions function definitions."""
        return self._functions

    def server_label(self, name: str) -> str | None:
        """The MCP server behind the tool the model knows as `name`, for `allowed_tools`."""
        tool = self._tools.get(name)
        return tool.server_label if tool is not None else None

    def model_name(self, server_label: str, tool_name: str) -> str:
        """The name the model knows a server's tool by (it differs when two tools share a name)."""
        for name, tool in self._tools.items():
            if tool.server_label == server_label and tool.tool_name == tool_name:
                return name
        return tool_name

    async def close(self) -> None:
        for kind in self.kinds:
            with contextlib.suppress(Exception):
                await kind.close()
