"""Embeddings: the local provider that computes them in-process, and one interface over every provider.

`LocalEmbeddingsProvider` serves the models of a `local-embeddings` provider
(parley.inference.sentence_embeddings) as OpenAI's `POST /v1/embeddings`
does. `embed_texts` is what the rest of Parley calls for vectors, whatever
the model: a local one directly, an `openai` provider's through its
`/embeddings`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from parley.config import LocalEmbeddingModelConfig, LocalEmbeddingsProviderConfig
from parley.errors import ContextLengthExceededError, InvalidRequestError, UpstreamUnavailableError
from parley.inference.base import ChunkStream, ModelInfo, Provider
from parley.inference.types import ChatRequest

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")

# OpenAI's limit on the inputs of one request.
MAX_INPUTS = 2048


@dataclass(slots=True, frozen=True)
class Embeddings:
    """Unit vectors, one row per input, and the tokens the model read."""

    vectors: np.ndarray[Any, np.dtype[np.float32]]
    tokens: int


class LocalEmbeddingModel:
    """One embedding model, loaded once, run on threads of its own: an encoder's numpy products and a static
    model's tokenizer and lookups release the GIL, so the event loop goes on serving while they work.

    Two lanes, one thread each, so that a search's query is not held up by an ingestion: a request of a few
    short texts (a query, most `/v1/embeddings` calls) takes the quick lane; a larger one (an ingestion's
    chunks) the bulk lane, `batch_size` inputs at a time, each batch a job of its own."""

    # What a request on the quick lane may hold: a few inputs, a few pages of text in all.
    QUICK_INPUTS = 8
    QUICK_CHARACTERS = 8192

    def __init__(self, provider: str, name: str, config: LocalEmbeddingModelConfig) -> None:
        self.provider = provider
        self.name = name
        self.config = config
        self._encoder: Any = None
        self._error: str | None = None
        # One thread a lane: a forward pass already uses BLAS's threads, and a second batch beside it
        # would only slow the first.
        self._bulk = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{name}")
        self._quick = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{name}-quick")
        self._lock = asyncio.Lock()

    async def load(self) -> Any:
        async with self._lock:
            if self._encoder is None and self._error is None:
                from parley.inference.sentence_embeddings import ModelFilesError

                try:
                    self._encoder = await _in_daemon_thread(self._load, f"load-{self.name}")
                except (ModelFilesError, ImportError, OSError) as exc:
                    self._error = str(exc)
                    log.error("cannot load embedding model %s/%s: %s", self.provider, self.name, exc)
        if self._encoder is None:
            raise UpstreamUnavailableError(f"The embedding model '{self.provider}/{self.name}' is not available.")
        return self._encoder

    def is_quick_to_load(self) -> bool:
        """False for a static model whose table is not cached yet: it is distilled first (about 30 s)."""
        config = self.config
        if config.kind != "static":
            return True
        from parley.inference.sentence_embeddings import ModelFilesError, default_model_dir
        from parley.inference.static_embeddings import DEFAULT_DIMENSIONS, is_cached

        try:
            model_dir = config.path if config.path is not None else default_model_dir()
        except ModelFilesError:
            return True  # it fails at once
        return is_cached(model_dir, config.dimensions or DEFAULT_DIMENSIONS, config.cache_dir)

    def _load(self) -> Any:
        config = self.config
        if config.kind == "static":
            from parley.inference.static_embeddings import load_static_encoder

            return load_static_encoder(config.path, config.max_tokens, config.dimensions, config.cache_dir)
        from parley.inference.sentence_embeddings import load_encoder

        return load_encoder(config.path, config.max_tokens)

    async def embed(self, inputs: list[str] | list[list[int]], *, truncate: bool) -> Embeddings:
        """Vectors for texts or token-id arrays (the model's own ids); an input over max_tokens is refused
        unless `truncate`."""
        import numpy as np

        encoder = await self.load()
        loop = asyncio.get_running_loop()
        lane = self._quick if self._is_quick(inputs) else self._bulk
        await loop.run_in_executor(lane, self._check, encoder, inputs, truncate)
        step = self.config.batch_size
        parts = [
            await loop.run_in_executor(lane, self._embed, encoder, inputs[start : start + step])
            for start in range(0, len(inputs), step)
        ]
        if not parts:
            return Embeddings(np.empty((0, encoder.dimensions), dtype=np.float32), 0)
        return Embeddings(np.vstack([p.vectors for p in parts]), sum(p.tokens for p in parts))

    def _is_quick(self, inputs: list[str] | list[list[int]]) -> bool:
        return len(inputs) <= self.QUICK_INPUTS and sum(len(i) for i in inputs) <= self.QUICK_CHARACTERS

    def _check(self, encoder: Any, inputs: list[str] | list[list[int]], truncate: bool) -> None:
        limit = encoder.max_tokens
        if inputs and isinstance(inputs[0], list):
            arrays: list[list[int]] = inputs
            vocab = encoder.vocab_size
            if any(not 0 <= token < vocab for array in arrays for token in array):
                raise InvalidRequestError(
                    f"Invalid value for 'input': token ids must be within 0..{vocab - 1} for this model.",
                    param="input",
                    code="invalid_value",
                )
            self._check_lengths([len(array) + encoder.special_tokens for array in arrays], limit, truncate)
        elif not truncate:
            self._check_lengths(encoder.count_tokens(inputs), limit, truncate)

    @staticmethod
    def _embed(encoder: Any, inputs: list[str] | list[list[int]]) -> Embeddings:
        if inputs and isinstance(inputs[0], list):
            arrays: list[list[int]] = inputs
            limit = encoder.max_tokens
            tokens = sum(min(len(array) + encoder.special_tokens, limit) for array in arrays)
            return Embeddings(encoder.encode_ids(arrays), tokens)
        vectors, tokens = encoder.encode(inputs, batch_size=len(inputs))
        return Embeddings(vectors, tokens)

    @staticmethod
    def _check_lengths(counts: list[int], limit: int, truncate: bool) -> None:
        longest = max(counts, default=0)
        if longest > limit and not truncate:
            # OpenAI's words for an input past an embedding model's context.
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens, however you requested "
                f"{longest} tokens ({longest} in your prompt; 0 for the completion). "
                "Please reduce your prompt; or completion length.",
                param="input",
            )

    def close(self) -> None:
        for lane in (self._bulk, self._quick):
            lane.shutdown(wait=False, cancel_futures=True)
        self._encoder = None


class LocalEmbeddingsProvider(Provider):
    """The models of a `local-embeddings` provider: embeddings only, computed in-process."""

    def __init__(self, name: str, config: LocalEmbeddingsProviderConfig) -> None:
        self.name = name
        self.models = {model: LocalEmbeddingModel(name, model, cfg) for model, cfg in config.models.items()}
        self._loading: list[asyncio.Task[None]] = []

    def serves(self, model: str) -> bool:
        return model in self.models

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=model, owned_by="parley") for model in self.models]

    async def start(self) -> None:
        # Loaded now (a tenth of a second, 90 MB), so the first request does not wait; one that
        # cannot load is logged and its requests get a 503, while the chat models go on serving.
        # A static model with no cached table yet is distilled in the background rather than before
        # the server listens; its requests wait for it.
        quick = await asyncio.gather(*(asyncio.to_thread(m.is_quick_to_load) for m in self.models.values()))
        later = [m for m, fast in zip(self.models.values(), quick, strict=True) if not fast]
        for model in later:
            log.info("the embedding model %s/%s is being distilled; it serves once that is done", self.name, model.name)
            self._loading.append(asyncio.create_task(_quietly(model.load())))
        await asyncio.gather(*(m.load() for m in self.models.values() if m not in later), return_exceptions=True)

    async def close(self) -> None:
        for task in self._loading:
            task.cancel()
        for model in self.models.values():
            model.close()

    async def stream_chat(self, request: ChatRequest) -> ChunkStream:
        raise InvalidRequestError(
            f"The model '{self.name}/{request.model}' is an embedding model: it does not chat.", param="model"
        )
        yield []  # unreachable: it makes this an async generator, as the interface's callers expect

    async def embed(self, model: str, inputs: Any, **options: Any) -> dict[str, Any]:
        """OpenAI's `list` of embeddings for a string, strings, token array or token arrays."""
        local = self.models[model]
        items = _as_list(inputs)
        if len(items) > MAX_INPUTS:
            raise InvalidRequestError(
                f"Invalid 'input': an array may have at most {MAX_INPUTS} items, but it has {len(items)}.",
                param="input",
                code="array_above_max_length",
            )
        encoder = await local.load()
        dimensions = options.get("dimensions")
        # A model with fixed dimensions refuses the parameter, as OpenAI's text-embedding-ada-002 does;
        # its own size is accepted, since that is what the caller gets.
        if dimensions is not None and dimensions != encoder.dimensions:
            raise InvalidRequestError(
                f"This model does not support specifying dimensions (it has {encoder.dimensions}).",
                param="dimensions",
            )
        result = await local.embed(items, truncate=False)
        base64_format = options.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(vector, base64_format)}
            for i, vector in enumerate(result.vectors)
        ]
        usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
        return {"object": "list", "data": data, "model": model, "usage": usage}


