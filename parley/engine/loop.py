"""The agent loop: how one response is produced.

    prepare: list the MCP servers' tools; run the calls the caller approved
    repeat:
        call the model, and turn its stream into output items
        run the MCP calls it made (at once, when parallel calls are allowed)
    until the model answers, hands a function call to the caller, needs an
    approval, runs out of output tokens, or the iteration bound is reached

Everything a turn carries is one `Turn`; the model sits behind the provider
interface, server-side tools behind the `Toolbox`, and every event leaves
through the turn's `EventEmitter`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from parley.config import EngineSettings
from parley.engine import context
from parley.engine.emitter import EventEmitter
from parley.engine.output import OutputBuilder
from parley.engine.request import CreateResponseRequest
from parley.engine.response import add_usage, usage_object
from parley.errors import ContextLengthExceededError, InvalidRequestError, ParleyError, UpstreamStatusError
from parley.ids import new_id
from parley.inference.registry import ResolvedModel
from parley.inference.types import ChatChunk, ChatRequest, Usage
from parley.tools import Toolbox
from parley.tools.definitions import FunctionTool

_LIMIT_REACHED = {
    "type": "mcp_protocol_error",
    "code": -32000,
    "message": "max_tool_calls reached; the call was not run.",
}


@dataclass
class Turn:
    """The state of one response while it is produced."""

    request: CreateResponseRequest
    model: ResolvedModel
    response: dict[str, Any]
    history: list[dict[str, Any]]  # items of the previous responses, oldest first
    input_items: list[dict[str, Any]]  # this request's input
    functions: list[FunctionTool]
    toolbox: Toolbox
    emitter: EventEmitter
    settings: EngineSettings = field(default_factory=EngineSettings)
    previous_tools: list[dict[str, Any]] = field(default_factory=list)  # the `tools` of the previous response
    usage: Usage = field(default_factory=Usage)
    announced: bool = False
    dropped_items: int = 0  # oldest context items left out by `truncation: auto`
    # Writes the stored response's first row. It is started as the response is announced,
    # after its first token is on its way (a write competes with the token for the
    # interpreter), or soon after the start at the latest (see ResponseService._start);
    # this server answers for the response until the row is there.
    begin: Callable[[], Awaitable[None]] | None = None
    written: asyncio.Future[None] | None = None
    server_calls: int = 0  # MCP calls run so far
    model_calls: int = 0

    def ensure_written(self) -> asyncio.Future[None] | None:
        """Starts writing the response's first row, once; the write, or None when it is not stored."""
        if self.begin is not None and self.written is None:
            self.written = asyncio.ensure_future(self.begin())
        return self.written

    def context_items(self) -> list[dict[str, Any]]:
        return (self.history + self.input_items + self.emitter.output)[self.dropped_items :]


async def run(turn: Turn) -> None:
    """Produces the turn's output; raises ParleyError on failure (see `service`)."""
    context.check_input(turn.input_items)
    await _produce(turn)


async def _produce(turn: Turn) -> None:
    prepared = await _prepare(turn)
    if any(item["type"] == "mcp_call" for item in prepared):
        # Approved calls have run: their items go out before the model is called, so that a
        # model call that fails still leaves them in the failed response, and in storage.
        announce(turn, prepared)
    for _ in range(turn.settings.max_iterations):
        stream = await _open_model_stream(turn, prepared)
        turn.model_calls += 1
        announce(turn, prepared)
        builder = OutputBuilder(
            turn.emitter, turn.toolbox, include_logprobs=turn.request.include_logprobs, offered=_callable(turn)
        )
        try:
            async for batch in stream:
                for chunk in batch:
                    builder.add(chunk)
        finally:
            await stream.aclose()
        builder.close()
        if builder.usage is not None:
            add_usage(turn.usage, builder.usage)
        calls = [turn.emitter.output[index] for index in builder.call_indexes]
        server_calls = [index for index in builder.call_indexes if turn.emitter.output[index]["type"] == "mcp_call"]
        await _run_server_calls(turn, server_calls)
        if builder.finish_reason in ("length", "content_filter"):
            return _finish(turn, builder.finish_reason)
        hands_back = any(call["type"] in ("function_call", "mcp_approval_request") for call in calls)
        if not server_calls or hands_back:
            return _finish(turn, builder.finish_reason)
    _finish(turn, "length")  # the iteration bound: the response ran out of room to finish


