"""What the model is sent: Responses items and settings in chat-completions terms."""

from __future__ import annotations

from typing import Any

from parley.engine.request import AllowedToolsChoice, CreateResponseRequest, FunctionTool, NamedFunctionChoice
from parley.errors import InvalidRequestError


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for `items`, oldest first, after the instructions."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item["type"]
        if kind == "message":
            _append_message(messages, item)
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                # Text and calls of one model turn are one chat message.
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _tool_output(item["output"])})
        # Reasoning items stay with the response: chat-completions upstreams take no reasoning input.
    return messages


def _append_message(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    role = item["role"]
    if role == "assistant":
        text = "".join(p.get("text") or p.get("refusal") or "" for p in item["content"])
        messages.append({"role": "assistant", "content": text})
        return
    parts = [_chat_part(part) for part in item["content"]]
    if all(part["type"] == "text" for part in parts):
        content: str | list[dict[str, Any]] = "".join(part["text"] for part in parts)
    else:
        content = parts
    messages.append({"role": "system" if role == "system" else role, "content": content})


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        if part.get("image_url"):
            return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail", "auto")}}
        raise InvalidRequestError("Images by file_id are not supported yet; send an image_url.", param="input")
    if kind == "input_file":
        file: dict[str, Any] = {}
        for key in ("file_id", "file_data", "filename"):
            if part.get(key):
                file[key] = part[key]
        if not file:
            raise InvalidRequestError("input_file needs file_id or file_data.", param="input")
        return {"type": "file", "file": file}
    return {"type": "text", "text": part.get("refusal", "")}


def _tool_output(output: str | list[dict[str, Any]]) -> str:
    if isinstance(output, str):
        return output
    return "".join(part.get("text", "") for part in output if part.get("type") in ("input_text", "output_text"))


def chat_tools(request: CreateResponseRequest, tools: list[FunctionTool]) -> tuple[list[dict[str, Any]] | None, Any]:
    """The tools offered to the model and its `tool_choice`.

    `allowed_tools` is a hard constraint: the model is never shown a tool outside it.
    """
    choice = request.tool_choice
    offered = tools
    chat_choice: Any = choice
    if isinstance(choice, AllowedToolsChoice):
        allowed = {ref.name for ref in choice.tools if ref.type == "function"}
        offered = [tool for tool in tools if tool.name in allowed]
        chat_choice = choice.mode
    elif isinstance(choice, NamedFunctionChoice):
        if choice.name not in {tool.name for tool in tools}:
            raise InvalidRequestError(
                f"Invalid value for 'tool_choice': no function named '{choice.name}' is among the tools.",
                param="tool_choice",
            )
        chat_choice = {"type": "function", "function": {"name": choice.name}}
    if not offered:
        return None, None
    chat = []
    for tool in offered:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
        if tool.strict is not None:
            function["strict"] = tool.strict
        chat.append({"type": "function", "function": function})
    return chat, chat_choice


def response_format(request: CreateResponseRequest) -> dict[str, Any] | None:
    if request.text is None:
        return None
    fmt = request.text.format
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}  # type: ignore[union-attr]
        if fmt.strict is not None:  # type: ignore[union-attr]
            schema["strict"] = fmt.strict  # type: ignore[union-attr]
        if fmt.description is not None:  # type: ignore[union-attr]
            schema["description"] = fmt.description  # type: ignore[union-attr]
        return {"type": "json_schema", "json_schema": schema}
    return None


def drop_oldest(items: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """`items` less the oldest turn (a call stays with its output); None when nothing can go.

    The newest item is never dropped: without it there is nothing to answer.
    """
    if len(items) <= 1:
        return None
    first = items[0]
    cut = 1
    if first["type"] == "function_call":
        # Its output goes with it.
        call_id = first["call_id"]
        while cut < len(items) - 1 and items[cut]["type"] in ("function_call", "function_call_output"):
            if items[cut]["type"] == "function_call_output" and items[cut]["call_id"] == call_id:
                cut += 1
                break
            cut += 1
    while cut < len(items) - 1 and items[cut]["type"] == "function_call_output":
        cut += 1  # an output whose call is gone means nothing to the model
    return items[cut:]
