"""parley.vectors.chunking: OpenAI's chunking strategies (`auto`, `static`) as a request gives them, and chunks
of a text that hold at most so many tokens, overlap by exactly so many, cover the text in order, keep its
characters as written and end where a paragraph, a line or a sentence does when one is near.

Pure functions, so these are unit tests: the request errors' HTTP shape is pinned by the vector store tests.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pytest

from parley.errors import InvalidRequestError
from parley.vectors.chunking import (
    Chunk,
    Offsets,
    WordPieceTokenizer,
    chunk_text,
    count_tokens,
    default_tokenizer,
    parse_chunking_strategy,
    strategy_sizes,
)

AUTO = {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}


def static(max_tokens: Any, overlap: Any) -> dict[str, Any]:
    return {"type": "static", "static": {"max_chunk_size_tokens": max_tokens, "chunk_overlap_tokens": overlap}}


class Words:
    """Each run of non-space characters is a token: chunking's rules, seen without a real tokenizer."""

    def spans(self, text: str) -> tuple[Offsets, Offsets]:
        matches = list(re.finditer(r"\S+", text))
        return np.array([m.start() for m in matches], np.int64), np.array([m.end() for m in matches], np.int64)


def token_range(chunk: Chunk, starts: list[int], ends: list[int]) -> tuple[int, int]:
    """The chunk's tokens as indexes [first, last) into the whole text's tokens."""
    first = starts.index(chunk.start)
    last = ends.index(chunk.end) + 1
    return first, last


def check_chunks(text: str, chunks: list[Chunk], max_tokens: int, overlap: int, tokenizer: Any = None) -> None:
    """The invariants every chunking keeps, checked against the whole text's tokens."""
    token_starts, token_ends = (tokenizer or default_tokenizer()).spans(text)
    starts, ends = token_starts.tolist(), token_ends.tolist()
    previous_last = None
    for number, chunk in enumerate(chunks):
        assert text[chunk.start : chunk.end] == chunk.text  # the source's characters, as written
        first, last = token_range(chunk, starts, ends)
        assert chunk.tokens == last - first <= max_tokens
        if previous_last is None:
            assert first == 0
        else:
            assert first == previous_last - overlap, f"chunk {number} does not overlap by {overlap} tokens"
        previous_last = last
    assert previous_last == len(starts)  # the last token is in the last chunk


# --- strategies -----------------------------------------------------------------------------------------------


def test_no_strategy_and_auto_are_800_tokens_overlapping_by_400_reported_as_static() -> None:
    assert parse_chunking_strategy(None) == AUTO
    assert parse_chunking_strategy({"type": "auto"}) == AUTO
    assert strategy_sizes(parse_chunking_strategy({"type": "auto"})) == (800, 400)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(100, 0), (100, 50), (800, 400), (4096, 2048), (1200, 200)])
def test_a_static_strategy_within_bounds_is_itself(max_tokens: int, overlap: int) -> None:
    assert parse_chunking_strategy(static(max_tokens, overlap)) == static(max_tokens, overlap)


def test_whole_numbers_written_as_decimals_are_integers() -> None:
    parsed = parse_chunking_strategy(static(800.0, 400.0))
    assert parsed == static(800, 400)
    assert isinstance(parsed["static"]["max_chunk_size_tokens"], int)


