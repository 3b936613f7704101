"""Checkers shared by the test suite.

- `stream_validator`: validates a `/v1/responses` SSE stream exactly as sent
  (`validate_response_stream`, `collect_stream`, `acollect_stream`).
- `spec`: validates JSON against the schemas of OpenAI's OpenAPI document and
  of Open Responses (`validate_openai`, `validate_openresponses`).
"""

from tests.support.spec import (
    validate_openai,
    validate_openai_event,
    validate_openresponses,
    validate_openresponses_event,
)
from tests.support.stream_validator import (
    SSEFrame,
    ValidatedStream,
    acollect_stream,
    collect_stream,
    parse_sse,
    validate_response_stream,
)

__all__ = [
    "SSEFrame",
    "ValidatedStream",
    "acollect_stream",
    "collect_stream",
    "parse_sse",
    "validate_openai",
    "validate_openai_event",
    "validate_openresponses",
    "validate_openresponses_event",
    "validate_response_stream",
]
