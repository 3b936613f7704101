"""The tools of one response, and which of them Parley runs itself.

Client-side function tools are handed back to the caller; server-side tools
are run by Parley, each kind behind the `ToolKind` interface (`base.py`). The
toolbox makes one of every registered kind from the response's definitions of
its types, prepares them (MCP lists its servers' tools), names their tools
apart from the functions and from each other, and tells the agent loop, for
every name the model may call, who answers it, and for every call item, which
kind runs it. It names no kind: a new kind is one module in `parley/tools`,
marked `@register`, and imported by the package (`parley/tools/__init__.py`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from typing import Any

from pydantic import BaseModel

from parley.config import ToolsSettings
from parley.store.owners import Caller
from parley.tools.base import (
    MARK_CLOSE,
    MARK_OPEN,
    ServerTool,
    ToolKind,
    ToolResources,
    kind_of_tool,
    registered_kinds,
)
from parley.tools.caller import STYLES, CallerTool, CallerTools, CallStyle

log = logging.getLogger(__name__)


class ToolServices:
    """What every registered kind keeps across responses (`ToolKind.shared`), made once per server from the
    tools' settings and the server's resources."""

    def __init__(self, settings: ToolsSettings, resources: ToolResources | None = None) -> None:
        resources = resources or ToolResources()
        self._shared = {kind: kind.shared(settings, resources) for kind in registered_kinds()}

    def toolbox(
        self, definitions: list[BaseModel], include: Collection[str] = (), caller: Caller | None = None
    ) -> Toolbox:
        """The tools of one response: those the caller answers, and one of every kind made from its definitions
        (each told the response's `include`, and who it acts for; without a `caller`, one who sees nothing)."""
        kinds = [
            kind([d for d in definitions if kind_of_tool(getattr(d, "type", "")) is kind], shared)
            for kind, shared in self._shared.items()
        ]
        for made in kinds:
            made.include = frozenset(include)
            if caller is not None:
                made.caller = caller
        callers = [d for d in definitions if kind_of_tool(getattr(d, "type", "")) is None]
        return Toolbox(CallerTools(callers), kinds)

    async def close(self) -> None:
        for kind, shared in self._shared.items():
            try:
                await kind.close_shared(shared)
            except Exception:
                log.exception("cannot close what the %s tools keep", kind.__name__)


class Toolbox:
    def __init__(self, callers: CallerTools, kinds: list[ToolKind]) -> None:
        self.callers = callers
        # Every kind, even with no tools of its own: an approval may still answer an earlier response's request.
        self.kinds = kinds
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
        taken = self.callers.names()
        for kind in self.kinds:
            for tool in kind.tools(taken):
                self._tools[tool.name] = tool
        self._functions = [tool.function for tool in self._tools.values()]
        return [item for items in made for item in items]

    def approved_calls(self, history: list[dict[str, Any]], input_items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The call items that the approvals in this request's input let run, not yet run."""
        return [call for kind in self.kinds for call in kind.approved_calls(history, input_items)]

    def tool(self, name: str) -> ServerTool | None:
        """The server-side tool the model knows as `name`; None for any other name."""
        return self._tools.get(name)

    def caller_tool(self, name: str) -> CallerTool | None:
        """The tool the model knows as `name`, when the caller answers it."""
        return self.callers.tool(name)

    @staticmethod
    def caller_style(item_type: str) -> CallStyle:
        """How the call items of `item_type`, for the caller, are made."""
        return STYLES[item_type]

    def caller_functions(self) -> list[dict[str, Any]]:
        """The tools the caller answers, as chat-completions function definitions."""
        return [tool.function for tool in self.callers]

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

    def chat_messages(self, item: dict[str, Any], items: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """What the model reads of a server-side tool's item, as the response's kind of it knows it
        (`ToolKind.messages`); None for any other item."""
        for kind in self.kinds:
            if item["type"] in kind.item_types:
                return kind.messages(item, items, self.model_name)
        return None

    def citations(self) -> CitationMarks | None:
        """What takes the citation marks out of the model's next answer, when a kind reads them; else None."""
        citing = [kind for kind in self.kinds if kind.cites()]
        return CitationMarks(citing) if citing else None

    def model_name(self, server_label: str | None, tool_name: str) -> str:
        """The name the model knows a server's tool by (it differs when two tools share a name)."""
        for name, tool in self._tools.items():
            if tool.server_label == server_label and tool.tool_name == tool_name:
                return name
        return tool_name

    async def close(self) -> None:
        for kind in self.kinds:
            with contextlib.suppress(Exception):
                await kind.close()


# The longest a citation mark may be, brackets included: a mark that has not closed by then is text. Marks
# name files (a name is at most 255 characters in most file systems), a few of them at most.
MAX_MARK = 600
_SPACES = " \t"


class CitationMarks:
    """Takes the citation marks (`【...】`) out of one answer's text as it streams, each into its annotations.

    The model writes a mark where it uses a result that asked for one (file_search's `【handbook.md】`); the
    caller gets the text without it, and annotations that say where it stood (`ToolKind.cite`). The text passes
    through `feed` a piece at a time, as the model writes it: what may still be a mark (from `【` until its `】`,
    or until it is too long or has a line break to be one) is held back, and so are the spaces before it, which
    go with a mark, so that "Paris 【a.txt】." reads "Paris.". A mark no kind knows stays as written. `flush`
    gives back what is held when the text ends.

    Each call returns the pieces to send, in order: text (a `str`) and annotations (a `dict`).
    """

    def __init__(self, kinds: list[ToolKind]) -> None:
        self.kinds = kinds
        self.shown = 0  # the characters of text given out so far: where the next one stands
        self._held = ""

    def feed(self, text: str) -> list[str | dict[str, Any]]:
        buffer, self._held = self._held + text, ""
        pieces: list[str | dict[str, Any]] = []
        done = 0  # what of `buffer` has been given out or taken
        search = 0
        while True:
            start = buffer.find(MARK_OPEN, search)
            if start < 0:
                # No mark begins: all goes out but trailing spaces, which a mark in the next piece would take.
                cut = len(buffer.rstrip(_SPACES))
                self._give(pieces, buffer[done:cut])
                self._held = buffer[max(cut, done) :]
                return pieces
            end = buffer.find(MARK_CLOSE, start + 1)
            broken = buffer.find("\n", start + 1, end if end >= 0 else len(buffer)) >= 0
            if end < 0 and not broken and len(buffer) - start < MAX_MARK:
                # It may still close: hold it, and the spaces before it.
                cut = len(buffer[:start].rstrip(_SPACES))
                self._give(pieces, buffer[done:cut])
                self._held = buffer[max(cut, done) :]
                return pieces
            if end < 0 or broken or end - start + 1 > MAX_MARK:
                search = start + 1  # not a mark: it goes out as text
                continue
            cut = max(done, len(buffer[:start].rstrip(_SPACES)))
            annotations = self._cite(buffer[start + 1 : end], self.shown + cut - done)
            if annotations is None:
                search = start + 1
                continue
            self._give(pieces, buffer[done:cut])
            pieces.extend(annotations)
            done = search = end + 1

    def flush(self) -> list[str | dict[str, Any]]:
        """What is still held, as text, once the answer's text has ended."""
        pieces: list[str | dict[str, Any]] = []
        self._give(pieces, self._held)
        self._held = ""
        return pieces

    def _give(self, pieces: list[str | dict[str, Any]], text: str) -> None:
        if text:
            pieces.append(text)
            self.shown += len(text)

    def _cite(self, mark: str, index: int) -> list[dict[str, Any]] | None:
        for kind in self.kinds:
            annotations = kind.cite(mark, index)
            if annotations is not None:
                return annotations
        return None
