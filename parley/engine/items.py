"""Input items: checked one by one, and completed into the items that get stored.

A string input becomes one user message. Every item gets an `id` and a
`status`, and message content becomes a list of typed parts, so that what is
stored and listed has the shape of OpenAI's items.
"""

from __future__ import annotations

from typing import Any, Literal

from openai.types.responses import (
    response_custom_tool_call_output_param,
    response_custom_tool_call_param,
    response_file_search_tool_call_param,
    response_function_tool_call_param,
    response_function_web_search_param,
    response_input_item_param,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley.engine import compaction, encrypted_reasoning
from parley.errors import InvalidRequestError, invalid_parameter, most_specific
from parley.ids import new_id
from parley.package_fields import PackageFields, keys_of


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputText(_Part):
    type: Literal["input_text"]
    text: str


class InputImage(_Part):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto", "original"] = "auto"


class InputFile(_Part):
    type: Literal["input_file"]
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None


class OutputText(_Part):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None


class Refusal(_Part):
    type: Literal["refusal"]
    refusal: str


class SummaryText(_Part):
    type: Literal["summary_text"]
    text: str


class ReasoningText(_Part):
    type: Literal["reasoning_text"]
    text: str


_PARTS: dict[str, type[_Part]] = {
    "input_text": InputText,
    "input_image": InputImage,
    "input_file": InputFile,
    "output_text": OutputText,
    "refusal": Refusal,
    "summary_text": SummaryText,
    "reasoning_text": ReasoningText,
}
_USER_PARTS = {"input_text", "input_image", "input_file"}
_ASSISTANT_PARTS = {"output_text", "refusal"}
_SUMMARY_PARTS = {"summary_text"}
_REASONING_PARTS = {"reasoning_text"}


# Item ids are stored in columns of this width (see store/tables.py); a longer one is refused up front.
MAX_ID_LENGTH = 64


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=MAX_ID_LENGTH)


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: str | None = None


class _PackageItem(PackageFields, _Item):
    """An item whose known fields are its `openai` TypedDict's (see `parley.package_fields`)."""

    model_config = ConfigDict(extra="allow")


_Status = Literal["in_progress", "completed", "incomplete"]


class FunctionCallItem(_PackageItem):
    known = keys_of(response_function_tool_call_param.ResponseFunctionToolCallParam)
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    namespace: str | None = None
    status: _Status | None = None


class FunctionCallOutputItem(_PackageItem):
    """A function's result; without `call_id`, it answers a call by `name` and `namespace` (as Codex sends it)."""

    known = keys_of(response_input_item_param.FunctionCallOutput)
    type: Literal["function_call_output"]
    call_id: str | None = Field(None, min_length=1)
    output: str | list[dict[str, Any]]
    name: str | None = None
    namespace: str | None = None
    status: _Status | None = None


