"""The interface every kind of server-side tool implements, and the registry of their items.

A kind (MCP servers now; file_search and web_search later) is one module in
`parley/tools` with one `ToolKind` subclass, which `register` makes known to
the event emitter and `Toolbox.__init__` makes, for each response, from the
response's tool definitions. The agent loop and the output builder only ever
talk to this interface:

    ToolKind       the tools of its kind that one response names
        prepare        the items made before the first model call (MCP: its listings)
        tools          the names the model may call, as `ServerTool`s, once prepared
        call_item      a model's call to one of them, as the output item it opens
        approved_calls the calls the caller approved in this request's input, to run now
        run            runs a call item, writing its result into it; its final status
        refuse         ends a call item that may not run (`max_tool_calls`)
        close          ends what the response opened

Every item a kind produces that has events of its own beyond `output_item.added`
and `.done` is described by an `ItemEvents` in the kind's `items`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class ItemEvents:
    """The events of a server-side tool's item, between its `output_item.added` and `.done`.

    `status` is a prefix: `{status}.in_progress` when Parley starts on the item,
    `{status}.completed` or `{status}.failed` as it ends. `arguments`, when set,
    is the prefix of `{arguments}.delta`, as the model writes the call's
    arguments, and `{arguments}.done`. `pending` is what the item's result
    fields hold while it is in progress.
    """

    status: str
    arguments: str | None = None
    pending: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServerTool:
    """A name the model may call whose calls Parley runs."""

    kind: ToolKind
    name: str  # as the model knows it: unique among every tool of the response
    function: dict[str, Any]  # its chat-completions definition, `{"type": "function", "function": {...}}`
    tool_name: str  # the kind's own name for it (an MCP server's name for its tool)
    server_label: str | None = None  # what `allowed_tools` entries of type `mcp` match
    needs_approval: bool = False


class ToolKind(ABC):
    """The tools of one kind that one response names."""

    call_type: ClassVar[str]  # the item a call becomes, which Parley runs ("mcp_call")
    items: ClassVar[dict[str, ItemEvents]]  # the items this kind produces that have events of their own

    async def prepare(
        self, history: list[dict[str, Any]], previous_tools: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The finished items to produce before the first model call; `history` includes this request's input."""
        return []

    @abstractmethod
    def tools(self, taken: set[str]) -> list[ServerTool]:
        """The tools the model may call, named apart from the names already `taken` (and added to it)."""

    @abstractmethod
    def call_item(self, tool: ServerTool) -> dict[str, Any]:
        """The item a model's call to `tool` opens (`in_progress`, empty `arguments`).

        Its `call_type`, which Parley runs once the model is done, or any other
        item, which is closed as it is and ends the response (an approval request).
        """

    def approved_calls(self, history: list[dict[str, Any]], input_items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The call items (`in_progress`) that approvals in `input_items` let run; raises InvalidRequestError."""
        return []

    @abstractmethod
    async def run(self, item: dict[str, Any]) -> str:
        """Runs a call item, writing its result (or error) into it; returns its final status.

        Never raises for a failure of the tool: the model reads the error instead.
        """

    @abstractmethod
    def refuse(self, item: dict[str, Any], reason: str) -> str:
        """Ends a call item that may not run, saying why; returns its final status."""

    async def close(self) -> None:
        return None


_ITEM_EVENTS: dict[str, ItemEvents] = {}


def register(kind: type[ToolKind]) -> type[ToolKind]:
    """Makes a kind's items known to the event emitter."""
    _ITEM_EVENTS.update(kind.items)
    return kind


def item_events(item_type: str) -> ItemEvents | None:
    """The events of a server-side tool's item; None for any other item."""
    return _ITEM_EVENTS.get(item_type)
