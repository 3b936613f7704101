"""Tools the caller answers: namespaces, custom tools, OpenAI's shell and patch tools, and calls answered by name.

A chat-completions model knows only functions: each is offered as one (see
`parley/tools/caller.py`), and its call comes back as the item OpenAI's API
gives for that tool, which the caller answers with the matching output item.
The fake upstream's `fake-script` model makes the calls its last user
message scripts.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ParleyProcess
from tests.fake_upstream import FakeUpstream
from tests.support.tools import CLOCK, WEATHER

SCRIPT = "fake/fake-script"

NAMESPACES = [
    {
        "type": "namespace",
        "name": "crm",
        "description": "The customer database.",
        "tools": [
            {
                "type": "function",
                "name": "lookup",
                "description": "Finds a customer.",
                "parameters": {"type": "object"},
            },
            {"type": "function", "name": "note", "parameters": {"type": "object"}, "strict": False},
        ],
    },
    {
        "type": "namespace",
        "name": "billing",
        "description": "Invoices.",
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    },
]


@pytest.fixture
def client(upstream: ParleyProcess) -> openai.OpenAI:
    return upstream.client()


def _offered(fake: FakeUpstream) -> list[str]:
    return [tool["function"]["name"] for tool in fake.requests[-1].get("tools") or ()]


def _events(stream: Any) -> list[Any]:
    return list(stream)


# Namespaces


def test_namespace_tools_are_offered_apart_and_called_by_their_own_names(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    response = client.responses.create(
        model=SCRIPT, input='billing__lookup {"invoice": 7}', tools=NAMESPACES, parallel_tool_calls=False
    )
    # `lookup` is in two namespaces: the second one's is named apart; `note` keeps its name.
    assert _offered(fake_upstream) == ["lookup", "note", "billing__lookup"]
    assert fake_upstream.requests[-1]["tools"][0]["function"]["description"] == "Finds a customer."
    (call,) = response.output
    assert call.type == "function_call"
    assert (call.name, call.namespace, call.arguments) == ("lookup", "billing", '{"invoice": 7}')
    # The definitions are echoed as sent.
    assert [tool.type for tool in response.tools] == ["namespace", "namespace"]
    assert response.tools[0].tools[0].name == "lookup"


def test_namespace_call_round_trip_by_call_id(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.create(model=SCRIPT, input='note {"text": "hi"}', tools=NAMESPACES)
    (call,) = first.output
    assert (call.name, call.namespace) == ("note", "crm")
    second = client.responses.create(
        model=SCRIPT,
        previous_response_id=first.id,
        tools=NAMESPACES,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "noted"}],
    )
    assert second.output_text == "Results: noted"
    messages = fake_upstream.requests[-1]["messages"]
    assert messages[-2]["tool_calls"][0]["function"] == {"name": "note", "arguments": '{"text": "hi"}'}
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "noted"}


@pytest.mark.parametrize("stream", [False, True])
def test_an_output_without_call_id_answers_its_call_by_name_and_namespace(
    client: openai.OpenAI, fake_upstream: FakeUpstream, stream: bool
) -> None:
    first = client.responses.create(model=SCRIPT, input='billing__lookup {"invoice": 7}', tools=NAMESPACES)
    (call,) = first.output
    answer = {"type": "function_call_output", "name": "lookup", "namespace": "billing", "output": "paid"}
    if stream:
        events = _events(
            client.responses.create(
                model=SCRIPT, previous_response_id=first.id, tools=NAMESPACES, input=[answer], stream=True
            )
        )
        second = events[-1].response
    else:
        second = client.responses.create(model=SCRIPT, previous_response_id=first.id, tools=NAMESPACES, input=[answer])
    assert second.output_text == "Results: paid"
    assert fake_upstream.requests[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call.call_id,
        "content": "paid",
    }
    # The output is stored with the call it answered.
    (stored,) = client.responses.input_items.list(second.id).data
    assert stored.type == "function_call_output" and stored.call_id == call.call_id


def test_an_output_without_call_id_that_answers_no_call_stands_alone(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    """Codex, after its create_goal tool, sends the goal's objective as a tool output that answers no call."""
    first = client.responses.create(model=SCRIPT, input='note {"text": "goal"}', tools=NAMESPACES, store=False)
    (call,) = first.output
    history = [
        {"role": "user", "content": 'note {"text": "goal"}'},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "created"},
        {"type": "function_call_output", "name": "goal_objective", "namespace": "agent", "output": "write a file"},
    ]
    second = client.responses.create(model=SCRIPT, input=history, tools=NAMESPACES, store=False)
    assert second.output_text == "Results: created; write a file"
    *_, assistant, tool = fake_upstream.requests[-1]["messages"]
    # The model reads it after a call made for it, as a chat model reads every tool message.
    (made,) = assistant["tool_calls"]
    assert made["function"] == {"name": "agent__goal_objective", "arguments": "{}"}
    assert tool == {"role": "tool", "tool_call_id": made["id"], "content": "write a file"}


