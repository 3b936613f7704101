"""The Responses API over HTTP with the official client, on SQLite and on PostgreSQL.

The model is the fake upstream (deterministic) unless a test needs the
embedded one. Every stream any client here reads is checked by the stream
validator (see conftest).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.responses import Response

from tests.conftest import ParleyProcess, parley_config
from tests.fake_upstream import FakeUpstream
from tests.support.spec import validate_openai, validate_openresponses
from tests.support.stream_validator import collect_stream
from tests.support.tools import CLOCK, WEATHER

ECHO = "fake/fake-echo"
TOOL = "fake/fake-tool"


@pytest.fixture
def client(parley: ParleyProcess) -> openai.OpenAI:
    return parley.client()


def _check_against_specs(response: Response) -> None:
    """The response as the server sent it (fields the SDK fills in with defaults left out)."""
    data = response.to_dict(mode="json")
    validate_openai(data, "Response")
    validate_openresponses(data, "ResponseResource")


def test_text_response(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    response = client.responses.create(model=ECHO, input="hello there parley", instructions="Be brief.")

    assert response.status == "completed"
    assert response.output_text == "hello there parley"
    assert response.model == ECHO
    assert response.instructions == "Be brief."
    [message] = response.output
    assert message.type == "message" and message.status == "completed" and message.id.startswith("msg_")
    assert response.usage.input_tokens > 0 and response.usage.output_tokens == 3
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    sent = fake_upstream.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there parley"},
    ]
    _check_against_specs(response)


def test_open_responses_fields_are_never_null(client: openai.OpenAI) -> None:
    response = client.responses.create(model=ECHO, input="hi").model_dump(mode="json")
    for field in (
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "top_logprobs",
        "tools",
        "tool_choice",
        "truncation",
        "text",
        "service_tier",
        "parallel_tool_calls",
        "background",
        "reasoning",
    ):
        assert response[field] is not None, field
    assert response["text"]["verbosity"] == "medium"


def test_request_settings_are_echoed_and_sent(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    response = client.responses.create(
        model=ECHO,
        input="one two three",
        temperature=0.5,
        top_p=0.9,
        max_output_tokens=50,
        metadata={"purpose": "test"},
        user="someone",
        parallel_tool_calls=False,
    )
    assert (response.temperature, response.top_p, response.max_output_tokens) == (0.5, 0.9, 50)
    assert response.metadata == {"purpose": "test"}
    sent = fake_upstream.requests[-1]
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["user"]) == (0.5, 0.9, 50, "someone")


def test_streamed_text_response(client: openai.OpenAI, parley: ParleyProcess) -> None:
    events = list(client.responses.create(model=ECHO, input="stream these words please", stream=True))

    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 4
    final = events[-1].response
    assert final.output_text == "stream these words please"
    stored = client.responses.retrieve(final.id)
    assert stored.model_dump() == final.model_dump()


def test_raw_stream_follows_the_protocol(parley: ParleyProcess) -> None:
    with parley.http() as http:
        stream = collect_stream(http, "/v1/responses", {"model": ECHO, "input": "raw frames here", "stream": True})
    assert stream.response.output_text == "raw frames here"


def test_retrieve_returns_the_created_response(client: openai.OpenAI) -> None:
    created = client.responses.create(model=ECHO, input="keep me")
    assert client.responses.retrieve(created.id).model_dump() == created.model_dump()


def test_delete_then_404_everywhere(client: openai.OpenAI) -> None:
    created = client.responses.create(model=ECHO, input="short lived")
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model=ECHO, input="again", previous_response_id=created.id)
    assert raised.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_delete_body(parley: ParleyProcess, client: openai.OpenAI) -> None:
    created = client.responses.create(model=ECHO, input="short lived")
    with parley.http() as http:
        answer = http.delete(f"/v1/responses/{created.id}")
    assert answer.status_code == 200
    assert answer.json() == {"id": created.id, "object": "response.deleted", "deleted": True}


def test_unstored_response_cannot_be_retrieved_or_chained(client: openai.OpenAI) -> None:
    response = client.responses.create(model=ECHO, input="forget me", store=False)
    assert response.store is False and response.output_text == "forget me"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model=ECHO, input="next", previous_response_id=response.id)
    assert raised.value.code == "previous_response_not_found"
    assert raised.value.param == "previous_response_id"


def test_chain_of_twenty_turns_sends_the_whole_history_in_order(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    previous = None
    for turn in range(20):
        response = client.responses.create(model=ECHO, input=f"turn {turn}", previous_response_id=previous)
        assert response.output_text == f"turn {turn}"
        assert response.previous_response_id == previous
        previous = response.id
    sent = fake_upstream.requests[-1]["messages"]
    expected = []
    for turn in range(20):
        expected += [{"role": "user", "content": f"turn {turn}"}, {"role": "assistant", "content": f"turn {turn}"}]
    assert sent == expected[:-1]


def test_instructions_are_not_inherited(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.create(model=ECHO, input="a", instructions="First rules.")
    client.responses.create(model=ECHO, input="b", previous_response_id=first.id, instructions="New rules.")
    assert fake_upstream.requests[-1]["messages"][0] == {"role": "system", "content": "New rules."}
    assert {"role": "system", "content": "First rules."} not in fake_upstream.requests[-1]["messages"]


def test_function_call_round_trip(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.create(model=TOOL, input="Weather in Paris?", tools=[WEATHER])

    [call] = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id == "call_fake_1" and call.status == "completed" and call.id.startswith("fc_")
    assert fake_upstream.requests[-1]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]

    second = client.responses.create(
        model=TOOL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24C"}],
        tools=[WEATHER],
    )
    assert second.output_text == "The tool said: Sunny, 24C"
    messages = fake_upstream.requests[-1]["messages"]
    assert messages[-2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_fake_1", "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}
        ],
    }
    assert messages[-1] == {"role": "tool", "tool_call_id": "call_fake_1", "content": "Sunny, 24C"}


def test_function_call_output_as_content_parts(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    response = client.responses.create(
        model=TOOL,
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "Rain"}]},
        ],
        tools=[WEATHER],
    )
    assert response.output_text == "The tool said: Rain"


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_output_must_answer_a_call(
    parley: ParleyProcess, client: openai.OpenAI, fake_upstream: FakeUpstream, stream: bool
) -> None:
    """OpenAI's 400 for an output whose call_id names no call, in the input or in the chain before it."""
    first = client.responses.create(model=TOOL, input="Weather in Paris?", tools=[WEATHER])
    with parley.http() as http:
        stored = [r["id"] for r in http.get("/v1/responses", params={"limit": 100}).json()["data"]]
    sent = len(fake_upstream.requests)
    cases = [
        {"input": [{"type": "function_call_output", "call_id": "call_nowhere", "output": "x"}]},
        {
            "input": [{"type": "function_call_output", "call_id": "call_nowhere", "output": "x"}],
            "previous_response_id": first.id,
        },
    ]
    for case in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model=TOOL, tools=[WEATHER], stream=stream, **case)  # type: ignore[call-overload]
        assert raised.value.body == {
            "message": "No tool call found for function call output with call_id call_nowhere.",
            "type": "invalid_request_error",
            "param": "input",
            "code": None,
        }
    assert len(fake_upstream.requests) == sent, "nothing was sent upstream"
    with parley.http() as http:
        listed = [r["id"] for r in http.get("/v1/responses", params={"limit": 100}).json()["data"]]
    assert listed == stored, "nothing was stored"


