"""Request bodies: read as JSON whatever the Content-Type, validated into Parley's models.

FastAPI's own body handling refuses a JSON body sent without
`Content-Type: application/json` and answers 422; OpenAI's clients and curl
users expect a body that parses to be read, and a 400 naming the field.
`documented` registers the model so that /openapi.json still shows the body.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError

from parley.api.errors import validation_error
from parley.errors import InvalidRequestError

Body = TypeVar("Body", bound=BaseModel)

_DOCUMENTED: dict[str, type[BaseModel]] = {}


class InvalidBodyError(InvalidRequestError):
    def __init__(self, body: dict[str, Any]) -> None:
        error = body["error"]
        super().__init__(error["message"], param=error["param"], code=error["code"])


async def read_body(request: Request, model: type[Body], *, empty_ok: bool = False) -> Body:
    """The body as `model`; `empty_ok` lets an empty body stand for `{}`."""
    raw = await request.body()
    try:
        data = orjson.loads(raw) if raw.strip() or not empty_ok else {}
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise InvalidBodyError(validation_error([{"type": "json_invalid", "loc": ("body",), "msg": ""}]))
    if b"\\u0000" in raw:  # JSON can carry a NUL only escaped, so most bodies skip the walk
        _refuse_nul(data, "")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidBodyError(validation_error([dict(error) for error in exc.errors()])) from exc


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


def install_body_schemas(app: FastAPI) -> None:
    """Adds the documented body models to the app's OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        # Parley answers a bad request with a 400 in OpenAI's shape, never FastAPI's 422.
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for name, model in _DOCUMENTED.items():
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
