"""`POST /v1/embeddings` from the static model distilled from all-MiniLM-L6-v2 (parley.inference.static_embeddings).

Over HTTP with openai-python, against Parley configured with both local embedding models, and against
Parley with no configuration (where both are on by default). The table is read from the user's cache,
which `make install` fills (`python -m parley.inference.static_embeddings`); a server that finds none
distils it as it starts, once.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from parley.inference.sentence_embeddings import default_model_dir
from tests.conftest import ROOT, ParleyProcess
from tests.support.calls import error_object

MODEL = "all-minilm-l6-v2-static"
FULL_ID = f"local-embeddings/{MODEL}"
ENCODER = "all-minilm-l6-v2"
CONFIG = {
    "inference": {
        "providers": {
            "local-embeddings": {"type": "local-embeddings", "models": {ENCODER: {}, MODEL: {"kind": "static"}}}
        }
    }
}
RETRIEVAL = ROOT / "tests" / "data" / "retrieval"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    process = ParleyProcess(tmp_path_factory.mktemp("static-embeddings"), CONFIG)
    process.start(timeout=300)  # a machine without the cached table distils it first
    yield process
    process.stop()


def vectors(client: openai.OpenAI, texts: str | list[str] | list[list[int]], model: str = MODEL) -> np.ndarray:
    reply = client.embeddings.create(model=model, input=texts, encoding_format="float")  # type: ignore[arg-type]
    return np.array([item.embedding for item in sorted(reply.data, key=lambda d: d.index)], dtype=np.float32)


def reference_tokenizer() -> Tokenizer:
    """Hugging Face's tokenizer of the model, as sentence-transformers reads it."""
    tokenizer = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def test_a_string_gets_one_unit_vector_of_256_floats_and_its_token_count(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model=MODEL, input="The weather is lovely today.", encoding_format="float")
    assert reply.model == MODEL
    (item,) = reply.data
    assert item.object == "embedding" and item.index == 0
    assert len(item.embedding) == 256
    assert np.linalg.norm(item.embedding) == pytest.approx(1.0, abs=1e-5)
    # the weather is lovely today . (no [CLS] or [SEP]: a static model reads the text's own tokens)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == 6


