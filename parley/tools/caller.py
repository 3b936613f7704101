"""Tools whose calls go back to the caller, offered to a chat-completions model as functions.

A chat-completions model knows only functions, so every tool the caller
answers is offered as one, and the model's call is turned back into the item
OpenAI's API gives for that tool:

- `function`: offered as itself; a call is a `function_call`, answered by
  `function_call_output`.
- `namespace`: each function or custom tool inside it, as that tool; its
  calls carry `namespace` too.
- `custom`: a function of one string, `input` (with its grammar in the
  description); a call is a `custom_tool_call`, answered by
  `custom_tool_call_output`.
- `local_shell`: `local_shell(command, env, timeout_ms, working_directory,
  user)`; a call is a `local_shell_call` with an `exec` action, answered by
  `local_shell_call_output`.
- `shell`: `shell(commands, timeout_ms, max_output_length)`; a call is a
  `shell_call`, answered by `shell_call_output`.
- `apply_patch`: `apply_patch(type, path, diff)`; a call is an
  `apply_patch_call`, answered by `apply_patch_call_output`.

A tool keeps its own name where no other tool of the response has it; a
namespace's tool whose name is taken is offered as `{namespace}__{name}`
(names may repeat across namespaces). Its item gives back the original `name`
and `namespace`. Earlier calls and their outputs reach the model as an
assistant message's `tool_calls` and tool messages, under the same names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from parley.ids import new_id
from parley.tools.definitions import CustomTool, FunctionTool, NamespaceTool

_MAX_NAME = 64


class CallStyle:
    """How the calls of one kind of caller-side tool become items, and how the model reads them back."""

    call_type: ClassVar[str]
    output_type: ClassVar[str]
    id_prefix: ClassVar[str]
    # Whether the model's arguments are the item's own `arguments`, streamed as they come
    # (`response.function_call_arguments.delta`); otherwise they are read whole when the call ends.
    streams_arguments: ClassVar[bool] = False

    def item(self, tool: CallerTool, call_id: str) -> dict[str, Any]:
        """The item a model's call opens (`in_progress`)."""
        item = {"id": new_id(self.id_prefix), "type": self.call_type, "status": "in_progress", "call_id": call_id}
        return {**item, **self.fields(tool)}

    def fields(self, tool: CallerTool) -> dict[str, Any]:
        return {}

    def finish(self, item: dict[str, Any], arguments: str) -> list[tuple[str, dict[str, Any]]]:
        """Fills a finished call's fields from the model's `arguments`; the events that say so, before `done`."""
        return []

    def arguments(self, item: dict[str, Any]) -> str:
        """A call item's arguments, as the model wrote them."""
        raise NotImplementedError

    def tool_name(self, item: dict[str, Any]) -> str:
        """The caller's name for the tool a call item is for."""
        return str(item.get("name") or "")

    def output_call_id(self, item: dict[str, Any]) -> str | None:
        """The call an output item answers."""
        return item.get("call_id")

    def output_text(self, item: dict[str, Any]) -> str:
        """What the model reads of an output item."""
        output = item.get("output")
        if isinstance(output, str):
            return output
        return "".join(part.get("text", "") for part in output or () if isinstance(part, dict))