def test_a_function_call_needs_its_output_to_go_on(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.create(model=TOOL, input="both", tools=[WEATHER, CLOCK])
    assert [item.call_id for item in first.output] == ["call_fake_1", "call_fake_2"]
    sent = len(fake_upstream.requests)
    answers = {
        "call_fake_1": {"type": "function_call_output", "call_id": "call_fake_1", "output": "Sunny"},
        "call_fake_2": {"type": "function_call_output", "call_id": "call_fake_2", "output": "Noon"},
    }
    for unanswered, given in [
        ("call_fake_1", [{"role": "user", "content": "Never mind."}]),
        ("call_fake_2", [answers["call_fake_1"]]),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(
                model=TOOL,
                input=given,  # type: ignore[arg-type]
                previous_response_id=first.id,
                tools=[WEATHER, CLOCK],
            )
        assert raised.value.body["message"] == f"No tool output found for function call {unanswered}."  # type: ignore[index]
        assert raised.value.param == "input"
    assert len(fake_upstream.requests) == sent, "nothing was sent upstream"
    # In the input alone, too.
    with pytest.raises(openai.BadRequestError, match="No tool output found for function call c1"):
        client.responses.create(
            model=TOOL,
            input=[
                {"role": "user", "content": "Weather?"},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            ],
            tools=[WEATHER],
        )
    both = client.responses.create(
        model=TOOL, input=list(answers.values()), previous_response_id=first.id, tools=[WEATHER, CLOCK]
    )
    assert both.status == "completed"


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_function_calls(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        events = list(client.responses.create(model=TOOL, input="both", tools=[WEATHER, CLOCK], stream=True))
        output = events[-1].response.output
    else:
        output = client.responses.create(model=TOOL, input="both", tools=[WEATHER, CLOCK]).output
    assert [(item.type, item.name, item.call_id) for item in output] == [
        ("function_call", "get_weather", "call_fake_1"),
        ("function_call", "get_time", "call_fake_2"),
    ]


def test_tool_choice_named_and_allowed_tools(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    named = client.responses.create(
        model=TOOL, input="x", tools=[WEATHER, CLOCK], tool_choice={"type": "function", "name": "get_time"}
    )
    assert named.output[0].name == "get_time"
    assert fake_upstream.requests[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}

    allowed = client.responses.create(
        model=TOOL,
        input="x",
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]},
    )
    sent = fake_upstream.requests[-1]
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_time"]
    assert sent["tool_choice"] == "required"
    assert [item.name for item in allowed.output] == ["get_time"]


def test_unknown_tool_type_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model=ECHO, input="x", tools=[WEATHER, {"type": "code_interpreter", "container": "auto"}]
        )
    assert raised.value.param == "tools[1].type"
    assert "code_interpreter" in raised.value.message


def test_structured_output(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    response = client.responses.create(
        model="fake/fake-json",
        input="What is the answer?",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )
    assert json.loads(response.output_text) == {"answer": 42}
    assert fake_upstream.requests[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert response.text.format.type == "json_schema"


def test_logprobs_when_included(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=ECHO, input="two words", include=["message.output_text.logprobs"], top_logprobs=2
    )
    part = response.output[0].content[0]
    assert [entry.token for entry in part.logprobs] == ["two", " words"]
    assert all(len(entry.top_logprobs) == 2 for entry in part.logprobs)
    plain = client.responses.create(model=ECHO, input="two words")
    assert plain.output[0].content[0].logprobs == []


def test_max_output_tokens_makes_an_incomplete_response(client: openai.OpenAI) -> None:
    words = [f"w{i}" for i in range(20)]
    # 16 is the fewest OpenAI takes.
    response = client.responses.create(model=ECHO, input=" ".join(words), max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == " ".join(words[:16])


def test_input_items_pagination(client: openai.OpenAI) -> None:
    items = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    response = client.responses.create(model=ECHO, input=items)

    everything = client.responses.input_items.list(response.id, order="asc")
    texts = [item.content[0].text for item in everything.data]
    assert texts == [f"message {i}" for i in range(5)]
    ids = [item.id for item in everything.data]

    newest_first = client.responses.input_items.list(response.id)
    assert [item.id for item in newest_first.data] == ids[::-1]

    page = client.responses.input_items.list(response.id, order="asc", limit=2)
    assert [item.id for item in page.data] == ids[:2]
    assert (page.first_id, page.last_id, page.has_more) == (ids[0], ids[1], True)
    page = client.responses.input_items.list(response.id, order="asc", limit=2, after=ids[1])
    assert [item.id for item in page.data] == ids[2:4] and page.has_more
    page = client.responses.input_items.list(response.id, order="asc", limit=2, after=ids[3])
    assert [item.id for item in page.data] == ids[4:] and not page.has_more
    exact = client.responses.input_items.list(response.id, order="asc", limit=5)
    assert len(exact.data) == 5 and not exact.has_more
    past_the_end = client.responses.input_items.list(response.id, order="asc", after=ids[4])
    assert past_the_end.data == [] and not past_the_end.has_more
    assert past_the_end.first_id is None and past_the_end.last_id is None
    before = client.responses.input_items.list(response.id, order="asc", extra_query={"before": ids[2]})
    assert [item.id for item in before.data] == ids[:2]
    auto = list(client.responses.input_items.list(response.id, order="asc", limit=2))
    assert [item.id for item in auto] == ids


def test_input_items_limit_bounds(parley: ParleyProcess, client: openai.OpenAI) -> None:
    response = client.responses.create(model=ECHO, input="x")
    with parley.http() as http:
        for limit in (0, 101):
            answer = http.get(f"/v1/responses/{response.id}/input_items", params={"limit": limit})
            assert answer.status_code == 400
            assert answer.json()["error"]["param"] == "limit"


def test_list_responses_newest_first(parley: ParleyProcess, client: openai.OpenAI) -> None:
    ids = [client.responses.create(model=ECHO, input=f"r{i}").id for i in range(3)]
    with parley.http() as http:
        page = http.get("/v1/responses", params={"limit": 2}).json()
        assert [r["id"] for r in page["data"]] == ids[::-1][:2]
        assert page["has_more"] is True and page["first_id"] == ids[2] and page["last_id"] == ids[1]
        after = http.get("/v1/responses", params={"limit": 1, "after": ids[1]}).json()
        assert [r["id"] for r in after["data"]] == [ids[0]]


@pytest.mark.parametrize("cursor", ["after", "before"])
def test_an_unknown_cursor_is_a_400_naming_it(client: openai.OpenAI, cursor: str) -> None:
    """Never an empty page, which a client would take for the end of the list."""
    response = client.responses.create(
        model=ECHO, input=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    )
    other = client.responses.create(model=ECHO, input="elsewhere")
    [other_input] = client.responses.input_items.list(other.id).data
    [output] = response.output
    cases = [
        # An unknown id, an item of another response, and an output item (not an input item).
        (lambda query: client.responses.input_items.list(response.id, extra_query=query), "msg_nowhere"),
        (lambda query: client.responses.input_items.list(response.id, extra_query=query), other_input.id),
        (lambda query: client.responses.input_items.list(response.id, extra_query=query), output.id),
        (lambda query: client.get("/responses", cast_to=object, options={"params": query}), "resp_nowhere"),
        (lambda query: client.get("/responses", cast_to=object, options={"params": query}), other_input.id),
    ]
    for listing, item_id in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            listing({cursor: item_id})
        assert raised.value.body == {
            "message": f"Invalid value for '{cursor}': '{item_id}' is not an id in this list.",
            "type": "invalid_request_error",
            "param": cursor,
            "code": "invalid_value",
        }


def test_a_deleted_response_is_still_a_cursor(parley: ParleyProcess, client: openai.OpenAI) -> None:
    ids = [client.responses.create(model=ECHO, input=f"r{i}").id for i in range(3)]
    client.responses.delete(ids[1])
    with parley.http() as http:
        after = http.get("/v1/responses", params={"limit": 1, "after": ids[1]}).json()
        assert [r["id"] for r in after["data"]] == [ids[0]]
        # Newest first, the ones listed before it are the newer ones.
        before = http.get("/v1/responses", params={"before": ids[1]}).json()
        assert [r["id"] for r in before["data"]] == [ids[2]]


def test_item_shape_errors_name_the_param(client: openai.OpenAI) -> None:
    bad_inputs = {
        "input[2].content[0].type": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": [{"type": "video", "url": "x"}]},
        ],
        "input[0].type": [{"type": "telepathy"}],
        "input[1].call_id": [{"role": "user", "content": "a"}, {"type": "function_call_output", "output": "x"}],
        "input[0].content[0].text": [{"role": "user", "content": [{"type": "input_text"}]}],
    }
    for param, items in bad_inputs.items():
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model=ECHO, input=items)
        assert raised.value.param == param


def test_text_format_errors_name_the_param(client: openai.OpenAI) -> None:
    """The format's own path, never pydantic's union branch (`text.format.json_schema.name`)."""
    cases = [
        ({"type": "json_schema", "schema": {}}, "text.format.name", "missing_required_parameter"),
        ({"type": "json_schema", "name": "no spaces", "schema": {}}, "text.format.name", "invalid_value"),
        ({"type": "json_schema", "name": "a"}, "text.format.schema", "missing_required_parameter"),
        ({"type": "json_schema", "name": "a", "schema": {}, "extra": 1}, "text.format.extra", "unknown_parameter"),
        ({"type": "json_object", "strict": True}, "text.format.strict", "unknown_parameter"),
        ({"type": "yaml"}, "text.format.type", "invalid_value"),
    ]
    for fmt, param, code in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model=ECHO, input="x", extra_body={"text": {"format": fmt}})
        assert (raised.value.param, raised.value.code) == (param, code), fmt


def test_metadata_limits(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=ECHO, input="x", metadata={f"k{i}": "v" for i in range(17)})
    assert raised.value.param == "metadata"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=ECHO, input="x", metadata={"k": "v" * 513})


