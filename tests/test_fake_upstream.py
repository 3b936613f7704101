"""The fake upstream, driven directly with the official `openai` client.

Parley's tests trust the fake to speak OpenAI's wire format; these pin that it does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.fake_upstream import FakeUpstream


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0, timeout=10) as c:
        yield c


def test_models_lists_the_scenarios(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "fake-echo" in ids and "fake-long" in ids and "fake-tool" in ids


def test_echo_completion(client: openai.OpenAI, fake: FakeUpstream) -> None:
    completion = client.chat.completions.create(
        model="fake-echo",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there world"}]},
        ],
    )
    assert completion.choices[0].message.content == "hello there world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
    }
    assert fake.requests[-1]["messages"][1]["content"] == [{"type": "text", "text": "hello there world"}]


def test_echo_stream_is_one_word_per_chunk_then_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fake-echo",
            messages=[{"role": "user", "content": "hello there world"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["hello", " there", " world"]
    assert chunks[4].choices[0].finish_reason == "stop"
    assert chunks[5].choices == [] and chunks[5].usage is not None
    assert chunks[5].usage.completion_tokens == 3
    assert len(chunks) == 6


def test_echo_stops_at_max_tokens_with_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="fake-echo", messages=[{"role": "user", "content": "one two three four"}], max_tokens=2
    )
    assert completion.choices[0].message.content == "one two"
    assert completion.choices[0].finish_reason == "length"


def test_echo_stream_logprobs(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fake-echo",
            messages=[{"role": "user", "content": "hi you"}],
            stream=True,
            logprobs=True,
            top_logprobs=2,
        )
    )
    logprobs = chunks[2].choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    entry = logprobs.content[0]
    assert (entry.token, entry.logprob, entry.bytes) == (" you", -0.5, list(b" you"))
    assert [top.token for top in entry.top_logprobs] == [" you", "alt1"]


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def test_tool_call_stream_parses(client: openai.OpenAI) -> None:
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(
        model="fake-tool", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER], stream=True
    ):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function and delta.function.name) or ""
            call["arguments"] += (delta.function and delta.function.arguments) or ""
    assert calls == {0: {"id": "call_fake_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert finish == "tool_calls"


def test_parallel_tool_calls_and_named_choice(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "weather and time?"}]
    both = client.chat.completions.create(model="fake-tool", messages=messages, tools=[WEATHER, TIME])
    calls = both.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_fake_1", "get_weather", {"city": "Paris"}),
        ("call_fake_2", "get_time", {"city": "Paris"}),
    ]
    named = client.chat.completions.create(
        model="fake-tool",
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["get_time"]
    single = client.chat.completions.create(
        model="fake-tool", messages=messages, tools=[WEATHER, TIME], parallel_tool_calls=False
    )
    assert len(single.choices[0].message.tool_calls or []) == 1


def test_tool_result_is_repeated(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="fake-tool",
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_fake_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_fake_1", "content": "sunny"},
        ],
        tools=[WEATHER],
    )
    assert completion.choices[0].message.content == "The tool said: sunny"


def test_json_reply(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="fake-json", messages=[{"role": "user", "content": "?"}])
    assert json.loads(completion.choices[0].message.content or "") == {"answer": 42}


@pytest.mark.parametrize(
    ("model", "error", "message"),
    [
        ("fake-error-400", openai.BadRequestError, "fake bad request"),
        ("fake-error-429", openai.RateLimitError, "fake rate limit"),
        ("fake-error-500", openai.InternalServerError, "fake upstream crash"),
        ("no-such-model", openai.NotFoundError, "no-such-model"),
    ],
)
def test_error_statuses(client: openai.OpenAI, model: str, error: type[openai.APIStatusError], message: str) -> None:
    with pytest.raises(error) as info:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert message in info.value.message


def test_error_400_body(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-error-400", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body == {
        "message": "fake bad request",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "fake_code",
    }


def test_long_stream_chunk_count(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-long",
        messages=[{"role": "user", "content": "go"}],
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == [f"tok{i} " for i in range(50)]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 50


def test_long_completion_defaults_to_1000_tokens(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="fake-long", messages=[{"role": "user", "content": "go"}])
    assert completion.usage is not None and completion.usage.completion_tokens == 1000


def test_midstream_error_frame_raises_in_the_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-midstream-error", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError, match="fake mid-stream failure"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "one", " two", " three"]


def test_drop_cuts_the_connection(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-drop", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        list(stream)


def test_malformed_frame_is_not_json(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-malformed", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(json.JSONDecodeError):
        list(stream)


def test_hang_times_out(fake: FakeUpstream) -> None:
    with openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0, timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(model="fake-hang", messages=[{"role": "user", "content": "hi"}])


def test_split_script_streams_a_name_in_pieces(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": 'get_weather/_now {"city": "Paris"} & echo {}'}]
    pieces: dict[int, list[str]] = {}
    for chunk in client.chat.completions.create(model="fake-split-script", messages=messages, stream=True):
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.function and delta.function.name:
                pieces.setdefault(delta.index, []).append(delta.function.name)
    assert pieces == {0: ["get_weather", "_now"], 1: ["ec", "ho"]}
    whole = client.chat.completions.create(model="fake-split-script", messages=messages)
    names = [call.function.name for call in whole.choices[0].message.tool_calls or []]
    assert names == ["get_weather_now", "echo"]