def test_the_parsed_strategy_is_what_openais_types_read() -> None:
    from openai.types.vector_stores import VectorStoreFile

    file = VectorStoreFile.model_validate(
        {
            "id": "file-abc",
            "object": "vector_store.file",
            "created_at": 1,
            "status": "completed",
            "usage_bytes": 10,
            "vector_store_id": "vs_abc",
            "chunking_strategy": parse_chunking_strategy({"type": "auto"}),
        }
    )
    assert file.chunking_strategy is not None
    assert file.chunking_strategy.type == "static"
    assert file.chunking_strategy.static.max_chunk_size_tokens == 800  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "param", "code", "message"),
    [
        (
            static(99, 0),
            "chunking_strategy.static.max_chunk_size_tokens",
            "integer_below_min_value",
            "Invalid 'chunking_strategy.static.max_chunk_size_tokens': integer below minimum value. "
            "Expected a value >= 100, but got 99 instead.",
        ),
        (
            static(4097, 0),
            "chunking_strategy.static.max_chunk_size_tokens",
            "integer_above_max_value",
            "Invalid 'chunking_strategy.static.max_chunk_size_tokens': integer above maximum value. "
            "Expected a value <= 4096, but got 4097 instead.",
        ),
        (
            static(800, 401),
            "chunking_strategy.static.chunk_overlap_tokens",
            "invalid_value",
            "Invalid 'chunking_strategy.static.chunk_overlap_tokens': the overlap (401) must not exceed half of "
            "max_chunk_size_tokens (400).",
        ),
        (
            static(101, 51),
            "chunking_strategy.static.chunk_overlap_tokens",
            "invalid_value",
            "Invalid 'chunking_strategy.static.chunk_overlap_tokens': the overlap (51) must not exceed half of "
            "max_chunk_size_tokens (50).",
        ),
        (
            static(800, -1),
            "chunking_strategy.static.chunk_overlap_tokens",
            "integer_below_min_value",
            "Invalid 'chunking_strategy.static.chunk_overlap_tokens': integer below minimum value. "
            "Expected a value >= 0, but got -1 instead.",
        ),
        (
            static("800", 400),
            "chunking_strategy.static.max_chunk_size_tokens",
            "invalid_type",
            "Invalid type for 'chunking_strategy.static.max_chunk_size_tokens': expected an integer, "
            "but got a string instead.",
        ),
        (
            static(800, True),
            "chunking_strategy.static.chunk_overlap_tokens",
            "invalid_type",
            "Invalid type for 'chunking_strategy.static.chunk_overlap_tokens': expected an integer, "
            "but got a boolean instead.",
        ),
        (
            static(800.5, 400),
            "chunking_strategy.static.max_chunk_size_tokens",
            "invalid_type",
            "Invalid type for 'chunking_strategy.static.max_chunk_size_tokens': expected an integer, "
            "but got a decimal instead.",
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 800}},
            "chunking_strategy.static.chunk_overlap_tokens",
            "missing_required_parameter",
            "Missing required parameter: 'chunking_strategy.static.chunk_overlap_tokens'.",
        ),
        (
            {"type": "static"},
            "chunking_strategy.static",
            "missing_required_parameter",
            "Missing required parameter: 'chunking_strategy.static'.",
        ),
        (
            {"type": "static", "static": [800, 400]},
            "chunking_strategy.static",
            "invalid_type",
            "Invalid type for 'chunking_strategy.static': expected an object, but got an array instead.",
        ),
        (
            {"static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}},
            "chunking_strategy.type",
            "missing_required_parameter",
            "Missing required parameter: 'chunking_strategy.type'.",
        ),
        (
            {"type": "semantic"},
            "chunking_strategy.type",
            "invalid_value",
            "Invalid value: 'semantic'. Supported values are: 'auto' and 'static'.",
        ),
        (
            {"type": 1},
            "chunking_strategy.type",
            "invalid_type",
            "Invalid type for 'chunking_strategy.type': expected a string, but got an integer instead.",
        ),
        (
            "auto",
            "chunking_strategy",
            "invalid_type",
            "Invalid type for 'chunking_strategy': expected an object, but got a string instead.",
        ),
        (
            {"type": "auto", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}},
            "chunking_strategy.static",
            "unknown_parameter",
            "Unknown parameter: 'chunking_strategy.static'.",
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400, "x": 1}},
            "chunking_strategy.static.x",
            "unknown_parameter",
            "Unknown parameter: 'chunking_strategy.static.x'.",
        ),
    ],
    ids=[
        "max-below-100",
        "max-above-4096",
        "overlap-above-half",
        "overlap-above-half-of-odd",
        "overlap-negative",
        "max-a-string",
        "overlap-a-boolean",
        "max-a-fraction",
        "overlap-missing",
        "static-missing",
        "static-an-array",
        "type-missing",
        "type-unknown",
        "type-a-number",
        "strategy-a-string",
        "auto-with-sizes",
        "static-unknown-key",
    ],
)
def test_a_bad_strategy_is_refused_naming_the_field(value: Any, param: str, code: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chunking_strategy(value)
    error = caught.value
    assert (error.param, error.code, error.message, error.status_code) == (param, code, message, 400)


def test_the_fields_path_starts_where_the_request_put_the_strategy() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chunking_strategy(static(50, 0), param="files[3].chunking_strategy")
    assert caught.value.param == "files[3].chunking_strategy.static.max_chunk_size_tokens"


# --- chunks: the rules, with one token per word ---------------------------------------------------------------


def numbered(count: int) -> str:
    return " ".join(f"w{n}" for n in range(count))


def test_a_text_within_the_maximum_is_one_chunk_without_its_surrounding_space() -> None:
    text = "\n\n  Just a few words here.  \n"
    assert chunk_text(text, 100, 50, tokenizer=Words()) == [Chunk("Just a few words here.", 5, 4, 26)]


def test_a_blank_text_has_no_chunks() -> None:
    assert chunk_text("", tokenizer=Words()) == []
    assert chunk_text(" \n\t ", tokenizer=Words()) == []


def test_consecutive_chunks_share_exactly_the_overlap() -> None:
    text = numbered(1000)
    chunks = chunk_text(text, 100, 30, tokenizer=Words())
    check_chunks(text, chunks, 100, 30, Words())
    # Without a better boundary in reach than a space, the latest space: full chunks, a stride of 70.
    assert [c.tokens for c in chunks[:-1]] == [100] * (len(chunks) - 1)
    assert chunks[1].text.startswith("w70 w71 ")
    assert chunks[0].text.endswith(" w99")


@pytest.mark.parametrize(("max_tokens", "overlap"), [(1, 0), (2, 1), (7, 3), (100, 0), (100, 50), (800, 400)])
def test_every_token_is_in_a_chunk_and_no_chunk_passes_the_maximum(max_tokens: int, overlap: int) -> None:
    text = "\n\n".join(
        ". ".join(numbered(n % 13 + 1) for n in range(p % 5 + 1)) + "." for p in range(300)
    )  # paragraphs of sentences of varied lengths
    check_chunks(text, chunk_text(text, max_tokens, overlap, tokenizer=Words()), max_tokens, overlap, Words())


def test_a_chunk_ends_at_a_paragraph_near_its_maximum_rather_than_at_a_later_sentence() -> None:
    paragraph_one = " ".join(["alpha"] * 79) + "."  # 80 tokens
    paragraph_two = ". ".join(" ".join(["beta"] * 9) for _ in range(10)) + "."  # sentences of 10 tokens
    text = f"{paragraph_one}\n\n{paragraph_two}"
    chunks = chunk_text(text, 100, 0, tokenizer=Words())
    assert chunks[0].text == paragraph_one
    assert chunks[1].text.startswith("beta")


def test_a_paragraph_too_far_back_loses_to_a_sentence_near_the_maximum() -> None:
    text = " ".join(["a"] * 50) + "\n\n" + ". ".join(" ".join(["b"] * 8) for _ in range(10))
    chunks = chunk_text(text, 100, 0, tokenizer=Words())
    # The paragraph ends at token 50, out of a paragraph's reach (75..100); sentences of 8 tokens end at 58, 66,
    # ..., 98, the latest in a sentence's reach (85..100).
    assert chunks[0].tokens == 98
    assert chunks[0].text.endswith("b.")


def test_a_line_break_is_preferred_to_a_sentence_and_a_sentence_to_a_space() -> None:
    lines = "\n".join(" ".join(["x"] * 9) + "." for _ in range(20))  # lines of 10 tokens, each a sentence
    first = chunk_text(lines, 95, 0, tokenizer=Words())[0]
    assert (first.tokens, first.text.endswith("x.")) == (90, True)
    sentences = ". ".join(" ".join(["y"] * 6) for _ in range(40))  # sentences of 6 tokens, no line breaks
    first = chunk_text(sentences, 100, 0, tokenizer=Words())[0]
    assert (first.tokens, first.text.endswith("y.")) == (96, True)
    words = " ".join(["y"] * 300)
    assert chunk_text(words, 100, 0, tokenizer=Words())[0].tokens == 100


def test_sentence_ends_inside_quotes_count() -> None:
    text = " ".join(["z"] * 88) + ' "done." ' + " ".join(["z"] * 50)
    assert chunk_text(text, 100, 0, tokenizer=Words())[0].text.endswith('"done."')


def test_the_chunk_text_keeps_the_sources_spacing_inside_and_drops_it_between() -> None:
    text = "one  two\tthree\n\n\nfour"
    assert [c.text for c in chunk_text(text, 2, 0, tokenizer=Words())] == ["one  two", "three\n\n\nfour"]


def test_a_text_without_tokens_is_one_chunk_of_none() -> None:
    class Nothing:
        def spans(self, text: str) -> tuple[Offsets, Offsets]:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)

    assert chunk_text("  \u0301\u0301 ", tokenizer=Nothing()) == [Chunk("\u0301\u0301", 0, 2, 4)]


