"""`POST /v1/embeddings` from the embedded all-MiniLM-L6-v2, computed in-process (parley.inference.embeddings).

Over HTTP with openai-python, against Parley configured with the `local-embeddings` provider only, and
against Parley with no configuration at all (where it is on by default).
"""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from parley.inference.sentence_embeddings import default_model_dir
from tests.conftest import ROOT, ParleyProcess
from tests.support.calls import error_object

MODEL = "all-minilm-l6-v2"
FULL_ID = f"local-embeddings/{MODEL}"
CONFIG = {"inference": {"providers": {"local-embeddings": {"type": "local-embeddings", "models": {MODEL: {}}}}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    with ParleyProcess(tmp_path_factory.mktemp("embeddings"), CONFIG) as process:
        yield process


def vectors(client: openai.OpenAI, texts: str | list[str], **kwargs: object) -> np.ndarray:
    reply = client.embeddings.create(model=MODEL, input=texts, encoding_format="float", **kwargs)  # type: ignore[arg-type]
    return np.array([item.embedding for item in sorted(reply.data, key=lambda d: d.index)], dtype=np.float32)


def tokens(text: str) -> list[int]:
    """The model's own token ids for `text`, without [CLS] and [SEP]."""
    tokenizer = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128
    tokenizer.no_truncation()
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_a_string_gets_one_unit_vector_of_384_floats_and_its_token_count(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model=MODEL, input="The weather is lovely today.", encoding_format="float")
    assert reply.object == "list"
    assert reply.model == MODEL
    (item,) = reply.data
    assert item.object == "embedding" and item.index == 0
    assert len(item.embedding) == 384
    assert np.linalg.norm(item.embedding) == pytest.approx(1.0, abs=1e-5)
    # [CLS] the weather is lovely today . [SEP]
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == 8


def test_the_model_is_listed_by_its_id_and_its_alias_and_answers_by_either(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert FULL_ID in listed and MODEL in listed
    assert listed[FULL_ID].owned_by == "parley"
    by_id = client.embeddings.create(model=FULL_ID, input="same text", encoding_format="float")
    assert by_id.model == FULL_ID
    assert np.allclose(by_id.data[0].embedding, vectors(client, "same text")[0], atol=1e-6)


def test_similarities_match_sentence_transformers_published_example(client: openai.OpenAI) -> None:
    # sentence-transformers' README computes these with all-MiniLM-L6-v2: 0.6660, 0.1046 and 0.1411.
    v = vectors(client, ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    similarity = v @ v.T
    assert similarity[0, 1] == pytest.approx(0.6660, abs=5e-4)
    assert similarity[0, 2] == pytest.approx(0.1046, abs=5e-4)
    assert similarity[1, 2] == pytest.approx(0.1411, abs=5e-4)


def test_similar_sentences_are_closer_than_unrelated_ones(client: openai.OpenAI) -> None:
    pairs = [
        ("A man is eating food.", "A man is eating a piece of bread.", "A woman is playing violin."),
        ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground.", "A monkey plays drums."),
        ("How do I reset my password?", "I forgot my password, how can I change it?", "The invoice is overdue."),
        ("PostgreSQL stores rows in heap pages.", "Postgres keeps table rows in heap files.", "Cats sleep a lot."),
    ]
    for anchor, similar, unrelated in pairs:
        a, s, u = vectors(client, [anchor, similar, unrelated])
        assert a @ s > a @ u + 0.3, (anchor, float(a @ s), float(a @ u))


def test_the_same_text_gets_the_same_vector_alone_or_in_any_batch(client: openai.OpenAI) -> None:
    texts = [f"Sentence number {i} is about {'a very long topic ' * (i % 7)}things." for i in range(70)]
    together = vectors(client, texts)
    assert together.shape == (70, 384)
    again = vectors(client, list(reversed(texts)))[::-1]
    for i in (0, 13, 69):
        alone = vectors(client, texts[i])[0]
        assert np.allclose(together[i], alone, atol=1e-5)
    assert np.allclose(together, again, atol=1e-5)
    # Different texts get different vectors, each at its own index.
    assert not np.allclose(together[0], together[1], atol=1e-3)


def test_base64_is_little_endian_float32_and_the_client_default_decodes_it(client: openai.OpenAI) -> None:
    texts = ["first text", "second, longer text"]
    floats = vectors(client, texts)
    raw = client.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    decoded = np.array([np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in raw.data])  # type: ignore[arg-type]
    assert np.array_equal(decoded, floats)
    # With no encoding_format, openai-python asks for base64 itself and decodes it to floats.
    default = client.embeddings.create(model=MODEL, input=texts)
    assert np.array_equal(np.array([d.embedding for d in default.data], dtype=np.float32), floats)


def test_token_arrays_are_read_as_the_models_own_token_ids(client: openai.OpenAI) -> None:
    text = "Token arrays embed like their text."
    from_text = vectors(client, text)[0]
    one = client.embeddings.create(model=MODEL, input=tokens(text), encoding_format="float")
    many = client.embeddings.create(model=MODEL, input=[tokens(text), tokens("other")], encoding_format="float")
    assert np.allclose(one.data[0].embedding, from_text, atol=1e-5)
    assert np.allclose(many.data[0].embedding, from_text, atol=1e-5)
    assert len(many.data) == 2
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input=[101, 30522])
    assert error_object(exc.value)["param"] == "input"


def test_dimensions_other_than_the_models_own_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input="x", dimensions=128)
    error = error_object(exc.value)
    assert error["param"] == "dimensions" and error["type"] == "invalid_request_error"
    assert "does not support specifying dimensions" in str(error["message"])
    assert len(client.embeddings.create(model=MODEL, input="x", dimensions=384).data[0].embedding) == 384


def test_empty_input_is_refused(client: openai.OpenAI) -> None:
    for empty in ("", [], ["text", ""]):
        with pytest.raises(openai.BadRequestError) as exc:
            client.embeddings.create(model=MODEL, input=empty)  # type: ignore[arg-type]
        assert error_object(exc.value)["param"] == "input"


def test_an_input_past_256_tokens_is_refused_in_openais_words(client: openai.OpenAI) -> None:
    # "word " is one token: [CLS], 254 words and [SEP] are exactly 256, the model's limit.
    fits = "word " * 254
    assert client.embeddings.create(model=MODEL, input=fits).usage.prompt_tokens == 256
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input=["short", fits + "word"])
    error = error_object(exc.value)
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert error["message"] == (
        "This model's maximum context length is 256 tokens, however you requested 257 tokens "
        "(257 in your prompt; 0 for the completion). Please reduce your prompt; or completion length."
    )
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input=[101] * 255)
    assert error_object(exc.value)["code"] == "context_length_exceeded"


