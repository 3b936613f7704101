"""MCP servers, as a kind of server-side tool: their listings, calls and approvals.

The `{"type": "mcp"}` tools of one response are one `MCPServers`:

- before the first model call, each server's tools are listed in an
  `mcp_list_tools` item, or the listing is taken from the history while the
  server's label and URL have not changed; a server whose listing fails
  fails the request, as OpenAI's does: a 424 before the response starts
  (`listing_failed`), rather than a model that runs without its tools;
- a model's call to one of them becomes an `mcp_call` item, which Parley runs,
  or, when `require_approval` asks for it, an `mcp_approval_request`, which
  ends the response;
- the next request's `{"type": "mcp_approval_response", "approve": true}` lets
  the requested call run before the model is called again; a refusal is
  told to the model (`chat_messages`).

The model reads a finished `mcp_call` as its own tool call and the tool's
result, and a declined request as a call answered with the refusal. Listings
reach it as tool definitions; pending requests and the responses to them are
not part of a chat conversation.

Connecting and calling are `mcp_client`'s.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from parley.config import ToolsSettings
from parley.errors import FailedDependencyError, InvalidRequestError
from parley.ids import new_id
from parley.tools.base import ItemEvents, NameOf, ServerTool, ToolKind, ToolResources, register
from parley.tools.definitions import MCPTool
from parley.tools.mcp_client import (
    ListedTool,
    MCPServerConnection,
    MCPServerError,
    MCPSessionPool,
    error_text,
    protocol_error,
)

__all__ = ["MCPServers", "MCPSessionPool"]


@register
class MCPServers(ToolKind):
    definitions = {"mcp": MCPTool}
    call_type = "mcp_call"
    item_types = ("mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response")
    items = {
        "mcp_call": ItemEvents(
            "response.mcp_call", arguments="response.mcp_call_arguments", pending={"output": None, "error": None}
        ),
        "mcp_list_tools": ItemEvents("response.mcp_list_tools", pending={"tools": [], "error": None}),
    }

    def __init__(self, definitions: list[MCPTool], shared: MCPSessionPool) -> None:
        self.servers = [MCPServerConnection(definition, shared.settings, shared) for definition in definitions]
        self.listings: dict[str, list[ListedTool]] = {}

    @classmethod
    def shared(cls, settings: ToolsSettings, resources: ToolResources) -> MCPSessionPool:
        """Sessions outlive the responses that open them, for the next response to the same server."""
        return MCPSessionPool.of(settings)

    @classmethod
    async def close_shared(cls, shared: MCPSessionPool) -> None:
        await shared.close()

    async def prepare(
        self, history: list[dict[str, Any]], previous_tools: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Lists every server's tools; returns the new `mcp_list_tools` items (reused listings make none).

        Raises FailedDependencyError for the first server, in the request's order, that could not list them.
        """
        reusable = _reusable_listings(history, previous_tools)
        to_list = []
        for server in self.servers:
            listing = reusable.get((server.label, server.definition.server_url), reusable.get((server.label, None)))
            if listing is not None:
                self.listings[server.label] = listing
            else:
                to_list.append(server)
        results = await asyncio.gather(*(server.list_tools() for server in to_list), return_exceptions=True)
        for server, result in zip(to_list, results, strict=True):
            if isinstance(result, MCPServerError):
                raise listing_failed(server.label, result)
            if isinstance(result, BaseException):
                raise result
        items = []
        for server, result in zip(to_list, results, strict=True):
            assert not isinstance(result, BaseException)
            self.listings[server.label] = result
            items.append(
                {
                    "id": new_id("mcpl"),
                    "type": "mcp_list_tools",
                    "server_label": server.label,
                    "tools": [tool.as_item_entry() for tool in result],
                    "error": None,
                    "status": "completed",
                }
            )
        return items

    def tools(self, taken: set[str]) -> list[ServerTool]:
        """Every listed tool `allowed_tools` lets through; one whose name is taken is `{label}__{name}`."""
        tools = []
        for server in self.servers:
            definition = server.definition
            for listed in self.listings.get(server.label, ()):
                if not definition.allows(listed.name, listed.read_only):
                    continue
                name = listed.name if listed.name not in taken else f"{server.label}__{listed.name}"
                taken.add(name)
                function: dict[str, Any] = {"name": name, "parameters": listed.input_schema or {"type": "object"}}
                description = listed.description or definition.server_description
                if description:
                    function["description"] = description
                tools.append(
                    ServerTool(
                        kind=self,
                        name=name,
                        function={"type": "function", "function": function},
                        tool_name=listed.name,
                        server_label=server.label,
                        needs_approval=definition.needs_approval(listed.name, listed.read_only),
                        tool_type="mcp",
                    )
                )
        return tools

    def call_item(self, tool: ServerTool) -> dict[str, Any]:
        common = {"server_label": tool.server_label, "name": tool.tool_name, "arguments": ""}
        if tool.needs_approval:
            return {"id": new_id("mcpr"), "type": "mcp_approval_request", "status": "in_progress", **common}
        return {
            "id": new_id("mcp"),
            "type": "mcp_call",
            "status": "in_progress",
            **common,
            "output": None,
            "error": None,
            "approval_request_id": None,
        }

    def approved_calls(self, history: list[dict[str, Any]], input_items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The calls that this request's `mcp_approval_response`s approve, each answering a request once."""
        requests = {item["id"]: item for item in history + input_items if item["type"] == "mcp_approval_request"}
        # A request is answered once: by an earlier response to it, or by the call it let run.
        answered = {item.get("approval_request_id") for item in history if item["type"] == "mcp_call"}
        answered |= {item["approval_request_id"] for item in history if item["type"] == "mcp_approval_response"}
        # A stateless caller sends its whole history as input: an answer whose call is in that
        # input too is part of the history, already run, and not a new answer.
        replayed = {item.get("approval_request_id") for item in input_items if item["type"] == "mcp_call"}
        calls = []
        for index, item in enumerate(input_items):
            if item["type"] != "mcp_approval_response":
                continue
            request_id, param = item["approval_request_id"], f"input[{index}].approval_request_id"
            request = requests.get(request_id)
            if request is None:
                raise InvalidRequestError(f"No approval request '{request_id}' to answer.", param=param)
            if request_id in replayed and request_id not in answered:
                answered.add(request_id)
                continue
            if request_id in answered:
                raise InvalidRequestError(f"The approval request '{request_id}' was already answered.", param=param)
            answered.add(request_id)
            if item["approve"]:
                calls.append(
                    {
                        "id": new_id("mcp"),
                        "type": "mcp_call",
                        "status": "in_progress",
                        "server_label": request["server_label"],
                        "name": request["name"],
                        "arguments": request["arguments"],
                        "output": None,
                        "error": None,
                        "approval_request_id": request["id"],
                    }
                )
        return calls

    async def run(self, item: dict[str, Any]) -> str:
        server = next((server for server in self.servers if server.label == item["server_label"]), None)
        if server is None:  # an approved call whose server this request no longer names
            item["error"] = protocol_error(-32602, f"Unknown tool '{item['name']}'.")
            return "failed"
        result = await server.call(item["name"], item["arguments"])
        item["output"], item["error"] = result.output, result.error
        return "failed" if result.error else "completed"

    def refuse(self, item: dict[str, Any], reason: str) -> str:
        item["error"] = protocol_error(-32000, reason)
        return "failed"

    async def close(self) -> None:
        await asyncio.gather(*(server.close() for server in self.servers), return_exceptions=True)

    @classmethod
    def chat_messages(cls, item: dict[str, Any], items: list[dict[str, Any]], name_of: NameOf) -> list[dict[str, Any]]:
        """The model's call and the tool message answering it, for a finished call or a declined request.

        A request is declined by an `mcp_approval_response` in `items` that does
        not approve it. Nothing for any other item. A call that an approval let
        run is the call the model asked for in its request, and is read by the
        request's id: with the calls of the model message that made it.
        """
        kind = item["type"]
        call_id = item["id"]
        if kind == "mcp_call" and item.get("status") in ("completed", "failed"):
            result = _result(item)
            call_id = item.get("approval_request_id") or call_id
        elif kind == "mcp_approval_request" and any(
            other["type"] == "mcp_approval_response"
            and other["approval_request_id"] == item["id"]
            and not other["approve"]
            for other in items
        ):
            result = DECLINED
        else:
            return []
        function = {"name": name_of(item["server_label"], item["name"]), "arguments": item["arguments"]}
        return [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": function}],
            },
            {"role": "tool", "tool_call_id": call_id, "content": result},
        ]


