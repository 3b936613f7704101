"""Turns a model's streamed chunks into Responses output items and their events.

Text becomes a `message` item with an `output_text` part (and a `refusal`
part for refusals); reasoning text a `reasoning` item (with its reasoning sealed
in `encrypted_content` when the request asks for it). A tool call becomes a
`function_call` item for the caller to answer, or, for a server-side tool,
the item its kind makes of it: a call item left open for the loop to run
(`mcp_call`), or another that ends the response (`mcp_approval_request`).
Items open when their first piece arrives; a message closes when a tool call
begins, and everything else still open closes at the end. Citation marks that
a tool's results asked the model to write (`【...】`) leave the text as it
streams, each as the annotations it stands for (`Toolbox.citations`).

A call opens once its name is whole: some upstreams stream a name in pieces,
so a call is held until its first arguments, the next call, any other
output, or the end of the stream. A call to a tool the model was not offered
(one outside `allowed_tools`, say) is the model's failure:
`ToolNotOfferedError` is raised as the call would open, so the caller never
sees it.
"""

from __future__ import annotations

from typing import Any

from parley.engine import encrypted_reasoning
from parley.engine.emitter import EventEmitter
from parley.errors import UpstreamError
from parley.ids import in_turn, new_id, new_turn
from parley.inference.types import ChatChunk, ToolCallDelta, Usage
from parley.tools import CitationMarks, Toolbox


class ToolNotOfferedError(UpstreamError):
    """The model called a tool it was not offered: a 502, as for any answer outside the protocol."""

    code = "tool_not_offered"


