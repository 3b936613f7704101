"""The file_search tool over real vector stores, with openai-python, on SQLite and PostgreSQL.

Stores are made through the API (`/v1/files`, `/v1/vector_stores`) and ingested in the background by the
embedded embedding model. The model is the fake upstream's `fake-script`, whose tool calls are written in the
user message: `file_search {"queries": ["..."]}` searches, then the answer is "Results: " and what the search
gave it, citation marks included, so that every step and every citation is known in advance. Only the model is
faked: the stores, their search and the citations are Parley's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from openai.types.responses import ResponseFileSearchToolCall

from parley.store.tables import vector_stores
from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.support.calls import error_of
from tests.support.own_server import own_database, owners_auth, run_sql

ALICE = "sk-alice-file-search-0123456789abcdef"
BOB = "sk-bob-file-search-0123456789abcdef00"
SCRIPT = "fake/fake-script"
RETREAT = 'file_search {"queries": ["Where is the quarterly retreat?"]}'

HANDBOOK = (
    "The quarterly retreat of the operations team takes place in Lisbon, every spring, "
    "at the riverside hotel near the old tram depot."
)
RECIPES = "The lemon tart needs three eggs, a cup of sugar and the zest of two lemons; bake it for forty minutes."
TRAVEL = "Travel to the retreat is booked by the office manager, who reimburses train tickets within a week."

# A database of this module's own: another module's server would sweep these stores as they expire.
database_url = own_database("file-search")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, database_url: str
) -> Iterator[ParleyProcess]:
    config = upstream_config(fake_upstream)
    config["inference"]["providers"]["local-embeddings"] = {
        "type": "local-embeddings",
        "models": {"all-minilm-l6-v2-static": {"kind": "static"}},
    }
    # The stores' default embedding model, by the alias the default names.
    config["inference"]["aliases"]["all-minilm-l6-v2-static"] = "local-embeddings/all-minilm-l6-v2-static"
    config["storage"] = {"url": database_url}
    config["auth"] = owners_auth(alice=ALICE, bob=BOB)
    config["vector_stores"] = {"poll_seconds": 0.2}
    parley = ParleyProcess(tmp_path_factory.mktemp("file-search"), config)
    parley.start()
    yield parley
    parley.stop()


@pytest.fixture(scope="module")
def library(server: ParleyProcess) -> dict[str, Any]:
    """Alice's vector store of three files with attributes, ingested; and the ids of its files by name."""
    client = server.client(api_key=ALICE)
    store = client.vector_stores.create(name="library")
    files = {}
    for name, text, attributes in (
        ("handbook.md", HANDBOOK, {"team": "operations", "year": 2024}),
        ("recipes.txt", RECIPES, {"team": "kitchen", "year": 2023}),
        ("travel.md", TRAVEL, {"team": "operations", "year": 2025}),
    ):
        file_id = client.files.create(file=(name, text.encode()), purpose="assistants").id
        added = client.vector_stores.files.create_and_poll(
            vector_store_id=store.id, file_id=file_id, attributes=attributes, poll_interval_ms=100
        )
        assert added.status == "completed", added.last_error
        files[name] = file_id
    return {"store": store.id, "files": files}


@pytest.fixture
def client(server: ParleyProcess) -> openai.OpenAI:
    return server.client(api_key=ALICE, timeout=60)


def file_search(library: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"type": "file_search", "vector_store_ids": [library["store"]], **options}


def streamed(client: openai.OpenAI, **request: Any) -> tuple[list[Any], Any]:
    events = list(client.responses.create(**request, stream=True))
    return events, events[-1].response


def create(client: openai.OpenAI, stream: bool, **request: Any) -> Any:
    return streamed(client, **request)[1] if stream else client.responses.create(**request)


