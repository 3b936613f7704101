"""Validate JSON objects against the two API documents in `shared/specs/`.

- `openai-openapi.yml`: OpenAI's OpenAPI document (2.3.0).
- `openresponses-openapi.json`: Open Responses, stricter in places (for example
  `temperature` and `tools` must be present and non-null on a response).

Both documents declare `openapi: 3.1.0` and no `jsonSchemaDialect`, so their
schemas are JSON Schema 2020-12 (OpenAPI's `discriminator` and `x-*` keywords
are annotations that a JSON Schema validator ignores). One 3.0 leftover needs
handling: OpenAI's document still writes `nullable: true` on 109 schemas, which
3.1 dropped and 2020-12 ignores; read literally, `{type: string, nullable: true}`
would reject `null`. Each such schema is rewritten as
`anyOf: [{type: "null"}, <the schema without nullable>]`, which is what its
authors meant.

Usage::

    validate_openai(response_dict, "Response")
    validate_openresponses(response_dict, "ResponseResource")

Each raises AssertionError naming the document, the schema, and where in the
instance the first violations are. Schema names are the keys of
`components/schemas`; `openai_schema_names()` and `openresponses_schema_names()`
list them.

Spec-vs-package drift. `shared/specs/README.md` says the newest `openai` package
wins where the 2.3.0 document lags behind it. Neither document sets
`additionalProperties: false` on the response object, its output items, its
usage, or any stream event, so fields that only the newer package knows
(`input_tokens_details.cache_write_tokens`, `Response.moderation`, ...) already
pass. The remaining disagreements get one narrow tolerance each, with its
reason where it is defined:

- OpenAI `Response`: `user`, `safety_identifier`, `prompt_cache_key` and
  `usage` may be null (`_openai_response_identifiers_nullable`,
  `_openai_response_usage_nullable`);
- OpenAI `TextResponseFormatJsonSchema.description` may be null
  (`_openai_json_schema_format_description_nullable`);
- OpenAI `MCPToolCall.error` may be the package's error object, not only a
  string (`_openai_mcp_call_error_object`);
- OpenAI events the package has and 2.3.0 lacks (`response.shell_call_*`,
  `response.compaction.compacting`) are not schema-checked
  (`validate_openai_event`);
- Open Responses' echoed `text.format` of type `json_schema` may hold its
  schema object, not only null (`_openresponses_json_schema_format_holds_a_schema`);
- Open Responses calls `response.reasoning_text.*` `response.reasoning.*`
  (`_OPENRESPONSES_EVENT_ALIASES`).

Nothing else is loosened.

Loading: OpenAI's 2.5 MB YAML takes about 0.6 s with libyaml's CSafeLoader
(3.4 s with the pure-Python SafeLoader, the fallback when PyYAML has no
libyaml), so it is loaded once per process, on first use, and kept in memory;
a disk cache would save too little to be worth its invalidation.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance
from openai.types.responses import ResponseStreamEvent
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPECS_DIR = Path(__file__).resolve().parents[3] / "shared" / "specs"
OPENAI_SPEC = SPECS_DIR / "openai-openapi.yml"
OPENRESPONSES_SPEC = SPECS_DIR / "openresponses-openapi.json"

# Keywords whose values are data, not schemas: never rewrite inside them.
_DATA_KEYWORDS = frozenset({"example", "examples", "default", "enum", "const"})
_MAX_REPORTED_ERRORS = 5

Schema = dict[str, Any]


def _rewrite_nullable(node: Any) -> Any:
    """Turn OpenAPI 3.0's `nullable: true` into JSON Schema, recursively."""
    if isinstance(node, list):
        return [_rewrite_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: value if key in _DATA_KEYWORDS or key.startswith("x-") else _rewrite_nullable(value)
        for key, value in node.items()
    }
    if out.get("nullable") is True:
        del out["nullable"]
        return {"anyOf": [{"type": "null"}, out]}
    out.pop("nullable", None)
    return out


# --- Narrow tolerances, one function per disagreement ---------------------
# Each takes the `components/schemas` mapping and edits it in place. Keep the
# reason next to each one; a new tolerance needs a test in tests/test_support.py.


def _openai_response_identifiers_nullable(schemas: dict[str, Schema]) -> None:
    # `Response` takes `user`, `safety_identifier` and `prompt_cache_key` from
    # `ModelResponseProperties`, where they are plain strings (the schema is
    # shared with the request body). openai's `Response` type has them as
    # Optional[str], the document's own response examples show `"user": null`,
    # and Open Responses requires `safety_identifier` and `prompt_cache_key`
    # to be present, null allowed. So on the response object only, these
    # three also accept null; the request schemas are untouched.
    properties = dict(schemas["ModelResponseProperties"]["properties"])
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        properties[name] = {"anyOf": [{"type": "null"}, properties[name]]}
    schemas[_TOLERANT_MODEL_RESPONSE_PROPERTIES] = {**schemas["ModelResponseProperties"], "properties": properties}
    parts = schemas["Response"]["allOf"]
    assert parts[0] == {"$ref": "#/components/schemas/ModelResponseProperties"}, parts[0]
    parts[0] = {"$ref": f"#/components/schemas/{_TOLERANT_MODEL_RESPONSE_PROPERTIES}"}