DECLINED = "The user declined to run this tool call."


def listing_failed(label: str, error: MCPServerError) -> FailedDependencyError:
    """The request's error for a server that could not list its tools, in OpenAI's words where it has them.

    OpenAI: 424, `Error retrieving tool list from MCP server: 'label'. Http status code: 401 (Unauthorized)`,
    type `external_connector_error`, param `tools`, code `http_error`. A server that answered no HTTP status
    (it cannot be reached, or may not be: see `parley.tools.outbound`) is named with what went wrong instead,
    and no code.
    """
    prefix = f"Error retrieving tool list from MCP server: '{label}'."
    if error.status is not None:
        try:
            phrase = f" ({HTTPStatus(error.status).phrase})"
        except ValueError:
            phrase = ""
        return FailedDependencyError(
            f"{prefix} Http status code: {error.status}{phrase}", param="tools", code="http_error"
        )
    return FailedDependencyError(f"{prefix} {str(error)[:1].upper()}{str(error)[1:]}", param="tools")


def _result(item: dict[str, Any]) -> str:
    """What the model reads of a finished call: its output, or its error."""
    if item.get("error"):
        error = item["error"]
        return error_text(error) if isinstance(error, dict) else f"Error: {error}"
    return item.get("output") or ""


def _reusable_listings(
    history: list[dict[str, Any]], previous_tools: list[dict[str, Any]]
) -> dict[tuple[str, str | None], list[ListedTool]]:
    """Listings in the context (the turns before, or the input of a caller that keeps its own), by the server
    they list, as `(label, url)`; the latest of each label wins.

    As OpenAI does, a server whose listing is in the context is not listed again. The listing names
    its server by label only: it is taken for the server of that label and the URL the previous turn
    gave it, or, when the previous turn did not name the label (a stateless caller), for any URL
    (`(label, None)`).
    """
    urls = {tool.get("server_label"): tool.get("server_url") for tool in previous_tools if tool.get("type") == "mcp"}
    found: dict[tuple[str, str | None], list[ListedTool]] = {}
    for item in history:
        if item["type"] == "mcp_list_tools" and not item.get("error"):
            label = item["server_label"]
            found[(label, urls.get(label))] = [ListedTool.from_item_entry(entry) for entry in item.get("tools") or ()]
    return found