def without_marks(text: str, files: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """`text` less its citation marks of known files (and the spaces before each), with the annotations they
    make: what the caller should get for an answer the model wrote as `text`."""
    kept, annotations, at = [], [], 0
    for match in re.finditer(r"[ \t]*【([^】\n]*)】", text):
        name = match.group(1)
        if name not in files:
            continue
        kept.append(text[at : match.start()])
        index = sum(len(piece) for piece in kept)
        annotations.append({"type": "file_citation", "file_id": files[name], "filename": name, "index": index})
        at = match.end()
    kept.append(text[at:])
    return "".join(kept), annotations


def tool_messages(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


# A search and the answer that cites it -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_search_and_the_answer_that_cites_what_it_read(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream, stream: bool
) -> None:
    request = {"model": SCRIPT, "input": RETREAT, "tools": [file_search(library)]}
    if stream:
        events, response = streamed(client, **request)
        assert [e.type for e in events if getattr(e, "output_index", None) == 0] == [
            "response.output_item.added",
            "response.file_search_call.in_progress",
            "response.file_search_call.searching",
            "response.file_search_call.completed",
            "response.output_item.done",
        ]
        added = next(e for e in events if e.type == "response.output_item.added").item
        assert added.model_dump() == {
            "id": response.output[0].id,
            "type": "file_search_call",
            "status": "in_progress",
            "queries": [],
            "results": None,
        }
    else:
        response = client.responses.create(**request)

    assert [item.type for item in response.output] == ["file_search_call", "message"]
    call = response.output[0]
    assert isinstance(call, ResponseFileSearchToolCall)
    assert call.id.startswith("fs_")
    # Without `include`, the results stay Parley's, as OpenAI's stay OpenAI's.
    assert call.model_dump() == {
        "id": call.id,
        "type": "file_search_call",
        "status": "completed",
        "queries": ["Where is the quarterly retreat?"],
        "results": None,
    }

    # The model was offered the search, and read every file's passage under its mark, the best first.
    first, second = fake_upstream.requests[-2:]
    assert [tool["function"]["name"] for tool in first["tools"]] == ["file_search"]
    call_message, tool_message = second["messages"][-2:]
    assert call_message["tool_calls"][0]["id"] == call.id
    assert call_message["tool_calls"][0]["function"] == {
        "name": "file_search",
        "arguments": '{"queries": ["Where is the quarterly retreat?"]}',
    }
    read = tool_message["content"]
    assert read.index("【handbook.md】") < read.index("【recipes.txt】")
    for text in (HANDBOOK, TRAVEL, RECIPES):
        assert text in read

    # The answer is what the model wrote, less its marks, each a citation of its file where it stood.
    text, annotations = without_marks("Results: " + read, library["files"])
    message = response.output[1].content[0]
    assert "【" not in message.text
    assert message.text == text
    assert [a.model_dump() for a in message.annotations] == annotations
    assert {a["filename"] for a in annotations} == {"handbook.md", "recipes.txt", "travel.md"}
    if stream:
        added_annotations = [e.annotation for e in events if e.type == "response.output_text.annotation.added"]
        assert [a.model_dump() for a in added_annotations] == annotations
        assert [e.annotation_index for e in events if e.type == "response.output_text.annotation.added"] == list(
            range(len(annotations))
        )
    assert client.responses.retrieve(response.id).model_dump() == response.model_dump()


def test_a_mark_split_across_pieces_of_the_stream_is_still_a_citation(
    client: openai.OpenAI, library: dict[str, Any]
) -> None:
    # The fake model streams a word at a time: a mark with a space in it arrives in two pieces, and the
    # text before a mark that never closes is given back as written.
    first = client.responses.create(
        model=SCRIPT, input=RETREAT, tools=[file_search(library)], include=["file_search_call.results"]
    )
    events, response = streamed(
        client,
        model="fake/fake-echo",
        input="Lisbon 【handbook.md, travel.md】 and tarts 【recipes.txt】. Odd 【 brackets stay",
        tools=[file_search(library)],
        previous_response_id=first.id,
    )
    part = response.output[0].content[0]
    assert part.text == "Lisbon and tarts. Odd 【 brackets stay"
    files = library["files"]
    assert [(a.file_id, a.index) for a in part.annotations] == [
        (files["handbook.md"], 6),
        (files["travel.md"], 6),
        (files["recipes.txt"], 16),
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == part.text


def test_a_mark_that_names_no_file_read_stays_in_the_text(client: openai.OpenAI, library: dict[str, Any]) -> None:
    first = client.responses.create(
        model=SCRIPT, input=RETREAT, tools=[file_search(library)], include=["file_search_call.results"]
    )
    response = client.responses.create(
        model="fake/fake-echo",
        input="See 【missing.pdf】 and 【handbook.md】",
        tools=[file_search(library)],
        previous_response_id=first.id,
    )
    part = response.output[0].content[0]
    assert part.text == "See 【missing.pdf】 and"
    assert [(a.filename, a.index) for a in part.annotations] == [("handbook.md", len("See 【missing.pdf】 and"))]


# What the caller asks of the search -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_results_when_included(client: openai.OpenAI, library: dict[str, Any], stream: bool) -> None:
    response = create(
        client,
        stream,
        model=SCRIPT,
        input=RETREAT,
        tools=[file_search(library)],
        include=["file_search_call.results"],
    )
    call = response.output[0]
    assert call.results is not None
    assert call.results[0].filename == "handbook.md"
    by_name = {r.filename: r for r in call.results}
    assert set(by_name) == {"handbook.md", "recipes.txt", "travel.md"}
    handbook = by_name["handbook.md"]
    assert handbook.model_dump() == {
        "file_id": library["files"]["handbook.md"],
        "filename": "handbook.md",
        "score": handbook.score,
        "text": HANDBOOK,
        "attributes": {"team": "operations", "year": 2024},
    }
    scores = [r.score for r in call.results]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert client.responses.retrieve(response.id).output[0].results == call.results


def test_max_num_results_and_filters_reach_the_search(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    one = client.responses.create(
        model=SCRIPT,
        input=RETREAT,
        tools=[file_search(library, max_num_results=1)],
        include=["file_search_call.results"],
    )
    assert [r.filename for r in one.output[0].results] == ["handbook.md"]
    assert one.tools[0].max_num_results == 1

    kitchen = {"type": "eq", "key": "team", "value": "kitchen"}
    filtered = client.responses.create(
        model=SCRIPT, input=RETREAT, tools=[file_search(library, filters=kitchen)], include=["file_search_call.results"]
    )
    assert [r.filename for r in filtered.output[0].results] == ["recipes.txt"]
    (read,) = tool_messages(fake_upstream.requests[-1])
    assert RECIPES in read and HANDBOOK not in read

    recent = {
        "type": "and",
        "filters": [
            {"type": "eq", "key": "team", "value": "operations"},
            {"type": "gte", "key": "year", "value": 2025},
        ],
    }
    compound = client.responses.create(
        model=SCRIPT, input=RETREAT, tools=[file_search(library, filters=recent)], include=["file_search_call.results"]
    )
    assert [r.filename for r in compound.output[0].results] == ["travel.md"]
    assert compound.tools[0].filters.model_dump() == recent


def test_the_tool_is_echoed_with_the_defaults_it_searched_with(client: openai.OpenAI, library: dict[str, Any]) -> None:
    response = client.responses.create(model="fake/fake-echo", input="hello", tools=[file_search(library)])
    assert response.tools[0].model_dump() == {
        "type": "file_search",
        "vector_store_ids": [library["store"]],
        "filters": None,
        "max_num_results": 10,
        "ranking_options": {"hybrid_search": None, "ranker": "auto", "score_threshold": 0.0},
    }


def test_a_score_threshold_above_every_result_finds_nothing(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    response = client.responses.create(
        model=SCRIPT,
        input=RETREAT,
        tools=[file_search(library, ranking_options={"score_threshold": 0.99})],
        include=["file_search_call.results"],
    )
    assert (response.output[0].status, response.output[0].results) == ("completed", [])
    assert tool_messages(fake_upstream.requests[-1]) == ['No results for "Where is the quarterly retreat?".']
    assert response.output[1].content[0].annotations == []


def test_tool_choice_file_search_forces_a_search(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    client.responses.create(
        model=SCRIPT, input=RETREAT, tools=[file_search(library)], tool_choice={"type": "file_search"}
    )
    first, second = fake_upstream.requests[-2:]
    assert first["tool_choice"] == {"type": "function", "function": {"name": "file_search"}}
    assert second.get("tool_choice") in (None, "auto")  # after its results, the model decides


def test_allowed_tools_names_file_search_by_its_type(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    other = {"type": "function", "name": "other", "parameters": {"type": "object", "properties": {}}}
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "file_search"}]}
    client.responses.create(model=SCRIPT, input=RETREAT, tools=[other, file_search(library)], tool_choice=choice)
    assert [tool["function"]["name"] for tool in fake_upstream.requests[-2]["tools"]] == ["file_search"]


def test_allowed_tools_required_may_name_file_search_alone(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    other = {"type": "function", "name": "other", "parameters": {"type": "object", "properties": {}}}
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "file_search"}]}
    response = client.responses.create(
        model=SCRIPT, input=RETREAT, tools=[other, file_search(library)], tool_choice=choice
    )
    assert response.output[0].type == "file_search_call"
    assert fake_upstream.requests[-2]["tool_choice"] == "required"


def test_a_call_with_bad_arguments_fails_and_the_model_reads_why(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    events, response = streamed(client, model=SCRIPT, input='file_search {"queries": []}', tools=[file_search(library)])
    call = response.output[0]
    assert (call.type, call.status, call.queries) == ("file_search_call", "failed", [])
    # OpenAI has no `.failed` event for a file search: the item is done, failed.
    assert [e.type for e in events if getattr(e, "output_index", None) == 0][-2:] == [
        "response.file_search_call.searching",
        "response.output_item.done",
    ]
    (read,) = tool_messages(fake_upstream.requests[-1])
    assert read == "Error: The argument 'queries' must hold a query that is not empty."
    assert response.status == "completed"


def test_a_call_is_held_to_a_few_queries(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    six = json.dumps({"queries": [f"retreat {n}" for n in range(6)]})
    response = client.responses.create(model=SCRIPT, input=f"file_search {six}", tools=[file_search(library)])
    assert response.output[0].status == "failed"
    assert tool_messages(fake_upstream.requests[-1]) == ["Error: At most 5 queries can be searched at once."]
    # The schema says so too: a model held to it by a grammar (the embedded one) cannot write more.
    queries = fake_upstream.requests[-2]["tools"][0]["function"]["parameters"]["properties"]["queries"]
    assert (queries["minItems"], queries["maxItems"]) == (1, 5)


def test_a_single_query_string_is_taken_too(client: openai.OpenAI, library: dict[str, Any]) -> None:
    response = client.responses.create(
        model=SCRIPT, input='file_search {"query": "lemon tart"}', tools=[file_search(library)]
    )
    assert (response.output[0].status, response.output[0].queries) == ("completed", ["lemon tart"])


# Stores the caller cannot search ------------------------------------------------------------------------


def test_an_unknown_vector_store_is_a_404_before_the_response_starts(
    client: openai.OpenAI, library: dict[str, Any]
) -> None:
    tools = [{"type": "file_search", "vector_store_ids": [library["store"], "vs_doesnotexist"]}]
    status, body = error_of(lambda: client.responses.create(model=SCRIPT, input=RETREAT, tools=tools))
    assert status == 404
    assert body["message"] == "No vector store found with id 'vs_doesnotexist'."
    assert body["type"] == "invalid_request_error"
    status, _ = error_of(lambda: list(client.responses.create(model=SCRIPT, input=RETREAT, tools=tools, stream=True)))
    assert status == 404


def test_an_expired_vector_store_is_a_400(client: openai.OpenAI, database_url: str) -> None:
    store = client.vector_stores.create(name="old", expires_after={"anchor": "last_active_at", "days": 1})
    run_sql(database_url, sa.update(vector_stores).where(vector_stores.c.id == store.id).values(expires_at=1))
    tools = [{"type": "file_search", "vector_store_ids": [store.id]}]
    status, body = error_of(lambda: client.responses.create(model=SCRIPT, input=RETREAT, tools=tools))
    assert (status, body["code"]) == (400, "vector_store_expired")
    assert store.id in body["message"]


def test_another_owners_vector_store_is_not_found(server: ParleyProcess, library: dict[str, Any]) -> None:
    bob = server.client(api_key=BOB)
    status, body = error_of(lambda: bob.responses.create(model=SCRIPT, input=RETREAT, tools=[file_search(library)]))
    assert status == 404
    assert body["message"] == f"No vector store found with id '{library['store']}'."


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "file_search"}, "tools[0].vector_store_ids"),
        ({"type": "file_search", "vector_store_ids": []}, "tools[0].vector_store_ids"),
        ({"type": "file_search", "vector_store_ids": ["file-abc"]}, "tools[0].vector_store_ids"),
        ({"type": "file_search", "vector_store_ids": ["vs_a"], "max_num_results": 51}, "tools[0].max_num_results"),
        ({"type": "file_search", "vector_store_ids": ["vs_a"], "max_num_results": "5"}, "tools[0].max_num_results"),
        (
            {"type": "file_search", "vector_store_ids": ["vs_a"], "ranking_options": {"score_threshold": 2}},
            "tools[0].ranking_options.score_threshold",
        ),
        (
            {
                "type": "file_search",
                "vector_store_ids": ["vs_a"],
                "filters": {"type": "and", "filters": [{"type": "like", "key": "a", "value": 1}]},
            },
            "tools[0].filters.filters[0].type",
        ),
        ({"type": "file_search", "vector_store_ids": ["vs_a"], "bogus": 1}, "tools[0].bogus"),
    ],
)
def test_a_bad_definition_is_a_400_naming_its_place(client: openai.OpenAI, tool: dict[str, Any], param: str) -> None:
    status, body = error_of(lambda: client.responses.create(model=SCRIPT, input="hi", tools=[tool]))
    assert status == 400
    assert body["param"] == param, body


