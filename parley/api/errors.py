"""The OpenAI error body, and the handlers that put every failure into it.

Every error leaves as `{"error": {"message", "type", "param", "code"}}`:
Parley's own exceptions with their status (and an upstream's `Retry-After`),
request validation as a 400 that names the field, unknown routes as a 404,
and anything unexpected as a 500 whose body says nothing of the traceback.
A client that leaves before its body is read is logged in one line.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from parley.api.http import JSONResponse
from parley.errors import ParleyError, UpstreamError, invalid_parameter, most_specific

log = logging.getLogger(__name__)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def body_for(exc: ParleyError) -> dict[str, Any]:
    return error_body(exc.message, exc.error_type, exc.param, exc.code)


def validation_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    first = errors[0] if errors else {"type": "value_error", "loc": (), "msg": "Invalid request."}
    # Only the body itself (`loc` () from a model, ("body",) from FastAPI) is "not JSON"; a field of the
    # wrong type inside it (`"text": {"format": []}`) is a 400 naming that field.
    if first["type"] in ("json_invalid", "model_attributes_type") and tuple(first["loc"]) in ((), ("body",)):
        return error_body(
            "We could not parse the JSON body of your request. The body must be a JSON object "
            "sent with Content-Type: application/json."
        )
    return body_for(invalid_parameter(most_specific(errors)))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ParleyError)
    async def _parley_error(request: Request, exc: ParleyError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s %s failed: %s", request.method, request.url.path, exc.message)
        # An upstream's Retry-After (a 429's, mostly) is the client's to honour: the OpenAI SDKs wait for it.
        headers = exc.retry_headers if isinstance(exc, UpstreamError) else None
        return JSONResponse(body_for(exc), status_code=exc.status_code, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Clients give up: nothing went wrong here, and nobody reads this answer.
        log.info("%s %s: the client left before its request was read", request.method, request.url.path)
        return JSONResponse(error_body("The client closed the connection before its request was read."), 400)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(list(exc.errors())), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s raised", request.method, request.url.path)
        return JSONResponse(
            error_body("The server had an error while processing your request.", type="server_error"),
            status_code=500,
        )