def test_an_output_with_neither_call_id_nor_name_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=SCRIPT, input=[{"type": "function_call_output", "output": "?"}])
    assert raised.value.body["param"] == "input[0].call_id"  # type: ignore[index]
    assert raised.value.body["code"] == "missing_required_parameter"  # type: ignore[index]


def test_a_namespace_must_hold_functions_or_custom_tools(client: openai.OpenAI) -> None:
    bad = [{"type": "namespace", "name": "n", "description": "d", "tools": [{"type": "mcp", "server_label": "x"}]}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=SCRIPT, input="hi", tools=bad)
    assert raised.value.body["param"].startswith("tools[0]")  # type: ignore[index]


# Custom tools


CUSTOM = {
    "type": "custom",
    "name": "run_sql",
    "description": "Runs a query.",
    "format": {"type": "grammar", "syntax": "regex", "definition": "SELECT .+"},
}


def test_custom_tool_is_offered_as_a_function_of_its_input(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    response = client.responses.create(model=SCRIPT, input='run_sql {"input": "SELECT 1"}', tools=[CUSTOM])
    (offered,) = fake_upstream.requests[-1]["tools"]
    assert offered["function"]["name"] == "run_sql"
    assert offered["function"]["parameters"]["required"] == ["input"]
    assert "SELECT .+" in offered["function"]["description"]
    (call,) = response.output
    assert call.type == "custom_tool_call"
    assert (call.name, call.input) == ("run_sql", "SELECT 1")
    assert response.tools[0].format.definition == "SELECT .+"  # type: ignore[union-attr]


def test_custom_tool_call_streams_its_input_and_round_trips(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    events = _events(
        client.responses.create(model=SCRIPT, input='run_sql {"input": "SELECT 2"}', tools=[CUSTOM], stream=True)
    )
    types = [event.type for event in events]
    assert types.index("response.custom_tool_call_input.delta") < types.index("response.custom_tool_call_input.done")
    done = next(event for event in events if event.type == "response.custom_tool_call_input.done")
    assert done.input == "SELECT 2"
    first = events[-1].response
    (call,) = first.output
    second = client.responses.create(
        model=SCRIPT,
        previous_response_id=first.id,
        tools=[CUSTOM],
        input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "1 row"}],
    )
    assert second.output_text == "Results: 1 row"
    assistant, tool = fake_upstream.requests[-1]["messages"][-2:]
    assert assistant["tool_calls"][0]["function"] == {"name": "run_sql", "arguments": '{"input": "SELECT 2"}'}
    assert tool == {"role": "tool", "tool_call_id": call.call_id, "content": "1 row"}


