"""Parley's exceptions, each of which knows the OpenAI error it becomes.

    ParleyError                      500 server_error
    ├── InvalidRequestError          400 invalid_request_error
    │   └── ContextLengthExceededError   code context_length_exceeded
    ├── AuthenticationError          401 invalid_request_error (code invalid_api_key for a wrong key)
    ├── NotFoundError                404 invalid_request_error
    │   └── ModelNotFoundError           code model_not_found
    ├── FailedDependencyError        424 external_connector_error: a server the request's tools name failed
    └── UpstreamError                a provider failed (with its Retry-After, if it sent one)
        ├── UpstreamUnavailableError     502: unreachable, or answered 5xx
        ├── UpstreamTimeoutError         504: did not answer in time
        ├── UpstreamProtocolError        502: answered something that is not the protocol
        └── UpstreamStatusError          an upstream 4xx, status and message kept

`inference/` raises the Upstream* errors, translated once from httpx's and
llama.cpp's own; `api/errors.py` turns any ParleyError into the wire body.
"""

from __future__ import annotations

from typing import Any


class ParleyError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(ParleyError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class AuthenticationError(ParleyError):
    """A request without a key the server accepts (see parley.api.auth)."""

    status_code = 401
    error_type = "invalid_request_error"


class NotFoundError(ParleyError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")


class FailedDependencyError(ParleyError):
    """A server that the request's tools name failed it (an MCP server that would not list its tools), as
    OpenAI answers: 424, `external_connector_error`."""

    status_code = 424
    error_type = "external_connector_error"


class UpstreamError(ParleyError):
    """A provider could not produce a completion."""

    status_code = 502
    error_type = "upstream_error"
    # The provider's `Retry-After` and `retry-after-ms`, as it sent them, for the client: the OpenAI SDKs
    # wait that long before they try again.
    retry_headers: dict[str, str] | None = None


class UpstreamUnavailableError(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class UpstreamStatusError(UpstreamError):
    """The upstream refused the request; its status, message and code are passed on."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status_code = status_code
        self.error_type = error_type or "invalid_request_error"


def refusal_of(
    provider: str,
    status: int,
    message: str | None,
    error_type: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> UpstreamError:
    """The error for a provider's answer with an error status: a 5xx is this server's 502, naming the provider;
    any other keeps its status and the upstream's own fields. Live calls and replayed recordings alike."""
    if status >= 500:
        return UpstreamUnavailableError(f"Provider '{provider}' failed with status {status}: {message or 'no message'}")
    return UpstreamStatusError(
        message or f"Provider '{provider}' refused the request with status {status}.",
        status_code=status,
        error_type=error_type,
        param=param,
        code=code,
    )


def param_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic error location as a request parameter: `("messages", 0, "role")` -> `messages[0].role`."""
    path = ""
    for piece in loc:
        if piece in ("body", "query", "path") and not path:
            continue
        if isinstance(piece, int):
            path += f"[{piece}]"
        elif isinstance(piece, str) and _is_branch_name(piece):
            continue  # pydantic's name for a union branch, not a key of the request
        else:
            path += ("." if path else "") + str(piece)
    return path


_UNION_BRANCHES = {"str", "int", "float", "bool", "none"}


def _is_branch_name(piece: str) -> bool:
    # Request keys are snake_case; pydantic names union branches after their
    # types: `literal['a','b']`, `list[str]`, `function-after[...]`, `NamedToolChoice`.
    return piece in _UNION_BRANCHES or "[" in piece or piece[:1].isupper() or piece.startswith("function-")


def most_specific(errors: list[Any]) -> dict[str, Any]:
    """Of pydantic's errors for the first bad field, the one that reaches deepest.

    For a value that fits no branch of a union, pydantic reports every branch;
    the deepest error is the branch the caller meant (`{"type": "function"}`
    is a named choice missing its `function`, not a wrong string).
    """
    first = errors[0]
    same_field = [e for e in errors if e["loc"][:1] == first["loc"][:1]]
    return max(same_field, key=lambda e: len(e["loc"]))


def missing_parameter(param: str) -> InvalidRequestError:
    """OpenAI's 400 for a required parameter not sent, `param` its full path (`filters.filters[0].key`)."""
    return InvalidRequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def invalid_parameter(error: dict[str, Any], prefix: str = "") -> InvalidRequestError:
    """One pydantic error as a 400 whose param is `prefix` followed by the field's path."""
    sub = param_path(error["loc"])
    param = prefix + (sub if not prefix or not sub or sub.startswith("[") else "." + sub)
    if error["type"] == "missing":
        return missing_parameter(param)
    if error["type"] == "extra_forbidden":
        return InvalidRequestError(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")
    message = str(error["msg"]).removeprefix("Value error, ")
    return InvalidRequestError(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")
