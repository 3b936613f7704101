"""Which recording answers a request: the same request exactly, or else the same conversation.

Two keys are computed for every request and every recording:

- the *exact key*, a hash of the normalized request (method, endpoint and
  body, as canonical JSON);
- the *signature*, what changes the model's reply and nothing else: for a
  chat completion, the roles, the message texts (whitespace collapsed, a list
  of text parts read as one string), the tool calls' names and arguments
  (compared as parsed JSON), the tool results, the set of tool names and the
  names of their parameters, `tool_choice`, `parallel_tool_calls` (whether the
  model may answer with several calls at once), `response_format` and the
  model. Descriptions, `strict` (which a recorder may drop from a
  `json_schema` format), ids, sampling parameters and stream settings are left out.

A signature is an ordered list of `(field, value)` pairs, so that a miss can
say which field differs first, and which recording comes closest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from parley.inference.recording_files import CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, MODELS_ENDPOINT

Signature = list[tuple[str, Any]]

_TEXT_PARTS = ("text", "input_text", "output_text")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def exact_key(method: str, endpoint: str, body: dict[str, Any] | None) -> str:
    """The hash of the normalized request."""
    request = {"method": method.upper(), "endpoint": endpoint, "body": body or {}}
    return hashlib.sha256(canonical(request).encode()).hexdigest()


def signature(endpoint: str, body: dict[str, Any] | None, provider: str | None = None) -> Signature:
    body = body or {}
    if endpoint == CHAT_ENDPOINT:
        return _chat_signature(body)
    if endpoint == EMBEDDINGS_ENDPOINT:
        inputs = body.get("input")
        return [
            ("model", body.get("model")),
            ("input", inputs if isinstance(inputs, list) else [inputs]),
            ("encoding_format", body.get("encoding_format") or "float"),
            ("dimensions", body.get("dimensions")),
        ]
    if endpoint == MODELS_ENDPOINT:
        return [("provider", provider)]
    return [("body", body)]


def signature_key(endpoint: str, sig: Signature) -> str:
    return hashlib.sha256(canonical([endpoint, sig]).encode()).hexdigest()


def _chat_signature(body: dict[str, Any]) -> Signature:
    sig: Signature = []
    messages = body.get("messages") or []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            message = {"content": message}
        sig.append((f"messages[{index}].role", message.get("role")))
        sig.append((f"messages[{index}].content", _content(message.get("content"))))
        calls = [_tool_call(call) for call in message.get("tool_calls") or ()]
        sig.append((f"messages[{index}].tool_calls", calls))
    sig.append(("messages", len(messages)))
    functions = [_function(tool) for tool in body.get("tools") or ()]
    sig.append(("tools", sorted(str(f.get("name")) for f in functions)))
    sig.append(("tool parameters", {str(f.get("name")): _parameter_names(f) for f in functions}))
    sig.append(("tool_choice", _tool_choice(body.get("tool_choice"), bool(functions))))
    sig.append(("parallel_tool_calls", _parallel_tool_calls(body.get("parallel_tool_calls"), bool(functions))))
    sig.append(("response_format", _response_format(body.get("response_format"))))
    sig.append(("model", body.get("model")))
    return sig


def _text(text: str) -> str:
    return " ".join(text.split())


def _content(content: Any) -> Any:
    """A message's content, the same whether sent as a string or as text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return _text(content)
    if not isinstance(content, list):
        return content
    if all(isinstance(part, dict) and part.get("type") in _TEXT_PARTS for part in content):
        return _text("".join(str(part.get("text") or "") for part in content))
    return [
        {"text": _text(str(part.get("text") or ""))}
        if isinstance(part, dict) and part.get("type") in _TEXT_PARTS
        else _without(part, "detail")
        for part in content
    ]


def _tool_call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = _text(arguments)
    return {"name": function.get("name"), "arguments": arguments}


def _function(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict):
        return {"name": str(tool)}
    function = tool.get("function")
    return function if isinstance(function, dict) else tool