def _openai_response_usage_nullable(schemas: dict[str, Schema]) -> None:
    # `Response.usage` is a plain `$ref: ResponseUsage`, yet usage is unknown
    # until the response ends: the document's own `response.created` and
    # `response.in_progress` examples send `"usage": null`, openai's type is
    # Optional[ResponseUsage], and Open Responses requires the key, null allowed.
    own = schemas["Response"]["allOf"][2]["properties"]
    assert own["usage"] == {"$ref": "#/components/schemas/ResponseUsage"}, own["usage"]
    own["usage"] = {"anyOf": [{"type": "null"}, own["usage"]]}


def _openai_mcp_call_error_object(schemas: dict[str, Schema]) -> None:
    # `MCPToolCall.error` is `string | null` in 2.3.0, but openai's `McpCall.error`
    # (openai/types/responses/mcp_tool_call_error.py) is an object discriminated by
    # `type`: `mcp_protocol_error` and `http_error` {code, message}, or
    # `mcp_tool_execution_error` {content}. The package wins: the error also
    # accepts those three objects; the string stays allowed.
    error = schemas["MCPToolCall"]["properties"]["error"]
    assert error["anyOf"][0]["type"] == "string", error
    coded = {"type": "object", "required": ["type", "code", "message"]}
    coded["properties"] = {"code": {"type": "integer"}, "message": {"type": "string"}}
    objects = [
        {**coded, "properties": {**coded["properties"], "type": {"enum": ["mcp_protocol_error", "http_error"]}}},
        {
            "type": "object",
            "required": ["type", "content"],
            "properties": {"type": {"enum": ["mcp_tool_execution_error"]}},
        },
    ]
    error["anyOf"] = [*error["anyOf"], *objects]


def _openai_json_schema_format_description_nullable(schemas: dict[str, Schema]) -> None:
    # `TextResponseFormatJsonSchema.description` is a plain string in 2.3.0, but
    # openai's `ResponseFormatTextJSONSchemaConfig.description` is Optional[str],
    # and Open Responses requires the key on the echoed format, null allowed:
    # a response echoes `description: null` for a format sent without one.
    properties = schemas["TextResponseFormatJsonSchema"]["properties"]
    assert properties["description"]["type"] == "string", properties["description"]
    properties["description"] = {"anyOf": [{"type": "null"}, properties["description"]]}


def _openresponses_json_schema_format_holds_a_schema(schemas: dict[str, Schema]) -> None:
    # Open Responses' `JsonSchemaResponseFormat` (the `text.format` a response
    # echoes) declares `schema: anyOf [{type: null}]`, so no response made with a
    # JSON schema could pass, while its own request side
    # (`JsonSchemaResponseFormatParam`) and openai's `ResponseFormatTextJSONSchemaConfig`
    # carry the schema as an object. The echo may hold that object too.
    schema = schemas["JsonSchemaResponseFormat"]["properties"]["schema"]
    assert schema == {"anyOf": [{"type": "null"}]}, schema
    schema["anyOf"] = [{"type": "null"}, {"type": "object"}]


_TOLERANT_MODEL_RESPONSE_PROPERTIES = "ModelResponseProperties.response"
_OPENAI_PATCHES: tuple[Callable[[dict[str, Schema]], None], ...] = (
    _openai_response_identifiers_nullable,
    _openai_response_usage_nullable,
    _openai_mcp_call_error_object,
    _openai_json_schema_format_description_nullable,
)
_OPENRESPONSES_PATCHES: tuple[Callable[[dict[str, Schema]], None], ...] = (
    _openresponses_json_schema_format_holds_a_schema,
)

# Open Responses names reasoning text events `response.reasoning.delta` /
# `.done`; openai's package (which wins) names them `response.reasoning_text.*`
# with the same fields. Such events are checked against Open Responses'
# schema under its own name for the type.
_OPENRESPONSES_EVENT_ALIASES = {
    "response.reasoning_text.delta": "response.reasoning.delta",
    "response.reasoning_text.done": "response.reasoning.done",
}


def _load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as f:
        return yaml.load(f, Loader=loader)


def _load_json(path: Path) -> Any:
    with path.open("rb") as f:
        return json.load(f)


