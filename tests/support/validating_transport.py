"""An httpx transport for the openai client that validates every Responses stream it carries.

The SDK hides the SSE frames; this transport keeps a copy of each
`text/event-stream` body from `/responses` and runs the stream validator on
it when the stream has been read to its end. `WebSocketStreams` does the same
for the messages of a WebSocket on `/v1/responses` (WebSocket mode): it is
fed each message received, and validates each response's events once its
terminal event has come.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from tests.support.stream_validator import (
    TERMINAL_STATUS,
    ValidatedStream,
    validate_response_stream,
    validate_websocket_stream,
)


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


# Tool, item and event type prefixes that Open Responses does not define.
_BEYOND_OPEN_RESPONSES = (
    b"mcp",
    b"namespace",
    b"custom",
    b"shell",
    b"local_shell",
    b"apply_patch",
    b"web_search",
    b"file_search",
    b"response.custom_tool_call",
    b"response.web_search",
    b"response.file_search",
    # Open Responses has the compaction item, but not its `response.compaction.compacting` event.
    b"response.compaction",
)


class StreamChecks:
    """What every validating transport keeps: the streams it validated and the failures found."""

    def __init__(self) -> None:
        self.validated: list[ValidatedStream] = []
        self.failures: list[AssertionError] = []

    def _validate(self, body: bytes) -> None:
        self._check(body, lambda plain: validate_response_stream(body, openresponses_spec=plain))

    def _check(self, body: bytes, validate: Callable[[bool], ValidatedStream]) -> None:
        # Open Responses defines function tools only: no MCP, web or file search, namespaces, custom, shell or patch
        # tools, nor their items and events. OpenAI's document and types still apply to those streams.
        compact = body.replace(b'": "', b'":"')
        beyond = any(b'"type":"' + kind in compact for kind in _BEYOND_OPEN_RESPONSES)
        try:
            self.validated.append(validate(not beyond))
        except AssertionError as exc:
            self.failures.append(exc)


class WebSocketStreams(StreamChecks):
    """Validates the responses that one WebSocket in WebSocket mode carries, from the messages it received.

    A response's stream is the messages from the first that is not an error refusing a message (an `error`
    with an `error` object, outside any response) to its terminal event; one cut short by a close is not
    validated, as an HTTP stream the client abandoned is not.
    """

    def __init__(self) -> None:
        super().__init__()
        self._current: list[bytes] | None = None

    def feed(self, message: bytes | str) -> dict[str, Any]:
        """Takes one message received; returns it parsed."""
        raw = message.encode() if isinstance(message, str) else message
        event = json.loads(raw)
        if self._current is None and event.get("type") == "error" and "error" in event:
            return event  # a message refused: no response stream
        if self._current is None:
            self._current = []
        self._current.append(raw)
        if event.get("type") in TERMINAL_STATUS:
            messages, self._current = self._current, None
            self._check(
                b"\n".join(messages), lambda plain: validate_websocket_stream(messages, openresponses_spec=plain)
            )
        return event


class ValidatingTransport(StreamChecks, httpx.BaseTransport):
    def __init__(self) -> None:
        super().__init__()
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        content_type = response.headers.get("content-type", "")
        if request.url.path.endswith("/responses") and content_type.startswith("text/event-stream"):
            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = _Tee(response.stream, self._validate)
        return response

    def close(self) -> None:
        self._inner.close()


class _AsyncTee(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, done: Callable[[bytes], None]) -> None:
        self._inner = inner
        self._done = done
        self._chunks: list[bytes] = []
        self._finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._chunks.append(chunk)
            yield chunk
        self._finished = True

    async def aclose(self) -> None:
        await self._inner.aclose()
        body = b"".join(self._chunks)
        if self._finished or body.rstrip().endswith(b"data: [DONE]"):
            self._done(body)


class AsyncValidatingTransport(StreamChecks, httpx.AsyncBaseTransport):
    """`ValidatingTransport` for the async clients (`openai.AsyncOpenAI`, and the SDKs built on it)."""

    def __init__(self) -> None:
        super().__init__()
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        content_type = response.headers.get("content-type", "")
        if request.url.path.endswith("/responses") and content_type.startswith("text/event-stream"):
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _AsyncTee(response.stream, self._validate)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
