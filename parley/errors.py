"""Parley's exceptions, each of which knows the OpenAI error it becomes.

    ParleyError                      500 server_error
    ├── InvalidRequestError          400 invalid_request_error
    │   └── ContextLengthExceededError   code context_length_exceeded
    ├── NotFoundError                404 invalid_request_error
    │   └── ModelNotFoundError           code model_not_found
    └── UpstreamError                a provider failed
        ├── UpstreamUnavailableError     502: unreachable, or answered 5xx
        ├── UpstreamTimeoutError         504: did not answer in time
        ├── UpstreamProtocolError        502: answered something that is not the protocol
        └── UpstreamStatusError          an upstream 4xx, status and message kept

`inference/` raises the Upstream* errors, translated once from httpx's and
llama.cpp's own; `api/errors.py` turns any ParleyError into the wire body.
"""

from __future__ import annotations


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


class NotFoundError(ParleyError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")


class UpstreamError(ParleyError):
    """A provider could not produce a completion."""

    status_code = 502
    error_type = "upstream_error"


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