class CustomToolCallItem(_PackageItem):
    # Parley's custom tool calls carry a `status`, as Open Responses wants of every item; a caller sends it back.
    known = keys_of(response_custom_tool_call_param.ResponseCustomToolCallParam) | {"status"}
    type: Literal["custom_tool_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: str
    namespace: str | None = None
    status: _Status | None = None


class CustomToolCallOutputItem(_PackageItem):
    known = keys_of(response_custom_tool_call_output_param.ResponseCustomToolCallOutputParam)
    type: Literal["custom_tool_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[dict[str, Any]]


class LocalShellAction(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["exec"]
    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)


class LocalShellCallItem(_PackageItem):
    known = keys_of(response_input_item_param.LocalShellCall)
    type: Literal["local_shell_call"]
    call_id: str = Field(min_length=1)
    action: LocalShellAction
    status: _Status | None = None


class LocalShellCallOutputItem(_PackageItem):
    """A local shell call's output, which names its call by `id` (the call's `call_id`), as OpenAI's does."""

    known = keys_of(response_input_item_param.LocalShellCallOutput)
    type: Literal["local_shell_call_output"]
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    output: str
    status: _Status | None = None


class ShellAction(BaseModel):
    model_config = ConfigDict(extra="allow")
    commands: list[str]
    timeout_ms: int | None = None
    max_output_length: int | None = None


class ShellCallItem(_PackageItem):
    known = keys_of(response_input_item_param.ShellCall)
    type: Literal["shell_call"]
    call_id: str = Field(min_length=1)
    action: ShellAction
    status: _Status | None = None


class ShellOutputEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    stdout: str = ""
    stderr: str = ""
    outcome: dict[str, Any]


class ShellCallOutputItem(_PackageItem):
    known = keys_of(response_input_item_param.ShellCallOutput)
    type: Literal["shell_call_output"]
    call_id: str = Field(min_length=1)
    output: list[ShellOutputEntry]
    status: _Status | None = None


class PatchOperation(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["create_file", "update_file", "delete_file"]
    path: str
    diff: str | None = None


class ApplyPatchCallItem(_PackageItem):
    known = keys_of(response_input_item_param.ApplyPatchCall)
    type: Literal["apply_patch_call"]
    call_id: str = Field(min_length=1)
    operation: PatchOperation
    status: Literal["in_progress", "completed"] | None = None


class ApplyPatchCallOutputItem(_PackageItem):
    known = keys_of(response_input_item_param.ApplyPatchCallOutput)
    type: Literal["apply_patch_call_output"]
    call_id: str = Field(min_length=1)
    status: Literal["completed", "failed"]
    output: str | None = None


class ItemReference(_Item):
    type: Literal["item_reference"]
    id: str = Field(max_length=MAX_ID_LENGTH)


class ReasoningItem(_Item):
    type: Literal["reasoning"]
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class CompactionItem(_Item):
    """A compaction item (see parley.engine.compaction): its summary, sealed; checked as it arrives, and kept as
    sent."""

    type: Literal["compaction"]
    encrypted_content: str = Field(max_length=10 * 1024 * 1024)
    created_by: str | None = None


class MCPApprovalResponseItem(_Item):
    type: Literal["mcp_approval_response"]
    approval_request_id: str = Field(min_length=1)
    approve: bool
    reason: str | None = None


class _MCPOutputItem(_Item):
    """An MCP item of an earlier response, sent back as input (as stateless callers do)."""

    model_config = ConfigDict(extra="allow")
    server_label: str


class MCPListToolsItem(_MCPOutputItem):
    type: Literal["mcp_list_tools"]
    tools: list[dict[str, Any]]
    error: str | None = None


class MCPCallItem(_MCPOutputItem):
    type: Literal["mcp_call"]
    name: str
    arguments: str
    output: str | None = None
    error: Any = None
    approval_request_id: str | None = None
    status: Literal["in_progress", "completed", "incomplete", "calling", "failed"] | None = None


class MCPApprovalRequestItem(_MCPOutputItem):
    type: Literal["mcp_approval_request"]
    name: str
    arguments: str


class WebSearchAction(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["search", "open_page", "find_in_page"]


class WebSearchCallItem(_PackageItem):
    """A web search call of an earlier response, sent back as input; `results` and `error` are what Parley kept
    of what the model read (see `parley.tools.web_search`), which a caller may or may not send back."""

    known = keys_of(response_function_web_search_param.ResponseFunctionWebSearchParam) | {"results", "error"}
    type: Literal["web_search_call"]
    action: WebSearchAction
    status: Literal["in_progress", "searching", "completed", "failed", "incomplete"] | None = None
    results: list[dict[str, Any]] | None = None
    error: str | None = None


class FileSearchCallItem(_PackageItem):
    """A file search call of an earlier response, sent back as input, with its `results` or without them."""

    known = keys_of(response_file_search_tool_call_param.ResponseFileSearchToolCallParam)
    type: Literal["file_search_call"]
    queries: list[str]
    status: Literal["in_progress", "searching", "completed", "incomplete", "failed"] | None = None
    results: list[dict[str, Any]] | None = None


_ITEMS: dict[str, type[_Item]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "custom_tool_call": CustomToolCallItem,
    "custom_tool_call_output": CustomToolCallOutputItem,
    "local_shell_call": LocalShellCallItem,
    "local_shell_call_output": LocalShellCallOutputItem,
    "shell_call": ShellCallItem,
    "shell_call_output": ShellCallOutputItem,
    "apply_patch_call": ApplyPatchCallItem,
    "apply_patch_call_output": ApplyPatchCallOutputItem,
    "item_reference": ItemReference,
    "reasoning": ReasoningItem,
    "compaction": CompactionItem,
    "mcp_approval_response": MCPApprovalResponseItem,
    "mcp_list_tools": MCPListToolsItem,
    "mcp_call": MCPCallItem,
    "mcp_approval_request": MCPApprovalRequestItem,
    "web_search_call": WebSearchCallItem,
    "file_search_call": FileSearchCallItem,
}

_ID_PREFIX = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "local_shell_call": "lsh",
    "local_shell_call_output": "lsho",
    "shell_call": "sh",
    "shell_call_output": "sho",
    "apply_patch_call": "apc",
    "apply_patch_call_output": "apco",
    "reasoning": "rs",
    "compaction": "cmp",
    "mcp_approval_response": "mcpa",
    "mcp_list_tools": "mcpl",
    "mcp_call": "mcp",
    "mcp_approval_request": "mcpr",
    "web_search_call": "ws",
    "file_search_call": "fs",
}


def _check(model: type[BaseModel], raw: Any, path: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid_parameter(most_specific(exc.errors()), path) from exc


def parse_input(raw: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The request's `input` as complete items; `item_reference`s are left to be resolved."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [_message("user", [{"type": "input_text", "text": raw}])]
    return [parse_item(item, f"input[{index}]") for index, item in enumerate(raw)]


def parse_item(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"Invalid value for '{path}': expected an object.", param=path)
    kind = raw.get("type") or ("message" if "role" in raw else None)
    model = _ITEMS.get(kind) if isinstance(kind, str) else None
    if model is None:
        param = f"{path}.type"
        raise InvalidRequestError(
            f"Invalid value for '{param}': '{kind}' is not a supported input item type.", param=param
        )
    item = _check(model, raw, path)
    if isinstance(item, MessageItem):
        return _message(item.role, _parts(item, path), item.id, item.phase)
    # Nullable fields stay, as null; an id or status left out is filled in below. Of an item the caller
    # answers, only the fields sent are kept: a custom tool call has no status, an output no name.
    if isinstance(item, _PackageItem):
        data = item.model_dump(exclude_unset=True)
        data["type"] = raw["type"]  # a default, so not among the fields set
    else:
        data = {
            key: value for key, value in item.model_dump().items() if value is not None or key not in ("id", "status")
        }
    if isinstance(item, ItemReference):
        return data
    if isinstance(item, LocalShellCallItem):
        data["action"].setdefault("env", {})
    if isinstance(item, (FunctionCallOutputItem, CustomToolCallOutputItem)) and isinstance(item.output, list):
        data["output"] = [_check_part(part, f"{path}.output[{i}]", _USER_PARTS) for i, part in enumerate(item.output)]
    if isinstance(item, ReasoningItem):
        data["summary"] = [
            _check_part(part, f"{path}.summary[{i}]", _SUMMARY_PARTS) for i, part in enumerate(item.summary)
        ]
        if item.content is not None:
            data["content"] = [
                _check_part(part, f"{path}.content[{i}]", _REASONING_PARTS) for i, part in enumerate(item.content)
            ]
        if item.encrypted_content is not None:
            # What the blob holds is what the model thought: it stands in for any summary and content
            # sent with it (stateless callers send it with neither); the blob is kept as sent.
            data.update(encrypted_reasoning.unseal(item.encrypted_content, f"{path}.encrypted_content"))
    if isinstance(item, CompactionItem):
        # Refused here, naming its place, when this server did not make it; the model reads it later.
        compaction.unseal(item.encrypted_content, f"{path}.encrypted_content")
        data = {key: value for key, value in data.items() if value is not None}  # `created_by` is a string or absent
        data.setdefault("id", new_id(_ID_PREFIX[item.type]))
        return data  # an item without a status, as OpenAI's
    data.setdefault("id", new_id(_ID_PREFIX[item.type]))
    if not isinstance(item, _PackageItem) or "status" in type(item).model_fields:
        data.setdefault("status", "completed")
    return data


def _parts(item: MessageItem, path: str) -> list[dict[str, Any]]:
    allowed = _ASSISTANT_PARTS if item.role == "assistant" else _USER_PARTS
    if isinstance(item.content, str):
        kind = "output_text" if item.role == "assistant" else "input_text"
        return [_check_part({"type": kind, "text": item.content}, f"{path}.content", allowed)]
    return [_check_part(part, f"{path}.content[{i}]", allowed) for i, part in enumerate(item.content)]


def _check_part(raw: Any, path: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"Invalid value for '{path}': expected an object.", param=path)
    kind = raw.get("type")
    param = f"{path}.type"
    expected = ", ".join(sorted(allowed))
    if kind is not None and not isinstance(kind, str):
        raise InvalidRequestError(
            f"Invalid type for '{param}': expected one of {expected}, but got {_json_type(kind)} instead.",
            param=param,
            code="invalid_type",
        )
    if kind not in allowed:
        raise InvalidRequestError(
            f"Invalid value for '{param}': '{kind}' is not allowed here; expected one of {expected}.", param=param
        )
    part = _check(_PARTS[kind], raw, path)
    if isinstance(part, InputImage) and not (part.image_url or part.file_id):
        raise InvalidRequestError(
            f"Missing required parameter: '{path}.image_url' (or 'file_id').", param=f"{path}.image_url"
        )
    data = part.model_dump(exclude_none=True)
    if isinstance(part, OutputText):
        data.setdefault("logprobs", [])
    return data


def _json_type(value: Any) -> str:
    """What a value is, in JSON's words: "an object", "an array", "a number"."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, (int, float)) else "a string"


def _message(
    role: str, content: list[dict[str, Any]], item_id: str | None = None, phase: str | None = None
) -> dict[str, Any]:
    item = {"id": item_id or new_id("msg"), "type": "message", "role": role, "content": content, "status": "completed"}
    if phase is not None:
        item["phase"] = phase
    return item
