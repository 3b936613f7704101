"""`POST /v1/vector_stores/{id}/search` (issue 14): hybrid ranking, filters, thresholds and errors, over
openai-python, on both databases.

One Parley per database with the embedded all-MiniLM-L6-v2, and one store of short files, each one chunk, with
attributes. The ranking tests pin what each half of the hybrid search adds: a part number that the sentence
embedding hardly tells from its neighbours is found by its words, and a question that shares no word with its
answer is found by its meaning. The index itself, in-process and with vectors made by hand, is
tests/test_vectors_index.py; the route's ownership and page shape are in tests/test_vector_stores.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from parley.vectors.index import terms_of
from tests.conftest import ParleyProcess
from tests.support.calls import error_of
from tests.support.own_server import own_database, owner_client, owners_auth

ALICE = "sk-alice-search-0123456789abcdef00"
BOB = "sk-bob-search-0123456789abcdef0000"

CORPUS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "seal-7731.txt": (
        "Seal kit QX-7731-Z: replacement gasket and O-rings for the centrifugal pump housing, rated to 10 bar.",
        {"category": "parts", "price": 49.5, "in_stock": True, "added": "2024-03-01"},
    ),
    "seal-7730.txt": (
        "Seal kit QX-7730-Z: replacement gasket and O-rings for the centrifugal pump housing, rated to 16 bar.",
        {"category": "parts", "price": 52, "in_stock": False, "added": "2023-11-20"},
    ),
    "seal-7732.txt": (
        "Seal kit QX-7732-Y: replacement gasket and O-rings for the rotary pump cover, rated to 6 bar.",
        {"category": "parts", "price": 38, "in_stock": True, "added": "2024-08-15"},
    ),
    "password.txt": (
        "To recover a lost password, open Settings, choose Security and follow the emailed reset link.",
        {"category": "help", "added": "2024-01-10"},
    ),
    "holidays.txt": (
        "Staff receive twenty-five days of paid annual leave, plus public holidays.",
        {"category": "hr", "added": "2022-05-01"},
    ),
    "shipping.txt": (
        "Orders ship within two business days; express delivery arrives the next morning.",
        {"category": "policy", "price": 0, "added": "2024-02-02"},
    ),
    "coffee.txt": ("The office espresso machine must be descaled every month with citric acid.", None),
}
PART_QUERY = "QX-7731-Z"
# Shares no word with password.txt (checked below): only its meaning can find it.
PARAPHRASE = "I forgot my sign-in secret; how can I get into my profile again?"

database_url = own_database("search")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[ParleyProcess]:
    config: dict[str, Any] = {
        "inference": {
            "providers": {"local-embeddings": {"type": "local-embeddings", "models": {"all-minilm-l6-v2": {}}}}
        },
        "storage": {"url": database_url},
        "auth": owners_auth(alice=ALICE, bob=BOB),
        # The transformer, not the default static model: the meaning-only match is tested on the better model.
        "vector_stores": {"poll_seconds": 0.2, "embedding_model": "all-minilm-l6-v2"},
    }
    parley = ParleyProcess(tmp_path_factory.mktemp("search"), config)
    parley.start()
    yield parley
    parley.stop()


alice = owner_client("alice", ALICE, scope="module")


@pytest.fixture(scope="module")
def store(alice: openai.OpenAI) -> str:
    """A store of the corpus, every file ingested; its id."""
    store = alice.vector_stores.create(name="search")
    for filename, (text, attributes) in CORPUS.items():
        uploaded = alice.files.create(file=(filename, text.encode()), purpose="assistants")
        done = alice.vector_stores.files.create_and_poll(
            uploaded.id, vector_store_id=store.id, attributes=attributes, poll_interval_ms=100
        )
        assert done.status == "completed", done.last_error
    return store.id


def search(client: openai.OpenAI, store: str, query: str | list[str], **options: Any) -> list[tuple[str, float]]:
    """The hits as (filename, score), best first."""
    page = client.vector_stores.search(store, query=query, **options)
    return [(hit.filename, hit.score) for hit in page.data]


# Ranking ------------------------------------------------------------------------------------------------


def test_a_part_number_is_found_by_its_words_where_vectors_alone_barely_tell_the_parts_apart(
    alice: openai.OpenAI, store: str
) -> None:
    hybrid = search(alice, store, PART_QUERY, max_num_results=3)
    vectors = dict(search(alice, store, PART_QUERY, max_num_results=3, ranking_options={"ranker": "none"}))
    assert hybrid[0][0] == "seal-7731.txt"
    # The neighbours' vectors are about as near as its own (within a few hundredths); its words lift it clear.
    assert max(vectors.values()) - min(vectors.values()) < 0.1
    assert hybrid[0][1] - hybrid[1][1] > 0.1
    assert hybrid[0][1] > vectors["seal-7731.txt"]
    # Keywords alone: it holds every word of the query, the others two of three (the rarer one is its own).
    keywords = search(
        alice, store, PART_QUERY, ranking_options={"hybrid_search": {"embedding_weight": 0, "text_weight": 1}}
    )
    assert keywords[0] == ("seal-7731.txt", 1.0)
    assert all(score < 0.7 for _, score in keywords[1:])


def test_a_question_sharing_no_word_with_its_answer_is_found_by_meaning(alice: openai.OpenAI, store: str) -> None:
    assert not set(terms_of(PARAPHRASE)) & set(terms_of(CORPUS["password.txt"][0]))
    hits = search(alice, store, PARAPHRASE)
    assert hits[0][0] == "password.txt"
    assert hits[0][1] - hits[1][1] > 0.2


def test_a_list_of_queries_finds_what_each_finds_and_is_echoed(alice: openai.OpenAI, store: str) -> None:
    page = alice.vector_stores.search(store, query=[PART_QUERY, PARAPHRASE], max_num_results=3)
    assert page.search_query == [PART_QUERY, PARAPHRASE]  # type: ignore[attr-defined]
    names = [hit.filename for hit in page.data]
    assert names[0] == "seal-7731.txt" and "password.txt" in names
    assert len(names) == len(set(names)) == 3  # each chunk once, with its best score


def test_results_are_chunks_best_first_with_their_files_name_attributes_and_text(
    alice: openai.OpenAI, store: str
) -> None:
    page = alice.vector_stores.search(store, query="paid annual leave for staff")
    first = page.data[0]
    text, attributes = CORPUS["holidays.txt"]
    assert (first.filename, first.attributes, [(c.type, c.text) for c in first.content]) == (
        "holidays.txt",
        attributes,
        [("text", text)],
    )
    assert first.file_id.startswith("file-")
    scores = [hit.score for hit in page.data]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= score <= 1 for score in scores)
    assert len(scores) == len(CORPUS)  # fewer chunks than max_num_results' default (10): every one


def test_max_num_results_caps_the_results(alice: openai.OpenAI, store: str) -> None:
    assert len(search(alice, store, "pump", max_num_results=1)) == 1
    assert len(search(alice, store, "pump", max_num_results=4)) == 4
    assert len(search(alice, store, "pump", max_num_results=50)) == len(CORPUS)


def test_score_threshold_keeps_only_results_that_reach_it(alice: openai.OpenAI, store: str) -> None:
    question = "How much vacation time do employees get?"
    every = search(alice, store, question)
    assert every[0][0] == "holidays.txt"
    threshold = (every[0][1] + every[1][1]) / 2
    assert search(alice, store, question, ranking_options={"score_threshold": threshold}) == every[:1]
    assert search(alice, store, question, ranking_options={"score_threshold": 1}) == []
    assert search(alice, store, question, ranking_options={"score_threshold": 0}) == every


def test_weights_scale_each_half_and_ranker_none_is_vectors_alone(alice: openai.OpenAI, store: str) -> None:
    vectors = search(alice, store, PART_QUERY, ranking_options={"ranker": "none"})
    only_vectors = {"hybrid_search": {"embedding_weight": 1, "text_weight": 0}}
    assert search(alice, store, PART_QUERY, ranking_options=only_vectors) == vectors
    # Weights are relative: 2 and 1 is 0.7 and 0.35's ranking and scores.
    doubled = search(
        alice, store, PART_QUERY, ranking_options={"hybrid_search": {"embedding_weight": 2, "text_weight": 1}}
    )
    halved = search(
        alice, store, PART_QUERY, ranking_options={"hybrid_search": {"embedding_weight": 0.7, "text_weight": 0.35}}
    )
    assert doubled == halved
    for ranker in ("auto", "default-2024-11-15"):
        assert search(alice, store, PART_QUERY, ranking_options={"ranker": ranker}) == search(alice, store, PART_QUERY)


def test_rewrite_query_keeps_the_words_that_carry_the_question(alice: openai.OpenAI, store: str) -> None:
    page = alice.vector_stores.search(store, query="What is the delivery time for express orders?", rewrite_query=True)
    assert page.search_query == ["delivery time express orders"]  # type: ignore[attr-defined]
    assert page.data[0].filename == "shipping.txt"
    page = alice.vector_stores.search(store, query="What is it?", rewrite_query=True)
    assert page.search_query == ["What is it?"]  # type: ignore[attr-defined]  # nothing but filler: kept whole


# Filters ------------------------------------------------------------------------------------------------


def cmp(kind: str, key: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "key": key, "value": value}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (cmp("eq", "category", "parts"), {"seal-7731.txt", "seal-7730.txt", "seal-7732.txt"}),
        (cmp("ne", "category", "parts"), {"password.txt", "holidays.txt", "shipping.txt", "coffee.txt"}),
        (cmp("eq", "in_stock", True), {"seal-7731.txt", "seal-7732.txt"}),
        (cmp("eq", "price", 52.0), {"seal-7730.txt"}),
        (cmp("gt", "price", 40), {"seal-7731.txt", "seal-7730.txt"}),
        (cmp("gte", "price", 49.5), {"seal-7731.txt", "seal-7730.txt"}),
        (cmp("lt", "price", 38), {"shipping.txt"}),
        (cmp("lte", "price", 38), {"seal-7732.txt", "shipping.txt"}),
        (cmp("gt", "added", "2024-02-01"), {"seal-7731.txt", "seal-7732.txt", "shipping.txt"}),
        (cmp("in", "category", ["hr", "help"]), {"holidays.txt", "password.txt"}),
        (cmp("nin", "category", ["parts", "policy"]), {"holidays.txt", "password.txt", "coffee.txt"}),
        (
            {"type": "and", "filters": [cmp("eq", "category", "parts"), cmp("eq", "in_stock", True)]},
            {"seal-7731.txt", "seal-7732.txt"},
        ),
        (
            {
                "type": "or",
                "filters": [
                    cmp("eq", "category", "hr"),
                    {"type": "and", "filters": [cmp("lt", "price", 40), cmp("eq", "category", "parts")]},
                ],
            },
            {"holidays.txt", "seal-7732.txt"},
        ),
    ],
)
def test_filters_keep_the_files_whose_attributes_pass(
    alice: openai.OpenAI, store: str, filters: dict[str, Any], expected: set[str]
) -> None:
    # A query nearest to files the filter excludes: each allowed file is still found, however far down.
    hits = search(alice, store, "replacement gasket for a pump", filters=filters, max_num_results=50)
    assert {name for name, _ in hits} == expected


@pytest.mark.parametrize(
    ("filters", "param"),
    [
        (
            {"type": "and", "filters": [cmp("eq", "a", 1), {"type": "near", "key": "a", "value": 1}]},
            "filters.filters[1].type",
        ),
        ({"type": "eq", "key": "a"}, "filters.value"),
        (cmp("gt", "a", True), "filters.value"),
        (cmp("in", "a", [1, [2]]), "filters.value[1]"),
        (cmp("eq", "a", {"b": 1}), "filters.value"),
        ({"type": "or", "filters": "x"}, "filters.filters"),
        ({"type": "eq", "key": "a", "value": 1, "extra": 2}, "filters.extra"),
    ],
)
def test_a_bad_filter_is_a_400_naming_its_place(
    alice: openai.OpenAI, store: str, filters: dict[str, Any], param: str
) -> None:
    status, body = error_of(lambda: alice.vector_stores.search(store, query="pump", filters=filters))  # type: ignore[arg-type]
    assert (status, body["type"], body["param"]) == (400, "invalid_request_error", param)


def test_a_filter_nested_past_the_bound_is_refused(alice: openai.OpenAI, store: str) -> None:
    deep: dict[str, Any] = cmp("eq", "a", 1)
    for _ in range(20):
        deep = {"type": "and", "filters": [deep]}
    status, body = error_of(lambda: alice.vector_stores.search(store, query="pump", filters=deep))  # type: ignore[arg-type]
    assert status == 400
    assert body["param"].startswith("filters.filters[0].filters[0]")


# Errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"query": []}, "query"),
        ({"query": ["pump", ""]}, "query[1]"),
        ({"query": 3}, "query"),
        ({"query": "pump", "max_num_results": 0}, "max_num_results"),
        ({"query": "pump", "max_num_results": "5"}, "max_num_results"),
        ({"query": "pump", "ranking_options": {"ranker": "best"}}, "ranking_options.ranker"),
        ({"query": "pump", "ranking_options": {"score_threshold": 1.5}}, "ranking_options.score_threshold"),
        ({"query": "pump", "ranking_options": {"colour": 1}}, "ranking_options.colour"),
        (
            {"query": "pump", "ranking_options": {"hybrid_search": {"embedding_weight": 0, "text_weight": 0}}},
            "ranking_options.hybrid_search",
        ),
        (
            {"query": "pump", "ranking_options": {"hybrid_search": {"embedding_weight": 1}}},
            "ranking_options.hybrid_search.text_weight",
        ),
        ({"query": "pump", "rewrite_query": "yes"}, "rewrite_query"),
    ],
)
def test_a_bad_search_field_is_a_400_naming_it(
    alice: openai.OpenAI, store: str, fields: dict[str, Any], param: str
) -> None:
    status, body = error_of(lambda: alice.post(f"/vector_stores/{store}/search", body=fields, cast_to=object))
    assert (status, body["type"], body["param"]) == (400, "invalid_request_error", param)


def test_another_owners_store_is_not_searched(server: ParleyProcess, store: str) -> None:
    bob = server.client(api_key=BOB)
    status, body = error_of(lambda: bob.vector_stores.search(store, query=PART_QUERY))
    assert (status, body["message"]) == (404, f"No vector store found with id '{store}'.")