# Later turns --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include", [False, True])
def test_a_previous_response_id_chain_carries_the_search(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream, include: bool
) -> None:
    first = client.responses.create(
        model=SCRIPT,
        input=RETREAT,
        tools=[file_search(library)],
        include=["file_search_call.results"] if include else [],
    )
    client.responses.create(model="fake/fake-echo", input="and then?", previous_response_id=first.id)
    messages = fake_upstream.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert messages[1]["tool_calls"][0]["id"] == first.output[0].id
    read = messages[2]["content"]
    if include:
        assert HANDBOOK in read and "【handbook.md】" in read
    else:
        # Not kept: the model is told what was searched for, and that it can search again.
        assert read == (
            'The results of this search for "Where is the quarterly retreat?" were not kept; search again to read them.'
        )
    items = client.responses.input_items.list(first.id).data
    assert [item.type for item in items] == ["message"]


def test_a_conversation_keeps_the_search_among_its_items(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    conversation = client.conversations.create()
    first = client.responses.create(
        model=SCRIPT,
        input=RETREAT,
        tools=[file_search(library)],
        include=["file_search_call.results"],
        conversation=conversation.id,
    )
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [item.type for item in items] == ["message", "file_search_call", "message"]
    assert items[1].model_dump() == first.output[0].model_dump()
    client.responses.create(model="fake/fake-echo", input="thanks", conversation=conversation.id)
    messages = fake_upstream.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert HANDBOOK in messages[2]["content"]


def test_a_stateless_caller_sends_the_search_back_as_input(
    client: openai.OpenAI, library: dict[str, Any], fake_upstream: FakeUpstream
) -> None:
    first = client.responses.create(
        model=SCRIPT,
        input=RETREAT,
        tools=[file_search(library)],
        include=["file_search_call.results"],
        store=False,
    )
    history = [item.model_dump(exclude_none=True) for item in first.output]
    without_results = {key: value for key, value in history[0].items() if key != "results"}
    for call in (history[0], without_results):
        client.responses.create(
            model="fake/fake-echo",
            input=[{"role": "user", "content": RETREAT}, call, history[1], {"role": "user", "content": "and?"}],
            store=False,
        )
        messages = fake_upstream.requests[-1]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
        assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {
            "queries": ["Where is the quarterly retreat?"]
        }
        assert (HANDBOOK in messages[2]["content"]) == ("results" in call)
