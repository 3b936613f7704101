"""The two ways the local provider generates a chat completion from a loaded model.

    ChatmlGeneration    chat_format chatml-function-calling: Parley's prompt and grammars (see chatml_tools)
    TemplateGeneration  any other chat_format: llama.cpp's own chat completion, its chunks read as upstream ones

Both run on the model's worker thread, hand each chunk to `emit` as it is
produced, and stop at the next token once `cancelled` is set.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

from parley.config import LocalGenerationDefaults, LocalModelConfig
from parley.errors import ContextLengthExceededError, InvalidRequestError
from parley.inference import chatml_tools as protocol
from parley.inference.local_loading import tallied
from parley.inference.types import ChatChunk, ChatRequest, ToolCallDelta, Usage
from parley.inference.wire import choice_chunk

log = logging.getLogger(__name__)


def _sampling(request: ChatRequest, defaults: LocalGenerationDefaults, *, free_text: bool) -> dict[str, Any]:
    """llama.cpp's sampling settings for a request: its own, else the model's defaults.

    The repetition penalty applies to free text only: in JSON (a format, or
    a call's arguments) a repeated key, quote or value is the data itself.
    """
    repeat_penalty = request.extra.get("repeat_penalty", defaults.repeat_penalty) if free_text else 1.0
    return {
        "temperature": defaults.temperature if request.temperature is None else request.temperature,
        "top_p": defaults.top_p if request.top_p is None else request.top_p,
        "presence_penalty": request.presence_penalty or 0.0,
        "frequency_penalty": request.frequency_penalty or 0.0,
        "repeat_penalty": repeat_penalty,
        "seed": request.seed,
    }


def _token_limit(request: ChatRequest, defaults: LocalGenerationDefaults) -> int | None:
    """The request's own limit, else the model's default cap (which llama.cpp lowers to what the context holds)."""
    return request.token_limit if request.token_limit is not None else defaults.max_tokens


def _logits_for(llama: Any, wanted: bool) -> contextlib.AbstractContextManager[None]:
    """The model's logits kept while the block runs, if the request wants logprobs (see `llama_class`)."""
    return llama.logits_kept() if wanted else contextlib.nullcontext()


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


def offered_tools(request: ChatRequest) -> list[protocol.Tool]:
    """The tools the chatml prompt describes: none when `tool_choice` is none."""
    offered = request.tools and request.tool_choice != "none"
    return protocol.tools_of(request.tools) if offered else []


def chatml_prompt_tokens(llama: Any, request: ChatRequest) -> int:
    """The tokens of the prompt `ChatmlGeneration` renders for `request`, as its usage counts them."""
    prompt = protocol.render_prompt(request.messages, offered_tools(request))
    return len(llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)) if prompt else 0


class _PromptRendered(Exception):
    """Raised by `_PromptCatcher` where llama.cpp's chat handler would start the completion."""

    def __init__(self, prompt: str | list[int]) -> None:
        super().__init__("prompt rendered")
        self.prompt = prompt


class _PromptCatcher:
    """A loaded model, to llama.cpp's chat handler, that stops it at the completion it would start.

    A handler renders and tokenizes the prompt out of sight (some with the
    file's Jinja template, some with code of their own) and passes it to
    `create_completion`: caught there, it is the very prompt a generation
    evaluates, whatever the format.
    """

    def __init__(self, llama: Any) -> None:
        self._llama = llama

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    def create_completion(self, prompt: str | list[int], **_: Any) -> Any:
        raise _PromptRendered(prompt)


def template_prompt_tokens(llama: Any, request: ChatRequest) -> int:
    """The tokens of the prompt `TemplateGeneration` evaluates for `request`: what its usage counts.

    The model's chat handler is looked up as `Llama.create_chat_completion`
    looks it up, and given the request as `TemplateGeneration` gives it.
    """
    from llama_cpp import llama_chat_format

    handler: Any = (
        llama.chat_handler
        or llama._chat_handlers.get(llama.chat_format)
        or llama_chat_format.get_chat_completion_handler(llama.chat_format)
    )
    try:
        handler(
            llama=_PromptCatcher(llama),
            messages=request.messages,
            tools=request.tools,
            tool_choice=request.tool_choice,
            response_format=request.response_format,
            stop=request.stop,
            stream=True,
        )
    except _PromptRendered as rendered:
        prompt = rendered.prompt
    else:
        raise InvalidRequestError(f"The chat format '{llama.chat_format}' cannot be counted.", param="model")
    if isinstance(prompt, list):
        return len(prompt)  # llama.cpp evaluates a token prompt as it is
    # A text prompt is tokenized with llama.cpp's BOS and EOS rules (`Llama._create_completion`).
    cls = llama._model.token_cls()
    bos = llama._model.add_bos_token() and (cls if cls != -1 else llama.token_bos()) != -1
    eos = llama._model.add_eos_token() or llama._model.token_sep() != -1
    return int(bos) + len(llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)) + int(eos)


class ChatmlGeneration:
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
        self.tools = offered_tools(request)
        self.prompt = protocol.render_prompt(request.messages, self.tools)
        self.prompt_tokens = self._count(self.prompt, special=True)
        self.generated = ""
        self.remaining = _token_limit(request, config.defaults)

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
        with _logits_for(self.llama, want_logprobs):
            stream = self.llama.create_completion(
                prompt=self.prompt,
                grammar=grammar,
                stop=stop,
                max_tokens=self.remaining if self.remaining is not None else -1,
                stream=True,
                logprobs=max(top, 1) if want_logprobs else None,
                **_sampling(self.request, self.config.defaults, free_text=grammar is None),
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


class TemplateGeneration:
    """A completion through one of llama.cpp's own chat formats (`chat_format` other than chatml-function-calling)."""

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

    def run(self) -> None:
        request = self.request
        # A format or a tool call is JSON, which the chat format's grammar constrains (see `_sampling`).
        constrained = (request.response_format or {}).get("type") in ("json_object", "json_schema") or (
            bool(request.tools) and request.tool_choice != "none"
        )
        # llama.cpp's streamed chat completions carry no usage: the tally counts it (see `llama_class`).
        with tallied() as tally, _logits_for(self.llama, bool(request.logprobs)):
            stream = self.llama.create_chat_completion(
                messages=request.messages,
                tools=request.tools,
                tool_choice=request.tool_choice,
                response_format=request.response_format,
                stop=request.stop,
                max_tokens=_token_limit(request, self.config.defaults),
                logprobs=request.logprobs,
                top_logprobs=request.top_logprobs,
                stream=True,
                **_sampling(request, self.config.defaults, free_text=not constrained),
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