def _json(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class FunctionCalls(CallStyle):
    call_type = "function_call"
    output_type = "function_call_output"
    id_prefix = "fc"
    streams_arguments = True

    def fields(self, tool: CallerTool) -> dict[str, Any]:
        fields: dict[str, Any] = {"name": tool.tool_name, "arguments": ""}
        if tool.namespace is not None:
            fields["namespace"] = tool.namespace
        return fields

    def arguments(self, item: dict[str, Any]) -> str:
        return str(item.get("arguments") or "")


class CustomCalls(CallStyle):
    call_type = "custom_tool_call"
    output_type = "custom_tool_call_output"
    id_prefix = "ctc"

    def fields(self, tool: CallerTool) -> dict[str, Any]:
        fields: dict[str, Any] = {"name": tool.tool_name, "input": ""}
        if tool.namespace is not None:
            fields["namespace"] = tool.namespace
        return fields

    def finish(self, item: dict[str, Any], arguments: str) -> list[tuple[str, dict[str, Any]]]:
        value = _json(arguments).get("input")
        # A model that wrote the input itself rather than as `{"input": ...}` is taken at its word.
        item["input"] = value if isinstance(value, str) else arguments
        return [
            ("response.custom_tool_call_input.delta", {"delta": item["input"]}),
            ("response.custom_tool_call_input.done", {"input": item["input"]}),
        ]

    def arguments(self, item: dict[str, Any]) -> str:
        return json.dumps({"input": item.get("input") or ""})


class LocalShellCalls(CallStyle):
    call_type = "local_shell_call"
    output_type = "local_shell_call_output"
    id_prefix = "lsh"

    def fields(self, tool: CallerTool) -> dict[str, Any]:
        return {"action": {"type": "exec", "command": [], "env": {}}}

    def finish(self, item: dict[str, Any], arguments: str) -> list[tuple[str, dict[str, Any]]]:
        args = _json(arguments)
        command = args.get("command")
        if isinstance(command, str):
            command = ["bash", "-lc", command]
        action: dict[str, Any] = {
            "type": "exec",
            "command": [str(part) for part in command] if isinstance(command, list) else [],
            "env": {str(k): str(v) for k, v in args["env"].items()} if isinstance(args.get("env"), dict) else {},
        }
        for key, kind in (("timeout_ms", int), ("working_directory", str), ("user", str)):
            if isinstance(args.get(key), kind) and not isinstance(args.get(key), bool):
                action[key] = args[key]
        item["action"] = action
        return []

    def arguments(self, item: dict[str, Any]) -> str:
        action = {key: value for key, value in (item.get("action") or {}).items() if key != "type"}
        return json.dumps(action)

    def tool_name(self, item: dict[str, Any]) -> str:
        return "local_shell"

    def output_call_id(self, item: dict[str, Any]) -> str | None:
        # OpenAI's `local_shell_call_output` names its call by `id`: the call's `call_id`.
        return item.get("call_id") or item.get("id")


class ShellCalls(CallStyle):
    call_type = "shell_call"
    output_type = "shell_call_output"
    id_prefix = "sh"

    def fields(self, tool: CallerTool) -> dict[str, Any]:
        return {"action": {"commands": [], "timeout_ms": None, "max_output_length": None}, "environment": None}

    def finish(self, item: dict[str, Any], arguments: str) -> list[tuple[str, dict[str, Any]]]:
        args = _json(arguments)
        commands = args.get("commands")
        if isinstance(commands, str):
            commands = [commands]
        item["action"] = {
            "commands": [str(c) for c in commands] if isinstance(commands, list) else [],
            "timeout_ms": _int_or_none(args.get("timeout_ms")),
            "max_output_length": _int_or_none(args.get("max_output_length")),
        }
        return []

    def arguments(self, item: dict[str, Any]) -> str:
        action = item.get("action") or {}
        return json.dumps({key: value for key, value in action.items() if value is not None})

    def tool_name(self, item: dict[str, Any]) -> str:
        return "shell"

    def output_text(self, item: dict[str, Any]) -> str:
        pieces = []
        for entry in item.get("output") or ():
            if not isinstance(entry, dict):
                continue
            outcome = entry.get("outcome") or {}
            if outcome.get("type") == "timeout":
                status = "timed out"
            else:
                status = f"exit code {outcome.get('exit_code')}"
            text = f"stdout:\n{entry.get('stdout') or ''}\nstderr:\n{entry.get('stderr') or ''}\n({status})"
            pieces.append(text)
        return "\n\n".join(pieces)


class ApplyPatchCalls(CallStyle):
    call_type = "apply_patch_call"
    output_type = "apply_patch_call_output"
    id_prefix = "apc"

    def fields(self, tool: CallerTool) -> dict[str, Any]:
        return {"operation": {"type": "update_file", "path": "", "diff": ""}}

    def finish(self, item: dict[str, Any], arguments: str) -> list[tuple[str, dict[str, Any]]]:
        args = _json(arguments)
        operation: dict[str, Any] = args["operation"] if isinstance(args.get("operation"), dict) else args
        kind = operation.get("type")
        if kind not in ("create_file", "update_file", "delete_file"):
            kind = "update_file"
        result: dict[str, Any] = {"type": kind, "path": str(operation.get("path") or "")}
        if kind != "delete_file":
            result["diff"] = str(operation.get("diff") or "")
        item["operation"] = result
        return []

    def arguments(self, item: dict[str, Any]) -> str:
        return json.dumps(item.get("operation") or {})

    def tool_name(self, item: dict[str, Any]) -> str:
        return "apply_patch"

    def output_text(self, item: dict[str, Any]) -> str:
        output = item.get("output")
        return output if isinstance(output, str) and output else f"The patch was {item.get('status', 'applied')}."


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


STYLES: dict[str, CallStyle] = {
    style.call_type: style
    for style in (FunctionCalls(), CustomCalls(), LocalShellCalls(), ShellCalls(), ApplyPatchCalls())
}
OUTPUT_STYLES: dict[str, CallStyle] = {style.output_type: style for style in STYLES.values()}


@dataclass(frozen=True, slots=True)
class CallerTool:
    """A tool whose calls go back to the caller."""

    name: str  # as the model knows it: unique among every tool of the response
    function: dict[str, Any]  # its chat-completions definition
    style: CallStyle
    tool_name: str  # the caller's name for it
    namespace: str | None = None
    tool_type: str = "function"  # its type in the request's `tools` (`allowed_tools` matches it)


# The functions OpenAI's own shell and patch tools are offered as.
_LOCAL_SHELL = {
    "name": "local_shell",
    "description": "Runs a command on the user's machine and returns its output.",
    "parameters": {
        "type": "object",
        "properties": {
            "command": {"type": "array", "items": {"type": "string"}, "description": "The command and its arguments."},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "timeout_ms": {"type": "integer"},
            "working_directory": {"type": "string"},
            "user": {"type": "string"},
        },
        "required": ["command"],
    },
}
_SHELL = {
    "name": "shell",
    "description": "Runs shell commands, one after the other, and returns their output.",
    "parameters": {
        "type": "object",
        "properties": {
            "commands": {"type": "array", "items": {"type": "string"}},
            "timeout_ms": {"type": "integer"},
            "max_output_length": {"type": "integer"},
        },
        "required": ["commands"],
    },
}
_APPLY_PATCH = {
    "name": "apply_patch",
    "description": (
        "Creates, updates or deletes a file. `diff` is the new file's content for create_file, "
        "and a unified diff for update_file."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["create_file", "update_file", "delete_file"]},
            "path": {"type": "string"},
            "diff": {"type": "string"},
        },
        "required": ["type", "path"],
    },
}
_BUILT_IN: dict[str, tuple[dict[str, Any], CallStyle]] = {
    "local_shell": (_LOCAL_SHELL, STYLES["local_shell_call"]),
    "shell": (_SHELL, STYLES["shell_call"]),
    "apply_patch": (_APPLY_PATCH, STYLES["apply_patch_call"]),
}
TOOL_TYPES = frozenset({"function", "namespace", "custom", *_BUILT_IN})


