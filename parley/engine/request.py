"""The body of `POST /v1/responses`, validated.

Which fields a request may carry follows the installed `openai` package
(`ResponseCreateParams`), plus the few that OpenAI's API takes before the
package declares them (`LAGGING_FIELDS`), so that a client never breaks on a
field OpenAI has added. Every one of them is handled here (declared on
`CreateResponseRequest`), accepted with nothing to apply it to
(`IGNORED_FIELDS`), or refused with a 400 that says why (`REFUSED_FIELDS`); a
name in no version of the API is `Unknown parameter`, as OpenAI answers.

Input items are checked one by one in `parley.engine.items`, so that an error
names its exact place (`input[2].content[0].type`).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from openai.types.responses import response_create_params, responses_client_event_param
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from parley.errors import InvalidRequestError, invalid_parameter, most_specific
from parley.package_fields import keys_of
from parley.tools import definition_model
from parley.tools.definitions import CALLER_DEFINITIONS, FunctionTool, MCPTool

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"

# Tool types of OpenAI's Responses API that Parley does not run yet.
KNOWN_TOOL_TYPES = {
    "function",
    "file_search",
    "web_search",
    "web_search_preview",
    "web_search_2025_08_26",
    "web_search_preview_2025_03_11",
    "mcp",
    "computer_use_preview",
    "computer_use",
    "code_interpreter",
    "image_generation",
    "local_shell",
    "shell",
    "custom",
    "apply_patch",
}


# OpenAI's `IncludeEnum`: what `include` may ask for.
INCLUDABLE = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
    }
)


def check_include(values: list[str] | None) -> list[str] | None:
    """`include` on create, retrieve and input items: each value from OpenAI's list, or a 400."""
    for index, value in enumerate(values or ()):
        if value not in INCLUDABLE:
            raise InvalidRequestError(
                f"Invalid value for 'include[{index}]': '{value}'; expected one of {', '.join(sorted(INCLUDABLE))}.",
                param="include",
                code="invalid_value",
            )
    return values


Pairs = TypeVar("Pairs", bound=dict[str, Any] | None)


def check_metadata(value: Pairs) -> Pairs:
    """OpenAI's limits on `metadata` and on a vector store file's `attributes` alike: 16 pairs, 64-character keys,
    512-character strings (an attribute's number or boolean has no length to limit)."""
    if value is None:
        return value
    if len(value) > 16:
        raise ValueError("at most 16 key-value pairs")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"key '{key[:20]}...' is longer than 64 characters")
        if isinstance(item, str) and len(item) > 512:
            raise ValueError(f"the value of '{key}' is longer than 512 characters")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextFormatText(_Model):
    type: Literal["text"]


class TextFormatJSONObject(_Model):
    type: Literal["json_object"]


class TextFormatJSONSchema(_Model):
    type: Literal["json_schema"]
    name: str = Field(pattern=_NAME_PATTERN)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Model):
    format: TextFormatText | TextFormatJSONObject | TextFormatJSONSchema = Field(
        default_factory=lambda: TextFormatText(type="text"), discriminator="type"
    )
    verbosity: Literal["low", "medium", "high"] | None = None


class NamedFunctionChoice(_Model):
    """A named tool the model must call: a function or a custom tool."""

    type: Literal["function", "custom"]
    name: str


class ToolTypeChoice(_Model):
    """A tool the model must call, named by its type: OpenAI's shell and patch tools, and its hosted tools."""

    type: Literal[
        "shell",
        "local_shell",
        "apply_patch",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "file_search",
        "computer",
        "computer_use_preview",
        "computer_use",
        "image_generation",
        "code_interpreter",
    ]


class MCPToolChoice(_Model):
    """A tool of an MCP server the model must call: the server's `name`d tool, or any of its tools."""

    type: Literal["mcp"]
    server_label: str
    name: str | None = None


class AllowedToolRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    name: str | None = None


class AllowedToolsChoice(_Model):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[AllowedToolRef]


