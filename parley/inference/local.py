"""A provider that runs GGUF models in-process with llama.cpp.

Each model owns one worker thread: generation never blocks the event loop,
one model serves one generation at a time, and waiting requests are served
in the order they came (the worker's queue is FIFO). Tokens cross to the
event loop as they are produced. A consumer that goes away (a client that
disconnects) sets a flag that stops the generation at the next token, or,
while the request still waits its turn, drops it: the worker skips it.

Loading a model is in `local_loading`; generating from it, in `local_generation`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from parley.config import LocalModelConfig, LocalProviderConfig
from parley.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ParleyError,
    UpstreamError,
    UpstreamUnavailableError,
)
from parley.inference.base import ChunkStream, ModelInfo, Provider
from parley.inference.local_generation import (
    ChatmlGeneration,
    TemplateGeneration,
    chatml_prompt_tokens,
    template_prompt_tokens,
)
from parley.inference.local_loading import LoadError, embedded_model_path, load, take_preloaded
from parley.inference.types import ChatChunk, ChatRequest

log = logging.getLogger(__name__)


class _End:
    """Marks the end of a generation on the queue."""


_END = _End()


class LocalProvider(Provider):
    def __init__(self, name: str, config: LocalProviderConfig) -> None:
        self.name = name
        self._models = {model: LocalModel(name, model, cfg) for model, cfg in config.models.items()}

    def serves(self, model: str) -> bool:
        return model in self._models

    def text_only(self, model: str) -> bool:
        return True  # its chat formats have no place for an image or a file

    def context_window(self, model: str) -> int | None:
        found = self._models.get(model)
        return found.config.n_ctx if found is not None else None

    def sampling_defaults(self, model: str) -> dict[str, float]:
        found = self._models.get(model)
        if found is None:
            return {}
        defaults = found.config.defaults
        return {"temperature": defaults.temperature, "top_p": defaults.top_p}

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=model, owned_by="parley") for model in self._models]

    async def start(self) -> None:
        # Load the weights now, so the first request does not wait for them (`parley serve`
        # has loaded them already, in `preload`, and refused to start if one would not).
        results = await asyncio.gather(*(m.load() for m in self._models.values()), return_exceptions=True)
        for model, result in zip(self._models, results, strict=True):
            if isinstance(result, BaseException):
                log.error("cannot load local model %r: %s", model, result)

    async def close(self) -> None:
        for model in self._models.values():
            model.close()

    async def count_tokens(self, request: ChatRequest) -> int:
        model = self._models[request.model]
        _check_text_only(model.name, request.messages)
        return await model.count_tokens(request)

    async def stream_chat(self, request: ChatRequest) -> ChunkStream:
        model = self._models[request.model]
        # Checked on arrival: a request refused by the worker would wait for every one queued before it.
        if request.n not in (None, 1):
            raise InvalidRequestError("The local provider generates one choice per request (n=1).", param="n")
        _check_text_only(model.name, request.messages)
        if request.logprobs and not model.config.logprobs:
            raise InvalidRequestError(f"Local model '{model.name}' is configured without logprobs.", param="logprobs")
        repeat_penalty = request.extra.get("repeat_penalty")
        if repeat_penalty is not None and (
            isinstance(repeat_penalty, bool) or not isinstance(repeat_penalty, int | float) or repeat_penalty <= 0
        ):
            raise InvalidRequestError("'repeat_penalty' must be a number above 0.", param="repeat_penalty")
        async for batch in model.stream(request):
            yield batch


class LocalModel:
    def __init__(self, provider: str, name: str, config: LocalModelConfig) -> None:
        self.provider = provider
        self.name = name
        self.config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{name}")
        self._llama: Any = None

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._loaded)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._llama = None

    async def count_tokens(self, request: ChatRequest) -> int:
        """The prompt tokens a generation of `request` evaluates: its usage's `prompt_tokens`.

        Counted on a thread of its own, not the model's worker: tokenizing
        reads only the model's vocabulary, so a count need not wait for the
        generations queued before it (only a model not loaded yet waits for
        its loading, on the worker).
        """
        llama = self._llama if self._llama is not None else await self._load_for_count()
        count = chatml_prompt_tokens if self.config.chat_format == "chatml-function-calling" else template_prompt_tokens
        # A chat handler's failure, as generation translates it (see `_generate`).
        try:
            return await asyncio.to_thread(count, llama, request)
        except ParleyError:
            raise
        except ValueError as exc:
            raise _translate_value_error(exc, self.config.n_ctx) from exc
        except Exception as exc:
            log.exception("local model %r failed to count a prompt", self.name)
            raise UpstreamError(f"Local model '{self.name}' failed: {exc}") from exc

    async def _load_for_count(self) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._loaded)
        except RuntimeError as exc:  # the executor is shut down: the server is stopping
            raise UpstreamUnavailableError(f"Local model '{self.name}' is shutting down.") from exc

    async def stream(self, request: ChatRequest) -> ChunkStream:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ChatChunk | BaseException | _End] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: ChatChunk | BaseException | _End) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def ended(work: asyncio.Future[None]) -> None:
            # The worker ends every generation it runs with _END; one it never ran
            # (the model was closed first) must not leave its request waiting.
            if work.cancelled() or work.exception() is not None:
                queue.put_nowait(UpstreamUnavailableError(f"Local model '{self.name}' stopped before answering."))
                queue.put_nowait(_END)

        try:
            work = loop.run_in_executor(self._executor, self._generate, request, emit, cancelled)
        except RuntimeError as exc:  # the executor is shut down: the server is stopping
            raise UpstreamUnavailableError(f"Local model '{self.name}' is shutting down.") from exc
        work.add_done_callback(ended)
        try:
            while True:
                batch: list[ChatChunk] = []
                item = await queue.get()
                while True:
                    if isinstance(item, _End):
                        if batch:
                            yield batch
                        return
                    if isinstance(item, BaseException):
                        raise item
                    batch.append(item)
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                yield batch
        finally:
            cancelled.set()

    # Everything below runs on the model's worker thread.

    def _loaded(self) -> Any:
        """The model, loaded by `preload` or now; UpstreamUnavailableError, saying why, if it cannot load."""
        if self._llama is not None:
            return self._llama
        self._llama = take_preloaded(self.provider, self.name, self.config)
        if self._llama is not None:
            return self._llama
        unavailable = f"Local model '{self.name}' cannot be loaded"
        if importlib.util.find_spec("llama_cpp") is None:
            raise UpstreamUnavailableError(f"{unavailable}: it needs llama-cpp-python: pip install 'parley[local]'.")
        try:
            path = self.config.path or embedded_model_path()
        except ParleyError as exc:
            raise UpstreamUnavailableError(f"{unavailable}: {exc.message}") from exc
        if not Path(path).is_file():
            raise UpstreamUnavailableError(f"{unavailable}: the model file {path} does not exist.")
        log.info("loading local model %r from %s", self.name, path)
        try:
            self._llama = load(Path(path), self.config)
        except LoadError as exc:
            raise UpstreamUnavailableError(
                f"{unavailable}: llama.cpp cannot load the model file {path}: {exc}"
            ) from exc
        return self._llama

    def _generate(self, request: ChatRequest, emit: Callable[[Any], None], cancelled: threading.Event) -> None:
        if cancelled.is_set():
            # Its caller stopped waiting while it was queued (a client that left, mostly): said
            # at warning level, since clients that give up waiting are a sign of a busy model.
            log.warning("local model %r: dropped a queued request whose caller stopped waiting", self.name)
            emit(_END)
            return
        try:
            llama = self._loaded()
            if self.config.chat_format == "chatml-function-calling":
                ChatmlGeneration(llama, self.config, request, emit, cancelled).run()
            else:
                TemplateGeneration(llama, self.config, request, emit, cancelled).run()
        except ParleyError as exc:
            emit(exc)
        except ValueError as exc:
            emit(_translate_value_error(exc, self.config.n_ctx))
        except Exception as exc:
            log.exception("local model %r failed", self.name)
            emit(UpstreamError(f"Local model '{self.name}' failed: {exc}"))
        finally:
            emit(_END)


def _check_text_only(model: str, messages: list[dict[str, Any]]) -> None:
    """Refuses a content part that is not text (an image, a file, audio), naming its place."""
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        for part_index, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "input_text", "output_text", "refusal"):
                param = f"messages[{index}].content[{part_index}]"
                raise InvalidRequestError(
                    f"Invalid value for '{param}': the local model '{model}' reads text only; content parts of "
                    f"type '{kind}' are not supported.",
                    param=param,
                    code="unsupported_value",
                )


def _translate_value_error(exc: ValueError, n_ctx: int) -> ParleyError:
    text = str(exc)
    # llama-cpp-python's "Requested tokens (n) exceed context window of m".
    if "exceed context window" in text:
        return ContextLengthExceededError(
            f"This model's maximum context length is {n_ctx} tokens; {text}", param="messages"
        )
    return InvalidRequestError(text)