def announce(turn: Turn, finished: list[dict[str, Any]] | None = None) -> None:
    """`response.created` and `response.in_progress`, once, when the first output is certain.

    Then the items that were `finished` before it (listings, approved calls), in order.
    """
    if not turn.announced:
        turn.announced = True
        turn.emitter.emit("response.created", response=turn.response)
        turn.emitter.emit("response.in_progress", response=turn.response)
        turn.ensure_written()
        for item in finished or ():
            _emit_finished(turn.emitter, item)


async def _prepare(turn: Turn) -> list[dict[str, Any]]:
    """The items produced before the first model call: tool listings, and the approved calls' results."""
    items = await turn.toolbox.list_servers(turn.history + turn.input_items, turn.previous_tools)
    known = turn.history + turn.input_items
    requests = {item["id"]: item for item in known if item["type"] == "mcp_approval_request"}
    # A request is answered once: by an earlier response to it, or by the call it let run.
    answered = {item.get("approval_request_id") for item in turn.history if item["type"] == "mcp_call"}
    answered |= {item["approval_request_id"] for item in turn.history if item["type"] == "mcp_approval_response"}
    # A stateless caller sends its whole history as input: an answer whose call is in that
    # input too is part of the history, already run, and not a new answer.
    replayed = {item.get("approval_request_id") for item in turn.input_items if item["type"] == "mcp_call"}
    approved = []
    for index, item in enumerate(turn.input_items):
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
            approved.append(request)
    results = await _gather(turn, [_run_approved(turn, request) for request in approved])
    return items + results


