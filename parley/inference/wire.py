"""Reading OpenAI's chat-completion wire format into typed chunks."""

from __future__ import annotations

from typing import Any

from parley.inference.types import ChatChunk, ToolCallDelta, Usage


def choice_chunk(choice: dict[str, Any]) -> ChatChunk:
    delta = choice.get("delta") or {}
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
    logprobs = choice.get("logprobs")
    return ChatChunk(
        index=choice.get("index", 0),
        role=delta.get("role"),
        content=delta.get("content"),
        reasoning=delta.get("reasoning_content") or delta.get("reasoning"),
        refusal=delta.get("refusal"),
        tool_calls=tool_calls,
        logprobs=logprobs.get("content") if isinstance(logprobs, dict) else None,
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
