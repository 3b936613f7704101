"""What the model is sent: Responses items and settings in chat-completions terms."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from parley.config import OpenAIProviderConfig
from parley.engine import compaction
from parley.engine.files import FileRead, PartKey, chat_part, part_key
from parley.engine.request import (
    AllowedToolRef,
    AllowedToolsChoice,
    CreateResponseRequest,
    MCPToolChoice,
    NamedFunctionChoice,
    ToolTypeChoice,
)
from parley.errors import InvalidRequestError
from parley.ids import check_id, turn_of
from parley.inference.base import Provider
from parley.inference.registry import ResolvedModel
from parley.tools import Toolbox, chat_messages_of
from parley.tools.caller import OUTPUT_STYLES, STYLES


def reasoning_field_of(provider: Provider) -> str | None:
    """The message field `provider` takes reasoning in: an `openai` provider's `reasoning_field`.

    None for every other provider: the embedded model's chat formats have no place for it.
    """
    runs = getattr(provider, "inner", provider)  # a recording provider wraps the one that runs
    config = getattr(runs, "config", None)
    return config.reasoning_field if isinstance(config, OpenAIProviderConfig) else None


def chat_messages(
    instructions: str | None,
    items: list[dict[str, Any]],
    toolbox: Toolbox | None = None,
    reasoning_field: str | None = None,
    files: Mapping[PartKey, FileRead] | None = None,
) -> list[dict[str, Any]]:
    """Chat messages for `items`, oldest first, after the instructions.

    A chat model reads each of its own messages whole: its text and every
    call it made in it, as one assistant message, and then one tool message
    per call, right after it. Items come apart: a call's output arrives later
    (as the caller answers it, perhaps after repeating the user's message);
    a server-side item (an MCP call, a web search) carries its call and its
    result together (`ToolKind.chat_messages` gives them as an assistant
    message of tool calls and the tool messages that answer it). So:

    - **One model message.** An assistant message item, or a call item of any
      kind, continues the model message before it when nothing stands between
      them (a user or system message, a call's output, a reasoning item,
      which begins a model message) and their turn marks agree: the items one
      model call produces carry one mark in their ids (`parley.ids.turn_of`),
      so calls of two model calls in a row stay two messages; an id without a
      mark (a caller's own) agrees with any. Items that the model reads
      nothing of (MCP listings, pending approvals) stand nowhere.
    - **Results after their calls.** Every tool message is moved to directly
      after the assistant message whose call it answers, the tool messages of
      one assistant message in the order they came; what stood between moves
      after them, in order.

    A result the caller gave unasked (see `check_calls_answered`) is read
    after a call made for it, in an assistant message of its own. The
    `toolbox` gives the names the model knows each tool by.

    With a `reasoning_field` (see `reasoning_field_of`), a reasoning item's
    text rides in that field of the assistant message that follows it: the
    one with the turn's text or tool calls (DeepSeek's tool loop needs it
    there), or an empty one made for it when a user or tool message comes
    first. Without one, reasoning is left out.

    A compaction item is read as its summary, in a user message, and what it
    replaced is not read (see parley.engine.compaction).

    `files` holds what the items' files gave (`InputFiles.read`): an
    `input_file` part is its text, set apart from the parts beside it by a
    blank line, and an `input_image` by file_id its image (see parley.engine.files).
    """
    return _results_after_calls(_model_messages(instructions, items, toolbox, reasoning_field, files or {}))


def _model_messages(
    instructions: str | None,
    items: list[dict[str, Any]],
    toolbox: Toolbox | None,
    reasoning_field: str | None,
    files: Mapping[PartKey, FileRead],
) -> list[dict[str, Any]]:
    """The messages of `items` in their order, each model message whole (see `chat_messages`)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    name_of = toolbox.model_name if toolbox is not None else (lambda _label, name: name)
    field = reasoning_field
    reasoning: list[str] = []  # the texts of reasoning items not yet attached to a message
    # The assistant message of the model message still open (that a call may join), and its turn mark.
    turn: dict[str, Any] | None = None
    turn_mark: str | None = None

    def assistant(message: dict[str, Any]) -> dict[str, Any]:
        """`message` with the reasoning that came before it."""
        if reasoning and field is not None:
            earlier = message.get(field)
            message[field] = "\n\n".join(([earlier] if earlier else []) + reasoning)
            reasoning.clear()
        return message

    def other(message: dict[str, Any]) -> None:
        """A user, system or tool message: reasoning before it goes on an assistant message of its own."""
        nonlocal turn
        turn = None
        if reasoning and field is not None:
            messages.append(assistant({"role": "assistant", "content": ""}))
        messages.append(message)

    def model(message: dict[str, Any], mark: str | None) -> None:
        """An assistant message with the model's text: it begins a model message."""
        nonlocal turn, turn_mark
        messages.append(assistant(message))
        turn, turn_mark = message, mark

    def call(entry: dict[str, Any], mark: str | None) -> None:
        """A call: it joins the open model message, or begins one."""
        nonlocal turn, turn_mark
        if turn is not None and (mark is None or turn_mark is None or mark == turn_mark):
            turn.setdefault("tool_calls", []).append(entry)
            turn_mark = turn_mark or mark
        else:
            model({"role": "assistant", "content": None, "tool_calls": [entry]}, mark)

    for item in compaction.compacted(items):
        kind = item["type"]
        if kind == "message":
            message = _message(item, files)
            if message["role"] == "assistant":
                model(message, turn_of(item.get("id")))
            else:
                other(message)
        elif kind in STYLES:
            style = STYLES[kind]
            name = toolbox.callers.model_name(item) if toolbox is not None else style.tool_name(item)
            function = {"name": name, "arguments": style.arguments(item)}
            call({"id": item["call_id"], "type": "function", "function": function}, turn_of(item.get("id")))
        elif kind in OUTPUT_STYLES:
            style = OUTPUT_STYLES[kind]
            if kind == "function_call_output":
                content = _tool_output(item["output"])
            else:
                content = style.output_text(item)
            call_id = style.output_call_id(item)
            if call_id is None:
                # A result the caller gave unasked: a chat model reads a tool message only after
                # the call it answers, so a call is made for it, which is no model message's.
                turn = None
                call_id = f"call_{item['id']}"
                name = item["name"] if not item.get("namespace") else f"{item['namespace']}__{item['name']}"
                call({"id": call_id, "type": "function", "function": {"name": name[:64], "arguments": "{}"}}, None)
            other({"role": "tool", "tool_call_id": call_id, "content": content})
        elif kind == compaction.ITEM_TYPE:
            other(compaction.summary_message(item))
        elif kind == "reasoning":
            turn = None  # reasoning begins a model message
            text = reasoning_text(item) if field is not None else ""
            if text:
                reasoning.append(text)
        else:
            calls: set[str] = set()  # the calls this item makes, whose results it carries too
            read = toolbox.chat_messages(item, items) if toolbox is not None else chat_messages_of(item, items, name_of)
            for message in read or ():
                if message["role"] == "assistant" and message.get("tool_calls") and message.get("content") is None:
                    for entry in message["tool_calls"]:
                        call(entry, turn_of(entry["id"]))
                        calls.add(entry["id"])
                elif message["role"] == "tool" and message.get("tool_call_id") in calls:
                    messages.append(message)
                elif message["role"] == "assistant":
                    model(message, turn_of(item.get("id")))
                else:
                    other(message)
        # Reasoning that nothing follows is left out: an assistant message last would be
        # taken for a reply to continue.
    return messages


def _results_after_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with every tool message directly after the assistant message whose call it answers.

    A tool message goes after the latest assistant message before it that made its call (or, when
    none did, the first one after it); the tool messages of one assistant message keep their order,
    and everything else keeps its own. A tool message whose call no message made stays where it is.
    """
    placed: list[list[dict[str, Any]]] = [[message] for message in messages]  # what goes at each index
    waiting: dict[str, int] = {}  # call id -> the index of the assistant message that made it, unanswered
    early: dict[str, list[int]] = {}  # call id -> the indexes of tool messages that came before their call
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            for entry in message.get("tool_calls") or ():
                answers = early.pop(entry["id"], None)
                if answers:
                    for answer in answers:
                        placed[index] += placed[answer]
                        placed[answer] = []
                else:
                    waiting[entry["id"]] = index
        elif message["role"] == "tool":
            call_id = str(message.get("tool_call_id"))
            owner = waiting.pop(call_id, None)
            if owner is None:
                early.setdefault(call_id, []).append(index)
            else:
                placed[owner] += placed[index]
                placed[index] = []
    return [message for group in placed for message in group]


def reasoning_text(item: dict[str, Any]) -> str:
    """A reasoning item's text: its `reasoning_text` parts, else its summary's `summary_text` parts."""
    text = "".join(_texts(item.get("content"), "reasoning_text"))
    return text or "\n\n".join(_texts(item.get("summary"), "summary_text"))


def _texts(parts: list[dict[str, Any]] | None, kind: str) -> list[str]:
    return [
        part["text"]
        for part in parts or ()
        if part.get("type") == kind and isinstance(part.get("text"), str) and part["text"]
    ]


def _message(item: dict[str, Any], files: Mapping[PartKey, FileRead]) -> dict[str, Any]:
    role = item["role"]
    if role == "assistant":
        text = "".join(p.get("text") or p.get("refusal") or "" for p in item["content"])
        return {"role": "assistant", "content": text}
    parts = [_chat_part(part, files) for part in item["content"]]
    if all(part["type"] == "text" for part in parts):
        content: str | list[dict[str, Any]] = _joined(item["content"], parts)
    else:
        content = parts
    return {"role": "system" if role == "system" else role, "content": content}


def _joined(parts: list[dict[str, Any]], texts: list[dict[str, Any]]) -> str:
    """The texts of a message's parts as one: run together, as OpenAI joins text parts, but a file's apart from
    its neighbours by a blank line."""
    joined = ""
    after_file = False
    for part, text in zip(parts, texts, strict=True):
        is_file = part["type"] == "input_file"
        if joined and (is_file or after_file):
            joined += "\n\n"
        joined += text["text"]
        after_file = is_file
    return joined


def _chat_part(part: dict[str, Any], files: Mapping[PartKey, FileRead]) -> dict[str, Any]:
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part["text"]}
    if kind == "input_image" and part.get("image_url"):
        return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail", "auto")}}
    if kind in ("input_image", "input_file"):
        key = part_key(part)
        read = files.get(key) if key is not None else None
        if read is None:  # not read by `InputFiles.read`: a server with no files to read them from
            raise InvalidRequestError(f"A content part of type '{kind}' holds a file this server cannot read.")
        return chat_part(part, read)
    return {"type": "text", "text": part.get("refusal", "")}


def check_input(items: list[dict[str, Any]]) -> None:
    """Refuses, naming its place, what a chat-completions model cannot be sent, rather than drop it.

    A chat message carries images and files (files as their text, see
    parley.engine.files), but a tool message only text. A file part names its
    file once: by `file_id`, `file_data` or `file_url`.
    """
    for index, item in enumerate(items):
        if item["type"] == "message" and item["role"] != "assistant":
            for part_index, part in enumerate(item["content"]):
                _check_part(part, f"input[{index}].content[{part_index}]")
        elif item["type"] in ("function_call_output", "custom_tool_call_output") and isinstance(item["output"], list):
            for part_index, part in enumerate(item["output"]):
                if part["type"] != "input_text":
                    param = f"input[{index}].output[{part_index}]"
                    raise InvalidRequestError(
                        f"Invalid value for '{param}': a function call's output can only be text for this "
                        f"server's models; send the {part['type']} in a user message instead.",
                        param=param,
                        code="unsupported_value",
                    )


def text_only(model: ResolvedModel) -> bool:
    """Whether `model` reads text alone (the embedded model): see `check_text_only`."""
    runs = getattr(model.provider, "inner", model.provider)  # a recording provider wraps the one that runs
    return bool(runs.text_only(model.name))


def check_text_only(
    items: list[dict[str, Any]], history: list[dict[str, Any]], model: str, history_param: str | None
) -> None:
    """For a model that reads text only: refuses, as the request arrives, the images it would be sent (a file it
    reads as its text).

    One in this request's input is named at its place (`input[0].content[1]`);
    one in the turns before it, by where they come from (`history_param`:
    `previous_response_id` or `conversation`), and by its item.
    """
    for index, item in enumerate(items):
        for part_index, kind in _unreadable(item):
            param = f"input[{index}].content[{part_index}]"
            raise InvalidRequestError(
                f"Invalid value for '{param}': the model '{model}' reads text only; content parts of type "
                f"'{kind}' are not supported.",
                param=param,
                code="unsupported_value",
            )
    for item in history:
        for _, kind in _unreadable(item):
            raise InvalidRequestError(
                f"The model '{model}' reads text only, and the turns before this one hold content parts of type "
                f"'{kind}' (in item '{item.get('id')}'), which it cannot be sent.",
                param=history_param,
                code="unsupported_value",
            )


def _unreadable(item: dict[str, Any]) -> list[tuple[int, str]]:
    """The content parts of a message item that are not text, with their indexes and types: images (a file
    is its text, see parley.engine.files)."""
    if item["type"] != "message" or not isinstance(item.get("content"), list):
        return []
    return [
        (index, str(part.get("type")))
        for index, part in enumerate(item["content"])
        if part.get("type") not in ("input_text", "output_text", "refusal", "input_file")
    ]


def check_calls_answered(history: list[dict[str, Any]], items: list[dict[str, Any]]) -> None:
    """Refuses, as OpenAI does, a call output that answers no call, and a call left unanswered.

    The call an output answers may come earlier in the input or in the turns
    before it (`previous_response_id`, a conversation); every call to the
    caller's tools there needs its output by the time the model is asked to go
    on. An output with no `call_id` names its tool instead (`name`, and
    `namespace`): it answers the earliest unanswered call to that tool, and
    takes its `call_id`; when there is none, it stands alone, as a result the
    caller gives the model unasked (Codex tells the model a goal's objective
    so), and the model reads it as a call of its own (see `chat_messages`).
    """
    context = history + items
    calls = [item for item in context if item["type"] in STYLES]
    call_ids = {item["call_id"] for item in calls}
    answered = {OUTPUT_STYLES[item["type"]].output_call_id(item) for item in context if item["type"] in OUTPUT_STYLES}
    for index, item in enumerate(items):
        if item["type"] not in OUTPUT_STYLES:
            continue
        call_id = OUTPUT_STYLES[item["type"]].output_call_id(item)
        if call_id is None:
            paired = _pair_by_name(item, calls, answered, index)
            if paired is not None:
                answered.add(paired)
        elif call_id not in call_ids:
            raise InvalidRequestError(
                f"No tool call found for function call output with call_id {call_id}.", param="input"
            )
    for item in calls:
        if item["call_id"] not in answered:
            raise InvalidRequestError(f"No tool output found for function call {item['call_id']}.", param="input")


def _pair_by_name(output: dict[str, Any], calls: list[dict[str, Any]], answered: set[Any], index: int) -> str | None:
    """The `call_id` of the earliest unanswered call to the tool an output without one names, which the
    output takes (as stored and listed); None when no call waits for it."""
    style = OUTPUT_STYLES[output["type"]]
    name, namespace = output.get("name"), output.get("namespace")
    if not name:
        raise InvalidRequestError(
            f"Missing required parameter: 'input[{index}].call_id' (or the 'name' of the tool that produced it).",
            param=f"input[{index}].call_id",
            code="missing_required_parameter",
        )
    for call in calls:
        if (
            call["type"] == style.call_type
            and call["call_id"] not in answered
            and style.tool_name(call) == name
            and call.get("namespace") == namespace
        ):
            output["call_id"] = call["call_id"]
            return str(call["call_id"])
    return None


def _check_part(part: dict[str, Any], path: str) -> None:
    if part["type"] == "input_image" and part.get("file_id") and not part.get("image_url"):
        check_id(part["file_id"], "file-", f"{path}.file_id")
    if part["type"] == "input_file":
        given = [field for field in ("file_id", "file_data", "file_url") if part.get(field)]
        if not given:
            raise InvalidRequestError(
                f"Missing required parameter: '{path}.file_id' (or 'file_data', or 'file_url').",
                param=f"{path}.file_id",
                code="missing_required_parameter",
            )
        if len(given) > 1:
            raise InvalidRequestError(
                f"Invalid value for '{path}': give one of 'file_id', 'file_data' and 'file_url', not "
                f"{' and '.join(repr(field) for field in given)}.",
                param=f"{path}.{given[1]}",
                code="invalid_value",
            )
        if part.get("file_id"):
            check_id(part["file_id"], "file-", f"{path}.file_id")


def _tool_output(output: str | list[dict[str, Any]]) -> str:
    if isinstance(output, str):
        return output
    if any(part["type"] != "input_text" for part in output):
        raise InvalidRequestError("An earlier function call output holds an image or a file, which is not supported.")
    return "".join(part["text"] for part in output)


def chat_tools(
    request: CreateResponseRequest, toolbox: Toolbox, *, first_call: bool = True
) -> tuple[list[dict[str, Any]] | None, Any]:
    """The tools offered to the model and its `tool_choice`.

    Every tool is offered as a function: those the caller answers (see
    `parley.tools.caller`), then the server-side tools. `allowed_tools` is a
    hard constraint: the model is never shown a tool outside it. A choice that
    names a tool (a function, a custom tool, an MCP server's tool) forces a
    call to it; one that names a type of tool (`shell`, `web_search_preview`,
    an MCP server) forces a call to one of that type's tools: on the first
    call only, the model is shown just those, and must call one.
    """
    choice = request.tool_choice
    chat = toolbox.caller_functions() + toolbox.server_functions()
    chat_choice: Any = choice
    if isinstance(choice, AllowedToolsChoice):
        chat = [tool for tool in chat if _allowed(choice.tools, tool["function"]["name"], toolbox)]
        chat_choice = choice.mode
    elif isinstance(choice, (NamedFunctionChoice, ToolTypeChoice, MCPToolChoice)):
        chosen = [tool for tool in chat if _chosen(choice, tool["function"]["name"], toolbox)]
        if not chosen:
            raise InvalidRequestError(
                f"Invalid value for 'tool_choice': no tool that it names is among the tools ({_describe(choice)}).",
                param="tool_choice",
                code="invalid_value",
            )
        if len(chosen) == 1:
            chat_choice = {"type": "function", "function": {"name": chosen[0]["function"]["name"]}}
        else:
            chat_choice = "required"
            if first_call:
                chat = chosen
    if not chat:
        return None, None
    return chat, chat_choice


def _describe(choice: NamedFunctionChoice | ToolTypeChoice | MCPToolChoice) -> str:
    return ", ".join(f"{key}: {value}" for key, value in choice.model_dump(exclude_none=True).items())


def _chosen(choice: NamedFunctionChoice | ToolTypeChoice | MCPToolChoice, name: str, toolbox: Toolbox) -> bool:
    """Whether the tool the model knows as `name` is one that a `tool_choice` names."""
    if isinstance(choice, NamedFunctionChoice):
        if choice.type == "function" and toolbox.tool(name) is not None and choice.name == name:
            return True  # a server-side tool, forced by the name the model knows it by
        ref = AllowedToolRef(type=choice.type, name=choice.name)
    elif isinstance(choice, MCPToolChoice):
        ref = AllowedToolRef(type="mcp", name=choice.name, server_label=choice.server_label)
    else:
        ref = AllowedToolRef(type=choice.type)
    return _allowed([ref], name, toolbox)


def _allowed(refs: list[AllowedToolRef], name: str, toolbox: Toolbox) -> bool:
    """Whether the tool the model knows as `name` is among `refs` (an `allowed_tools` list).

    A function or custom tool is matched by type and name (a namespace's by its own name); OpenAI's shell
    and patch tools and hosted tools by type (`web_search` matches its preview and dated types too); an MCP
    server's tools by `server_label`, and `name` if given.
    """
    caller = toolbox.caller_tool(name)
    server = toolbox.tool(name)
    for ref in refs:
        if caller is not None:
            if ref.type == caller.tool_type and (
                ref.name == caller.tool_name
                if ref.type in ("function", "custom")
                else ref.name in (None, caller.tool_name)
            ):
                return True
        elif server is not None:
            if ref.type == "mcp":
                label = (ref.model_extra or {}).get("server_label")
                if server.server_label == label and ref.name in (None, server.tool_name):
                    return True
            elif ref.type not in ("function", "custom") and _family(ref.type) == _family(server.tool_type):
                return True
    return False


def _family(tool_type: str) -> str:
    """A tool type less its preview and date suffixes: `web_search_preview_2025_03_11` is a `web_search`."""
    return re.sub(r"(_preview)?(_\d{4}_\d{2}_\d{2})?$", "", tool_type)


def response_format(request: CreateResponseRequest) -> dict[str, Any] | None:
    if request.text is None:
        return None
    fmt = request.text.format
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        if fmt.description is not None:
            schema["description"] = fmt.description
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