def test_more_than_2048_inputs_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input=["x"] * 2049)
    assert error_object(exc.value)["param"] == "input"


def test_an_embedding_model_does_not_chat(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "is an embedding model" in str(error_object(exc.value)["message"])


def test_with_no_configuration_the_embedding_model_is_served(embedded: ParleyProcess) -> None:
    client = embedded.client()
    assert {MODEL, FULL_ID} <= {m.id for m in client.models.list()}
    assert len(client.embeddings.create(model=MODEL, input="on by default").data[0].embedding) == 384


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None, reason="needs unshare and ip")
def test_embeddings_work_with_no_network(tmp_path: Path) -> None:
    # Parley and its client in a network namespace of their own, where only loopback exists.
    script = textwrap.dedent(
        f"""
        import json, socket, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from tests.conftest import ParleyProcess
        try:
            socket.create_connection(("1.1.1.1", 443), timeout=2)
            raise SystemExit("the namespace reaches the outside")
        except OSError:
            pass
        server = ParleyProcess(Path({str(tmp_path / "parley")!r}), {CONFIG!r})
        server.start()
        try:
            reply = server.client().embeddings.create(model={MODEL!r}, input="offline", encoding_format="float")
            print(json.dumps(reply.data[0].embedding))
        finally:
            server.stop()
        """
    )
    (tmp_path / "offline.py").write_text(script)
    command = f"ip link set lo up && exec {shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'offline.py'))}"
    try:
        result = subprocess.run(
            ["unshare", "--net", "sh", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    except PermissionError:
        pytest.skip("network namespaces need root")
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip("network namespaces are not permitted here")
    assert result.returncode == 0, result.stdout + result.stderr
    offline = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)
    assert offline.shape == (384,)
    assert np.linalg.norm(offline) == pytest.approx(1.0, abs=1e-5)


async def test_embed_texts_gives_unit_vectors_from_the_local_model_and_from_an_upstream() -> None:
    # The interface the rest of Parley calls (file_search's ingestion and queries), in-process.
    from parley.config import InferenceSettings
    from parley.errors import ContextLengthExceededError
    from parley.inference.embeddings import embed_texts
    from parley.inference.registry import ModelRegistry
    from tests.recording_fixtures import EMBEDDING_MODEL, EmbeddingUpstream, embedding

    with EmbeddingUpstream() as upstream:
        providers = {**CONFIG["inference"]["providers"], "up": {"type": "openai", "base_url": upstream.base_url}}
        registry = ModelRegistry.from_settings(InferenceSettings.model_validate({"providers": providers}))
        try:
            local = registry.resolve(MODEL)
            long_text = "word " * 600  # past the model's 256 tokens: read up to them, as sentence-transformers does
            result = await embed_texts(local.provider, local.name, ["a cat", long_text, "word " * 254])
            assert result.vectors.shape == (3, 384)
            assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
            assert np.allclose(result.vectors[1], result.vectors[2], atol=1e-5)  # both cut to the same 256 tokens
            with pytest.raises(ContextLengthExceededError, match="maximum context length"):
                await embed_texts(local.provider, local.name, [long_text], truncate=False)

            remote = registry.resolve(f"up/{EMBEDDING_MODEL}")
            texts = [f"text {i}" for i in range(2050)]  # more than one request's 2,048
            result = await embed_texts(remote.provider, remote.name, texts)
            assert result.vectors.shape == (2050, 8)
            expected = np.array(embedding("text 2049"), dtype=np.float32)
            assert np.allclose(result.vectors[2049], expected / np.linalg.norm(expected), atol=1e-6)
            assert [len(r["input"]) for r in upstream.app.embedding_requests] == [2048, 2]
        finally:
            await registry.close()