def test_item_reference_reuses_a_stored_item(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.create(model=ECHO, input="remember this")
    message_id = first.output[0].id
    client.responses.create(
        model=ECHO, input=[{"type": "item_reference", "id": message_id}, {"role": "user", "content": "ok"}]
    )
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "assistant", "content": "remember this"},
        {"role": "user", "content": "ok"},
    ]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=ECHO, input=[{"type": "item_reference", "id": "msg_missing"}])


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failure_before_the_first_event_is_an_http_error(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        result = client.responses.create(model="fake/fake-error-500", input="x", stream=stream)
        if stream:
            list(result)
    assert raised.value.status_code == 502
    assert "fake" in raised.value.message
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="fake/fake-error-400", input="x", stream=stream)


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_429_passes_on_when_to_try_again(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        client.responses.create(model="fake/fake-error-429", input="x", stream=stream)
    assert raised.value.code == "rate_limit_exceeded"
    headers = raised.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("2", "1500")


def test_failure_before_the_first_event_leaves_no_response(parley: ParleyProcess, client: openai.OpenAI) -> None:
    # Its client never had its id (see also tests/test_crash_recovery.py, with a row already written).
    with parley.http() as http:
        before = http.get("/v1/responses", params={"limit": 1}).json()["data"]
    with pytest.raises(openai.APIStatusError):
        client.responses.create(model="fake/fake-error-500", input="x")
    with parley.http() as http:
        assert http.get("/v1/responses", params={"limit": 1}).json()["data"] == before


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ("fake/fake-midstream-error", "upstream_error"),
        ("fake/fake-malformed", "upstream_protocol_error"),
        ("fake/fake-drop", "upstream_unavailable"),
        ("fake/fake-stall", "upstream_timeout"),
    ],
)
def test_upstream_failure_mid_stream_ends_in_response_failed(client: openai.OpenAI, model: str, code: str) -> None:
    events = list(client.responses.create(model=model, input="x", stream=True))
    assert [event.type for event in events[-2:]] == ["error", "response.failed"]
    failed = events[-1].response
    # The event says what happened; the response's code is on OpenAI's fixed list, its type the HTTP error's.
    assert (events[-2].code, events[-2].message) == (code, failed.error.message)
    assert failed.status == "failed" and (failed.error.code, failed.error.type) == ("server_error", "upstream_error")
    assert failed.output[0].status == "incomplete"
    stored = client.responses.retrieve(failed.id)
    assert stored.status == "failed" and stored.error.message == failed.error.message


