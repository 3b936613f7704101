"""An httpx transport for the openai client that validates every Responses stream it carries.

The SDK hides the SSE frames; this transport keeps a copy of each
`text/event-stream` body from `/responses` and runs the stream validator on
it when the stream has been read to its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

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
)


class _Validator:
    """What both transports keep: the streams they validated and the failures found."""

    def __init__(self) -> None:
        self.validated: list[ValidatedStream] = []
        self.failures: list[AssertionError] = []

    def _validate(self, body: bytes) -> None:
        # Open Responses defines function tools only: no MCP, web or file search, namespaces, custom, shell or patch
        # tools, nor their items and events. OpenAI's document and types still apply to those streams.
        compact = body.replace(b'": "', b'":"')
        beyond = any(b'"type":"' + kind in compact for kind in _BEYOND_OPEN_RESPONSES)
        try:
            self.validated.append(validate_response_stream(body, openresponses_spec=not beyond))
        except AssertionError as exc:
            self.failures.append(exc)


class ValidatingTransport(_Validator, httpx.BaseTransport):
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


class AsyncValidatingTransport(_Validator, httpx.AsyncBaseTransport):
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