async def _quietly(work: Awaitable[Any]) -> None:
    with contextlib.suppress(Exception):  # logged by LocalEmbeddingModel.load; its requests get a 503
        await work


async def _in_daemon_thread(function: Callable[[], T], name: str) -> T:
    """`function()` on a daemon thread: a distillation still running when the server stops does not hold up
    its exit, as a thread of an executor would."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # its caller was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        error: BaseException | None = None
        result: T | None = None
        try:
            result = function()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def _as_list(inputs: Any) -> list[str] | list[list[int]]:
    if isinstance(inputs, str):
        return [inputs]
    if inputs and all(isinstance(item, int) for item in inputs):
        return [list(inputs)]  # one token array
    return list(inputs)


def _encode(vector: np.ndarray[Any, np.dtype[np.float32]], base64_format: bool) -> list[float] | str:
    if base64_format:
        # OpenAI's base64: the little-endian float32 bytes, as openai-python decodes them.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


async def embed_texts(provider: Provider, model: str, texts: list[str], *, truncate: bool = True) -> Embeddings:
    """Unit-length vectors of `texts` from any provider's model: in-process for a local model, else its
    `/embeddings` (batched at OpenAI's 2,048 inputs a request). With `truncate`, a local model reads the
    start of a text longer than it takes, as sentence-transformers does; an upstream refuses as it will."""
    import numpy as np  # installed with the `local` extra, as the local models are

    if isinstance(provider, LocalEmbeddingsProvider):
        return await provider.models[model].embed(texts, truncate=truncate)
    rows: list[np.ndarray[Any, np.dtype[np.float32]]] = []
    tokens = 0
    for start in range(0, len(texts), MAX_INPUTS):
        reply = await provider.embed(model, texts[start : start + MAX_INPUTS], encoding_format="base64")
        for item in sorted(reply["data"], key=lambda d: d["index"]):
            embedding = item["embedding"]
            if isinstance(embedding, str):
                rows.append(np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32))
            else:
                rows.append(np.asarray(embedding, dtype=np.float32))
        tokens += int((reply.get("usage") or {}).get("prompt_tokens") or 0)
    if not rows:
        return Embeddings(np.empty((0, 0), dtype=np.float32), 0)
    vectors = np.vstack(rows)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return Embeddings((vectors / np.maximum(norms, 1e-12)).astype(np.float32), tokens)
