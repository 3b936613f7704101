"""The agent loop: how one response is produced.

    prepare: the tool kinds' own items (MCP listings); run the calls the caller approved
    repeat:
        compact the context first when it has grown past `context_management`'s threshold
        call the model, and turn its stream into output items
        run the server-side calls it made (at once, when parallel calls are allowed)
    until the model answers, hands a function call to the caller, needs an
    approval, runs out of output tokens, or the iteration bound is reached

A warm-up (`generate: false`, WebSocket mode) stops after `prepare`.

Everything a turn carries is one `Turn`; the model sits behind the provider
interface, server-side tools behind the `Toolbox` (each kind behind
`parley.tools.ToolKind`), and every event leaves through the turn's
`EventEmitter`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from parley.config import EngineSettings
from parley.engine import compaction, context, model_request
from parley.engine.emitter import EventEmitter
from parley.engine.files import FileRead, InputFiles, PartKey
from parley.engine.output import OutputBuilder
from parley.engine.request import CreateResponseRequest
from parley.engine.response import add_usage, usage_object
from parley.errors import ParleyError
from parley.inference.base import ChunkStream, prepend
from parley.inference.registry import ResolvedModel
from parley.inference.types import ChatChunk, ChatRequest, Usage
from parley.scheduling import first_token_sent
from parley.store import Caller
from parley.tools import Toolbox

_LIMIT_REACHED = "max_tool_calls reached; the call was not run."


@dataclass
class Turn:
    """The state of one response while it is produced."""

    request: CreateResponseRequest
    model: ResolvedModel
    response: dict[str, Any]
    history: list[dict[str, Any]]  # items of the previous responses, oldest first
    input_items: list[dict[str, Any]]  # this request's input
    toolbox: Toolbox
    emitter: EventEmitter
    settings: EngineSettings = field(default_factory=EngineSettings)
    previous_tools: list[dict[str, Any]] = field(default_factory=list)  # the `tools` of the previous response
    compaction_model: ResolvedModel | None = None  # the model that writes compaction summaries; None, `model`
    usage: Usage = field(default_factory=Usage)
    announced: bool = False
    dropped_items: int = 0  # oldest context items left out by `truncation: auto`
    server_calls: int = 0  # server-side calls run so far
    model_calls: int = 0
    # Who the turn is for, and what reads its input's files as theirs (see parley.engine.files).
    caller: Caller | None = None
    files: InputFiles | None = None
    file_reads: dict[PartKey, FileRead] = field(default_factory=dict)  # what they gave, read once a turn
    # The events that open the stream once its first output is certain: a background response sent its
    # `response.created` when it was queued.
    opening: tuple[str, ...] = ("response.created", "response.in_progress")

    def context_items(self) -> list[dict[str, Any]]:
        return (self.history + self.input_items + self.emitter.output)[self.dropped_items :]


async def run(turn: Turn) -> None:
    """Produces the turn's output; raises ParleyError on failure (see `service`)."""
    await read_input(turn)
    if turn.request.generate:
        await _produce(turn)
    else:
        await _warm_up(turn)


async def read_input(turn: Turn) -> None:
    """Checks the turn's input against its history and its model, and reads the files it names, for the model.

    The first step of `run`, and all of the turn that `parley.engine.counting` needs.
    """
    context.check_input(turn.input_items)
    if context.text_only(turn.model):
        # Here, as the request arrives: the model's worker would refuse it only once every request
        # queued before it has had its turn.
        request = turn.request
        source = "conversation" if request.conversation_id else "previous_response_id"
        context.check_text_only(turn.input_items, turn.history, request.model, source)
    context.check_calls_answered(turn.history, turn.input_items)
    if turn.files is not None and turn.caller is not None:
        source = "conversation" if turn.request.conversation_id else "previous_response_id"
        turn.file_reads = await turn.files.read(turn.caller, turn.input_items, turn.history, source)