def _parameter_names(function: dict[str, Any]) -> list[str]:
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    return sorted(properties) if isinstance(properties, dict) else []


def _tool_choice(choice: Any, has_tools: bool) -> Any:
    if not has_tools:
        return None
    return "auto" if choice is None else choice  # the default, sent or not


def _parallel_tool_calls(parallel: Any, has_tools: bool) -> Any:
    # With it false the model makes one call at most: a reply of two calls is not an answer.
    if not has_tools:
        return None  # no call is possible either way
    return True if parallel is None else parallel  # the default, sent or not


# Left out of a format: descriptions, and `strict`, which only asks the upstream to enforce the
# schema; recorders have been seen to drop it, and a file without it would then never match (issue 13).
_FORMAT_NOTES = ("description", "strict")


def _response_format(fmt: Any) -> Any:
    """The format without its description, `strict`, or its schema objects' `description` annotations."""
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text" and len(fmt) == 1):
        return None
    if not isinstance(fmt, dict):
        return fmt
    fmt = {key: value for key, value in fmt.items() if key not in _FORMAT_NOTES}
    if isinstance(fmt.get("schema"), dict):  # the Responses API's `text.format`
        fmt["schema"] = _schema(fmt["schema"])
    inner = fmt.get("json_schema")
    if isinstance(inner, dict):  # chat completions' `response_format`
        inner = {key: value for key, value in inner.items() if key not in _FORMAT_NOTES}
        if isinstance(inner.get("schema"), dict):
            inner["schema"] = _schema(inner["schema"])
        fmt["json_schema"] = inner
    return fmt


# JSON Schema keywords whose value is a map of names to schemas: the names are data
# (a property may well be called "description"), the values are schemas.
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
# Keywords whose value is a schema, or a list of schemas.
_SCHEMA_VALUES = {
    "items",
    "prefixItems",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "anyOf",
    "oneOf",
    "allOf",
}


def _schema(schema: Any) -> Any:
    """A JSON schema without the `description` annotations of its schema objects."""
    if isinstance(schema, list):
        return [_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_VALUES:
            out[key] = _schema(value)
        else:
            out[key] = value  # enum, const, default, required, ...: values, kept as they are
    return out


def _without(value: Any, key: str) -> Any:
    """`value` with `key` removed from every object in it."""
    if isinstance(value, dict):
        return {k: _without(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [_without(v, key) for v in value]
    return value


_MISSING = object()


@dataclass(slots=True, frozen=True)
class Difference:
    """Where a recording first departs from a request."""

    position: int  # how many fields agree before the first that differs
    agreeing: int  # how many fields agree in all
    field: str
    wanted: Any  # the request's value
    recorded: Any  # the recording's value, or _MISSING

    def describe(self, wanted_count: int | None = None, recorded_count: int | None = None) -> str:
        if self.field == "messages" or self.recorded is _MISSING:
            return f"the request has {_count(wanted_count)} where the recording has {_count(recorded_count)}"
        return f"{self.field}: the request has {_show(self.wanted)} where the recording has {_show(self.recorded)}"


def _count(n: int | None) -> str:
    return "more messages" if n is None else f"{n} message" + ("" if n == 1 else "s")


def _show(value: Any, limit: int = 120) -> str:
    text = canonical(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compare(wanted: Signature, recorded: Signature) -> Difference | None:
    """None when the recording answers the request; else its first difference."""
    fields = dict(recorded)
    first: tuple[int, str, Any, Any] | None = None
    agreeing = 0
    for position, (field, value) in enumerate(wanted):
        other = fields.get(field, _MISSING)
        if other is not _MISSING and canonical(value) == canonical(other):
            agreeing += 1
        elif first is None:
            first = (position, field, value, other)
    if first is None:
        return None
    return Difference(first[0], agreeing, first[1], first[2], first[3])


def message_count(sig: Signature) -> int | None:
    return next((value for field, value in sig if field == "messages"), None)