class SpecDocument:
    """One OpenAPI 3.1 document, with a validator per schema name."""

    def __init__(self, label: str, document: dict[str, Any], patches: tuple[Callable[[dict[str, Schema]], None], ...]):
        document = _rewrite_nullable(document)
        for patch in patches:
            patch(document["components"]["schemas"])
        self.label = label
        self.document = document
        self.uri = f"urn:parley-spec:{label}"
        resource = DRAFT202012.create_resource(document)
        self._registry: Registry[Any] = Registry().with_resource(self.uri, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    @functools.cached_property
    def event_schemas(self) -> dict[str, str]:
        """Stream event type -> schema name, from the document's event union."""
        union = self.schemas.get("ResponseStreamEvent", {}).get("anyOf")
        if union is None:  # Open Responses: only the path's text/event-stream oneOf lists them
            content = self.document["paths"]["/responses"]["post"]["responses"]["200"]["content"]
            union = content["text/event-stream"]["schema"]["oneOf"]
        names = [ref["$ref"].rsplit("/", 1)[1] for ref in union]
        return {self.schemas[name]["properties"]["type"]["enum"][0]: name for name in names}

    @property
    def schemas(self) -> dict[str, Schema]:
        return self.document["components"]["schemas"]  # type: ignore[no-any-return]

    def validator(self, schema_name: str) -> Draft202012Validator:
        if schema_name not in self._validators:
            if schema_name not in self.schemas:
                raise KeyError(f"{self.label}: no schema named {schema_name!r} in components/schemas")
            ref = {"$ref": f"{self.uri}#/components/schemas/{schema_name}"}
            self._validators[schema_name] = Draft202012Validator(ref, registry=self._registry)
        return self._validators[schema_name]

    def errors(self, instance: Any, schema_name: str) -> list[ValidationError]:
        return sorted(self.validator(schema_name).iter_errors(instance), key=relevance, reverse=True)

    def validate(self, instance: Any, schema_name: str) -> None:
        errors = self.errors(instance, schema_name)
        if errors:
            lines = [f"{self.label}: instance does not match schema {schema_name!r}:"]
            lines += [f"  - {_describe(error)}" for error in errors[:_MAX_REPORTED_ERRORS]]
            if len(errors) > _MAX_REPORTED_ERRORS:
                lines.append(f"  ... and {len(errors) - _MAX_REPORTED_ERRORS} more")
            raise AssertionError("\n".join(lines))


def _describe(error: ValidationError) -> str:
    text = f"at {error.json_path}: {_shorten(error.message)}"
    closest = _closest_branch(error)
    if closest is not None:
        text += f" (closest branch: at {closest.json_path}: {_shorten(closest.message)})"
    return text


def _closest_branch(error: ValidationError) -> ValidationError | None:
    """For a failed anyOf/oneOf, the most telling error of the branch that came closest.

    Branches whose `type` property rejected the instance's type (the
    discriminator) are skipped; of the rest, the one with the fewest errors wins.
    """
    if not error.context:
        return None
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    candidates = [
        errors
        for errors in branches.values()
        if not any(list(e.relative_path) == ["type"] and e.validator in ("enum", "const") for e in errors)
    ] or list(branches.values())
    best = min(candidates, key=len)[0]
    return _closest_branch(best) or best


def _shorten(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


@functools.cache
def openai_document() -> SpecDocument:
    return SpecDocument("openai-openapi.yml", _load_yaml(OPENAI_SPEC), _OPENAI_PATCHES)


@functools.cache
def openresponses_document() -> SpecDocument:
    return SpecDocument("openresponses-openapi.json", _load_json(OPENRESPONSES_SPEC), _OPENRESPONSES_PATCHES)


def validate_openai(instance: Any, schema_name: str) -> None:
    """Assert that `instance` (plain JSON data) matches OpenAI's `components/schemas/<schema_name>`."""
    openai_document().validate(instance, schema_name)


def validate_openresponses(instance: Any, schema_name: str) -> None:
    """Assert that `instance` (plain JSON data) matches Open Responses' `components/schemas/<schema_name>`."""
    openresponses_document().validate(instance, schema_name)


def validate_openai_event(event: dict[str, Any]) -> None:
    """Assert that a Responses stream event matches OpenAI's schema for its `type`.

    Event types that the installed openai package defines but the 2.3.0
    document does not (for example `response.shell_call_command.delta`) pass
    unchecked: the newer package wins. Any other unknown type fails.
    """
    document = openai_document()
    event_type = str(event.get("type"))
    name = document.event_schemas.get(event_type)
    if name is None:
        if event_type in _package_event_types():
            return
        raise AssertionError(f"{document.label}: unknown stream event type {event_type!r}")
    document.validate(event, name)


def validate_openresponses_event(event: dict[str, Any]) -> None:
    """Assert that a Responses stream event matches Open Responses' schema for its `type`.

    Open Responses defines a subset of the events (no MCP, web search, file
    search, ...): any other type fails. `response.reasoning_text.*` is checked
    as Open Responses' `response.reasoning.*` (see `_OPENRESPONSES_EVENT_ALIASES`).
    """
    document = openresponses_document()
    event_type = str(event.get("type"))
    alias = _OPENRESPONSES_EVENT_ALIASES.get(event_type)
    if alias is not None:
        event, event_type = {**event, "type": alias}, alias
    name = document.event_schemas.get(event_type)
    if name is None:
        raise AssertionError(
            f"{document.label}: Open Responses defines no stream event {event_type!r} "
            "(validate such streams with openresponses_spec=False)"
        )
    document.validate(event, name)


@functools.cache
def _package_event_types() -> frozenset[str]:
    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], discriminator]
    return frozenset(typing.get_args(model.model_fields["type"].annotation)[0] for model in typing.get_args(union))


def openai_schema_names() -> list[str]:
    return sorted(openai_document().schemas)


def openresponses_schema_names() -> list[str]:
    return sorted(openresponses_document().schemas)