def test_upstream_failure_mid_response_without_streaming(parley: ParleyProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        client.responses.create(model="fake/fake-midstream-error", input="x")
    assert raised.value.status_code == 502
    with parley.http() as http:
        newest = http.get("/v1/responses", params={"limit": 1}).json()["data"][0]
    assert newest["status"] == "failed"


def test_client_disconnect_mid_stream_still_finishes_and_stores(parley: ParleyProcess, client: openai.OpenAI) -> None:
    body = {"model": "fake/fake-long", "input": "go", "stream": True, "max_output_tokens": 300}
    response_id = None
    with httpx.Client(base_url=parley.base_url, timeout=30) as http:
        with http.stream("POST", "/v1/responses", json=body) as answer:
            for line in answer.iter_lines():
                if line.startswith("data:") and '"response.created"' in line:
                    response_id = json.loads(line[5:])["response"]["id"]
                if line.startswith("data:") and "output_text.delta" in line:
                    break
    assert response_id is not None
    deadline = time.monotonic() + 30
    while True:
        stored = client.responses.retrieve(response_id)
        if stored.status != "in_progress" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stored.status == "completed"
    assert stored.output_text.count("tok") == 300


@pytest.fixture(scope="module")
def paced_parley(tmp_path_factory: pytest.TempPathFactory, storage_url: str) -> Iterator[ParleyProcess]:
    """Parley over a fake upstream that takes 10 ms a token, like a model generating."""
    with FakeUpstream(delay=0.01) as paced:
        server = ParleyProcess(tmp_path_factory.mktemp("paced"), parley_config(paced, storage_url))
        server.start()
        yield server
        server.stop()


def test_a_response_being_produced_is_retrieved_with_its_text_so_far(paced_parley: ParleyProcess) -> None:
    client = paced_parley.client()
    stream = client.responses.create(model="fake/fake-long", input="go", stream=True, max_output_tokens=200)
    response_id, read = "", ""
    for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            read += event.delta
            if read.count("tok") == 20:
                break
    # 20 of 200 tokens, 10 ms apart: the response is still being produced.
    during = client.responses.retrieve(response_id)
    assert during.status == "in_progress"
    [message] = during.output
    text = message.content[0].text  # type: ignore[union-attr]
    assert text.startswith(read) and text.count("tok") < 200
    rest = [event for event in stream]
    assert rest[-1].type == "response.completed"
    assert client.responses.retrieve(response_id).output_text == "".join(f"tok{i} " for i in range(200))


def test_truncation_auto_drops_the_oldest_items(client: openai.OpenAI) -> None:
    huge = "word " * 9000
    items = [{"role": "user", "content": huge}, {"role": "user", "content": "What is the capital of France?"}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="smollm2-135m", input=items, max_output_tokens=16)
    assert raised.value.code == "context_length_exceeded"

    response = client.responses.create(
        model="smollm2-135m", input=items, truncation="auto", max_output_tokens=16, temperature=0
    )
    assert response.status in ("completed", "incomplete")
    assert response.truncation == "auto"
    assert response.usage.input_tokens < 1000
    assert response.model_extra["truncated_items"] == 1
    assert client.responses.retrieve(response.id).model_extra["truncated_items"] == 1
    _check_against_specs(response)


def test_embedded_model_answers_through_responses(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="smollm2-135m", input="What is the capital of France?", temperature=0, max_output_tokens=30
    )
    assert "Paris" in response.output_text
    streamed = list(
        client.responses.create(
            model="smollm2-135m",
            input="What is the capital of France?",
            temperature=0,
            max_output_tokens=30,
            stream=True,
        )
    )
    assert streamed[-1].response.output_text == response.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_embedded_model_function_call(client: openai.OpenAI, stream: bool) -> None:
    request = {
        "model": "smollm2-135m",
        "input": "What is the weather in Paris?",
        "tools": [WEATHER],
        "tool_choice": "required",
        "temperature": 0,
    }
    if stream:
        response = list(client.responses.create(**request, stream=True))[-1].response
    else:
        response = client.responses.create(**request)
    call = response.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert "city" in json.loads(call.arguments)


def test_unknown_model_and_previous_response(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model="fake/nope", input="x")
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model=ECHO, input="x", previous_response_id="resp_missing")
    assert raised.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")