class CallerTools:
    """The caller-side tools of one response, named apart for the model."""

    def __init__(self, definitions: list[Any]) -> None:
        entries: list[tuple[str, dict[str, Any], CallStyle, str, str | None, str]] = []
        for definition in definitions:
            if isinstance(definition, NamespaceTool):
                for inner in definition.tools:
                    entries.append(_entry(inner, definition.name))
            elif isinstance(definition, (FunctionTool, CustomTool)):
                entries.append(_entry(definition, None))
            elif getattr(definition, "type", None) in _BUILT_IN:
                function, style = _BUILT_IN[definition.type]
                name = str(function["name"])
                entries.append((name, dict(function), style, name, None, definition.type))
        # Tools outside a namespace keep their names; a namespace's tool does unless the name is taken.
        taken = {entry[0] for entry in entries if entry[4] is None}
        self.tools: list[CallerTool] = []
        for name, function, style, tool_name, namespace, tool_type in entries:
            model_name = name
            if namespace is not None:
                if name in taken:
                    model_name = f"{namespace}__{name}"[:_MAX_NAME]
                taken.add(model_name)
            function = {**function, "name": model_name}
            self.tools.append(
                CallerTool(
                    model_name, {"type": "function", "function": function}, style, tool_name, namespace, tool_type
                )
            )
        self._by_name = {tool.name: tool for tool in self.tools}
        self._by_item = {(tool.style.call_type, tool.namespace, tool.tool_name): tool.name for tool in self.tools}

    def __iter__(self) -> Any:
        return iter(self.tools)

    def names(self) -> set[str]:
        return set(self._by_name)

    def tool(self, name: str) -> CallerTool | None:
        """The caller-side tool the model knows as `name`."""
        return self._by_name.get(name)

    def model_name(self, item: dict[str, Any]) -> str:
        """The name the model knows the tool of a call item by (the item's own, for a tool no longer offered)."""
        style = STYLES[item["type"]]
        tool_name = style.tool_name(item)
        return self._by_item.get((item["type"], item.get("namespace"), tool_name), tool_name)


def _entry(
    definition: FunctionTool | CustomTool, namespace: str | None
) -> tuple[str, dict[str, Any], CallStyle, str, str | None, str]:
    function: dict[str, Any]
    if isinstance(definition, CustomTool):
        function = {
            "name": definition.name,
            "description": definition.model_description(),
            "parameters": {
                "type": "object",
                "properties": {"input": {"type": "string", "description": "The tool's input, as free-form text."}},
                "required": ["input"],
            },
        }
        return definition.name, function, STYLES["custom_tool_call"], definition.name, namespace, "custom"
    function = {"name": definition.name}
    if definition.description is not None:
        function["description"] = definition.description
    function["parameters"] = definition.parameters or {"type": "object", "properties": {}}
    if definition.strict is not None:
        function["strict"] = definition.strict
    return definition.name, function, STYLES["function_call"], definition.name, namespace, "function"
