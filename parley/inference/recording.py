"""Record and replay of model traffic: a provider that wraps any other.

    live               the wrapped provider, untouched (no wrapper is built)
    record             call the wrapped provider and write each call to a file
    replay             answer from the files only; a miss is an error, never a call
    record-if-missing  answer from the files, else call and record

Chat completions, embeddings and model listings (for providers that discover
their models upstream) are recorded. A chat completion is recorded as the
OpenAI body it is on the wire (`wire.chat_body`) and the chunks that came back;
replay parses those chunks with the same code that reads a live stream, and
yields them through the same interface, so the engine cannot tell the two apart.
A recorded failure (`is_exception`, as other recorders write them) replays as
the chunks before it, if any, then the error the provider raises live for it
(`recording_errors`).

Which test a call belongs to travels in `current_test_id`, set for each HTTP
request by `parley.api.scoping` from a header. It is written into each file,
and replay prefers the recordings of the same test.

    ParleyError
    ├── NotFoundError
    │   └── RecordingNotFoundError   404 recording_not_found: replay found no recording
    ├── RecordingFileError           a file that cannot be read (see recording_files)
    └── UpstreamError                a recorded failure, replayed (see recording_errors)
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley.config import OpenAIProviderConfig, RecordingSettings
from parley.errors import NotFoundError, UpstreamError
from parley.inference.base import ChunkStream, ModelInfo, Provider
from parley.inference.recording_files import (
    CHAT_ENDPOINT,
    CHUNK_TYPE,
    EMBEDDINGS_ENDPOINT,
    EMBEDDINGS_TYPE,
    MODEL_TYPE,
    MODELS_ENDPOINT,
    Recording,
    RecordingFileError,
    chat_reply,
    embeddings_reply,
    failure,
    file_name,
    models_reply,
    public_headers,
    public_url,
    read_recording,
    write_recording,
)
from parley.inference.recording_match import (
    Signature,
    compare,
    exact_key,
    message_count,
    signature,
    signature_key,
)
from parley.inference.types import ChatChunk, ChatRequest
from parley.inference.wire import chat_body, chunk_to_wire

log = logging.getLogger(__name__)

# The test the current request belongs to (from the test header), or None.
current_test_id: ContextVar[str | None] = ContextVar("parley_test_id", default=None)

# Replayed chunks leave in batches of at most this many when they are not paced.
_REPLAY_BATCH = 64


class RecordingNotFoundError(NotFoundError):
    """Replay has no recording for this call (a 404: what was asked for was never recorded)."""

    code = "recording_not_found"


@dataclass(slots=True)
class Call:
    """One call to a provider, as the recordings see it."""

    provider: str
    method: str
    endpoint: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    model: str
    test_id: str | None
    key: str = field(init=False)
    signature: Signature = field(init=False)

    def __post_init__(self) -> None:
        self.key = exact_key(self.method, self.endpoint, self.body)
        self.signature = signature(self.endpoint, self.body, self.provider)

    def recording(self, directory: Path, response: dict[str, Any]) -> Recording:
        # Model listings are shared by every test, so their file does not depend on one.
        test_id = None if self.endpoint == MODELS_ENDPOINT else self.test_id
        request = {
            "method": self.method,
            "url": public_url(self.url),
            "headers": public_headers(self.headers),
            "body": self.body,
            "endpoint": self.endpoint,
            "model": self.model,
            "provider": self.provider,
        }
        return Recording(directory / file_name(self.key, test_id), self.test_id, request, response)

    def describe(self) -> str:
        if self.endpoint == CHAT_ENDPOINT:
            n = message_count(self.signature) or 0
            what = f"chat completion (model '{self.model}', {n} message{'' if n == 1 else 's'})"
        elif self.endpoint == EMBEDDINGS_ENDPOINT:
            what = f"embeddings request (model '{self.model}')"
        else:
            what = f"model listing of provider '{self.provider}'"
        return what + (f" of test '{self.test_id}'" if self.test_id else "")


@dataclass(slots=True)
class _Indexed:
    recording: Recording
    key: str
    signature: Signature


class RecordingStore:
    """The recordings of one directory, indexed by exact key and by signature.

    Files that cannot be read are kept aside with their problem, so that a miss
    can name them; `parley recordings check` reports them too.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.broken: dict[Path, RecordingFileError] = {}
        self._entries: dict[Path, _Indexed] = {}
        self._seen: dict[Path, tuple[int, int]] = {}
        self._by_key: dict[str, list[_Indexed]] = {}
        self._by_signature: dict[str, list[_Indexed]] = {}
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Reads the files that are new or changed since the last look."""
        async with self._lock:
            # Files are read in a thread; the index changes only here, on the event loop.
            for path, stamp, result in await asyncio.to_thread(self._read_changed, dict(self._seen)):
                self._seen[path] = stamp
                if isinstance(result, RecordingFileError):
                    log.error("%s", result.message)
                    self._remove(path)
                    self.broken[path] = result
                else:
                    self._add(result)
                    self.broken.pop(path, None)

    def _read_changed(
        self, seen: dict[Path, tuple[int, int]]
    ) -> list[tuple[Path, tuple[int, int], Recording | RecordingFileError]]:
        changed: list[tuple[Path, tuple[int, int], Recording | RecordingFileError]] = []
        for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []:
            try:
                stat = path.stat()
            except OSError:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            if seen.get(path) != stamp:
                try:
                    changed.append((path, stamp, read_recording(path)))
                except RecordingFileError as exc:
                    changed.append((path, stamp, exc))
        return changed

    def add(self, recording: Recording) -> None:
        """Indexes a recording that was just written."""
        self._add(recording)
        self.broken.pop(recording.path, None)
        try:
            stat = recording.path.stat()
            self._seen[recording.path] = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            pass

    def _add(self, recording: Recording) -> None:
        self._remove(recording.path)
        endpoint = recording.endpoint
        entry = _Indexed(
            recording,
            exact_key(str(recording.request.get("method") or "POST"), endpoint, recording.body),
            signature(endpoint, recording.body, recording.request.get("provider")),
        )
        self._entries[recording.path] = entry
        self._by_key.setdefault(entry.key, []).append(entry)
        self._by_signature.setdefault(signature_key(endpoint, entry.signature), []).append(entry)

    def _remove(self, path: Path) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self._by_key[entry.key].remove(entry)
            sig_key = signature_key(entry.recording.endpoint, entry.signature)
            self._by_signature[sig_key].remove(entry)

    def find(self, call: Call) -> Recording | None:
        """The recording that answers `call`: the test's own first, exact before same-conversation.

        Among several, the first by file name, so that a replay is the same every time.
        """
        exact = self._by_key.get(call.key, [])
        similar = self._by_signature.get(signature_key(call.endpoint, call.signature), [])
        scopes = ([call.test_id] if call.test_id is not None else []) + [None]
        for test_id in scopes:
            for entries in (exact, similar):
                chosen = [e for e in entries if test_id is None or e.recording.test_id == test_id]
                if chosen:
                    return min(chosen, key=lambda e: e.recording.path.name).recording
        return None

    def exact(self, call: Call) -> Recording | None:
        """The recording of this very call (the test's own first), or None: never a similar one."""
        exact = self._by_key.get(call.key, [])
        own = [e for e in exact if call.test_id is not None and e.recording.test_id == call.test_id]
        chosen = own or exact
        return min(chosen, key=lambda e: e.recording.path.name).recording if chosen else None

    def miss(self, call: Call) -> RecordingNotFoundError:
        """The error for a call that no recording answers: the closest one, and how it differs."""
        message = f"No recording in {self.directory} answers this {call.describe()}."
        candidates = [e for e in self._entries.values() if e.recording.endpoint == call.endpoint]
        if not candidates:
            message += f" The directory holds no recording of {call.endpoint}."
        else:

            def closeness(entry: _Indexed) -> tuple[int, int, bool, str]:
                difference = compare(call.signature, entry.signature)
                assert difference is not None
                same_test = entry.recording.test_id == call.test_id
                return (-difference.position, -difference.agreeing, not same_test, entry.recording.path.name)

            closest = min(candidates, key=closeness)
            difference = compare(call.signature, closest.signature)
            assert difference is not None
            where = f" (test '{closest.recording.test_id}')" if closest.recording.test_id else ""
            described = difference.describe(message_count(call.signature), message_count(closest.signature))
            message += f" The closest is {closest.recording.path.name}{where}; first difference: {described}."
        if self.broken:
            names = ", ".join(f"{path.name} ({error.problem})" for path, error in sorted(self.broken.items())[:5])
            message += f" {len(self.broken)} file(s) could not be read: {names}."
        return RecordingNotFoundError(message)


class RecordingProvider(Provider):
    """Records the calls to `inner`, or replays them, as `settings.mode` says."""

    def __init__(self, inner: Provider, settings: RecordingSettings, store: RecordingStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.mode = settings.mode
        self.delay = settings.delay_ms / 1000
        self.store = store
        config = getattr(inner, "config", None)
        self._config = config if isinstance(config, OpenAIProviderConfig) else None

    def serves(self, model: str) -> bool:
        return self.inner.serves(model)

    def text_only(self, model: str) -> bool:
        return self.inner.text_only(model)

    def sampling_defaults(self, model: str) -> dict[str, float]:
        return self.inner.sampling_defaults(model)

    def context_window(self, model: str) -> int | None:
        return self.inner.context_window(model)

    async def start(self) -> None:
        await self.store.refresh()
        if self.mode != "replay":  # replay never calls the provider, so need not load it
            await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    # Calls

    def _call(self, method: str, endpoint: str, body: dict[str, Any], model: str) -> Call:
        if self._config is not None:
            url = self._config.base_url + endpoint.removeprefix("/v1")
            headers = dict(self._config.headers)
        else:
            url, headers = f"local://{self.name}{endpoint}", {}
        return Call(self.name, method, endpoint, url, headers, body, model, current_test_id.get())

    async def _recorded(self, call: Call) -> Recording | None:
        """The recording to replay, None to call the provider; raises on a miss in replay mode."""
        if self.mode == "record":
            return None
        recording = self.store.find(call)
        if recording is None and self.mode == "replay":
            await self.store.refresh()  # another process may have recorded it since
            recording = self.store.find(call)
            if recording is None:
                raise self.store.miss(call)
        return recording

    def _failure(self, recording: Recording) -> UpstreamError:
        """The error of a recorded failure, as this provider raises it live."""
        base_url = self._config.base_url if self._config is not None else None
        return failure(recording).error(self.name, base_url)

    async def _record(self, call: Call, response: dict[str, Any]) -> None:
        recording = call.recording(self.store.directory, response)
        await asyncio.to_thread(write_recording, recording)
        self.store.add(recording)

    # Chat completions

    def stream_chat(self, request: ChatRequest) -> ChunkStream:
        # The call is made now, while the caller's test id is in the context.
        return self._stream_chat(request, self._call("POST", CHAT_ENDPOINT, chat_body(request), request.model))

    async def _stream_chat(self, request: ChatRequest, call: Call) -> ChunkStream:
        recording = await self._recorded(call)
        if recording is not None:
            async for batch in self._replay(chat_reply(recording)):
                yield batch
            if recording.is_exception:
                raise self._failure(recording)
            return
        chunks: list[ChatChunk] = []
        stream = self.inner.stream_chat(request)
        try:
            async for batch in stream:
                chunks += batch
                yield batch
        finally:
            await stream.aclose()
        # Only a whole completion is written: a failed or abandoned stream never gets here.
        head = {"id": f"rec-{call.key[:12]}", "object": "chat.completion.chunk", "created": 0, "model": call.model}
        body = [{"__type__": CHUNK_TYPE, "__data__": chunk_to_wire(chunk, head)} for chunk in chunks]
        await self._record(call, {"body": body, "is_streaming": True})

    async def count_tokens(self, request: ChatRequest) -> int:
        """The `prompt_tokens` of a recorded completion of this very request, else the wrapped provider's count.

        A recording says what the model counted when it ran; one recorded for a
        similar request (which replay would answer with) says nothing of this
        one. The wrapped provider counts without calling out (llama.cpp's
        tokenizer, an upstream's offline one), so replay may ask it: a local
        model not loaded yet loads for it.
        """
        if self.mode != "record":
            recording = self.store.exact(self._call("POST", CHAT_ENDPOINT, chat_body(request), request.model))
            if recording is not None and not recording.is_exception:
                usage = next((chunk.usage for chunk in chat_reply(recording) if chunk.usage is not None), None)
                if usage is not None and usage.prompt_tokens > 0:
                    return usage.prompt_tokens
        return await self.inner.count_tokens(request)

    async def _replay(self, chunks: list[ChatChunk]) -> ChunkStream:
        if not self.delay:
            for start in range(0, len(chunks), _REPLAY_BATCH):
                yield chunks[start : start + _REPLAY_BATCH]
            return
        for position, chunk in enumerate(chunks):
            if position:
                await asyncio.sleep(self.delay)
            yield [chunk]

    # Embeddings

    async def embed(self, model: str, inputs: Any, **options: Any) -> dict[str, Any]:
        body = {"model": model, "input": inputs, **{k: v for k, v in options.items() if v is not None}}
        call = self._call("POST", EMBEDDINGS_ENDPOINT, body, model)
        recording = await self._recorded(call)
        if recording is not None:
            if recording.is_exception:
                raise self._failure(recording)
            return embeddings_reply(recording)
        result = await self.inner.embed(model, inputs, **options)
        await self._record(call, {"body": {"__type__": EMBEDDINGS_TYPE, "__data__": result}, "is_streaming": False})
        return result

    # Model listing

    async def list_models(self) -> list[ModelInfo]:
        if self._config is None or self._config.models is not None:
            # Models named in the configuration are not traffic: nothing to record.
            return await self.inner.list_models()
        call = self._call("GET", MODELS_ENDPOINT, {}, "")
        recording = await self._recorded(call)
        if recording is not None:
            if recording.is_exception:
                raise self._failure(recording)
            return models_reply(recording)
        models = await self.inner.list_models()
        body = [
            {
                "__type__": MODEL_TYPE,
                "__data__": {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by},
            }
            for m in models
        ]
        await self._record(call, {"body": body, "is_streaming": False})
        return models