@pytest.mark.parametrize(("max_tokens", "overlap"), [(0, 0), (100, 51), (100, -1)])
def test_sizes_outside_the_strategys_rules_are_a_programming_error(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text("some text", max_tokens, overlap, tokenizer=Words())


# --- chunks: the embedding model's tokens -------------------------------------------------------------------

PROSE = (
    "Parley is an OpenAI-compatible server. It runs the Responses API over any chat-completions model!\n"
    "Vector stores hold files' chunks; file_search finds them. Does it work? It does.\n\n"
    "Café Crème, naïve Zoë and ÅNGSTRÖM keep their accents and CASE in the chunk's text. 東京は日本の首都です。"
    "大阪も大きい都市です。 Emoji 🚀🚀 stay too.\n\n"
)


def test_chunks_of_real_tokens_keep_the_rules_and_the_sources_characters() -> None:
    text = PROSE * 40
    for max_tokens, overlap in [(100, 50), (100, 0), (150, 37), (800, 400)]:
        chunks = chunk_text(text, max_tokens, overlap)
        check_chunks(text, chunks, max_tokens, overlap)
        assert all(chunk.tokens > overlap for chunk in chunks[:-1])
    assert "Café Crème, naïve Zoë and ÅNGSTRÖM" in chunk_text(text, 100, 0)[1].text + chunk_text(text, 100, 0)[2].text


def test_wordpiece_tokens_are_counted_as_the_embedding_model_counts_them() -> None:
    from tokenizers import Tokenizer

    from parley.inference.sentence_embeddings import default_model_dir

    model = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    model.no_truncation()
    model.no_padding()
    assert count_tokens("Hello, world!") == 4  # hello , world !
    for text in ["unbelievably", PROSE * 20]:
        assert count_tokens(text) == len(model.encode(text, add_special_tokens=False).ids) > 1
    assert count_tokens("   ") == 0


def test_a_run_the_tokenizer_cannot_read_counts_a_token_per_four_characters() -> None:
    blob = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" * 60  # 2,100 characters without a space: one [UNK] for WordPiece
    assert count_tokens(blob) == 525
    chunks = chunk_text(f"Before. {blob} After.", 100, 20)
    check_chunks(f"Before. {blob} After.", chunks, 100, 20)
    assert max(len(chunk.text) for chunk in chunks) <= 400


def test_a_lone_surrogate_is_chunked_in_its_place() -> None:
    text = "before \udc80 after. " * 50
    chunks = chunk_text(text, 100, 10)
    check_chunks(text, chunks, 100, 10)
    assert "\udc80" in chunks[0].text


def test_a_chunk_ends_at_a_cjk_full_stop() -> None:
    text = "東京は日本の首都です。" * 30
    first = chunk_text(text, 100, 0)[0]
    assert first.text.endswith("。")
    assert first.tokens == 99  # 11 characters a sentence, 9 sentences


def test_the_default_tokenizer_is_loaded_once() -> None:
    assert default_tokenizer() is default_tokenizer()
    assert isinstance(default_tokenizer(), WordPieceTokenizer)


def test_a_megabyte_of_text_is_chunked_in_about_a_second() -> None:
    text = (PROSE * (1_000_000 // len(PROSE) + 1))[:1_000_000]
    default_tokenizer()
    started = time.process_time()
    chunks = chunk_text(text)
    elapsed = time.process_time() - started
    assert chunks[-1].end == len(text.rstrip())
    # CPU time across the tokenizer's threads: about 0.5 s here; the bound leaves room for a slower machine.
    assert elapsed < 3.0
