"""What one model call of a turn sends: the tools it is offered (`offer`), the chat request (`chat_request`: the
context's items rendered with the instructions, the tools and the request's settings), and, with `truncation:
auto`, the context less the oldest items that would not fit the model's window (`fit`).

The agent loop (`parley.engine.loop`) sends it; `parley.engine.counting` counts the very same request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parley.engine import context
from parley.errors import ContextLengthExceededError, ParleyError, UpstreamStatusError
from parley.inference.types import ChatRequest

if TYPE_CHECKING:
    from parley.engine.loop import Turn


@dataclass(slots=True, frozen=True)
class ToolOffer:
    """The tools one model call is sent, its `tool_choice`, and the names it may call."""

    tools: list[dict[str, Any]] | None
    tool_choice: Any
    # The tools offered, and the server-side tools held back only by `max_tool_calls`
    # (a call to one becomes a failed call item that says so).
    callable: set[str]


def offer(turn: Turn) -> ToolOffer:
    """The tools a model call of the turn is sent now, and its `tool_choice`."""
    request, toolbox = turn.request, turn.toolbox
    tools, tool_choice = context.chat_tools(request, toolbox, first_call=turn.model_calls == 0)
    callable = {tool["function"]["name"] for tool in tools or ()}
    limit = request.max_tool_calls
    if tools is not None and limit is not None and turn.server_calls >= limit:
        tools = [tool for tool in tools if toolbox.tool(tool["function"]["name"]) is None] or None
        if isinstance(tool_choice, dict) and toolbox.tool(tool_choice["function"]["name"]) is not None:
            tool_choice = "auto"  # it forced a call to a tool that may no longer be called
    if tools is None:
        tool_choice = None
    elif request.tool_choice == "none":
        tool_choice = "none"
    elif turn.model_calls > 0 and tool_choice not in (None, "auto"):
        # A forced call is the first step's: after its results, the model decides, or it would never stop.
        tool_choice = "auto"
    return ToolOffer(tools, tool_choice, callable)


def chat_request(turn: Turn, items: list[dict[str, Any]], tools_offered: ToolOffer | None = None) -> ChatRequest:
    """The chat request a model call of the turn sends, with `items` as its context and the tools of
    `tools_offered` (by default, those `offer` gives now): what the call sends, and what `parley.engine.counting`
    and `fit` count."""
    request = turn.request
    tools_offered = tools_offered or offer(turn)
    tools, tool_choice = tools_offered.tools, tools_offered.tool_choice
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
        messages=context.chat_messages(
            request.instructions,
            items,
            turn.toolbox,
            reasoning_field=context.reasoning_field_of(turn.model.provider),
            files=turn.file_reads,
        ),
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


async def fit(turn: Turn, items: list[dict[str, Any]], tools_offered: ToolOffer | None = None) -> list[dict[str, Any]]:
    """With `truncation: auto`, `items` less the fewest of their oldest turns for the call to fit the model's
    context window (its output's `max_output_tokens` kept free), when the provider knows the window.

    Counted with the model's own tokenizer before the call (`Provider.count_tokens`), rather than found by the
    model's refusals one call at a time; a refusal still drops more (`loop._open_model_stream`), for a window that is
    not known or a count that fell short.
    """
    window = turn.model.provider.context_window(turn.model.name) if turn.request.truncation == "auto" else None
    if window is None:
        return items
    room = window - (turn.request.max_output_tokens or 0)
    tools_offered = tools_offered or offer(turn)

    async def fits(candidate: list[dict[str, Any]]) -> bool:
        return await turn.model.provider.count_tokens(chat_request(turn, candidate, tools_offered)) <= room

    if await fits(items):
        return items
    shorter = [items]  # items less none, one, two ... of their oldest turns
    while (less := context.drop_oldest(shorter[-1])) is not None:
        shorter.append(less)
    # Fewer items count fewer tokens: the first that fits is found by halving. When none does, the shortest
    # goes, for the model to refuse.
    low, high = min(1, len(shorter) - 1), len(shorter) - 1
    while low < high:
        middle = (low + high) // 2
        if await fits(shorter[middle]):
            high = middle
        else:
            low = middle + 1
    if low:
        turn.dropped_items += len(items) - len(shorter[low])
        # Parley's own field: how many of the oldest items `truncation: auto` left out.
        turn.response["truncated_items"] = turn.dropped_items
    return shorter[low]


def is_context_overflow(exc: ParleyError) -> bool:
    """Whether the model refused the request as longer than its context window."""
    return isinstance(exc, ContextLengthExceededError) or (
        isinstance(exc, UpstreamStatusError) and exc.code == "context_length_exceeded"
    )
