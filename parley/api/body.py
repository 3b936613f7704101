"""Request bodies: JSON objects, nested at most `MAX_DEPTH` levels, validated into Parley's models.

A body arrives here only as `Content-Type: application/json` and within the
size limit (`parley.api.guard` refuses any other, for every route). FastAPI's
own body handling answers a bad body with a 422; here it is a 400 in OpenAI's
shape, naming the field. `documented` registers the model so that
/openapi.json still shows the body, and `install_body_schemas` documents the
errors every route may answer with.

Nesting is bounded at the door, once for every route: orjson reads 1,024
levels but writes only 254, so a body nested deeper than that would be taken,
stored, and then fail every listing that includes it. `MAX_DEPTH` (64) leaves
room for the levels a stored object adds around what came in.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError

from parley.api.auth import OPEN_PATHS
from parley.api.errors import validation_error
from parley.errors import InvalidRequestError
from parley.limits import MAX_DEPTH

Body = TypeVar("Body", bound=BaseModel)

_DOCUMENTED: dict[str, type[BaseModel]] = {}


# How deep a body may nest (parley.limits): an object or an array inside MAX_DEPTH others is a 400 that names it.
# orjson indents each level by two spaces: a line indented this far is MAX_DEPTH levels in.
_DEEP_LINE = b"\n" + b"  " * MAX_DEPTH
_ALL_BUT_OPENINGS = bytes(byte for byte in range(256) if byte not in b"[{")


class InvalidBodyError(InvalidRequestError):
    def __init__(self, body: dict[str, Any]) -> None:
        error = body["error"]
        super().__init__(error["message"], param=error["param"], code=error["code"])


async def read_body(request: Request, model: type[Body], *, empty_ok: bool = False) -> Body:
    """The body as `model`; `empty_ok` lets an empty body stand for `{}`."""
    return validate_body(parse_body(await request.body(), empty_ok=empty_ok), model)


def validate_body(data: dict[str, Any], model: type[Body]) -> Body:
    """`data`, a parsed body (or a WebSocket message's fields), as `model`: a 400 naming the field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidBodyError(validation_error([dict(error) for error in exc.errors()])) from exc


def parse_body(raw: bytes, *, empty_ok: bool = False) -> dict[str, Any]:
    """The JSON object `raw` holds: a 400 for anything else, or for one nested deeper than `MAX_DEPTH`, or
    holding a NUL character."""
    try:
        data = orjson.loads(raw) if raw.strip() or not empty_ok else {}
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # past orjson's own 1,024 levels: no place to name
            raise InvalidRequestError(
                f"The JSON body is nested more than {MAX_DEPTH} levels deep ({str(exc).split(': ', 1)[-1]}).",
                code="invalid_value",
            ) from exc
        data = None
    if not isinstance(data, dict):
        raise InvalidBodyError(validation_error([{"type": "json_invalid", "loc": ("body",), "msg": ""}]))
    # Nesting deeper than MAX_DEPTH takes more opening brackets than that (counted in one pass, in C):
    # most bodies are never looked at again.
    if len(raw.translate(None, _ALL_BUT_OPENINGS)) > MAX_DEPTH:
        _refuse_deep(data)
    if b"\\u0000" in raw:  # JSON can carry a NUL only escaped, so most bodies skip the walk
        _refuse_nul(data, "")
    return data


def _refuse_deep(data: dict[str, Any]) -> None:
    """A 400 naming the first object or array nested deeper than MAX_DEPTH.

    A walk in Python over every value costs about as much as parsing the body
    did. orjson writes it again instead, indented, in C, for about a third of
    a walk's cost (measured on a 50 kB body like Codex's first request, and on
    an 850 kB one): each value sits on a line of its own, indented two spaces a
    level, and nothing inside a string starts a line (JSON escapes newlines),
    so a body nested past MAX_DEPTH has a line indented that far, which
    `bytes.find` finds in C. Only then does a walk look for its place (a
    scalar exactly MAX_DEPTH levels in has such a line too, and passes). orjson
    refuses to write past 254 levels, far too many here as well.
    """
    try:
        indented = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    except orjson.JSONEncodeError:
        indented = _DEEP_LINE
    if _DEEP_LINE not in indented:
        return
    place = _too_deep(data, "", 1)
    if place is not None:
        raise InvalidRequestError(
            f"Invalid value for '{place}': nested more than {MAX_DEPTH} levels deep; a request's JSON may nest "
            f"objects and arrays at most {MAX_DEPTH} levels.",
            param=place,
            code="invalid_value",
        )


def _too_deep(value: Any, path: str, depth: int) -> str | None:
    """The path of the first object or array below `value` (itself `depth` levels in) that is past MAX_DEPTH."""
    if depth > MAX_DEPTH:
        return path
    if isinstance(value, dict):
        children = ((f"{path}.{key}" if path else key, element) for key, element in value.items())
    elif isinstance(value, list):
        children = ((f"{path}[{index}]", element) for index, element in enumerate(value))
    else:
        return None
    for child_path, child in children:
        if isinstance(child, (dict, list)):
            found = _too_deep(child, child_path, depth + 1)
            if found is not None:
                return found
    return None


def _refuse_nul(value: Any, path: str) -> None:
    """A 400 naming the first string, or key, with a NUL character in it.

    PostgreSQL's JSONB cannot hold one, and SQLite's JSON can: refusing it for
    every request keeps the two backends alike, and no request reaches the
    database with one.
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequestError(
                f"Invalid value for '{path}': strings may not contain the NUL character (\\u0000).",
                param=path,
                code="invalid_value",
            )
    elif isinstance(value, list):
        for index, element in enumerate(value):
            _refuse_nul(element, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, element in value.items():
            key_path = f"{path}.{key}" if path else key
            _refuse_nul(key, key_path)
            _refuse_nul(element, key_path)


def documented(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`."""
    _DOCUMENTED[model.__name__] = model
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# The error body, as /openapi.json documents it.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}

# The errors any route may answer with, and those of a route that takes a body.
_ERRORS = {
    "400": "Invalid request: a parameter named in `param`, or the Host header",
    "401": "No API key, or one this server does not take",
    "404": "No such object, route or model",
}
_TOO_LARGE = "The body is larger than this operation takes (server.max_body_bytes for JSON)"
_FROM_A_PAGE = "A form sent by a web page whose origin server.cors_origins does not list"


def _body_errors(operation: dict[str, Any]) -> dict[str, str]:
    """The errors of an operation's body: too large, of another media type, a form from a web page."""
    media_types = list(operation.get("requestBody", {}).get("content", {}))
    if not media_types:
        return {}
    errors = {"413": _TOO_LARGE, "415": f"The body is not sent as Content-Type: {' or '.join(media_types)}"}
    if "multipart/form-data" in media_types:
        errors["403"] = _FROM_A_PAGE
    return errors


def install_body_schemas(app: FastAPI) -> None:
    """Adds the documented body models, and the error responses, to the app's OpenAPI description."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path, operations in document.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                # Parley answers a bad request with a 400 in OpenAI's shape, never FastAPI's 422.
                responses.pop("422", None)
                errors = {**_ERRORS, **_body_errors(operation)}
                if path in OPEN_PATHS:
                    errors.pop("401")
                for status, description in errors.items():
                    responses.setdefault(status, {"description": description, **error})
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas["Error"] = ERROR_SCHEMA
        for name, model in _DOCUMENTED.items():
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