# Hard limits on the tools the model may call

SCRIPT = "fake/fake-script"
ONLY_WEATHER = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]}


def test_a_call_outside_allowed_tools_never_reaches_a_stream(client: openai.OpenAI) -> None:
    request = {"model": SCRIPT, "input": "get_time {}", "tools": [WEATHER, CLOCK], "tool_choice": ONLY_WEATHER}
    events = list(client.responses.create(**request, stream=True))

    types = [event.type for event in events]
    assert not any(t.startswith(("response.output_item", "response.function_call")) for t in types)
    assert types[-2:] == ["error", "response.failed"]
    error, failed = events[-2], events[-1].response
    assert "get_time" in error.message and error.code == "tool_not_offered"
    assert (failed.error.code, failed.error.type, failed.error.message) == (
        "server_error",
        "upstream_error",
        error.message,
    )
    assert failed.status == "failed" and failed.output == []
    assert client.responses.retrieve(failed.id).status == "failed"


def test_a_call_outside_allowed_tools_is_a_502(parley: ParleyProcess, client: openai.OpenAI) -> None:
    request = {"model": SCRIPT, "input": "get_time {}", "tools": [WEATHER, CLOCK], "tool_choice": ONLY_WEATHER}
    with pytest.raises(openai.APIStatusError) as raised:
        client.responses.create(**request)
    assert raised.value.status_code == 502
    assert raised.value.code == "tool_not_offered" and "get_time" in raised.value.message
    with parley.http() as http:
        newest = http.get("/v1/responses", params={"limit": 1}).json()["data"][0]
    assert newest["status"] == "failed" and newest["output"] == []