def test_named_tool_choice_forces_a_custom_tool(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    client.responses.create(model="echo", input="hi", tools=[CUSTOM], tool_choice={"type": "custom", "name": "run_sql"})
    assert fake_upstream.requests[-1]["tool_choice"] == {"type": "function", "function": {"name": "run_sql"}}


# OpenAI's shell and patch tools


def test_shell_call_round_trip(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.create(
        model=SCRIPT, input='shell {"commands": ["ls -l", "pwd"], "timeout_ms": 5000}', tools=[{"type": "shell"}]
    )
    (call,) = first.output
    assert call.type == "shell_call"
    assert call.action.commands == ["ls -l", "pwd"] and call.action.timeout_ms == 5000
    output = [
        {"stdout": "a.txt\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}},
        {"stdout": "/tmp\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}},
    ]
    second = client.responses.create(
        model=SCRIPT,
        previous_response_id=first.id,
        tools=[{"type": "shell"}],
        input=[{"type": "shell_call_output", "call_id": call.call_id, "output": output}],
    )
    assert second.status == "completed"
    tool = fake_upstream.requests[-1]["messages"][-1]
    assert tool["role"] == "tool" and tool["tool_call_id"] == call.call_id
    assert "a.txt" in tool["content"] and "/tmp" in tool["content"] and "exit code 0" in tool["content"]


def test_local_shell_call_round_trip(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.create(
        model=SCRIPT, input='local_shell {"command": ["echo", "hi"]}', tools=[{"type": "local_shell"}]
    )
    (call,) = first.output
    assert call.type == "local_shell_call"
    assert call.action.type == "exec" and call.action.command == ["echo", "hi"]
    second = client.responses.create(
        model=SCRIPT,
        previous_response_id=first.id,
        tools=[{"type": "local_shell"}],
        # OpenAI's local shell output names its call by `id`.
        input=[{"type": "local_shell_call_output", "id": call.call_id, "output": "hi\n"}],
    )
    assert second.output_text == "Results: hi"
    assert fake_upstream.requests[-1]["messages"][-1]["tool_call_id"] == call.call_id


def test_apply_patch_call_round_trip(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    arguments = {"type": "create_file", "path": "hello.txt", "diff": "+hello\n"}
    first = client.responses.create(
        model=SCRIPT, input=f"apply_patch {json.dumps(arguments)}", tools=[{"type": "apply_patch"}]
    )
    (call,) = first.output
    assert call.type == "apply_patch_call"
    assert call.operation.type == "create_file" and call.operation.path == "hello.txt"
    second = client.responses.create(
        model=SCRIPT,
        previous_response_id=first.id,
        tools=[{"type": "apply_patch"}],
        input=[{"type": "apply_patch_call_output", "call_id": call.call_id, "status": "completed"}],
    )
    assert second.status == "completed"
    assert fake_upstream.requests[-1]["messages"][-1]["content"] == "The patch was completed."


def test_a_stateless_caller_sends_the_calls_back_as_input(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    """Items as a previous response gave them, dumped by openai-python, are accepted as input."""
    first = client.responses.create(
        model=SCRIPT,
        input='run_sql {"input": "SELECT 3"} & shell {"commands": ["true"]}',
        tools=[CUSTOM, {"type": "shell"}],
        store=False,
    )
    custom, shell = first.output
    history = [
        {"role": "user", "content": "go on"},
        custom.model_dump(exclude_none=True),
        shell.model_dump(exclude_none=True),
        {"type": "custom_tool_call_output", "call_id": custom.call_id, "output": "3"},
        {
            "type": "shell_call_output",
            "call_id": shell.call_id,
            "output": [{"stdout": "", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}],
        },
    ]
    second = client.responses.create(model=SCRIPT, input=history, tools=[CUSTOM, {"type": "shell"}], store=False)
    assert second.status == "completed"
    calls = fake_upstream.requests[-1]["messages"][-3]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["run_sql", "shell"]


# Where results go


def test_a_result_follows_its_call_when_the_caller_repeats_its_message_first(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    """A chat model reads a tool message only right after the call it answers: what the caller sent between
    (here the user's message again) is read after it."""
    first = client.responses.create(model="fake/fake-tool", input="weather?", tools=[WEATHER])
    (call,) = first.output
    client.responses.create(
        model="fake/fake-echo",
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
        ],
    )
    function = {"name": "get_weather", "arguments": call.arguments}
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call.call_id, "type": "function", "function": function}],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny"},
        {"role": "user", "content": "weather?"},
    ]


def test_results_with_a_message_between_them_all_follow_their_calls(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    """Two calls of one model message, answered in the other order with a user message between the answers:
    both results follow the calls, in the order they came, and the message follows them."""
    first = client.responses.create(model="fake/fake-tool", input="weather and time?", tools=[WEATHER, CLOCK])
    weather, clock = first.output
    client.responses.create(
        model="fake/fake-echo",
        previous_response_id=first.id,
        tools=[WEATHER, CLOCK],
        input=[
            {"type": "function_call_output", "call_id": clock.call_id, "output": "noon"},
            {"role": "user", "content": "and hurry"},
            {"type": "function_call_output", "call_id": weather.call_id, "output": "Sunny"},
        ],
    )
    messages = fake_upstream.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    assert [call["id"] for call in messages[1]["tool_calls"]] == [weather.call_id, clock.call_id]
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": clock.call_id, "content": "noon"},
        {"role": "tool", "tool_call_id": weather.call_id, "content": "Sunny"},
        {"role": "user", "content": "and hurry"},
    ]


# Which create fields are known


def test_client_metadata_is_accepted(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="echo", input="hi there", extra_body={"client_metadata": {"session_id": "abc"}}
    )
    assert response.output_text == "hi there"


@pytest.mark.parametrize(
    "field,value",
    [
        ("access_programs", {"cyber": "standard"}),
        ("image", {"context_compression": "auto"}),
        ("prompt_cache_options", {"mode": "implicit"}),
    ],
)
def test_fields_of_openais_own_services_are_accepted(client: openai.OpenAI, field: str, value: Any) -> None:
    response = client.responses.create(model="echo", input="hi", extra_body={field: value})
    assert response.status == "completed"


def test_a_name_in_no_version_of_the_api_is_an_unknown_parameter(upstream: ParleyProcess) -> None:
    reply = httpx.post(
        upstream.base_url + "/v1/responses", json={"model": "echo", "input": "hi", "unknown_thing": 1}, timeout=30
    )
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "message": "Unknown parameter: 'unknown_thing'.",
        "type": "invalid_request_error",
        "param": "unknown_thing",
        "code": "unknown_parameter",
    }


def test_moderation_is_refused(upstream: ParleyProcess) -> None:
    body = {"model": "echo", "input": "hi", "moderation": {"model": "omni-moderation-latest"}}
    reply = httpx.post(upstream.base_url + "/v1/responses", json=body, timeout=30)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "unsupported_parameter"
    assert reply.json()["error"]["param"] == "moderation"


def test_an_unknown_field_of_a_function_tool_is_refused(client: openai.OpenAI) -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}, "bogus": True}
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="echo", input="hi", tools=[tool])  # type: ignore[list-item]
    assert "bogus" in raised.value.body["message"]  # type: ignore[index]


def test_a_function_field_that_the_package_knows_is_accepted_and_echoed(client: openai.OpenAI) -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": None, "defer_loading": False}
    response = client.responses.create(model="echo", input="hi", tools=[tool])  # type: ignore[list-item]
    assert response.tools[0].model_dump()["defer_loading"] is False


def test_a_tool_choice_of_a_tool_type_forces_that_tool(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    other = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    client.responses.create(model="echo", input="hi", tools=[other, {"type": "shell"}], tool_choice={"type": "shell"})
    assert fake_upstream.requests[-1]["tool_choice"] == {"type": "function", "function": {"name": "shell"}}


def test_a_tool_choice_naming_no_tool_of_the_request_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="echo", input="hi", tools=[CUSTOM], tool_choice={"type": "apply_patch"})
    assert raised.value.body["param"] == "tool_choice"  # type: ignore[index]
