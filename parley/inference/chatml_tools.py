"""The chatml function-calling protocol, as Parley speaks it to a llama.cpp model.

This is llama.cpp's `chatml-function-calling` format (the model answers either
`message:` and text, or `functions.<name>:` and JSON arguments, one call per
line), with the gaps of llama-cpp-python 0.3's handler filled:

- it streams in every mode, `tool_choice: auto` included;
- `tool_choice: required` is honoured;
- tool results (`role: tool`) reach the model;
- the tools are described even when the caller sends no system message;
- `response_format` json_schema constrains the text.

The grammars keep the model inside the protocol: a function name must be one
of the tools offered, and its arguments must match the tool's JSON schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from parley.errors import InvalidRequestError

IM_END = "<|im_end|>"

# Ends the model's choice between a message and a call (see `choice_grammar`).
CHOICE_STOP = ":"


@dataclass(slots=True, frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any]


def tools_of(request_tools: list[dict[str, Any]] | None) -> list[Tool]:
    tools = []
    for tool in request_tools or ():
        function = tool.get("function") or {}
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        tools.append(Tool(name=function["name"], parameters=parameters))
    return tools


def message_text(content: Any, *, param: str) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            texts.append(part.get("text") or "")
        elif kind == "refusal":
            texts.append(part.get("refusal") or "")
        else:
            raise InvalidRequestError(
                f"The local model reads text only; content parts of type '{kind}' are not supported.",
                param=param,
            )
    return "".join(texts)


def _tools_block(tools: list[Tool]) -> str:
    lines = ["", "", "You have access to the following functions:"]
    for tool in tools:
        lines.append(f"\nfunctions.{tool.name}:\n{json.dumps(tool.parameters)}")
    lines.append(
        "\n\nYou can respond to users messages with either a single message or one or more function calls."
        "\n\nTo respond with a message begin the message with 'message:', use the following format:"
        "\n\nmessage:\n<message>"
        "\n\nTo respond with one or more function calls begin the message with 'functions.<function_name>:', "
        "use the following format:"
        '\n\nfunctions.<function_name>:\n{ "arg1": "value1", "arg2": "value2" }'
        '\nfunctions.<function_name>:\n{ "arg1": "value1", "arg2": "value2" }'
    )
    return "\n".join(lines)


def render_prompt(messages: list[dict[str, Any]], tools: list[Tool]) -> str:
    """The chatml prompt, ending where the assistant's turn begins."""
    offered = bool(tools)
    parts: list[str] = []
    system_seen = False
    call_names: dict[str, str] = {}
    for index, message in enumerate(messages):
        role = message["role"]
        text = message_text(message.get("content"), param=f"messages[{index}].content")
        if role in ("system", "developer"):
            if offered and not system_seen:
                text += _tools_block(tools)
            system_seen = True
            parts.append(f"<|im_start|>system\n{text}{IM_END}\n")
        elif role == "user":
            parts.append(f"<|im_start|>user\n{text}{IM_END}\n")
        elif role == "assistant":
            body = ""
            if text:
                body += f"message:\n{text}" if offered else text
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                call_names[call.get("id", "")] = function.get("name", "")
                body += ("\n" if body else "") + f"functions.{function.get('name')}:\n{function.get('arguments')}"
            parts.append(f"<|im_start|>assistant\n{body}{IM_END}\n")
        elif role in ("tool", "function"):
            name = message.get("name") or call_names.get(message.get("tool_call_id", ""), "function")
            parts.append(f"<|im_start|>user\nfunctions.{name} returned:\n{text}{IM_END}\n")
    if offered and not system_seen:
        parts.insert(0, f"<|im_start|>system\nYou are a helpful assistant.{_tools_block(tools)}{IM_END}\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _literal(text: str) -> str:
    return json.dumps(text)


def choice_grammar(tools: list[Tool], *, allow_message: bool) -> str:
    """GBNF for the first words of the reply: `message:` or `functions.<name>:`."""
    names = " | ".join(_literal(f"functions.{t.name}:") for t in tools)
    root = "functions | " + _literal("message:") if allow_message else "functions"
    return f"root ::= {root}\nfunctions ::= {names}\n"


def next_call_grammar(tools: list[Tool]) -> str:
    """GBNF after a call's arguments: another call, or the end of the turn."""
    names = " | ".join(_literal(f"functions.{t.name}:") for t in tools)
    return f"root ::= functions | {_literal(IM_END)}\nfunctions ::= {names}\n"


def chosen_function(text: str, tools: list[Tool]) -> Tool | None:
    """The tool named by a choice (`functions.<name>`), or None for a message."""
    name = text.strip().removesuffix(":").removeprefix("functions.")
    return next((t for t in tools if t.name == name), None) if text.strip().startswith("functions.") else None