@pytest.mark.parametrize(
    ("tools", "tool_choice", "param"),
    [
        ([], "required", "tool_choice"),
        (
            [WEATHER],
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]},
            "tool_choice",
        ),
        ([WEATHER], {"type": "allowed_tools", "mode": "none", "tools": []}, "tool_choice.mode"),
    ],
    ids=["required-without-tools", "required-matching-nothing", "mode-none"],
)
def test_a_tool_choice_that_cannot_be_met_is_a_400(
    client: openai.OpenAI, tools: list[dict[str, object]], tool_choice: object, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=TOOL, input="x", tools=tools, tool_choice=tool_choice)  # type: ignore[arg-type]
    assert raised.value.param == param


# What a chat-completions upstream cannot carry is refused, never dropped


@pytest.mark.parametrize(
    ("items", "param"),
    [
        (
            [
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_image", "image_url": "https://x/map.png"}],
                },
            ],
            "input[1].output[0]",
        ),
        (
            [
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_text", "text": "a"}, {"type": "input_file", "file_data": "data:x"}],
                },
            ],
            "input[1].output[1]",
        ),
    ],
    ids=["tool-output-image", "tool-output-file"],
)
def test_input_the_upstream_cannot_carry_is_a_400_naming_it(
    client: openai.OpenAI, fake_upstream: FakeUpstream, items: list[dict[str, object]], param: str
) -> None:
    sent = len(fake_upstream.requests)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=TOOL, input=items, tools=[WEATHER])  # type: ignore[arg-type]
    assert raised.value.param == param and raised.value.code == "unsupported_value"
    assert len(fake_upstream.requests) == sent, "nothing was sent upstream"


