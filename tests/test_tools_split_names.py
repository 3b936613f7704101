"""Tool calls whose name an upstream streams in pieces, as some OpenAI-compatible servers do.

The fake upstream's `fake-split-script` streams each call's name over several
deltas (split where the script's name has a `/`, else every 2 characters).
A call opens, and is checked against the tools the model was offered, only
once its name is whole: the caller sees the whole name in `output_item.added`,
and a name that only begins like an offered one is refused.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import ParleyProcess
from tests.mcp_servers import ToolServer
from tests.support.tools import WEATHER, mcp_tool

SPLIT = "fake/fake-split-script"


@pytest.fixture
def client(upstream: ParleyProcess) -> openai.OpenAI:
    return upstream.client(timeout=60)


def create(client: openai.OpenAI, stream: bool, **request: Any) -> tuple[list[Any], Any]:
    """The events (none when not streamed) and the response."""
    if not stream:
        return [], client.responses.create(**request)
    events = list(client.responses.create(**request, stream=True))
    return events, events[-1].response


def added(events: list[Any]) -> list[Any]:
    return [event.item for event in events if event.type == "response.output_item.added"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_name_in_pieces_is_one_call(client: openai.OpenAI, stream: bool) -> None:
    events, response = create(
        client, stream, model=SPLIT, input='get_weather {"city": "Paris"}', tools=[WEATHER], tool_choice="required"
    )
    assert response.status == "completed"
    [call] = response.output
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Paris"})
    assert call.call_id == "call_script_1_1"
    if stream:
        [opened] = added(events)
        assert (opened.type, opened.name, opened.arguments) == ("function_call", "get_weather", "")
        [done] = [event for event in events if event.type == "response.function_call_arguments.done"]
        assert done.name == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
def test_mcp_tool_names_in_pieces_run(client: openai.OpenAI, tool_server: ToolServer, stream: bool) -> None:
    events, response = create(
        client,
        stream,
        model=SPLIT,
        input='ec/ho {"text": "split"} & a/d/d {"a": 1, "b": 2}',  # two calls in one turn: the next one's start
        tools=[mcp_tool(tool_server)],
    )
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    calls = response.output[1:3]
    assert [(call.name, call.output, call.status) for call in calls] == [
        ("echo", "split", "completed"),
        ("add", "3", "completed"),
    ]
    assert response.output_text == "Results: split; 3"
    if stream:
        opened = [item for item in added(events) if item.type == "mcp_call"]
        assert [item.name for item in opened] == ["echo", "add"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_name_that_only_begins_like_an_offered_one_is_refused(
    upstream: ParleyProcess, client: openai.OpenAI, stream: bool
) -> None:
    """`get_weather` then `_now`: the first piece is an offered name, the whole one is not."""
    request = {"model": SPLIT, "input": 'get_weather/_now {"city": "Paris"}', "tools": [WEATHER]}
    if not stream:
        with pytest.raises(openai.APIStatusError) as raised:
            client.responses.create(**request)
        assert raised.value.status_code == 502
        assert raised.value.code == "tool_not_offered" and "'get_weather_now'" in raised.value.message
        return
    events = list(client.responses.create(**request, stream=True))
    assert [event.type for event in events[-2:]] == ["error", "response.failed"]
    error, failed = events[-2:]
    # The event says why; the response's error codes are OpenAI's fixed list: a 502 is a `server_error`.
    assert error.code == "tool_not_offered" and "'get_weather_now', which is not among the tools" in error.message
    assert (failed.response.error.code, failed.response.error.type) == ("server_error", "upstream_error")
    assert added(events) == [] and failed.response.output == []
    stored = client.responses.retrieve(failed.response.id)
    assert (stored.status, stored.output) == ("failed", [])