def test_the_model_is_listed_by_its_id_and_its_alias_and_answers_by_either(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert {FULL_ID, MODEL, ENCODER} <= set(listed)
    assert listed[FULL_ID].owned_by == "parley"
    by_id = client.embeddings.create(model=FULL_ID, input="same text", encoding_format="float")
    assert by_id.model == FULL_ID
    assert np.array_equal(np.array(by_id.data[0].embedding, dtype=np.float32), vectors(client, "same text")[0])


def test_similar_texts_are_closer_than_unrelated_ones(client: openai.OpenAI) -> None:
    triples = [
        ("A man is eating food.", "A man is eating a piece of bread.", "A woman is playing violin."),
        ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground.", "A monkey plays drums."),
        ("How do I reset my password?", "I forgot my password, how can I change it?", "The invoice is overdue."),
        ("PostgreSQL stores rows in heap pages.", "Postgres keeps table rows in heap files.", "Cats sleep a lot."),
        ("The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."),
    ]
    for anchor, similar, unrelated in triples:
        a, s, u = vectors(client, [anchor, similar, unrelated])
        assert a @ s > a @ u + 0.15, (anchor, float(a @ s), float(a @ u))


def test_the_same_text_gets_the_same_vector_alone_in_any_batch_and_from_another_server(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    texts = [f"Sentence number {i} is about {'a very long topic ' * (i % 7)}things." for i in range(70)]
    together = vectors(client, texts)
    assert together.shape == (70, 256)
    again = vectors(client, list(reversed(texts)))[::-1]
    assert np.array_equal(together, again)
    for i in (0, 13, 69):
        assert np.array_equal(vectors(client, texts[i])[0], together[i])
    assert not np.allclose(together[0], together[1], atol=1e-3)
    # Vectors stored by one server are compared with queries embedded by another, or after a restart.
    other = ParleyProcess(tmp_path / "other", CONFIG)
    other.start(timeout=300)
    try:
        assert np.array_equal(vectors(other.client(), texts), together)
    finally:
        other.stop()


def test_a_server_without_the_table_listens_at_once_and_distils_the_same_one(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    # The table is distilled in the background (tens of seconds) and cached; requests wait for it. Distilled
    # anew, it is the one every other server uses: vectors already stored stay comparable.
    cache = tmp_path / "cache"
    model = {"kind": "static", "cache_dir": str(cache)}
    fresh = ParleyProcess(
        tmp_path / "fresh",
        {"inference": {"providers": {"local-embeddings": {"type": "local-embeddings", "models": {MODEL: model}}}}},
    )
    fresh.start()
    try:
        assert not list(cache.glob("static-*.npy")), "the server listened only after distilling"
        texts = ["The weather is lovely today.", "Postgres keeps table rows in heap files.", "naïve café 中文"]
        distilled = vectors(fresh.client(timeout=900), texts)
        assert np.allclose(distilled, vectors(client, texts), atol=1e-5)
        assert len(list(cache.glob("static-*.npy"))) == 1
    finally:
        fresh.stop()


def test_text_embeds_as_its_tokens_do_for_any_text(client: openai.OpenAI) -> None:
    # The static model tokenizes text its own, faster way (BertPieces); its ids must be Hugging Face's.
    # A text and its token ids from `tokenizers` must give the same vector, for text of every kind.
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(32, 127)] + list(
        # NUL is refused by the API; the rest are whitespace, controls, accents, casing traps and CJK.
        "\t\n\r\x01\x0b\x0c\x1c\x7f\x85\xa0\u2009\u3000\u200b\ufeff\ufffdéÉçñüßİ\u0131Σ\u03c3ςάἀ\u0301中文字한국어\u2019“”—…€©°½ⅷ"
        "\U0001f600\u00ad"
    )
    words = ["[SEP]", "[CLS]", "[MASK]", "[unused3]", "https://example.com/a_b?c=1", "x" * 120, "don't", "naïve"]
    texts = [
        "".join(rng.choice(alphabet) if rng.random() < 0.85 else rng.choice(words) for _ in range(rng.randrange(1, 60)))
        for _ in range(300)
    ]
    texts = [t for t in texts if t.strip()]  # an empty or blank input is refused
    tokenizer = reference_tokenizer()
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    with_ids = [i for i, seq in enumerate(ids) if seq]
    from_text = vectors(client, [texts[i] for i in with_ids])
    from_ids = vectors(client, [ids[i] for i in with_ids])
    assert np.array_equal(from_text, from_ids)
    reply = client.embeddings.create(model=MODEL, input=[texts[i] for i in with_ids], encoding_format="float")
    assert reply.usage.prompt_tokens == sum(len(ids[i]) for i in with_ids)


def test_a_text_of_unknown_characters_gets_a_unit_vector(client: openai.OpenAI) -> None:
    # Every token [UNK]: no token vector to average; the text still gets a unit vector, the same for all such.
    v = vectors(client, ["🙂🙂🙂", "\U0001f680"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v[0], v[1])


def test_token_ids_outside_the_vocabulary_and_other_dimensions_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input=[101, 30522])
    assert error_object(exc.value)["param"] == "input"
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input="x", dimensions=384)
    assert error_object(exc.value)["param"] == "dimensions"
    assert len(client.embeddings.create(model=MODEL, input="x", dimensions=256).data[0].embedding) == 256


def test_an_input_reads_whole_up_to_8192_tokens_and_past_that_is_refused(client: openai.OpenAI) -> None:
    fits = "word " * 8192
    assert client.embeddings.create(model=MODEL, input=fits).usage.prompt_tokens == 8192
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input=fits + "word")
    error = error_object(exc.value)
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert "maximum context length is 8192 tokens" in str(error["message"])
    # The end of a long text counts, unlike the encoder's, which stops at 256 tokens.
    head = "The invoice is overdue. " * 60
    a, b = vectors(client, [head + "Cats sleep a lot. " * 60, head + "Rust compiles to machine code. " * 60])
    assert a @ b < 0.95


def test_the_labelled_retrieval_set_finds_most_answers_in_the_first_five(client: openai.OpenAI) -> None:
    # tests/data/retrieval (bench/retrieval_quality.py has the full report, the encoder's beside it): each
    # question's file among the five nearest documents for at least nine questions in ten.
    paths = sorted((RETRIEVAL / "docs").glob("*.md"))
    questions = [json.loads(line) for line in (RETRIEVAL / "questions.jsonl").read_text().splitlines()]
    docs = vectors(client, [p.read_text() for p in paths])
    asked = vectors(client, [q["question"] for q in questions])
    top5 = np.argsort(-(asked @ docs.T), axis=1)[:, :5]
    hits = [paths.index(RETRIEVAL / "docs" / q["file"]) in top5[i] for i, q in enumerate(questions)]
    assert sum(hits) / len(hits) >= 0.9, (sum(hits), len(hits))


def test_a_short_request_is_answered_while_a_large_one_is_being_embedded(server: ParleyProcess) -> None:
    # A search's query does not wait behind an ingestion's chunks: it takes the model's quick lane. On one
    # queue it could only be answered after the large request.
    bulk_client, query_client = server.client(timeout=600), server.client(timeout=600)
    # 32 chunks of 245 tokens: over a second of the encoder's work on an idle machine, where a short text takes
    # milliseconds.
    chunks = [f"Chunk {i}: " + "the encoder reads every one of these words " * 24 for i in range(32)]
    with ThreadPoolExecutor(1) as pool:
        bulk = pool.submit(bulk_client.embeddings.create, model=ENCODER, input=chunks)
        time.sleep(0.3)
        reply = query_client.embeddings.create(model=ENCODER, input="where is my invoice?")
        assert not bulk.done(), "the large request ended first"
        assert len(reply.data) == 1
        assert len(bulk.result().data) == 32


def test_with_no_configuration_the_static_model_is_served(embedded: ParleyProcess) -> None:
    client = embedded.client()
    assert {MODEL, FULL_ID} <= {m.id for m in client.models.list()}
    assert len(client.embeddings.create(model=MODEL, input="on by default").data[0].embedding) == 256
