"""The body of `POST /v1/chat/completions`, validated, and turned into a ChatRequest.

Only what Parley checks or reads is declared; any other field is kept and
passed to OpenAI-compatible upstreams as it came. Declared fields are strict,
as OpenAI's are: `"stream": "yes"` or `"max_tokens": 2.0` is a 400 naming the
field, not a value quietly coerced.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parley.errors import InvalidRequestError
from parley.inference.types import ChatRequest

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Open):
    """One part of a message's content; the provider decides which kinds it takes."""

    type: str
    text: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _text_when_needed(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a part of type 'text' needs `text`, a string")
        if self.type == "refusal" and self.refusal is None:
            raise ValueError("a part of type 'refusal' needs `refusal`, a string")
        return self


class FunctionCall(_Open):
    name: str
    arguments: str


class MessageToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[MessageToolCall] | None = None


class FunctionDefinition(_Open):
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(strict=True)

    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Open):
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("`json_schema` is required when type is 'json_schema'")
        return self


class StreamOptions(_Open):
    include_usage: bool = False


class ChatCompletionBody(_Open):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    # At most what a 32-bit count holds, as OpenAI's bounds are; more would only fail at the upstream.
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: int | None = Field(None, ge=1, le=128)
    user: str | None = None

    def to_chat_request(self, model: str) -> ChatRequest:
        """The request for the provider, which knows the model as `model`."""
        self._check_consistency()
        declared = set(type(self).model_fields)
        extra = {k: v for k, v in (self.model_extra or {}).items() if k not in declared}
        return ChatRequest(
            model=model,
            messages=[m.model_dump(exclude_unset=True) for m in self.messages],
            tools=[t.model_dump(exclude_unset=True) for t in self.tools] if self.tools else None,
            tool_choice=(
                self.tool_choice.model_dump() if isinstance(self.tool_choice, BaseModel) else self.tool_choice
            ),
            parallel_tool_calls=self.parallel_tool_calls,
            response_format=(
                self.response_format.model_dump(exclude_none=True, by_alias=True) if self.response_format else None
            ),
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            max_completion_tokens=self.max_completion_tokens,
            stop=self._stops(),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            n=self.n,
            user=self.user,
            extra=extra,
        )

    def _stops(self) -> str | list[str] | None:
        # An empty stop string would end every completion before its first
        # token; it stops nothing, so it is left out (OpenAI ignores it too).
        if isinstance(self.stop, str):
            return self.stop or None
        if self.stop is None:
            return None
        return [stop for stop in self.stop if stop] or None

    def _check_consistency(self) -> None:
        if self.tool_choice is not None and not self.tools and self.tool_choice != "none":
            raise InvalidRequestError(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                param="tool_choice",
                code="invalid_value",
            )
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise InvalidRequestError(
                    f"Invalid value for 'tool_choice': no function named "
                    f"'{self.tool_choice.function.name}' is among the tools.",
                    param="tool_choice",
                    code="invalid_value",
                )
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError(
                "Invalid value for 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set.",
                param="top_logprobs",
                code="invalid_value",
            )
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise InvalidRequestError(
                "Invalid value for 'stop': at most 4 stop sequences.", param="stop", code="invalid_value"
            )
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "Invalid value for 'stream_options': only allowed when 'stream' is true.",
                param="stream_options",
                code="invalid_value",
            )