def test_images_files_and_roles_reach_the_upstream(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    client.responses.create(
        model=ECHO,
        input=[
            {"role": "system", "content": "System rules."},
            {"role": "developer", "content": "Developer rules."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": image, "detail": "low"},
                    {"type": "input_file", "file_data": "data:text/plain;base64,UnVsZXMu", "filename": "a.txt"},
                ],
            },
        ],
    )
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "system", "content": "System rules."},
        {"role": "developer", "content": "Developer rules."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                # A file is its text (tests/test_input_files.py).
                {"type": "text", "text": '<file name="a.txt">\nRules.\n</file>'},
            ],
        },
    ]


def test_an_earlier_image_for_a_model_that_reads_text_only_is_refused_naming_where_it_is(
    client: openai.OpenAI,
) -> None:
    """The embedded model reads text only: an image in the turns before is refused as the request arrives."""
    content = [{"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": "data:image/png;base64,AA"}]
    first = client.responses.create(model=ECHO, input=[{"role": "user", "content": content}])
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="smollm2-135m", input="and now?", previous_response_id=first.id)
    assert (raised.value.param, raised.value.code) == ("previous_response_id", "unsupported_value")
    assert "'input_image'" in raised.value.message and "reads text only" in raised.value.message


# Settings that reach the upstream


@pytest.mark.parametrize(
    ("settings", "sent"),
    [
        ({"presence_penalty": 0.5, "frequency_penalty": -0.5}, {"presence_penalty": 0.5, "frequency_penalty": -0.5}),
        ({"safety_identifier": "user-123", "user": "legacy"}, {"user": "user-123"}),
        (
            {"prompt_cache_key": "cache-1", "prompt_cache_retention": "24h"},
            {"prompt_cache_key": "cache-1", "prompt_cache_retention": "24h"},
        ),
        ({"service_tier": "flex"}, {"service_tier": "flex"}),
        ({"text": {"format": {"type": "json_object"}}}, {"response_format": {"type": "json_object"}}),
        ({"text": {"verbosity": "low"}}, {"verbosity": "low"}),
    ],
    ids=["penalties", "safety_identifier", "prompt_cache", "service_tier", "json_object", "verbosity"],
)
def test_settings_reach_the_upstream_and_are_echoed(
    client: openai.OpenAI, fake_upstream: FakeUpstream, settings: dict[str, object], sent: dict[str, object]
) -> None:
    # Through extra_body: this openai version's create() does not know every field.
    response = client.responses.create(model=ECHO, input="hi", extra_body=settings)
    request = fake_upstream.requests[-1]
    assert {key: request.get(key) for key in sent} == sent
    echoed = response.to_dict(mode="json")
    for key, value in settings.items():
        if key == "text":
            assert {k: echoed["text"][k] for k in value} == value  # type: ignore[union-attr]
        else:
            assert echoed[key] == value
    _check_against_specs(response)


def test_reasoning_settings_are_echoed_and_effort_is_sent(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    """Chat completions takes the effort; a summary it cannot make, so none is made (see README)."""
    cases = [
        ({"effort": "low", "summary": "auto"}, {"effort": "low", "summary": "auto"}),
        # `generate_summary` is the deprecated name of `summary`.
        ({"effort": "high", "generate_summary": "concise"}, {"effort": "high", "summary": "concise"}),
        ({"summary": "detailed"}, {"effort": None, "summary": "detailed"}),
    ]
    for reasoning, echoed in cases:
        response = client.responses.create(model=ECHO, input="hi", extra_body={"reasoning": reasoning})
        assert response.to_dict(mode="json")["reasoning"] == echoed
        assert fake_upstream.requests[-1].get("reasoning_effort") == echoed["effort"]
        assert "reasoning" not in fake_upstream.requests[-1]
        _check_against_specs(response)


# `context_management`: a context below its threshold is not compacted (tests/test_compaction.py compacts), and
# a mistake in it is named at its place


@pytest.mark.parametrize(
    "value",
    [[{"type": "compaction"}], [{"type": "compaction", "compact_threshold": 1000}, {"type": "compaction"}]],
)
def test_context_management_leaves_a_small_context_as_it_is(parley: ParleyProcess, value: list[object]) -> None:
    with parley.http() as http:
        answer = http.post("/v1/responses", json={"model": ECHO, "input": "hi", "context_management": value})
    assert answer.status_code == 200
    assert [item["type"] for item in answer.json()["output"]] == ["message"]


def test_a_bad_context_management_is_a_400_naming_its_place(client: openai.OpenAI) -> None:
    cases: list[tuple[object, str]] = [
        ("compaction", "context_management"),
        ({"type": "compaction"}, "context_management"),
        ([], "context_management"),
        ([5], "context_management[0]"),
        ([{}], "context_management[0].type"),
        ([{"type": "summarize"}], "context_management[0].type"),
        ([{"type": "compaction", "compact_threshold": 999}], "context_management[0].compact_threshold"),
        ([{"type": "compaction", "compact_threshold": "2000"}], "context_management[0].compact_threshold"),
        ([{"type": "compaction", "compact_threshold": 1500.5}], "context_management[0].compact_threshold"),
        ([{"type": "compaction", "threshold": 2000}], "context_management[0].threshold"),
        ([{"type": "compaction"}, {"type": "trim"}], "context_management[1].type"),
    ]
    for value, param in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model=ECHO, input="hi", extra_body={"context_management": value})
        assert raised.value.param == param, value
        # Neither refused as unsupported nor taken for an unknown field: the place of the mistake is named.
        assert raised.value.code != "unsupported_parameter"
        assert raised.value.message != "Unknown parameter: 'context_management'."


