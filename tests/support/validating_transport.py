"""An httpx transport for the openai client that validates every Responses stream it carries.

The SDK hides the SSE frames; this transport keeps a copy of each
`text/event-stream` body from `/responses` and runs the stream validator on
it when the stream has been read to its end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx

from tests.support.stream_validator import ValidatedStream, validate_response_stream


class _Tee(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, done: Callable[[bytes], None]) -> None:
        self._inner = inner
        self._done = done
        self._chunks: list[bytes] = []
        self._finished = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._chunks.append(chunk)
            yield chunk
        self._finished = True

    def close(self) -> None:
        self._inner.close()
        body = b"".join(self._chunks)
        # A stream the client abandoned is not the server's to answer for, unless it ended anyway.
        if self._finished or body.rstrip().endswith(b"data: [DONE]"):
            self._done(body)


class ValidatingTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.validated: list[ValidatedStream] = []
        self.failures: list[AssertionError] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        content_type = response.headers.get("content-type", "")
        if request.url.path.endswith("/responses") and content_type.startswith("text/event-stream"):
            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = _Tee(response.stream, self._validate)
        return response

    def _validate(self, body: bytes) -> None:
        # Open Responses defines no MCP items or events; OpenAI's document and types still apply.
        uses_mcp = b'"type":"mcp_' in body or b'"type": "mcp_' in body
        try:
            self.validated.append(validate_response_stream(body, openresponses_spec=not uses_mcp))
        except AssertionError as exc:
            self.failures.append(exc)

    def close(self) -> None:
        self._inner.close()