async def _run_approved(turn: Turn, request: dict[str, Any]) -> dict[str, Any]:
    item = {
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
    item["status"] = await _call(turn, item)
    return item


async def _run_server_calls(turn: Turn, indexes: list[int]) -> None:
    """Runs the MCP calls of one model turn; their items close in the order the model made them."""
    emitter = turn.emitter
    for index in indexes:
        emitter.start_work(index)
    statuses = await _gather(turn, [_call(turn, emitter.output[index]) for index in indexes])
    for index, status in zip(indexes, statuses, strict=True):
        emitter.done_item(index, status)


async def _call(turn: Turn, item: dict[str, Any]) -> str:
    """Runs one MCP call, writing its `output` or `error` into the item; returns its final status."""
    route = turn.toolbox.route_for(item["server_label"], item["name"])
    limit = turn.request.max_tool_calls
    if limit is not None and turn.server_calls >= limit:
        item["error"] = _LIMIT_REACHED
        return "failed"
    if route is None:
        item["error"] = {"type": "mcp_protocol_error", "code": -32602, "message": f"Unknown tool '{item['name']}'."}
        return "failed"
    turn.server_calls += 1
    result = await route.server.call(item["name"], item["arguments"])
    item["output"], item["error"] = result.output, result.error
    return "failed" if result.error else "completed"


async def _gather(turn: Turn, calls: list[Any]) -> list[Any]:
    if turn.request.parallel_tool_calls:
        return list(await asyncio.gather(*calls))
    return [await call for call in calls]


def _emit_finished(emitter: EventEmitter, item: dict[str, Any]) -> None:
    """Emits an item that is already finished (a listing, an approved call) with its whole event sequence."""
    if item["type"] == "mcp_call":
        index = emitter.add_item({**item, "arguments": "", "output": None, "error": None, "status": "in_progress"})
        if item["arguments"]:
            emitter.stream_arguments(index, item["arguments"])
        emitter.end_arguments(index, emitter.output[index])
    else:
        index = emitter.add_item({**item, "tools": [], "error": None, "status": "in_progress"})
    emitter.start_work(index)
    emitter.output[index].update({key: value for key, value in item.items() if key != "status"})
    emitter.done_item(index, item["status"])


async def _open_model_stream(turn: Turn, prepared: list[dict[str, Any]]) -> AsyncIterator[list[ChatChunk]]:
    """Starts the model call and waits for its first chunk.

    A refusal before the first chunk (a bad request, an unreachable upstream)
    surfaces here, before any event. With `truncation: auto`, input that does
    not fit loses its oldest items until it does.
    """
    while True:
        items = (
            turn.context_items()
            if turn.announced
            else (turn.history + turn.input_items + prepared)[turn.dropped_items :]
        )
        stream = turn.model.provider.stream_chat(_chat_request(turn, items))
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return _empty()
        except ParleyError as exc:
            await stream.aclose()
            if turn.request.truncation == "auto" and _is_context_overflow(exc):
                shorter = context.drop_oldest(items)
                if shorter is not None:
                    turn.dropped_items += len(items) - len(shorter)
                    # Parley's own field: how many of the oldest items `truncation: auto` left out.
                    turn.response["truncated_items"] = turn.dropped_items
                    continue
            raise
        return _prepend(first, stream)


def _is_context_overflow(exc: ParleyError) -> bool:
    return isinstance(exc, ContextLengthExceededError) or (
        isinstance(exc, UpstreamStatusError) and exc.code == "context_length_exceeded"
    )


def _server_of(turn: Turn) -> Callable[[str], str | None]:
    return lambda name: route.server.label if (route := turn.toolbox.route(name)) else None


def _callable(turn: Turn) -> set[str]:
    """The names the model may call: the tools offered, and the MCP tools held back only by
    `max_tool_calls` (a call to one becomes a failed `mcp_call` that says so)."""
    tools, _ = context.chat_tools(turn.request, turn.functions, turn.toolbox.server_functions(), _server_of(turn))
    return {tool["function"]["name"] for tool in tools or ()}


def _offered_tools(turn: Turn) -> tuple[list[dict[str, Any]] | None, Any]:
    request = turn.request
    limit = request.max_tool_calls
    servers = turn.toolbox.server_functions() if limit is None or turn.server_calls < limit else []
    tools, tool_choice = context.chat_tools(request, turn.functions, servers, _server_of(turn))
    if request.tool_choice == "none":
        tool_choice = "none" if tools else None
    elif turn.model_calls > 0 and tool_choice not in (None, "auto"):
        # A forced call is the first step's: after its results, the model decides, or it would never stop.
        tool_choice = "auto"
    return tools, tool_choice


def _chat_request(turn: Turn, items: list[dict[str, Any]]) -> ChatRequest:
    request = turn.request
    tools, tool_choice = _offered_tools(turn)
    extra: dict[str, Any] = {}
    if request.reasoning is not None and request.reasoning.effort is not None:
        extra["reasoning_effort"] = request.reasoning.effort
    if request.text is not None and request.text.verbosity is not None:
        extra["verbosity"] = request.text.verbosity
    for name in ("prompt_cache_key", "prompt_cache_retention", "service_tier"):
        if getattr(request, name) is not None:
            extra[name] = getattr(request, name)
    logprobs = request.include_logprobs or bool(request.top_logprobs)
    return ChatRequest(
        model=turn.model.name,
        messages=context.chat_messages(request.instructions, items, turn.toolbox.model_name),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=None if tools is None else request.parallel_tool_calls,
        response_format=context.response_format(request),
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_output_tokens,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        logprobs=True if logprobs else None,
        top_logprobs=request.top_logprobs if logprobs else None,
        user=request.safety_identifier or request.user,
        extra=extra,
    )


def _finish(turn: Turn, finish_reason: str | None) -> None:
    """Sets the turn's final status; `end` sends its terminal event once the service has stored the turn."""
    response = turn.response
    if finish_reason in ("length", "content_filter"):
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens" if finish_reason == "length" else finish_reason}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())
    response["usage"] = usage_object(turn.usage)
    response["output"] = turn.emitter.output


_TERMINAL_EVENTS = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}


def end(turn: Turn) -> None:
    """The terminal event, for the status the turn ended with.

    Sent only after the turn is in its conversation and stored: a client that
    reads either as soon as it hears the turn ended finds it there.
    """
    turn.emitter.emit(_TERMINAL_EVENTS[turn.response["status"]], response=turn.response)


async def _prepend(first: list[ChatChunk], rest: AsyncIterator[list[ChatChunk]]) -> AsyncIterator[list[ChatChunk]]:
    try:
        yield first
        async for batch in rest:
            yield batch
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def _empty() -> AsyncIterator[list[ChatChunk]]:
    return
    yield  # pragma: no cover
