"""openai-python's Responses helpers against Parley: `responses.parse` and `responses.stream`, sync and async.

The other tests create responses with the client's plain methods; these are
the helpers on top of them, which turn a pydantic model into a strict
`json_schema` format (and parse the answer back), and which follow a stream
event by event, building the final response as they go. The upstream is the
fake one: `fake-json` answers `{"answer": 42}`, `fake-echo` echoes the last
user message, `fake-script` calls the tools its message names.
"""

from __future__ import annotations

import json
from typing import Any

import openai
from pydantic import BaseModel

from tests.conftest import ParleyProcess
from tests.fake_upstream import FakeUpstream

JSON = "fake/fake-json"
ECHO = "fake/fake-echo"
SCRIPT = "fake/fake-script"


class Answer(BaseModel):
    answer: int


class Add(BaseModel):
    """Adds two integers."""

    a: int
    b: int


def _format_sent(fake: FakeUpstream) -> dict[str, Any]:
    """The response format Parley sent the upstream in its last request."""
    response_format = fake.requests[-1]["response_format"]
    assert response_format["type"] == "json_schema"
    return response_format["json_schema"]


def test_parse_turns_a_pydantic_model_into_the_format_and_parses_the_answer(
    upstream: ParleyProcess, fake_upstream: FakeUpstream
) -> None:
    client = upstream.client()
    response = client.responses.parse(model=JSON, input="What is the answer?", text_format=Answer)

    assert response.output_parsed == Answer(answer=42)
    assert response.output[0].content[0].parsed == Answer(answer=42)
    sent = _format_sent(fake_upstream)
    assert sent["name"] == "Answer" and sent["strict"] is True
    assert sent["schema"]["properties"] == {"answer": {"title": "Answer", "type": "integer"}}
    assert client.responses.retrieve(response.id).text.format.name == "Answer"


async def test_async_parse(upstream: ParleyProcess, fake_upstream: FakeUpstream) -> None:
    client = upstream.async_client()
    response = await client.responses.parse(model=JSON, input="What is the answer?", text_format=Answer)

    assert response.output_parsed == Answer(answer=42)
    assert _format_sent(fake_upstream)["name"] == "Answer"


def test_parse_parses_a_strict_function_tools_arguments(upstream: ParleyProcess) -> None:
    client = upstream.client()
    response = client.responses.parse(
        model=SCRIPT, input='Add {"a": 2, "b": 3}', tools=[openai.pydantic_function_tool(Add)]
    )

    [call] = response.output
    assert call.type == "function_call" and call.name == "Add"
    assert call.parsed_arguments == Add(a=2, b=3)


def test_stream_helper_text(upstream: ParleyProcess) -> None:
    client = upstream.client()
    with client.responses.stream(model=ECHO, input="streams are read in order") as stream:
        events = list(stream)
        final = stream.get_final_response()

    types = [event.type for event in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == "streams are read in order" and len(deltas) == 5
    # The helper's own event, with the text so far.
    snapshots = [event.snapshot for event in events if event.type == "response.output_text.delta"]
    assert snapshots[-1] == "streams are read in order"
    assert final.output_text == "streams are read in order"
    assert final.id == events[0].response.id
    assert client.responses.retrieve(final.id).output_text == "streams are read in order"


def test_stream_helper_parses_the_format(upstream: ParleyProcess) -> None:
    client = upstream.client()
    with client.responses.stream(model=JSON, input="What is the answer?", text_format=Answer) as stream:
        done = [event for event in stream if event.type == "response.output_text.done"]
        final = stream.get_final_response()

    assert [event.parsed for event in done] == [Answer(answer=42)]
    assert final.output_parsed == Answer(answer=42)
    # Checked here rather than after the test, so that the known failure is this test's own.
    failures = upstream.take_stream_failures()
    assert not failures, failures[0]


def test_stream_helper_function_call_and_its_answer(upstream: ParleyProcess) -> None:
    client = upstream.client()
    tools = [openai.pydantic_function_tool(Add)]
    with client.responses.stream(model=SCRIPT, input='Add {"a": 20, "b": 22}', tools=tools) as stream:
        events = list(stream)
        first = stream.get_final_response()

    arguments = [event for event in events if event.type == "response.function_call_arguments.delta"]
    assert "".join(event.delta for event in arguments) == '{"a": 20, "b": 22}'
    assert arguments[-1].snapshot == '{"a": 20, "b": 22}'
    [call] = first.output
    assert call.parsed_arguments == Add(a=20, b=22)

    output = {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps(20 + 22)}
    with client.responses.stream(model=SCRIPT, input=[output], previous_response_id=first.id, tools=tools) as stream:
        final = stream.get_final_response()
    assert final.output_text == "Results: 42"


async def test_async_stream_helper(upstream: ParleyProcess) -> None:
    client = upstream.async_client()
    async with client.responses.stream(model=ECHO, input="async streams too") as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()

    assert "".join(deltas) == "async streams too"
    assert final.output_text == "async streams too" and final.status == "completed"
    assert (await client.responses.retrieve(final.id)).output_text == "async streams too"


async def test_async_stream_helper_function_call(upstream: ParleyProcess) -> None:
    client = upstream.async_client()
    tools = [openai.pydantic_function_tool(Add)]
    async with client.responses.stream(model=SCRIPT, input='Add {"a": 1, "b": 1}', tools=tools) as stream:
        done = [event async for event in stream if event.type == "response.function_call_arguments.done"]
        final = await stream.get_final_response()

    assert [event.arguments for event in done] == ['{"a": 1, "b": 1}']
    [call] = final.output
    assert call.parsed_arguments == Add(a=1, b=1)
