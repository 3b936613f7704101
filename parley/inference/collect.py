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
    """Folds chunks, in stream order, into per-choice text, tool calls and logprobs.

    Text and arguments are kept as pieces and joined by `build`: a string grown
    a token at a time is copied whole at each token.
    """

    def __init__(self) -> None:
        self._choices: dict[int, Choice] = {}
        self._calls: dict[tuple[int, int], ToolCall] = {}
        self._text: dict[tuple[int, str], list[str]] = {}  # (choice, field): its pieces
        self._arguments: dict[tuple[int, int], list[str]] = {}  # (choice, call): its pieces
        self.usage = Usage()

    def add(self, chunk: ChatChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
            return
        choice = self._choices.get(chunk.index)
        if choice is None:
            choice = self._choices[chunk.index] = Choice(index=chunk.index)
        for name, text in (("content", chunk.content), ("reasoning", chunk.reasoning), ("refusal", chunk.refusal)):
            if text:
                self._text.setdefault((chunk.index, name), []).append(text)
        if chunk.logprobs:
            if choice.logprobs is None:
                choice.logprobs = []
            choice.logprobs.extend(chunk.logprobs)
        for delta in chunk.tool_calls or ():
            key = (chunk.index, delta.index)
            call = self._calls.get(key)
            if call is None:
                call = self._calls[key] = ToolCall(id="", name="", arguments="")
                choice.tool_calls.append(call)
            if delta.id:
                call.id = delta.id
            if delta.name:
                call.name += delta.name
            if delta.arguments:
                self._arguments.setdefault(key, []).append(delta.arguments)
        if chunk.finish_reason:
            choice.finish_reason = chunk.finish_reason

    def build(self) -> Completion:
        for (index, name), pieces in self._text.items():
            setattr(self._choices[index], name, "".join(pieces))
        for key, pieces in self._arguments.items():
            self._calls[key].arguments = "".join(pieces)
        choices = [self._choices[i] for i in sorted(self._choices)] or [Choice(index=0, content="")]
        return Completion(choices=choices, usage=self.usage)


async def collect(stream: AsyncIterable[list[ChatChunk]]) -> Completion:
    builder = CompletionBuilder()
    async for batch in stream:
        for chunk in batch:
            builder.add(chunk)
    return builder.build()
