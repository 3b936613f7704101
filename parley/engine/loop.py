"""The agent loop: how one response is produced.

    build the context -> call the model -> turn its stream into output items
        -> (server-side tools would run here, and the model be called again)
        -> finish: completed, incomplete, or a client-side function call

Everything a turn carries is one `Turn`; the model sits behind the provider
interface, the events leave through the turn's `EventEmitter`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from parley.engine import context
from parley.engine.emitter import EventEmitter
from parley.engine.output import OutputBuilder
from parley.engine.request import CreateResponseRequest, FunctionTool
from parley.engine.response import add_usage, usage_object
from parley.errors import ContextLengthExceededError, ParleyError, UpstreamStatusError
from parley.inference.registry import ResolvedModel
from parley.inference.types import ChatChunk, ChatRequest, Usage


@dataclass
class Turn:
    """The state of one response while it is produced."""

    request: CreateResponseRequest
    model: ResolvedModel
    response: dict[str, Any]
    history: list[dict[str, Any]]  # items of the previous responses, oldest first
    input_items: list[dict[str, Any]]  # this request's input
    tools: list[FunctionTool]
    emitter: EventEmitter
    usage: Usage = field(default_factory=Usage)
    announced: bool = False
    dropped_items: int = 0


async def run(turn: Turn) -> None:
    """Produces the turn's output; raises ParleyError on failure (see `service`)."""
    items = turn.history + turn.input_items
    stream, items = await _open_model_stream(turn, items)
    if turn.dropped_items:
        # Parley's own field: how many of the oldest items `truncation: auto` left out.
        turn.response["truncated_items"] = turn.dropped_items
    announce(turn)
    builder = OutputBuilder(turn.emitter, include_logprobs=turn.request.include_logprobs)
    try:
        async for batch in stream:
            for chunk in batch:
                builder.add(chunk)
    finally:
        await stream.aclose()
    builder.close()
    if builder.usage is not None:
        add_usage(turn.usage, builder.usage)
    _check_allowed_calls(turn, builder)
    _finish(turn, builder.finish_reason)


def announce(turn: Turn) -> None:
    """`response.created` and `response.in_progress`, once, when the first output is certain."""
    if not turn.announced:
        turn.announced = True
        turn.emitter.emit("response.created", response=turn.response)
        turn.emitter.emit("response.in_progress", response=turn.response)


async def _open_model_stream(
    turn: Turn, items: list[dict[str, Any]]
) -> tuple[AsyncIterator[list[ChatChunk]], list[dict[str, Any]]]:
    """Starts the model call and waits for its first chunk.

    A refusal before the first chunk (a bad request, an unreachable upstream)
    surfaces here, before any event. With `truncation: auto`, input that does
    not fit loses its oldest items until it does.
    """
    while True:
        stream = turn.model.provider.stream_chat(_chat_request(turn, items))
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return _empty(), items
        except ParleyError as exc:
            await stream.aclose()
            if turn.request.truncation == "auto" and _is_context_overflow(exc):
                shorter = context.drop_oldest(items)
                if shorter is not None:
                    turn.dropped_items += len(items) - len(shorter)
                    items = shorter
                    continue
            raise
        return _prepend(first, stream), items


def _is_context_overflow(exc: ParleyError) -> bool:
    return isinstance(exc, ContextLengthExceededError) or (
        isinstance(exc, UpstreamStatusError) and exc.code == "context_length_exceeded"
    )


def _chat_request(turn: Turn, items: list[dict[str, Any]]) -> ChatRequest:
    request = turn.request
    tools, tool_choice = context.chat_tools(request, turn.tools)
    if request.tool_choice == "none":
        tool_choice = "none" if tools else None
    extra: dict[str, Any] = {}
    if request.reasoning is not None and request.reasoning.effort is not None:
        extra["reasoning_effort"] = request.reasoning.effort
    if request.text is not None and request.text.verbosity is not None:
        extra["verbosity"] = request.text.verbosity
    for name in ("prompt_cache_key", "service_tier"):
        if getattr(request, name) is not None:
            extra[name] = getattr(request, name)
    logprobs = request.include_logprobs or bool(request.top_logprobs)
    return ChatRequest(
        model=turn.model.name,
        messages=context.chat_messages(request.instructions, items),
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


def _check_allowed_calls(turn: Turn, builder: OutputBuilder) -> None:
    """A call to a tool the request did not offer is the model's failure, never handed to the caller."""
    offered = {tool["function"]["name"] for tool in context.chat_tools(turn.request, turn.tools)[0] or ()}
    for index in builder.call_indexes:
        name = turn.emitter.output[index]["name"]
        if name not in offered:
            raise ParleyError(f"The model called '{name}', which is not among the tools it may call.")


def _finish(turn: Turn, finish_reason: str | None) -> None:
    response = turn.response
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())
    response["usage"] = usage_object(turn.usage)
    response["output"] = turn.emitter.output
    event = "response.completed" if response["status"] == "completed" else "response.incomplete"
    turn.emitter.emit(event, response=response)


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
