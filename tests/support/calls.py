"""What an API call that must fail gives openai-python: the exception, or its status and error object."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest


def status_error(call: Callable[[], Any]) -> openai.APIStatusError:
    """The error `call` raises; fails the test if it raises none."""
    with pytest.raises(openai.APIStatusError) as raised:
        call()
    return raised.value


def error_of(call: Callable[[], Any]) -> tuple[int, dict[str, Any]]:
    """The status and the error object (openai-python's `body`: what OpenAI's `{"error": ...}` holds)."""
    error = status_error(call)
    assert isinstance(error.body, dict)
    return error.status_code, error.body


def error_object(exc: openai.APIStatusError) -> dict[str, Any]:
    """The `error` of a failed call's body as sent, checked to have OpenAI's four fields and no other."""
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]