class Reasoning(_Model):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ConversationRef(_Model):
    id: str


class ContextManagement(_Model):
    """One entry of `context_management` (OpenAI's `ContextManagementParam`)."""

    type: Literal["compaction"]
    compact_threshold: int | None = Field(None, ge=1000, strict=True)


def check_context_management(value: Any) -> list[ContextManagement] | None:
    """`context_management`: its entries, each checked, so that a mistake is named at its exact place."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise InvalidRequestError(
            "Invalid value for 'context_management': expected a non-empty array of context management entries.",
            param="context_management",
            code="invalid_value",
        )
    entries = []
    for index, entry in enumerate(value):
        path = f"context_management[{index}]"
        if not isinstance(entry, dict):
            raise InvalidRequestError(f"Invalid value for '{path}': expected an object.", param=path)
        entries.append(_validated(ContextManagement, entry, path))
    return entries


class StreamOptions(_Model):
    include_obfuscation: bool | None = None


# What OpenAI's API takes on create, as the installed package declares it (streaming or not).
PACKAGE_FIELDS = keys_of(
    response_create_params.ResponseCreateParamsStreaming, response_create_params.ResponseCreateParamsNonStreaming
)
# Fields OpenAI's API takes that the package does not declare (yet), each with who sends it.
LAGGING_FIELDS = {
    "client_metadata": "the Codex CLI (0.169) sends it with every request; OpenAI accepts it",
    "presence_penalty": "in Open Responses' CreateResponseBody, and echoed on OpenAI's response object",
    "frequency_penalty": "in Open Responses' CreateResponseBody, and echoed on OpenAI's response object",
}
KNOWN_FIELDS = PACKAGE_FIELDS | LAGGING_FIELDS.keys()
# What WebSocket mode's `response.create` adds to those, as the package declares it (`generate`, `stream_id`):
# read from a message's envelope (parley.api.websocket), never from a body.
WEBSOCKET_FIELDS = keys_of(responses_client_event_param.ResponseCreate) - PACKAGE_FIELDS - {"type"}

# Known fields that are accepted and have nothing to apply to here: OpenAI's own services.
IGNORED_FIELDS = {
    "client_metadata": "the client's own metadata, for OpenAI's telemetry; not part of the response",
    "access_programs": "OpenAI's domain-specific access programs",
    "image": "OpenAI's image context optimisation; images are sent to the model as they are",
    "prompt_cache_options": "OpenAI's explicit cache breakpoints; prompt_cache_key is passed on",
    "background_options": "OpenAI's options of background runs; Parley's are its configuration's",
}
# Known fields that are refused when set (not null), with the reason the 400 gives.
REFUSED_FIELDS = {
    "moderation": "Moderation is not run by this server.",
}


def check_fields(data: Any) -> None:
    """`Unknown parameter` for a name in no version of the API; a 400 for a field Parley refuses."""
    if not isinstance(data, dict):
        return
    for name, value in data.items():
        if name not in KNOWN_FIELDS:
            raise InvalidRequestError(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
        if name in REFUSED_FIELDS and value is not None:
            raise InvalidRequestError(
                f"Unsupported parameter: '{name}'. {REFUSED_FIELDS[name]}", param=name, code="unsupported_parameter"
            )


# OpenAI's bounds on `max_output_tokens`: it refuses fewer than 16; the most is what a 32-bit count holds.
MIN_OUTPUT_TOKENS = 16
MAX_OUTPUT_TOKENS = 2**31 - 1


def check_max_output_tokens(value: int | None) -> int | None:
    """`max_output_tokens` within OpenAI's bounds, refused in OpenAI's words."""
    if value is None:
        return value
    if value < MIN_OUTPUT_TOKENS:
        raise InvalidRequestError(
            "Invalid 'max_output_tokens': integer below minimum value. "
            f"Expected a value >= {MIN_OUTPUT_TOKENS}, but got {value} instead.",
            param="max_output_tokens",
            code="integer_below_min_value",
        )
    if value > MAX_OUTPUT_TOKENS:
        raise InvalidRequestError(
            "Invalid 'max_output_tokens': integer above maximum value. "
            f"Expected a value <= {MAX_OUTPUT_TOKENS}, but got {value} instead.",
            param="max_output_tokens",
            code="integer_above_max_value",
        )
    return value


class CreateResponseRequest(BaseModel):
    # Which names may appear is `check_fields`'s: the package's, and those it lags behind on. Declared
    # fields are strict, as OpenAI's are: `"stream": "yes"` is a 400 naming the field, not a value coerced.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    store: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    background: bool = False
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    max_output_tokens: int | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: (
        Literal["none", "auto", "required"]
        | NamedFunctionChoice
        | ToolTypeChoice
        | MCPToolChoice
        | AllowedToolsChoice
        | None
    ) = None
    truncation: Literal["auto", "disabled"] = "disabled"
    reasoning: Reasoning | None = None
    user: str | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = None
    # The spec spells it `in-memory`, the openai SDK `in_memory`: both are accepted, and echoed as sent.
    prompt_cache_retention: Literal["in-memory", "in_memory", "24h"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    # Accepted for compatibility; Parley has nothing to apply them to.
    prompt: dict[str, Any] | None = None
    # Compaction when the context grows too large (see parley.engine.compaction); checked by
    # `check_context_management`.
    context_management: Any = None
    # False for a warm-up (`generate: false`): the context made ready, no model called. One of
    # WEBSOCKET_FIELDS: set from a message's envelope (parley.api.websocket); a body naming it is refused
    # (`check_fields`), as `POST /v1/responses` takes no such field.
    generate: bool = True

    _metadata_limits = field_validator("metadata")(lambda cls, value: check_metadata(value))
    _output_tokens = field_validator("max_output_tokens")(lambda cls, value: check_max_output_tokens(value))
    _include_values = field_validator("include")(lambda cls, value: check_include(value))
    _context_management = field_validator("context_management")(lambda cls, value: check_context_management(value))

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        check_fields(data)
        return data

    @model_validator(mode="before")
    @classmethod
    def _allowed_tools_mode(cls, data: Any) -> Any:
        # Without this, pydantic blames the union's discriminator: `tool_choice.type`.
        choice = data.get("tool_choice") if isinstance(data, dict) else None
        if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
            mode = choice.get("mode")
            if mode not in ("auto", "required"):
                raise InvalidRequestError(
                    f"Invalid value for 'tool_choice.mode': {mode!r}; expected 'auto' or 'required'.",
                    param="tool_choice.mode",
                    code="invalid_value",
                )
        return data

    @model_validator(mode="before")
    @classmethod
    def _text_format(cls, data: Any) -> Any:
        # Pydantic puts the discriminator's value in the path (`text.format.json_schema.name`):
        # a format of a known type is checked here, so that the error names `text.format.name`.
        text = data.get("text") if isinstance(data, dict) else None
        fmt = text.get("format") if isinstance(text, dict) else None
        if isinstance(fmt, dict):
            kind = fmt.get("type")
            model = _TEXT_FORMATS.get(kind) if isinstance(kind, str) else None
            if model is None:
                raise InvalidRequestError(
                    f"Invalid value for 'text.format.type': {kind!r}; expected one of {', '.join(_TEXT_FORMATS)}.",
                    param="text.format.type",
                    code="invalid_value",
                )
            _validated(model, fmt, "text.format")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CreateResponseRequest:
        if self.previous_response_id is not None and self.conversation is not None:
            raise InvalidRequestError(
                "Mutually exclusive parameters: 'previous_response_id' and 'conversation' cannot be used together.",
                param="previous_response_id",
                code="invalid_value",
            )
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "Invalid value for 'stream_options': only allowed when 'stream' is true.",
                param="stream_options",
                code="invalid_value",
            )
        if self.prompt is not None:
            raise InvalidRequestError(
                "Prompt templates are not supported by this server.", param="prompt", code="invalid_value"
            )
        return self

    def validated_tools(self) -> list[BaseModel]:
        """The tools, validated; a tool type that no kind serves is a 400 that names it.

        Function tools (and the other tools the caller answers: see `parley.tools.caller`) first
        come back as they are; server-side tools' definitions come from the kind that serves them.
        """
        tools: list[BaseModel] = []
        labels: set[str] = set()
        for index, raw in enumerate(self.tools or ()):
            kind = raw.get("type") if isinstance(raw, dict) else None
            model = _definition_model(kind)
            if model is None:
                known = isinstance(kind, str) and kind in KNOWN_TOOL_TYPES
                raise InvalidRequestError(
                    f"Invalid value for 'tools[{index}].type': tool type {kind!r} "
                    + ("is not supported by this server yet." if known else "is not a tool type."),
                    param=f"tools[{index}].type",
                    code="unsupported_tool_type" if known else "invalid_value",
                )
            tool = _validated(model, raw, f"tools[{index}]")
            if isinstance(tool, MCPTool):
                if tool.server_label in labels:
                    raise InvalidRequestError(
                        f"Invalid value for 'tools[{index}].server_label': '{tool.server_label}' is used twice.",
                        param=f"tools[{index}].server_label",
                        code="invalid_value",
                    )
                labels.add(tool.server_label)
            tools.append(tool)
        self._check_tool_choice(tools)
        return tools

    def _check_tool_choice(self, tools: list[BaseModel]) -> None:
        """A choice that requires a call needs a tool it can call, as OpenAI answers: a 400."""
        choice = self.tool_choice
        if choice == "required" and not tools:
            raise InvalidRequestError(
                "Invalid value for 'tool_choice': 'required' needs at least one tool in 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
        if isinstance(choice, AllowedToolsChoice) and choice.mode == "required":
            functions = {tool.name for tool in tools if isinstance(tool, FunctionTool)}
            servers = {tool.server_label for tool in tools if isinstance(tool, MCPTool)}
            types = {getattr(tool, "type", None) for tool in tools}
            # An MCP server's tool names are known only once it is listed: its label must match. Other kinds
            # (file_search, web_search, shell, ...) are named by their type alone.
            if not any(
                (ref.type == "function" and ref.name in functions)
                or (ref.type == "mcp" and (ref.model_extra or {}).get("server_label") in servers)
                or (ref.type not in ("function", "mcp") and ref.type in types)
                for ref in choice.tools
            ):
                raise InvalidRequestError(
                    "Invalid value for 'tool_choice': none of the allowed tools is among 'tools', "
                    "and mode 'required' needs one.",
                    param="tool_choice",
                    code="invalid_value",
                )

    @property
    def compacts(self) -> bool:
        """Whether the context is compacted when it grows too large (`context_management`)."""
        return bool(self.context_management)

    @property
    def compact_threshold(self) -> int | None:
        """The tokens past which the context is compacted before a model call: the least that an entry of
        `context_management` sets; None compacts only a context the model refuses as too long."""
        thresholds = [entry.compact_threshold for entry in self.context_management or () if entry.compact_threshold]
        return min(thresholds, default=None)

    @property
    def include_logprobs(self) -> bool:
        return "message.output_text.logprobs" in (self.include or ())

    @property
    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation


_TOOL_MODELS = CALLER_DEFINITIONS


def _definition_model(tool_type: Any) -> type[BaseModel] | None:
    if not isinstance(tool_type, str):
        return None
    return _TOOL_MODELS.get(tool_type) or definition_model(tool_type)


_TEXT_FORMATS: dict[Any, type[BaseModel]] = {
    "text": TextFormatText,
    "json_object": TextFormatJSONObject,
    "json_schema": TextFormatJSONSchema,
}


def _validated(model: type[BaseModel], raw: Any, path: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid_parameter(most_specific(exc.errors()), path) from exc