def test_a_null_context_management_is_no_context_management(client: openai.OpenAI) -> None:
    response = client.responses.create(model=ECHO, input="hi", extra_body={"context_management": None})
    assert response.status == "completed"


def test_prompt_fields_are_null_unless_given(client: openai.OpenAI) -> None:
    echoed = client.responses.create(model=ECHO, input="hi").to_dict(mode="json")
    assert echoed["prompt"] is None and echoed["prompt_cache_retention"] is None


def test_streamed_logprobs_ride_on_the_deltas(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=ECHO, input="two words", include=["message.output_text.logprobs"], top_logprobs=1, stream=True
        )
    )
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert [[entry.token for entry in delta.logprobs] for delta in deltas] == [["two"], [" words"]]
    assert all(len(delta.logprobs[0].top_logprobs) == 1 for delta in deltas)


# `include` on retrieval


@pytest.mark.parametrize("path", ["/v1/responses/{id}", "/v1/responses/{id}/input_items"])
def test_include_on_retrieval_is_checked(parley: ParleyProcess, client: openai.OpenAI, path: str) -> None:
    response = client.responses.create(model=ECHO, input="x")
    with parley.http() as http:
        good = http.get(path.format(id=response.id), params={"include": ["message.output_text.logprobs"]})
        bad = http.get(path.format(id=response.id), params={"include": ["message.output_text.logprobs", "bogus"]})
    assert good.status_code == 200
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "include" and "bogus" in bad.json()["error"]["message"]


def test_include_on_retrieval_is_checked_as_the_official_client_sends_it(client: openai.OpenAI) -> None:
    # openai-python sends a list query parameter as `include[]=...`.
    response = client.responses.create(model=ECHO, input="x")
    assert client.responses.retrieve(response.id, include=["message.output_text.logprobs"]).id == response.id
    for call in (
        lambda: client.responses.retrieve(response.id, include=["bogus"]),  # type: ignore[list-item]
        lambda: client.responses.input_items.list(response.id, include=["bogus"]),  # type: ignore[list-item]
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            call()
        assert raised.value.param == "include"


def test_include_on_create_is_checked(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=ECHO, input="x", include=["bogus"])  # type: ignore[list-item]
    assert raised.value.param == "include"


# Every kind of response against the specs


@pytest.mark.parametrize(
    "request_body",
    [
        {"model": TOOL, "input": "Weather?", "tools": [WEATHER]},
        {"model": ECHO, "input": " ".join(f"w{i}" for i in range(20)), "max_output_tokens": 16},
        {"model": ECHO, "input": "x", "prompt_cache_retention": "24h", "include": ["message.output_text.logprobs"]},
    ],
    ids=["function-call", "incomplete", "logprobs"],
)
@pytest.mark.parametrize("stream", [False, True])
def test_response_kinds_match_the_specs(client: openai.OpenAI, request_body: dict[str, object], stream: bool) -> None:
    if stream:
        response = list(client.responses.create(**request_body, stream=True))[-1].response  # type: ignore[call-overload]
    else:
        response = client.responses.create(**request_body)  # type: ignore[call-overload]
    _check_against_specs(response)
    _check_against_specs(client.responses.retrieve(response.id))


def test_structured_output_response_matches_openais_spec(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    text = {"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}}
    response = client.responses.create(model="fake/fake-json", input="x", text=text)  # type: ignore[arg-type]
    # Not Open Responses': its JsonSchemaResponseFormat types `schema` as null only, while
    # OpenAI's requires the schema object that was sent; Parley echoes the schema.
    validate_openai(response.to_dict(mode="json"), "Response")
    assert response.text.format.schema_ == schema


def test_failed_response_matches_the_specs(client: openai.OpenAI) -> None:
    failed = list(client.responses.create(model="fake/fake-midstream-error", input="x", stream=True))[-1].response
    assert failed.status == "failed"
    _check_against_specs(failed)
    _check_against_specs(client.responses.retrieve(failed.id))
