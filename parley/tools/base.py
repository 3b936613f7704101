"""The interface every kind of server-side tool implements, and the registry of their items.

A kind (MCP servers, web_search, file_search) is one module in
`parley/tools` with one `ToolKind` subclass marked `@register`. Registering
makes its tool types known to the request (`definition_model`), its items to
the event emitter and the context builder, and the kind itself to the
`Toolbox`, which makes one of it for each response from that response's tool
definitions of its types. Nothing else names a kind. The agent loop and the
output builder only ever talk to this interface:

    ToolKind       the tools of its kind that one response names
        definitions    the request's tool types it serves, each with the model of one definition
        shared         what it keeps across responses (MCP: its sessions), made once per server from the
                       settings and the server's resources (`ToolResources`)
        prepare        the items made before the first model call (MCP: its listings)
        tools          the names the model may call, as `ServerTool`s, once prepared
        call_item      a model's call to one of them, as the output item it opens
        take_arguments the model's arguments, whole, for a call item with no `arguments` field
        approved_calls the calls the caller approved in this request's input, to run now
        run            runs a call item, writing its result into it; its final status
        refuse         ends a call item that may not run (`max_tool_calls`)
        close          ends what the response opened
        annotations    the citations of an answer's text, as each output_text part ends
        cites, cite    the citation marks (`【...】`) the model writes in its answer, which leave the text
                       as annotations, as it streams (see `parley.tools.toolbox.CitationMarks`)
        chat_messages  what the model reads of one of the kind's items, in later model calls
        messages       the same, in this response, where the kind knows more than the item holds

Every item type a kind produces or reads is in its `item_types`; those that have
events of their own beyond `output_item.added` and `.done` are described by an
`ItemEvents` in its `items`. `register` makes them known to the event emitter
(`item_events`) and to the context builder (`chat_messages_of`), so neither
names a kind.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from parley.store.owners import Caller

if TYPE_CHECKING:
    from parley.config import ToolsSettings
    from parley.inference.registry import ModelRegistry
    from parley.store.database import Database
    from parley.vectors.index import ChunkIndex

# (server label, or None for a kind without servers; the kind's name for the tool) -> the name the model knows it by
NameOf = Callable[[str | None, str], str]

# The brackets of a citation mark, which a kind's results may ask the model to write where it uses one (`cite`).
MARK_OPEN, MARK_CLOSE = "\u3010", "\u3011"  # 【 and 】


@dataclass(frozen=True, slots=True)
class ToolResources:
    """What the server hands every kind besides its settings, made once (in `parley.app`): its database and
    its models. A kind takes what it needs in `shared` (file_search: vector stores, their chunks, and the
    models that embed its queries); each may be missing, in a server made without it."""

    database: Database | None = None
    models: ModelRegistry | None = None
    # The chunk index of the server's vector stores, when it keeps one (its in-memory copy of the vectors is
    # then one for every user of it).
    vector_index: ChunkIndex | None = None


@dataclass(frozen=True, slots=True)
class ItemEvents:
    """The events of a server-side tool's item, between its `output_item.added` and `.done`.

    `status` is a prefix: `{status}.in_progress` when Parley starts on the item,
    `{status}.{working}` right after, when set, and `{status}.completed` or
    `{status}.failed` as it ends. `arguments`, when set,
    is the prefix of `{arguments}.delta`, as the model writes the call's
    arguments, and `{arguments}.done`. `pending` is what the item's result
    fields hold while it is in progress.
    """

    status: str
    arguments: str | None = None
    pending: Mapping[str, Any] = field(default_factory=dict)
    # The verb of an event right after `.in_progress`, while the item runs: `searching` for
    # `{status}.searching` (web_search_call); None when there is none.
    working: str | None = None
    # Whether `{status}.failed` exists: a failed item of a family without it (web_search_call) ends with
    # `output_item.done` alone.
    failure_event: bool = True


@dataclass(frozen=True, slots=True)
class ServerTool:
    """A name the model may call whose calls Parley runs."""

    kind: ToolKind
    name: str  # as the model knows it: unique among every tool of the response
    function: dict[str, Any]  # its chat-completions definition, `{"type": "function", "function": {...}}`
    tool_name: str  # the kind's own name for it (an MCP server's name for its tool)
    server_label: str | None = None  # what `allowed_tools` entries of type `mcp` match
    needs_approval: bool = False
    # The type of the request's tool it comes from (`mcp`, `web_search_preview`): what `allowed_tools`
    # entries and a `tool_choice` of a tool type match.
    tool_type: str = ""


class ToolKind(ABC):
    """The tools of one kind that one response names.

    It is made for each response as `Kind(definitions, shared)`: the response's
    tool definitions of the kind's types (validated by their `definitions`
    models, in request order; perhaps none, since an approval may still answer
    an earlier response's request), and what `shared` made once for the server.
    """

    # The tool types of a request's `tools` this kind serves, each with the model that validates one
    # definition (`{"type": "mcp", ...}`); the model's `public()`, if it has one, is what is echoed and stored.
    definitions: ClassVar[dict[str, type[BaseModel]]]
    call_type: ClassVar[str]  # the item a call becomes, which Parley runs ("mcp_call")
    item_types: ClassVar[tuple[str, ...]]  # every item this kind produces or reads, `call_type` included
    items: ClassVar[dict[str, ItemEvents]]  # those of them that have events of their own
    # The response's `include` values (what the caller asks to see of its items, such as
    # `web_search_call.action.sources`), set by the toolbox once the kind is made.
    include: frozenset[str] = frozenset()
    # Who the response acts for, set by the toolbox once the kind is made: a kind that reads stored rows
    # reads only those the caller sees. By default, one who sees none.
    caller: Caller = Caller(owner=None)

    @abstractmethod
    def __init__(self, definitions: list[Any], shared: Any) -> None: ...

    @classmethod
    def shared(cls, settings: ToolsSettings, resources: ToolResources) -> Any:
        """What the kind keeps across responses (connections, clients), made once per server; None by default."""
        return None

    @classmethod
    async def close_shared(cls, shared: Any) -> None:
        """Ends what `shared` made, as the server stops."""
        return None

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

    def take_arguments(self, item: dict[str, Any], arguments: str) -> None:
        """The model's arguments, whole once it is done, for a call item that has no `arguments` field of its own
        (a `web_search_call`, whose `action` holds what the arguments ask); before the item runs or is refused.

        Items that have the field get the arguments there, as the model writes them. By default, they land
        there too.
        """
        item["arguments"] = arguments

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

    def annotations(self, text: str) -> list[dict[str, Any]]:
        """The annotations of an answer's finished `output_text` (`url_citation`s of what the kind's calls read),
        each with `start_index` where it applies; none by default."""
        return []

    def cites(self) -> bool:
        """Whether the model, in its next answer, may cite with marks the kind reads (`cite`): whether it has
        read, in this response or the turns before, results that asked for them. False by default."""
        return False

    def cite(self, mark: str, index: int) -> list[dict[str, Any]] | None:
        """The annotations of a citation mark the model wrote in its answer, `【mark】`, which leaves the text;
        `index` is where it stood, in the text as the caller gets it. None when the mark is not the kind's
        (it stays in the text as written)."""
        return None

    def messages(self, item: dict[str, Any], items: list[dict[str, Any]], name_of: NameOf) -> list[dict[str, Any]]:
        """What the model reads of `item` in this response: by default what the item holds (`chat_messages`).

        A kind that knows more of an item than the item shows the caller (file_search: the results of a call
        whose `results` the request did not `include`) tells it here.
        """
        return self.chat_messages(item, items, name_of)

    @classmethod
    def chat_messages(cls, item: dict[str, Any], items: list[dict[str, Any]], name_of: NameOf) -> list[dict[str, Any]]:
        """The chat messages the model reads for `item`, one of this kind's `item_types`; none by default.

        `items` are all the items being sent, `item` among them (an item may
        depend on a later one: a request on the response that declines it).
        `name_of` gives the name the model knows a server's tool by. An
        assistant message with `tool_calls` and no content holds the item's
        calls, each by the id of the item that the model's call opened (whose
        turn mark says which model message made it, see `parley.ids`): they
        join the other calls of that message, and the tool messages answering
        them follow it (see `parley.engine.context.chat_messages`).
        """
        return []


def take_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... when the caller's own tools (or another kind's) already have it; added
    to `taken`. What a kind's `tools` names its tools by."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    taken.add(candidate)
    return candidate


def arguments_object(text: str) -> dict[str, Any]:
    """A model's arguments to a tool, whole, as the JSON object they must be (none at all: `{}`); raises
    ValueError with what the model should read when they are not one."""
    try:
        arguments = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"The arguments are not valid JSON: {exc}") from exc
    if not isinstance(arguments, dict):
        raise ValueError("The arguments must be a JSON object.")
    return arguments


_ITEM_EVENTS: dict[str, ItemEvents] = {}
_KINDS: dict[str, type[ToolKind]] = {}  # item type -> the kind that produces or reads it
_TOOL_TYPES: dict[str, type[ToolKind]] = {}  # a request's tool type -> the kind that serves it
_REGISTERED: list[type[ToolKind]] = []  # in the order they registered


def register(kind: type[ToolKind]) -> type[ToolKind]:
    """Makes a kind known: its tool types to the request, its items to the event emitter and to the
    context builder, and itself to every response's `Toolbox`."""
    if not set(kind.items) <= set(kind.item_types) or kind.call_type not in kind.item_types:
        raise TypeError(f"{kind.__name__}: `items` and `call_type` must be among its `item_types`")
    for item_type in kind.item_types:
        if _KINDS.setdefault(item_type, kind) is not kind:
            raise TypeError(f"{kind.__name__}: '{item_type}' items belong to {_KINDS[item_type].__name__}")
    for tool_type in kind.definitions:
        if _TOOL_TYPES.setdefault(tool_type, kind) is not kind:
            raise TypeError(f"{kind.__name__}: '{tool_type}' tools belong to {_TOOL_TYPES[tool_type].__name__}")
    _ITEM_EVENTS.update(kind.items)
    _REGISTERED.append(kind)
    return kind


def registered_kinds() -> tuple[type[ToolKind], ...]:
    """Every registered kind, in the order it registered."""
    return tuple(_REGISTERED)


def kind_of_tool(tool_type: str) -> type[ToolKind] | None:
    """The kind that serves a request's tool of `tool_type`; None when Parley runs no such tool."""
    return _TOOL_TYPES.get(tool_type)


def definition_model(tool_type: str) -> type[BaseModel] | None:
    """The model of one definition of a server-side tool type; None when no kind serves it."""
    kind = _TOOL_TYPES.get(tool_type)
    return None if kind is None else kind.definitions[tool_type]


def item_events(item_type: str) -> ItemEvents | None:
    """The events of a server-side tool's item; None for any other item."""
    return _ITEM_EVENTS.get(item_type)


def chat_messages_of(item: dict[str, Any], items: list[dict[str, Any]], name_of: NameOf) -> list[dict[str, Any]] | None:
    """The chat messages for a server-side tool's item (see `ToolKind.chat_messages`); None for any other item."""
    kind = _KINDS.get(item["type"])
    return None if kind is None else kind.chat_messages(item, items, name_of)
