"""What a provider is asked for, and the typed chunks it streams back.

These are plain slotted dataclasses rather than pydantic models: a stream
carries thousands of chunks, and nothing here needs validating twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ChatRequest:
    """One chat completion to run, in OpenAI's chat-completions vocabulary.

    `model` is the provider's own name for the model (without the `provider/`
    prefix). `extra` holds request fields Parley does not interpret; an
    OpenAI-compatible upstream receives them unchanged.
    """

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    # Set instead of `max_tokens` when the client used it: OpenAI's reasoning
    # models refuse `max_tokens`, so an upstream receives the field that came.
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def token_limit(self) -> int | None:
        """The most tokens to generate, whichever field set it."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of one tool call; `id` and `name` arrive first, `arguments` in pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(slots=True)
class ChatChunk:
    """One step of a streamed completion for choice `index`.

    `logprobs` are OpenAI's per-token entries (`token`, `logprob`, `bytes`,
    `top_logprobs`) for the tokens of this chunk. A chunk with `usage` set
    closes the stream and belongs to no choice.
    """

    index: int = 0
    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None

    def has_output(self) -> bool:
        """Whether the chunk carries something of the answer: text, reasoning, a refusal or tool calls."""
        return bool(self.content or self.reasoning or self.refusal or self.tool_calls)
