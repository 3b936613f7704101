"""A provider for any OpenAI-compatible `/chat/completions` endpoint.

Every call streams from the upstream, even when the caller wants one object:
the non-streaming form is built on the stream (see `parley.inference.collect`).
httpx's exceptions are translated here, once, into Parley's Upstream* errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

import httpx
import orjson

from parley.config import OpenAIProviderConfig
from parley.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    refusal_of,
)
from parley.inference import http1
from parley.inference.base import ChunkStream, ModelInfo, Provider
from parley.inference.offline_tokens import count_offline
from parley.inference.types import ChatChunk, ChatRequest
from parley.inference.wire import chat_body, choice_chunk, completion_chunks, usage_from_wire

_MODEL_LIST_TTL = 60.0
# The headers of a refusal that say when to try again, as they are passed on.
_RETRY_HEADERS = {"retry-after": "Retry-After", "retry-after-ms": "retry-after-ms"}


class OpenAICompatibleProvider(Provider):
    def __init__(self, name: str, config: OpenAIProviderConfig) -> None:
        self.name = name
        self.config = config
        self._client: httpx.AsyncClient | None = None
        self._pool: http1.ConnectionPool | None = None
        base = httpx.URL(self.config.base_url)
        self._chat_target = (base.raw_path.rstrip(b"/") or b"") + b"/chat/completions"
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **self.config.headers}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"provider '{self.name}': header {name!r} holds a line break or NUL")
        self._stream_head = b"".join(b"%b: %b\r\n" % (n.encode(), v.encode()) for n, v in headers.items())
        self._models: list[ModelInfo] | None = None
        self._models_fetched_at = 0.0

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Content-Type": "application/json", **self.config.headers}
            if self.config.api_key is not None:
                headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
            timeout = self.config.timeout
            self._client = httpx.AsyncClient(
                base_url=self.config.base_url,
                headers=headers,
                timeout=httpx.Timeout(
                    connect=timeout.connect, read=timeout.read, write=timeout.write, pool=timeout.pool
                ),
                limits=httpx.Limits(
                    max_connections=self.config.max_connections,
                    max_keepalive_connections=self.config.max_connections,
                ),
            )
        return self._client

    async def start(self) -> None:
        _ = self.client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    def serves(self, model: str) -> bool:
        return self.config.models is None or model in self.config.models

    async def list_models(self) -> list[ModelInfo]:
        if self.config.models is not None:
            return [ModelInfo(id=m, owned_by=self.name) for m in self.config.models]
        if self._models is None or time.monotonic() - self._models_fetched_at > _MODEL_LIST_TTL:
            self._models = await self._discover_models()
            self._models_fetched_at = time.monotonic()
        return self._models

    async def _discover_models(self) -> list[ModelInfo]:
        with self._translate_errors():
            response = await self.client.get("/models")
            if response.status_code >= 400:
                raise self._status_error(response.status_code, response.content, response.headers.items())
        try:
            entries = orjson.loads(response.content)["data"]
            return [
                ModelInfo(id=e["id"], created=int(e.get("created") or 0), owned_by=e.get("owned_by") or self.name)
                for e in entries
            ]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamProtocolError(f"Provider '{self.name}' returned an unreadable model list.") from exc

    async def embed(self, model: str, inputs: Any, **options: Any) -> dict[str, Any]:
        body = {"model": model, "input": inputs, **{k: v for k, v in options.items() if v is not None}}
        with self._translate_errors():
            response = await self.client.post("/embeddings", content=orjson.dumps(body))
            if response.status_code >= 400:
                raise self._status_error(response.status_code, response.content, response.headers.items())
        try:
            result = orjson.loads(response.content)
            if not isinstance(result, dict) or not isinstance(result["data"], list):
                raise TypeError("not an embeddings list")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamProtocolError(f"Provider '{self.name}' returned unreadable embeddings.") from exc
        return result

    def context_window(self, model: str) -> int | None:
        return self.config.context_windows.get(model)

    async def count_tokens(self, request: ChatRequest) -> int:
        # Chat completions has no endpoint that counts: the model's tokenizer runs here, offline, in a thread
        # (a long input takes milliseconds, and a tokenizer's first use loads it).
        return await asyncio.to_thread(count_offline, request, self.config.tokenizers)

    def _body(self, request: ChatRequest) -> bytes:
        return orjson.dumps(chat_body(request))

    def stream_chat(self, request: ChatRequest) -> ChunkStream:
        # Each batch is every chunk that had arrived when the consumer asked: the pool hands
        # over whatever its connection has received since the last read, so a burst that
        # piles up while the consumer is busy leaves in one piece, with no reading task.
        return self._stream(request)

    @property
    def pool(self) -> http1.ConnectionPool:
        """The connections for streamed completions (see `parley.inference.http1`).

        The hot path does not go through httpx: its request and response models,
        and httpcore's chunk-at-a-time parsing in Python under it, cost more per
        token than everything else Parley does with it. Everything else (model
        listings, embeddings) goes through the httpx client above.
        """
        if self._pool is None:
            timeout = self.config.timeout
            self._pool = http1.ConnectionPool(
                self.config.base_url,
                max_connections=self.config.max_connections,
                timeouts=http1.Timeouts(
                    connect=timeout.connect, read=timeout.read, write=timeout.write, pool=timeout.pool
                ),
            )
        return self._pool

    async def _stream(self, request: ChatRequest) -> ChunkStream:
        with self._translate_errors():
            async with self.pool.stream(self._chat_target, self._stream_head, self._body(request)) as response:
                if response.status >= 400:
                    headers = ((key.decode("latin-1"), value.decode("latin-1")) for key, value in response.headers)
                    raise self._status_error(response.status, await response.aread(), headers)
                if response.header(b"content-type").startswith(b"application/json"):
                    # An upstream that ignored `stream: true`: its whole completion, as chunks.
                    yield self._completion_chunks(await response.aread())
                    return
                done = finished = spoke = False
                async for events in _sse_events(response.aiter_bytes()):
                    if done:
                        continue  # read to the end, so that the connection goes back to the pool
                    batch: list[ChatChunk] = []
                    try:
                        for data in events:
                            if data == b"[DONE]":
                                done = True
                                break
                            self._read_chunk(data, batch)
                            if not spoke and batch and batch[-1].has_output():
                                # The first token leaves before the rest of its burst is read.
                                spoke = True
                                finished = any(chunk.finish_reason for chunk in batch)
                                yield batch
                                batch = []
                    except UpstreamError:
                        if batch:
                            yield batch  # what came before the bad chunk still reaches the client
                        raise
                    if batch:
                        finished = finished or any(chunk.finish_reason for chunk in batch)
                        yield batch
                if not (done or finished):
                    raise UpstreamProtocolError(
                        f"Provider '{self.name}' ended its reply before the completion was finished."
                    )

    def _completion_chunks(self, content: bytes) -> list[ChatChunk]:
        try:
            return completion_chunks(orjson.loads(content))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(f"Provider '{self.name}' sent an unreadable completion.") from exc

    def _read_chunk(self, data: bytes, batch: list[ChatChunk]) -> None:
        """Appends the chunks of one `chat.completion.chunk` to `batch` (in place: this runs for every token)."""
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"Provider '{self.name}' sent a malformed stream chunk.") from exc
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(f"Provider '{self.name}' sent a malformed stream chunk.")
        if "error" in payload:
            error = payload["error"] if isinstance(payload["error"], dict) else {"message": str(payload["error"])}
            raise UpstreamError(
                f"Provider '{self.name}' failed mid-stream: {error.get('message') or error}", code="upstream_error"
            )
        start = len(batch)
        try:
            for choice in payload.get("choices") or ():
                batch.append(choice_chunk(choice))
            if payload.get("usage"):
                batch.append(ChatChunk(usage=usage_from_wire(payload["usage"])))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            del batch[start:]  # none of a malformed chunk
            raise UpstreamProtocolError(f"Provider '{self.name}' sent a malformed stream chunk.") from exc

    def _status_error(self, status: int, content: bytes, headers: Iterable[tuple[str, str]] = ()) -> UpstreamError:
        """The error for an upstream's refusal: its status (a 5xx is a 502), its error's fields, and the
        `Retry-After` and `retry-after-ms` it sent, which the client is told in turn."""
        error = refusal_of(self.name, status, *_upstream_error_fields(content))
        retry = {name: value for key, value in headers if (name := _RETRY_HEADERS.get(key.lower())) and value.strip()}
        if retry:
            error.retry_headers = retry
        return error

    def _translate_errors(self) -> _ErrorTranslation:
        return _ErrorTranslation(self.name, self.config.base_url)


class _ErrorTranslation:
    """Turns httpx's and http1's transport exceptions into Parley's, naming the provider."""

    def __init__(self, provider: str, base_url: str) -> None:
        self.provider = provider
        self.base_url = base_url

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, UpstreamError):
            return False
        if isinstance(exc, (httpx.TimeoutException, http1.Timeout)):
            raise UpstreamTimeoutError(f"Provider '{self.provider}' ({self.base_url}) did not answer in time.") from exc
        if isinstance(exc, (httpx.RemoteProtocolError, http1.ProtocolError)):
            raise UpstreamUnavailableError(
                f"Provider '{self.provider}' ({self.base_url}) closed the connection in the middle of its reply."
            ) from exc
        if isinstance(exc, (httpx.TransportError, http1.HTTPError)):
            raise UpstreamUnavailableError(
                f"Provider '{self.provider}' ({self.base_url}) is unreachable: {exc.__class__.__name__}"
            ) from exc
        return False


async def _sse_events(body: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The `data:` payloads of a server-sent-event stream, in batches: those completed by each read.

    The body is read raw (the request asks for no compression)."""
    buffer = b""
    data_lines: list[bytes] = []
    async for piece in body:
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data_lines:
                    events.append(data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines))
                    data_lines = []
            elif line.startswith(b"data:"):
                data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
        if events:
            yield events
    line = buffer.strip()
    if line.startswith(b"data:"):
        data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
    if data_lines:
        yield [b"\n".join(data_lines)]


def _upstream_error_fields(content: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    try:
        payload = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content.decode("utf-8", "replace").strip()
        return (text[:500] or None, None, None, None)
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return (error.get("message"), error.get("type"), error.get("param"), error.get("code"))
    if isinstance(error, str):
        return (error, None, None, None)
    if isinstance(payload, dict) and isinstance(payload.get("detail"), str):
        return (payload["detail"], None, None, None)
    return (None, None, None, None)