class OutputBuilder:
    def __init__(
        self,
        emitter: EventEmitter,
        toolbox: Toolbox,
        *,
        include_logprobs: bool,
        offered: set[str] | None = None,
        encrypt_reasoning: bool = False,
    ) -> None:
        self.emitter = emitter
        self.toolbox = toolbox
        self.offered = offered or set()  # the names of the tools the model may call
        self.include_logprobs = include_logprobs
        self.encrypt_reasoning = encrypt_reasoning  # `include: ["reasoning.encrypted_content"]`
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self._message: int | None = None  # output index of the open message
        self._parts: dict[str, int] = {}  # open part kind -> content index in the message
        self._reasoning: int | None = None
        self._citations: CitationMarks | None = None  # of the open output_text part, when a kind reads marks
        self._calls: dict[int, int] = {}  # the model's tool-call index -> output index
        self._held: dict[int, ToolCallDelta] = {}  # calls whose name may still be arriving, by the model's index
        # The arguments of calls whose items are made from them whole when they end (see CallStyle), by output index.
        self._arguments: dict[int, list[str]] = {}
        self.call_indexes: list[int] = []  # output indexes of this model call's tool calls, of every kind
        self.server_calls: list[int] = []  # those of them that Parley runs, for the loop
        # The mark every item of this model call carries in its id (see `parley.ids`): the context builder
        # reads it to send the calls of one model message back as one assistant message.
        self.turn = new_turn()

    def add(self, chunk: ChatChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
            return
        if self._held and (chunk.reasoning or chunk.content or chunk.refusal):
            self._open_held()
        if chunk.reasoning:
            self._reasoning_delta(chunk.reasoning)
        if chunk.content or (chunk.logprobs and self.include_logprobs):
            self._text_delta(chunk.content or "", chunk.logprobs)
        if chunk.refusal:
            self._refusal_delta(chunk.refusal)
        for call in chunk.tool_calls or ():
            self._tool_call_delta(call)
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason

    def close(self) -> None:
        """Ends the model call: every item closes but the MCP calls, which the loop runs next.

        When the model was cut off (by `max_output_tokens` or a content filter), what it
        was writing closes `incomplete`.
        """
        self._open_held()
        status = "incomplete" if self.finish_reason in ("length", "content_filter") else "completed"
        for index in sorted(self._calls.values()):
            item = self.emitter.output[index]
            if index in self.server_calls:
                if index in self._arguments:
                    self._finish_call(index, item)
                self.emitter.end_arguments(index, item)
            elif self.emitter.is_open(index):
                if index in self._arguments:
                    self._finish_call(index, item)
                self.emitter.done_item(index, status)
        self._close_message(status)
        self._close_reasoning(status)

    # Text and refusals

    def _open_message(self) -> int:
        if self._message is None:
            self._close_reasoning()
            item = {
                "id": new_id("msg", self.turn),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            self._message = self.emitter.add_item(item)
            self._parts.clear()
        return self._message

    def _open_part(self, kind: str, part: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
        index = self._open_message()
        item = self.emitter.output[index]
        if kind not in self._parts:
            self._parts[kind] = len(item["content"])
            self.emitter.add_part(index, self._parts[kind], part)
            if kind == "output_text":
                self._citations = self.toolbox.citations()
        content_index = self._parts[kind]
        return index, content_index, item["content"][content_index]

    def _text_delta(self, text: str, logprobs: list[dict[str, Any]] | None) -> None:
        index, content_index, part = self._open_part(
            "output_text", {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        )
        entries = logprobs if (logprobs and self.include_logprobs) else []
        if entries:
            part["logprobs"].extend(entries)
        if self._citations is None:
            self._text_out(index, content_index, part, text, entries)
            return
        pieces = self._citations.feed(text)
        for piece in pieces:
            if isinstance(piece, str):
                self._text_out(index, content_index, part, piece, entries)
                entries = []
            else:
                self.emitter.add_annotation(index, content_index, piece)
        if entries:  # the text that came with them is held, as a mark may begin there
            self._text_out(index, content_index, part, "", entries)

    def _text_out(
        self, index: int, content_index: int, part: dict[str, Any], text: str, logprobs: list[dict[str, Any]]
    ) -> None:
        if text:
            self.emitter.extend(part, "text", text)
        self.emitter.emit(
            "response.output_text.delta",
            item_id=self.emitter.output[index]["id"],
            output_index=index,
            content_index=content_index,
            delta=text,
            logprobs=logprobs,
        )

    def _refusal_delta(self, text: str) -> None:
        index, content_index, part = self._open_part("refusal", {"type": "refusal", "refusal": ""})
        self.emitter.extend(part, "refusal", text)
        self.emitter.emit(
            "response.refusal.delta",
            item_id=self.emitter.output[index]["id"],
            output_index=index,
            content_index=content_index,
            delta=text,
        )

    def _close_message(self, status: str = "completed") -> None:
        if self._message is not None:
            if "output_text" in self._parts:
                content_index = self._parts["output_text"]
                if self._citations is not None:
                    part = self.emitter.output[self._message]["content"][content_index]
                    for piece in self._citations.flush():
                        assert isinstance(piece, str)  # what is held is text that no mark closed
                        self._text_out(self._message, content_index, part, piece, [])
                    self._citations = None
                self.emitter.annotate(self._message, content_index, self._annotations)
            self.emitter.done_item(self._message, status)
            self._message = None
            self._parts.clear()

    def _annotations(self, text: str) -> list[dict[str, Any]]:
        """What the server-side tools cite in the answer's text (web_search's `url_citation`s), in text order."""
        found = [annotation for kind in self.toolbox.kinds for annotation in kind.annotations(text)]
        return sorted(found, key=lambda annotation: annotation.get("start_index", 0))

    # Reasoning

    def _reasoning_delta(self, text: str) -> None:
        if self._reasoning is None:
            self._close_message()
            opened = {
                "id": new_id("rs", self.turn),
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
            self._reasoning = self.emitter.add_item(opened)
            self.emitter.add_part(self._reasoning, 0, {"type": "reasoning_text", "text": ""})
        item = self.emitter.output[self._reasoning]
        self.emitter.extend(item["content"][0], "text", text)
        self.emitter.emit(
            "response.reasoning_text.delta",
            item_id=item["id"],
            output_index=self._reasoning,
            content_index=0,
            delta=text,
        )

    def _close_reasoning(self, status: str = "completed") -> None:
        if self._reasoning is not None:
            if self.encrypt_reasoning:
                self.emitter.done_part(self._reasoning, 0)  # the text whole, to be sealed
                item = self.emitter.output[self._reasoning]
                item["encrypted_content"] = encrypted_reasoning.seal(item)
            self.emitter.done_item(self._reasoning, status)
            self._reasoning = None

    # Tool calls

    def _tool_call_delta(self, delta: ToolCallDelta) -> None:
        index = self._calls.get(delta.index)
        if index is None:
            held = self._held.get(delta.index)
            if held is None:
                self._open_held()  # a new call: the one before it has its whole name
                held = self._held[delta.index] = ToolCallDelta(delta.index, delta.id, delta.name or "", "")
            else:
                held.id = held.id or delta.id
                held.name = (held.name or "") + (delta.name or "")
            if not delta.arguments:
                return
            index = self._open_call(self._held.pop(delta.index))
        elif delta.name and self.emitter.output[index]["type"] == "function_call":
            self.emitter.output[index]["name"] += delta.name
        item = self.emitter.output[index]
        if not delta.arguments:
            return
        if index in self._arguments:
            self._arguments[index].append(delta.arguments)
        elif item["type"] == "function_call":
            self.emitter.extend(item, "arguments", delta.arguments)
            self.emitter.emit(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=delta.arguments
            )
        elif self.emitter.streams_arguments(index):
            self.emitter.stream_arguments(index, delta.arguments)
        else:  # an approval request is shown whole, when it is done
            self.emitter.extend(item, "arguments", delta.arguments)

    def _finish_call(self, index: int, item: dict[str, Any]) -> None:
        """Makes a call's item whole from its arguments (a custom tool's input, a shell call's action)."""
        arguments = "".join(self._arguments.pop(index))
        kind = self.toolbox.kind_of(item["type"])
        if kind is not None:  # a server-side call whose item has no `arguments` of its own (a web search's)
            kind.take_arguments(item, arguments)
            return
        style = self.toolbox.caller_style(item["type"])
        for event_type, fields in style.finish(item, arguments):
            self.emitter.emit(event_type, item_id=item["id"], output_index=index, **fields)

    def _open_held(self) -> None:
        """Opens the calls held while their names were arriving, in the order they began."""
        for held in list(self._held.values()):
            del self._held[held.index]
            self._open_call(held)

    def _open_call(self, call: ToolCallDelta) -> int:
        """Opens a call whose name is whole, once it is known to be one the model may call."""
        name = call.name or ""
        if name not in self.offered:
            raise ToolNotOfferedError(f"The model called '{name}', which is not among the tools it may call.")
        self._close_message()
        self._close_reasoning()
        tool = self.toolbox.tool(name)
        caller = self.toolbox.caller_tool(name) if tool is None else None
        if caller is not None:
            item = caller.style.item(caller, call.id or new_id("call"))
        else:
            assert tool is not None  # an offered name is a caller's tool or a server-side one
            item = tool.kind.call_item(tool)
        item["id"] = in_turn(item["id"], self.turn)
        index = self._calls[call.index] = self.emitter.add_item(item)
        if (caller is not None and not caller.style.streams_arguments) or (caller is None and "arguments" not in item):
            self._arguments[index] = []
        self.call_indexes.append(index)
        if self.toolbox.kind_of(item["type"]) is not None:
            self.server_calls.append(index)
        return index