async def _produce(turn: Turn) -> None:
    prepared = await _prepare(turn)
    for _ in range(turn.settings.max_iterations):
        offer = model_request.offer(turn)
        await _compact_when_full(turn, prepared, offer)
        stream = await _open_model_stream(turn, prepared, offer)
        turn.model_calls += 1
        announce(turn, prepared)
        builder = OutputBuilder(
            turn.emitter,
            turn.toolbox,
            include_logprobs=turn.request.include_logprobs,
            offered=offer.callable,
            encrypt_reasoning="reasoning.encrypted_content" in (turn.request.include or ()),
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
        await _run_server_calls(turn, builder.server_calls)
        if builder.finish_reason in ("length", "content_filter"):
            return _finish(turn, builder.finish_reason)
        hands_back = len(builder.server_calls) < len(builder.call_indexes)  # a function call, an approval request
        if not builder.server_calls or hands_back:
            return _finish(turn, builder.finish_reason)
    _finish(turn, "length")  # the iteration bound: the response ran out of room to finish


async def _warm_up(turn: Turn) -> None:
    """A turn that makes its context ready and calls no model (`generate: false`): the tool kinds' own items
    and the approved calls' results are its output, and a later turn continues from it."""
    announce(turn, await _prepare(turn))
    _finish(turn, None)


def announce(turn: Turn, finished: list[dict[str, Any]] | None = None) -> None:
    """The turn's opening events (`response.created`, `response.in_progress`), once, when the first output is
    certain.

    Then the items that were `finished` before it (listings, approved calls), in order.
    """
    if not turn.announced:
        turn.announced = True
        for event_type in turn.opening:
            turn.emitter.emit(event_type, response=turn.response)
        for item in finished or ():
            turn.emitter.add_finished(item)


async def _prepare(turn: Turn) -> list[dict[str, Any]]:
    """The items produced before the first model call: the tool kinds' own (MCP listings), then the
    results of the calls the caller approved."""
    items = await turn.toolbox.prepare(turn.history + turn.input_items, turn.previous_tools)
    approved = turn.toolbox.approved_calls(turn.history, turn.input_items)
    if not approved:
        return items
    statuses = await _gather(turn, [_run_call(turn, call) for call in approved])
    for call, status in zip(approved, statuses, strict=True):
        call["status"] = status
    # Approved calls have run: their items go out before the model is called, so that a
    # model call that fails still leaves them in the failed response, and in storage.
    announce(turn, items + approved)
    return items + approved


async def _run_server_calls(turn: Turn, indexes: list[int]) -> None:
    """Runs the server-side calls of one model turn; their items close in the order the model made them."""
    emitter = turn.emitter
    for index in indexes:
        emitter.start_work(index)
    statuses = await _gather(turn, [_run_call(turn, emitter.output[index]) for index in indexes])
    for index, status in zip(indexes, statuses, strict=True):
        emitter.done_item(index, status)


async def _run_call(turn: Turn, item: dict[str, Any]) -> str:
    """Runs one server-side call, within `max_tool_calls`; its kind writes the result into the item.

    Returns the item's final status.
    """
    kind = turn.toolbox.kind_of(item["type"])
    assert kind is not None
    limit = turn.request.max_tool_calls
    if limit is not None and turn.server_calls >= limit:
        return kind.refuse(item, _LIMIT_REACHED)
    turn.server_calls += 1
    return await kind.run(item)


async def _gather(turn: Turn, calls: list[Any]) -> list[Any]:
    if turn.request.parallel_tool_calls:
        return list(await asyncio.gather(*calls))
    return [await call for call in calls]


async def _open_model_stream(turn: Turn, prepared: list[dict[str, Any]], offer: model_request.ToolOffer) -> ChunkStream:
    """Starts the model call and waits for its first chunk.

    A refusal before the first chunk (a bad request, an unreachable upstream)
    surfaces here, before any event. A context the model refuses as too long is
    compacted, with `context_management`, and sent again; with `truncation:
    auto`, it loses its oldest items until it fits.
    """
    while True:
        items = _context(turn, prepared)
        items = await model_request.fit(turn, items, offer)
        call = model_request.chat_request(turn, items, offer)
        stream = turn.model.provider.stream_chat(call)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return _empty()
        except ParleyError as exc:
            await stream.aclose()
            too_long = model_request.is_context_overflow(exc)
            if turn.request.compacts and too_long and compaction.replaceable(call.messages):
                await _compact(turn, prepared, items)
                continue
            if turn.request.truncation == "auto" and too_long:
                shorter = context.drop_oldest(items)
                if shorter is not None:
                    turn.dropped_items += len(items) - len(shorter)
                    # Parley's own field: how many of the oldest items `truncation: auto` left out.
                    turn.response["truncated_items"] = turn.dropped_items
                    continue
            raise
        if turn.emitter.read_live and not turn.announced:
            return _first_output_apart(first, stream)
        return prepend(first, stream)


def _context(turn: Turn, prepared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items the next model call reads: the turns before, the input, and the output so far (before the opening
    events, the items prepared for it), less those `truncation: auto` left out."""
    if turn.announced:
        return turn.context_items()
    return (turn.history + turn.input_items + prepared)[turn.dropped_items :]


async def _compact_when_full(turn: Turn, prepared: list[dict[str, Any]], offer: model_request.ToolOffer) -> None:
    """Compacts the context before a model call that would read more than `compact_threshold` tokens of it, as the
    model's own tokenizer counts the very request (`Provider.count_tokens`)."""
    threshold = turn.request.compact_threshold
    if threshold is None:
        return
    items = _context(turn, prepared)
    call = model_request.chat_request(turn, items, offer)
    if compaction.replaceable(call.messages) and await turn.model.provider.count_tokens(call) > threshold:
        await _compact(turn, prepared, items)


async def _compact(turn: Turn, prepared: list[dict[str, Any]], items: list[dict[str, Any]]) -> None:
    """A compaction item of `items` in the output, whose summary the model reads from then on in place of what it
    replaced (see parley.engine.compaction); the call that writes it counts in the turn's usage."""
    announce(turn, prepared)
    request, writer = turn.request, turn.compaction_model or turn.model
    messages = context.chat_messages(
        request.instructions,
        items,
        turn.toolbox,
        reasoning_field=context.reasoning_field_of(writer.provider),
        files=turn.file_reads,
    )
    extra = {"prompt_cache_key": request.prompt_cache_key} if request.prompt_cache_key else {}
    call = ChatRequest(model=writer.name, messages=[], user=request.safety_identifier or request.user, extra=extra)
    add_usage(turn.usage, await compaction.compact_into(turn.emitter, writer, messages, turn.settings, call))


async def _first_output_apart(first: list[ChatChunk], rest: ChunkStream) -> ChunkStream:
    """The model's stream, with a pause after its first chunk of output, for that chunk's events to leave.

    A burst from the upstream arrives as one batch, and its events go to the
    client's task when the producer next waits: after the whole batch, at about
    20 µs an event. Cut there, the first token leaves before the rest is handled.
    """
    try:
        batch: list[ChatChunk] | None = first
        while batch is not None:
            cut = next((i + 1 for i, chunk in enumerate(batch) if chunk.has_output()), 0)
            if cut:
                yield batch[:cut]
                await first_token_sent()
                if cut < len(batch):
                    yield batch[cut:]
                break
            yield batch
            batch = await anext(rest, None)
        async for batch in rest:
            yield batch
    finally:
        await rest.aclose()


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


async def _empty() -> ChunkStream:
    return
    yield  # pragma: no cover
