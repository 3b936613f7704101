"""Builds a whole completion out of a provider's stream."""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any

from parley.inference.types import ChatChunk, Usage


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Choice:
    index: int
    content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class Completion:
    choices: list[Choice]
    usage: Usage


class CompletionBuilder:
    """Folds chunks, in stream order, into per-choice text, tool calls and logprobs."""

    def __init__(self) -> None:
        self._choices: dict[int, Choice] = {}
        self._calls: dict[tuple[int, int], ToolCall] = {}
        self.usage = Usage()

    def add(self, chunk: ChatChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
            return
        choice = self._choices.get(chunk.index)
        if choice is None:
            choice = self._choices[chunk.index] = Choice(index=chunk.index)
        if chunk.content:
            choice.content = (choice.content or "") + chunk.content
        if chunk.reasoning:
            choice.reasoning = (choice.reasoning or "") + chunk.reasoning
        if chunk.refusal:
            choice.refusal = (choice.refusal or "") + chunk.refusal
        if chunk.logprobs:
            choice.logprobs = (choice.logprobs or []) + chunk.logprobs
        for delta in chunk.tool_calls or ():
            call = self._calls.get((chunk.index, delta.index))
            if call is None:
                call = self._calls[(chunk.index, delta.index)] = ToolCall(id="", name="", arguments="")
                choice.tool_calls.append(call)
            if delta.id:
                call.id = delta.id
            if delta.name:
                call.name += delta.name
            if delta.arguments:
                call.arguments += delta.arguments
        if chunk.finish_reason:
            choice.finish_reason = chunk.finish_reason

    def build(self) -> Completion:
        choices = [self._choices[i] for i in sorted(self._choices)] or [Choice(index=0, content="")]
        return Completion(choices=choices, usage=self.usage)


async def collect(stream: AsyncIterable[list[ChatChunk]]) -> Completion:
    builder = CompletionBuilder()
    async for batch in stream:
        for chunk in batch:
            builder.add(chunk)
    return builder.build()
