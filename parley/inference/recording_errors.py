"""Recorded failures: a call that another recorder wrote down as an exception, replayed as that error.

Recorders of the shared layout write a call that raised as

    "response": {
      "body": null,                      # or the chunks streamed before the failure
      "is_streaming": false,             # true when it failed while streaming
      "is_exception": true,
      "exception_data": {                # how the recorder serializes the exception
        "category": "provider_sdk",      # or "llama_stack", "builtin", "unknown"
        "provider": "openai",
        "type": "BadRequestError",
        "message": "Error code: 400 - ...",
        "status_code": 400,              # provider_sdk and llama_stack only
        "body": {"message": ..., "type": ..., "param": ..., "code": ...}
      },
      "exception_message": "Error code: 400 - ..."   # older files carry only this
    }

`body` is what the OpenAI SDK keeps of the upstream's answer: the `error`
object of a JSON body, the text of any other, or null. Older files have no
`exception_data`: their status and error are read back from the SDK's message
(`Error code: 400 - {'error': {...}}`, or `Error code: 400 - <message>`).

`RecordedFailure.error` builds the error the OpenAI-compatible provider raises
for the same answer live (`parley.errors.refusal_of`, which the live path calls too, and its transport
translation), so a replayed failure reaches the client exactly as a live one:

    a status of 500 or more        UpstreamUnavailableError (502)
    any other status               UpstreamStatusError, the status, message, type, param and code kept
    no status, a timeout           UpstreamTimeoutError (504)
    no status, a connection error  UpstreamUnavailableError (502)
    no status, after some chunks   UpstreamError "failed mid-stream" (502)
    no status, anything else       UpstreamError (502), naming the recorded exception
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from parley.errors import (
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    refusal_of,
)

# The OpenAI SDK's message for a status error: "Error code: 400" and, when the body had one, " - <rest>".
_SDK_MESSAGE = re.compile(r"^Error code: (\d{3})(?: - (.*))?$", re.DOTALL)


class RecordedFailureError(ValueError):
    """The failure a file records cannot be read; the message says what is wrong."""


@dataclass(slots=True, frozen=True)
class RecordedFailure:
    """What a recording says about the exception its call raised."""

    exception_type: str | None
    message: str | None  # the upstream's own message when known, else the recorder's text
    status_code: int | None
    error_type: str | None = None
    param: str | None = None
    code: str | None = None
    after_chunks: bool = False  # the call failed while streaming, after the recorded chunks

    def error(self, provider: str, base_url: str | None = None) -> UpstreamError:
        """The error the provider named `provider` raises live for this failure."""
        where = f"Provider '{provider}'" + (f" ({base_url})" if base_url else "")
        if self.status_code is not None:
            return refusal_of(provider, self.status_code, self.message, self.error_type, self.param, self.code)
        kind = (self.exception_type or "").lower()
        if "timeout" in kind or "timedout" in kind:
            return UpstreamTimeoutError(f"{where} did not answer in time.")
        if "connect" in kind:
            return UpstreamUnavailableError(f"{where} is unreachable: {self.exception_type}")
        if self.after_chunks:
            return UpstreamError(
                f"Provider '{provider}' failed mid-stream: {self.message or self.exception_type or 'no message'}",
                code="upstream_error",
            )
        named = ": ".join(part for part in (self.exception_type, self.message) if part) or "no message"
        return UpstreamError(f"Provider '{provider}' failed: {named}", code="upstream_error")

    def describe(self) -> str:
        """One line for `parley recordings show` and `list`."""
        what = self.exception_type or "an exception"
        status = f", status {self.status_code}" if self.status_code is not None else ""
        code = f" ({self.code})" if self.code else ""
        return f"{what}{status}{code}: {self.message or 'no message'}"


def recorded_failure(response: dict[str, Any], after_chunks: bool) -> RecordedFailure:
    """The failure in a recording's `response`, whose `is_exception` is true.

    Raises RecordedFailureError when `exception_data` or `exception_message` is not of the
    recorder's shapes. A file that says nothing of the exception is a failure all the same.
    """
    data = response.get("exception_data")
    text = response.get("exception_message")
    if data is not None and not isinstance(data, dict):
        raise RecordedFailureError("'response.exception_data' is not an object")
    if text is not None and not isinstance(text, str):
        raise RecordedFailureError("'response.exception_message' is not a string")
    data = data or {}
    exception_type = data.get("type")
    if exception_type is not None and not isinstance(exception_type, str):
        raise RecordedFailureError("'response.exception_data.type' is not a string")
    message = data.get("message")
    message = message if isinstance(message, str) and message else text
    status = data.get("status_code")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599):
        raise RecordedFailureError("'response.exception_data.status_code' is not an HTTP status")
    body: Any = data.get("body")

    # The SDK's own message says the status, and after it what the body said, when nothing else does.
    sdk = _SDK_MESSAGE.match(message.strip()) if message else None
    if sdk is not None:
        status = status if status is not None else int(sdk.group(1))
        rest = sdk.group(2)
        message = None
        if body is None and rest:
            body = _parsed(rest)
    upstream_message, error_type, param, code = _error_fields(body)
    return RecordedFailure(
        exception_type=exception_type,
        message=upstream_message or message,
        status_code=status,
        error_type=error_type,
        param=param,
        code=code,
        after_chunks=after_chunks,
    )


def _parsed(text: str) -> Any:
    """The body in an SDK message: a Python or JSON rendering of a dict, else the text itself."""
    text = text.strip()
    if text.startswith("{"):
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(value, dict):
                return value
    return text


def _error_fields(body: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """Message, type, param and code from the body the SDK kept, as a live answer's are read."""
    if isinstance(body, str):
        return (body.strip()[:500] or None, None, None, None)
    if not isinstance(body, dict):
        return (None, None, None, None)
    error = body.get("error", body)  # the `error` object, or the whole body the SDK kept
    if isinstance(error, str):
        return (error, None, None, None)
    if not isinstance(error, dict):
        return (None, None, None, None)
    message = _string(error.get("message"))
    if message is None and isinstance(body.get("detail"), str):
        return (body["detail"], None, None, None)  # a FastAPI-style body
    return (message, _string(error.get("type")), _string(error.get("param")), _string(error.get("code")))


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None
