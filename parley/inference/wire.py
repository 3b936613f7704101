"""OpenAI's chat-completion wire format: requests out, typed chunks in, and chunks back out."""

from __future__ import annotations

from typing import Any

from parley.inference.types import ChatChunk, ChatRequest, ToolCallDelta, Usage

# The fields of the delta of almost every chunk a model streams: a piece of text (the first also has the role).
_TEXT_DELTA = frozenset(("role", "content"))


def choice_chunk(choice: dict[str, Any]) -> ChatChunk:
    delta = choice.get("delta") or {}
    logprobs = choice.get("logprobs")
    logprobs = logprobs.get("content") if isinstance(logprobs, dict) else None
    if _TEXT_DELTA.issuperset(delta):  # the chunk of every token: read in fewer steps
        return ChatChunk(
            index=choice.get("index", 0),
            role=delta.get("role"),
            content=delta.get("content"),
            logprobs=logprobs,
            finish_reason=choice.get("finish_reason"),
        )
    tool_calls = None
    if delta.get("tool_calls"):
        tool_calls = []
        for position, call in enumerate(delta["tool_calls"]):
            function = call.get("function") or {}
            tool_calls.append(
                ToolCallDelta(
                    index=call.get("index", position),
                    id=call.get("id"),
                    name=function.get("name"),
                    arguments=function.get("arguments"),
                )
            )
    return ChatChunk(
        index=choice.get("index", 0),
        role=delta.get("role"),
        content=delta.get("content"),
        # Upstreams name it either way (DeepSeek and older vLLM `reasoning_content`; newer vLLM,
        # Ollama and OpenRouter `reasoning`, some both): the two names a provider's
        # `reasoning_field` may send it back in (see `engine.context.chat_messages`).
        reasoning=delta.get("reasoning_content") or delta.get("reasoning"),
        refusal=delta.get("refusal"),
        tool_calls=tool_calls,
        logprobs=logprobs,
        finish_reason=choice.get("finish_reason"),
    )


def usage_from_wire(raw: dict[str, Any]) -> Usage:
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(raw.get("total_tokens") or prompt + completion),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


# The request fields an OpenAI-compatible upstream receives when they are set.
REQUEST_FIELDS = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "n",
    "user",
)


def chat_body(request: ChatRequest) -> dict[str, Any]:
    """The `/chat/completions` body that `request` is on the wire: always a stream, with usage at its end."""
    body: dict[str, Any] = {
        **request.extra,
        "model": request.model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for name in REQUEST_FIELDS:
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    return body


def completion_chunks(completion: dict[str, Any]) -> list[ChatChunk]:
    """A whole `chat.completion` object as the chunks a stream of it would have carried.

    Raises KeyError, TypeError or AttributeError for an object that is not one.
    """
    chunks = []
    for choice in completion["choices"]:
        message = choice.get("message") or {}
        calls = [{"index": position, **call} for position, call in enumerate(message.get("tool_calls") or ())]
        delta = {**message, "tool_calls": calls or None}
        chunks.append(choice_chunk({**choice, "delta": delta}))
    if completion.get("usage"):
        chunks.append(ChatChunk(usage=usage_from_wire(completion["usage"])))
    return chunks


def chunk_to_wire(chunk: ChatChunk, head: dict[str, Any]) -> dict[str, Any]:
    """A typed chunk as a `chat.completion.chunk` object; `head` holds its id, object, created and model.

    The inverse of `choice_chunk` and `usage_from_wire`: reading the result back
    gives the same chunk.
    """
    if chunk.usage is not None:
        return {**head, "choices": [], "usage": usage_to_wire(chunk.usage)}
    return {**head, "choices": [choice_to_wire(chunk)]}


def choice_to_wire(chunk: ChatChunk) -> dict[str, Any]:
    """The one choice of a `chat.completion.chunk` for a chunk that is not the usage chunk."""
    delta: dict[str, Any] = {}
    if chunk.role is not None:
        delta["role"] = chunk.role
    if chunk.content is not None:
        delta["content"] = chunk.content
    if chunk.reasoning is not None:
        delta["reasoning_content"] = chunk.reasoning
    if chunk.refusal is not None:
        delta["refusal"] = chunk.refusal
    if chunk.tool_calls:
        delta["tool_calls"] = [_tool_call_delta(call) for call in chunk.tool_calls]
    return {
        "index": chunk.index,
        "delta": delta,
        "logprobs": {"content": chunk.logprobs, "refusal": None} if chunk.logprobs else None,
        "finish_reason": chunk.finish_reason,
    }


def _tool_call_delta(call: ToolCallDelta) -> dict[str, Any]:
    out: dict[str, Any] = {"index": call.index}
    if call.id is not None:
        out["id"] = call.id
        out["type"] = "function"
    function: dict[str, Any] = {}
    if call.name is not None:
        function["name"] = call.name
    if call.arguments is not None:
        function["arguments"] = call.arguments
    out["function"] = function
    return out


def usage_to_wire(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }
