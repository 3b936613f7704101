"""Server-side MCP tools in the agent loop, against a real MCP server, on SQLite and PostgreSQL.

The model is the fake upstream's `fake-script`, whose tool calls are written
in the user message (see tests/fake_upstream.py), so that every step of the
loop is known in advance; one test runs the embedded model live.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn

from tests.conftest import ParleyProcess, parley_config
from tests.fake_upstream import FakeUpstream
from tests.mcp_servers import DeepSchemaToolServer, SwappedToolServer, ToolServer
from tests.support.tools import mcp_tool

SCRIPT = "fake/fake-script"


@pytest.fixture
def client(parley: ParleyProcess) -> openai.OpenAI:
    return parley.client(timeout=60)


def types(response: Any) -> list[str]:
    return [item.type for item in response.output]


@pytest.mark.parametrize("stream", [False, True])
def test_listing_a_call_and_the_answer(client: openai.OpenAI, tool_server: ToolServer, stream: bool) -> None:
    request = {"model": SCRIPT, "input": 'add {"a": 2, "b": 3}', "tools": [mcp_tool(tool_server)]}
    if stream:
        events = list(client.responses.create(**request, stream=True))
        response = events[-1].response
        names = [event.type for event in events]
        for event in (
            "response.mcp_list_tools.in_progress",
            "response.mcp_list_tools.completed",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress",
            "response.mcp_call.completed",
        ):
            assert event in names
        assert names.index("response.mcp_call.in_progress") < names.index("response.mcp_call.completed")
    else:
        response = client.responses.create(**request)

    assert types(response) == ["mcp_list_tools", "mcp_call", "message"]
    listing, call, _ = response.output
    assert listing.server_label == "tools"
    assert {tool.name for tool in listing.tools} == {"echo", "add", "sleep", "explode", "big", "peek"}
    add = next(tool for tool in listing.tools if tool.name == "add")
    assert add.input_schema["required"] == ["a", "b"]
    assert (call.server_label, call.name, json.loads(call.arguments)) == ("tools", "add", {"a": 2, "b": 3})
    assert (call.output, call.error, call.status) == ("5", None, "completed")
    assert response.output_text == "Results: 5"
    assert response.status == "completed"
    stored = client.responses.retrieve(response.id)
    assert stored.model_dump() == response.model_dump()


def test_sse_transport(client: openai.OpenAI, tool_server: ToolServer) -> None:
    response = client.responses.create(
        model=SCRIPT, input='echo {"text": "over sse"}', tools=[mcp_tool(tool_server, server_url=tool_server.sse_url)]
    )
    assert response.output[1].output == "over sse"
    assert response.output_text == "Results: over sse"


def test_several_steps_list_once(client: openai.OpenAI, tool_server: ToolServer, fake_upstream: FakeUpstream) -> None:
    response = client.responses.create(
        model=SCRIPT,
        input='add {"a": 1, "b": 1} | echo {"text": "second"}',
        tools=[mcp_tool(tool_server)],
    )
    assert types(response) == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    assert response.output_text == "Results: 2; second"
    messages = fake_upstream.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert messages[2]["content"] == "2"


def test_calls_made_in_one_model_message_go_back_as_one(
    client: openai.OpenAI, tool_server: ToolServer, fake_upstream: FakeUpstream
) -> None:
    """One assistant message with both calls, then their results: in the loop, from storage, and as input again."""
    tools = [mcp_tool(tool_server)]
    script = 'add {"a": 1, "b": 2} & echo {"text": "x"}'
    first = client.responses.create(model=SCRIPT, input=script, tools=tools)
    assert types(first) == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    add, echo = first.output[1], first.output[2]
    turn = [
        {"role": "user", "content": script},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": add.id, "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
                {"id": echo.id, "type": "function", "function": {"name": "echo", "arguments": '{"text": "x"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": add.id, "content": "3"},
        {"role": "tool", "tool_call_id": echo.id, "content": "x"},
    ]
    assert fake_upstream.requests[-1]["messages"] == turn
    after = [{"role": "assistant", "content": "Results: 3; x"}, {"role": "user", "content": "thanks"}]

    client.responses.create(model="fake/fake-echo", input="thanks", tools=tools, previous_response_id=first.id)
    assert fake_upstream.requests[-1]["messages"] == turn + after

    history = [{"role": "user", "content": script}, *(item.model_dump(exclude_none=True) for item in first.output)]
    client.responses.create(
        model="fake/fake-echo", input=[*history, {"role": "user", "content": "thanks"}], tools=tools, store=False
    )
    assert fake_upstream.requests[-1]["messages"] == turn + after


def test_listing_is_reused_along_the_chain(client: openai.OpenAI, tool_server: ToolServer) -> None:
    tools = [mcp_tool(tool_server)]
    first = client.responses.create(model=SCRIPT, input='add {"a": 1, "b": 2}', tools=tools)
    second = client.responses.create(
        model=SCRIPT, input='add {"a": 3, "b": 4}', tools=tools, previous_response_id=first.id
    )
    assert types(second) == ["mcp_call", "message"]
    assert second.output[0].output == "7"

    moved = mcp_tool(tool_server, server_url=tool_server.sse_url)
    third = client.responses.create(
        model=SCRIPT, input='add {"a": 1, "b": 1}', tools=[moved], previous_response_id=second.id
    )
    assert types(third) == ["mcp_list_tools", "mcp_call", "message"]


@pytest.mark.parametrize("stream", [False, True])
def test_approval_approved(client: openai.OpenAI, tool_server: ToolServer, stream: bool) -> None:
    tools = [mcp_tool(tool_server, require_approval="always")]
    first = client.responses.create(model=SCRIPT, input='add {"a": 20, "b": 22}', tools=tools)
    assert types(first) == ["mcp_list_tools", "mcp_approval_request"]
    request = first.output[1]
    assert (request.name, json.loads(request.arguments), request.server_label) == ("add", {"a": 20, "b": 22}, "tools")
    assert first.status == "completed"

    answer = {
        "model": SCRIPT,
        "previous_response_id": first.id,
        "input": [{"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}],
        "tools": tools,
    }
    second = (
        list(client.responses.create(**answer, stream=True))[-1].response
        if stream
        else client.responses.create(**answer)
    )
    assert types(second) == ["mcp_call", "message"]
    call = second.output[0]
    assert (call.approval_request_id, call.output, call.status) == (request.id, "42", "completed")
    assert second.output_text == "Results: 42"


def test_an_approved_call_goes_back_with_the_calls_of_its_model_message(
    client: openai.OpenAI, tool_server: ToolServer, fake_upstream: FakeUpstream
) -> None:
    """The model called add and echo in one message; echo waited for an approval, and ran in the next response."""
    tools = [mcp_tool(tool_server, require_approval={"never": {"tool_names": ["add"]}})]
    script = 'add {"a": 1, "b": 2} & echo {"text": "x"}'
    first = client.responses.create(model=SCRIPT, input=script, tools=tools)
    assert types(first) == ["mcp_list_tools", "mcp_call", "mcp_approval_request"]
    add, request = first.output[1], first.output[2]
    approve = {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
    second = client.responses.create(model=SCRIPT, input=[approve], tools=tools, previous_response_id=first.id)
    assert types(second) == ["mcp_call", "message"] and second.output[0].output == "x"
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": script},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": add.id, "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
                {"id": request.id, "type": "function", "function": {"name": "echo", "arguments": '{"text": "x"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": add.id, "content": "3"},
        {"role": "tool", "tool_call_id": request.id, "content": "x"},
    ]


def test_approval_denied(client: openai.OpenAI, tool_server: ToolServer, fake_upstream: FakeUpstream) -> None:
    tools = [mcp_tool(tool_server, require_approval={"always": {"tool_names": ["add"]}})]
    first = client.responses.create(model=SCRIPT, input='add {"a": 1, "b": 1}', tools=tools)
    request = first.output[-1]
    assert request.type == "mcp_approval_request"
    second = client.responses.create(
        model=SCRIPT,
        previous_response_id=first.id,
        input=[{"type": "mcp_approval_response", "approval_request_id": request.id, "approve": False}],
        tools=tools,
    )
    assert types(second) == ["message"]
    assert second.output_text == "Results: The user declined to run this tool call."
    assert fake_upstream.requests[-1]["messages"][-1]["tool_call_id"] == request.id


def test_approval_filter_never(client: openai.OpenAI, tool_server: ToolServer) -> None:
    tools = [mcp_tool(tool_server, require_approval={"never": {"tool_names": ["echo"]}})]
    response = client.responses.create(model=SCRIPT, input='echo {"text": "free"}', tools=tools)
    assert types(response) == ["mcp_list_tools", "mcp_call", "message"]


def test_unknown_approval_request_is_a_400(client: openai.OpenAI, tool_server: ToolServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model=SCRIPT,
            input=[{"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}],
            tools=[mcp_tool(tool_server)],
        )
    assert raised.value.param == "input[0].approval_request_id"


def test_allowed_tools(client: openai.OpenAI, tool_server: ToolServer, fake_upstream: FakeUpstream) -> None:
    for allowed in (["add", "echo"], {"tool_names": ["add", "echo"]}):
        response = client.responses.create(
            model=SCRIPT, input='add {"a": 1, "b": 1}', tools=[mcp_tool(tool_server, allowed_tools=allowed)]
        )
        assert response.output_text == "Results: 2"
        offered = [tool["function"]["name"] for tool in fake_upstream.requests[-1]["tools"]]
        assert sorted(offered) == ["add", "echo"]


def test_read_only_filters(client: openai.OpenAI, tool_server: ToolServer, fake_upstream: FakeUpstream) -> None:
    only_read = [mcp_tool(tool_server, allowed_tools={"read_only": True})]
    response = client.responses.create(model=SCRIPT, input='peek {"key": "k"}', tools=only_read)
    assert [tool["function"]["name"] for tool in fake_upstream.requests[-1]["tools"]] == ["peek"]
    assert response.output_text == "Results: value of k"
    peek = next(tool for tool in response.output[0].tools if tool.name == "peek")
    assert peek.annotations == {"readOnlyHint": True}  # MCP's own key, as OpenAI lists it

    tools = [mcp_tool(tool_server, require_approval={"never": {"read_only": True}})]
    free = client.responses.create(model=SCRIPT, input='peek {"key": "k"}', tools=tools)
    assert types(free) == ["mcp_list_tools", "mcp_call", "message"]
    asked = client.responses.create(model=SCRIPT, input='echo {"text": "x"}', tools=tools)
    assert types(asked) == ["mcp_list_tools", "mcp_approval_request"]


def test_an_answered_approval_is_not_run_again(client: openai.OpenAI, tool_server: ToolServer) -> None:
    run = uuid.uuid4().hex
    tools = [mcp_tool(tool_server, require_approval="always", headers={"X-Test-Run": run})]

    def tool_calls() -> int:
        return sum(1 for h in tool_server.headers if h.get("x-test-run") == run and h.get("mcp-method") == "tools/call")

    first = client.responses.create(model=SCRIPT, input='add {"a": 1, "b": 2}', tools=tools)
    approve = {"type": "mcp_approval_response", "approval_request_id": first.output[1].id, "approve": True}
    second = client.responses.create(model=SCRIPT, previous_response_id=first.id, input=[approve], tools=tools)
    assert second.output[0].output == "3" and tool_calls() == 1

    for previous, answers, param in (
        (second.id, [approve], "input[0].approval_request_id"),  # its call is in the history
        (second.id, [{**approve, "approve": False}], "input[0].approval_request_id"),
        (first.id, [approve, approve], "input[1].approval_request_id"),  # answered twice at once
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model=SCRIPT, previous_response_id=previous, input=answers, tools=tools)
        assert raised.value.param == param
    assert tool_calls() == 1


def test_an_approved_call_stays_in_a_response_whose_model_fails(client: openai.OpenAI, tool_server: ToolServer) -> None:
    tools = [mcp_tool(tool_server, require_approval="always")]
    first = client.responses.create(model=SCRIPT, input='add {"a": 20, "b": 22}', tools=tools)
    request = first.output[1]
    events = list(
        client.responses.create(
            model="fake/fake-error-500",
            previous_response_id=first.id,
            input=[{"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}],
            tools=tools,
            stream=True,
        )
    )
    names = [event.type for event in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert "response.mcp_call.completed" in names
    failed = events[-1]
    assert failed.type == "response.failed"
    [call] = failed.response.output
    assert (call.type, call.approval_request_id, call.output, call.status) == (
        "mcp_call",
        request.id,
        "42",
        "completed",
    )
    stored = client.responses.retrieve(failed.response.id)
    assert stored.status == "failed"
    assert stored.output == failed.response.output


def test_stateless_approval(client: openai.OpenAI, tool_server: ToolServer) -> None:
    tools = [mcp_tool(tool_server, require_approval="always")]
    first = client.responses.create(model=SCRIPT, input='add {"a": 2, "b": 2}', tools=tools, store=False)
    request = first.output[1]
    response = client.responses.create(
        model=SCRIPT,
        input=[
            {"role": "user", "content": 'add {"a": 2, "b": 2}'},
            request.model_dump(exclude_none=True),
            {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True},
        ],
        tools=tools,
    )
    assert types(response) == ["mcp_list_tools", "mcp_call", "message"]
    assert (response.output[1].approval_request_id, response.output[1].output) == (request.id, "4")
    assert response.output_text == "Results: 4"

    # The next stateless turn sends its whole history again, answer and call included:
    # that answer is history, not a new one, and the tool does not run again.
    calls = sum(1 for h in tool_server.headers if h.get("mcp-method") == "tools/call")
    history = [
        {"role": "user", "content": 'add {"a": 2, "b": 2}'},
        request.model_dump(exclude_none=True),
        {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True},
        *(item.model_dump(exclude_none=True) for item in response.output[1:]),
    ]
    again = client.responses.create(
        model=SCRIPT, input=[*history, {"role": "user", "content": " "}], tools=tools, store=False
    )
    assert again.status == "completed" and "mcp_call" not in types(again)
    assert sum(1 for h in tool_server.headers if h.get("mcp-method") == "tools/call") == calls


def streamed(client: openai.OpenAI, **request: Any) -> tuple[list[str], Any]:
    """The event names of a streamed response, and the response its last event carries."""
    events = list(client.responses.create(**request, stream=True))
    return [event.type for event in events], events[-1].response


def assert_call_failed_in_stream(names: list[str], call: Any) -> None:
    assert call.type == "mcp_call" and call.status == "failed" and call.output is None
    assert "response.mcp_call.failed" in names and "response.mcp_call.completed" not in names
    assert names.index("response.mcp_call.in_progress") < names.index("response.mcp_call.failed")


def test_tool_that_raises_streamed(client: openai.OpenAI, tool_server: ToolServer) -> None:
    names, response = streamed(client, model=SCRIPT, input='explode {"reason": "boom"}', tools=[mcp_tool(tool_server)])
    call = response.output[1]
    assert_call_failed_in_stream(names, call)
    assert call.error.type == "mcp_tool_execution_error" and "explode" in json.dumps(call.error.content)
    assert response.status == "completed" and response.output_text.startswith("Results: Error: ")


def test_approved_call_to_a_server_now_down_streamed(client: openai.OpenAI) -> None:
    """The server went away after the model asked for the call: its listing is the earlier turn's, and the call
    fails for the model to read."""
    server = ToolServer().start()
    tools = [mcp_tool(server, require_approval="always")]
    try:
        first = client.responses.create(model=SCRIPT, input='add {"a": 1, "b": 1}', tools=tools)
    finally:
        server.stop()
    approve = {"type": "mcp_approval_response", "approval_request_id": first.output[1].id, "approve": True}
    names, response = streamed(client, model=SCRIPT, previous_response_id=first.id, input=[approve], tools=tools)
    assert types(response) == ["mcp_call", "message"]
    call = response.output[0]
    assert_call_failed_in_stream(names, call)
    assert call.error.type == "mcp_protocol_error"
    assert response.output_text.startswith("Results: Error: ")


DOWN = {"type": "mcp", "server_label": "gone", "server_url": "http://127.0.0.1:9/mcp", "require_approval": "never"}


@pytest.mark.parametrize("stream", [False, True])
def test_a_server_that_cannot_list_its_tools_fails_the_request(
    client: openai.OpenAI, fake_upstream: FakeUpstream, stream: bool
) -> None:
    """As OpenAI's: a 424 before the response starts, not a model that runs without the tools."""
    asked = len(fake_upstream.requests)
    with pytest.raises(openai.APIStatusError) as raised:
        client.responses.create(model="fake/fake-echo", input="still here", tools=[DOWN], stream=stream)
    assert raised.value.status_code == 424
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["message"].startswith("Error retrieving tool list from MCP server: 'gone'. Cannot connect")
    assert (error["type"], error["param"], error["code"]) == ("external_connector_error", "tools", None)
    assert len(fake_upstream.requests) == asked  # the model was never called


@pytest.fixture(scope="module")
def refusing_server() -> Iterator[str]:
    """An MCP server that wants a token this test never has: every request is a 401."""

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="mcp"')]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"error": "invalid_token"}'})

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(refuse, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
def test_a_server_that_refuses_the_listing_is_a_424_in_openais_words(
    client: openai.OpenAI, refusing_server: str, path: str
) -> None:
    tool = {"type": "mcp", "server_label": "guarded", "server_url": refusing_server + path, "require_approval": "never"}
    with pytest.raises(openai.APIStatusError) as raised:
        client.responses.create(model="fake/fake-echo", input="hi", tools=[tool])
    assert raised.value.status_code == 424
    assert raised.value.response.json() == {
        "error": {
            "message": "Error retrieving tool list from MCP server: 'guarded'. Http status code: 401 (Unauthorized)",
            "type": "external_connector_error",
            "param": "tools",
            "code": "http_error",
        }
    }


def test_each_transport_is_found_at_the_other_ones_path(client: openai.OpenAI) -> None:
    """The transport the URL suggests is tried first, the other one next."""
    swapped = SwappedToolServer().start()
    try:
        for url in (swapped.url, swapped.sse_url):  # SSE at /mcp, streamable HTTP at /sse
            response = client.responses.create(
                model=SCRIPT, input='echo {"text": "found"}', tools=[mcp_tool(swapped, server_url=url)]
            )
            assert response.output[1].output == "found", url
    finally:
        swapped.stop()


def test_tool_that_raises(client: openai.OpenAI, tool_server: ToolServer) -> None:
    response = client.responses.create(model=SCRIPT, input='explode {"reason": "boom"}', tools=[mcp_tool(tool_server)])
    call = response.output[1]
    assert call.status == "failed" and call.output is None
    assert call.error.type == "mcp_tool_execution_error"
    assert response.output_text.startswith("Results: Error: ")
    assert response.status == "completed"


def test_invalid_arguments_from_the_model(client: openai.OpenAI, tool_server: ToolServer) -> None:
    response = client.responses.create(model=SCRIPT, input='add {"a": "many"}', tools=[mcp_tool(tool_server)])
    call = response.output[1]
    assert call.status == "failed" and call.error is not None
    not_json = client.responses.create(model=SCRIPT, input="add {oops", tools=[mcp_tool(tool_server)])
    assert not_json.output[1].error.type == "mcp_protocol_error"


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_calls_run_concurrently(client: openai.OpenAI, tool_server: ToolServer, parallel: bool) -> None:
    started = time.monotonic()
    response = client.responses.create(
        model=SCRIPT,
        input='sleep {"seconds": 1} & sleep {"seconds": 1}',
        tools=[mcp_tool(tool_server)],
        parallel_tool_calls=parallel,
    )
    elapsed = time.monotonic() - started
    assert types(response) == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    assert response.output_text == "Results: slept 1.0; slept 1.0"
    if parallel:
        assert elapsed < 1.8
    else:
        assert elapsed >= 2.0


def test_max_tool_calls(client: openai.OpenAI, tool_server: ToolServer, fake_upstream: FakeUpstream) -> None:
    response = client.responses.create(
        model=SCRIPT,
        input='add {"a": 1, "b": 1} | add {"a": 2, "b": 2}',
        tools=[mcp_tool(tool_server)],
        max_tool_calls=1,
    )
    first, second = response.output[1], response.output[2]
    assert first.output == "2"
    assert second.status == "failed" and "max_tool_calls" in second.error.message
    assert "tools" not in fake_upstream.requests[-1]  # not offered once the limit is reached


def test_secrets_reach_only_the_mcp_server(
    parley: ParleyProcess, client: openai.OpenAI, tool_server: ToolServer, storage_url: str
) -> None:
    tools = [mcp_tool(tool_server, authorization="secret-token-123", headers={"X-Api-Key": "hdr-secret-456"})]
    response = client.responses.create(model=SCRIPT, input='add {"a": 1, "b": 1}', tools=tools)
    streamed = list(client.responses.create(model=SCRIPT, input='add {"a": 1, "b": 1}', tools=tools, stream=True))

    received = tool_server.headers[-1]
    assert received["authorization"] == "Bearer secret-token-123"
    assert received["x-api-key"] == "hdr-secret-456"
    with parley.http() as http:
        texts = [
            http.get(f"/v1/responses/{response.id}").text,
            response.model_dump_json(),
            *(e.model_dump_json() for e in streamed),
        ]
        texts.append(http.get(f"/v1/responses/{response.id}/input_items").text)
    for text in texts:
        assert "secret-token-123" not in text and "hdr-secret-456" not in text
    echoed = response.tools[0]
    assert getattr(echoed, "authorization", None) is None and echoed.headers is None
    assert all("secret-token-123" not in line and "hdr-secret-456" not in line for line in parley.output)
    if storage_url.startswith("sqlite"):
        database = Path(storage_url.split("///", 1)[1])
        for path in database.parent.glob(database.name + "*"):
            if not path.is_file():
                continue  # the directory of sockets beside the database (parley.store.signals)
            data = path.read_bytes()
            assert b"secret-token-123" not in data and b"hdr-secret-456" not in data
    else:
        import subprocess

        url = storage_url.replace("postgresql+asyncpg", "postgresql")
        dump = subprocess.run(
            [
                "psql",
                url,
                "-At",
                "-c",
                "SELECT body::text FROM responses UNION ALL SELECT data::text FROM response_items",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert dump and "secret-token-123" not in dump and "hdr-secret-456" not in dump


def test_url_must_be_http(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model=SCRIPT, input="x", tools=[{"type": "mcp", "server_label": "f", "server_url": "file:///etc/passwd"}]
        )
    assert raised.value.param == "tools[0]"


# A Parley of its own, with tight limits.


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[ParleyProcess]:
    config = parley_config(fake_upstream, f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('strict') / 'p.db'}")
    config["tools"] = {"mcp": {"timeout": 1, "max_output_chars": 1000}}
    config["engine"] = {"max_iterations": 3}
    server = ParleyProcess(tmp_path_factory.mktemp("strict-parley"), config)
    server.start()
    yield server
    server.stop()


def listed(client: openai.OpenAI, tool: dict[str, Any]) -> str:
    """A response that listed `tool`'s server, to chain from: the calls after it reuse its listing and session.

    Connecting and listing share the 1 s timeout of the calls under test, which a loaded
    machine can miss; they are not what these tests are about, so they are tried again.
    """
    for _ in range(5):
        try:
            return client.responses.create(model="fake/fake-echo", input="list", tools=[tool]).id
        except openai.APIStatusError as exc:
            assert exc.status_code == 424, exc  # a listing that failed
    pytest.fail("the tool server could not be listed within the timeout, five times in a row")


def test_slow_tool_times_out(strict: ParleyProcess, tool_server: ToolServer) -> None:
    client, tool = strict.client(), mcp_tool(tool_server)
    previous = listed(client, tool)
    started = time.monotonic()
    response = client.responses.create(
        model=SCRIPT, input='sleep {"seconds": 5}', tools=[tool], previous_response_id=previous
    )
    elapsed = time.monotonic() - started
    assert types(response) == ["mcp_call", "message"]
    call = response.output[0]
    assert call.status == "failed" and "did not answer within 1 s" in call.error.message
    assert elapsed < 4.5  # the tool sleeps 5 s; Parley stopped waiting after 1


def test_slow_tool_times_out_streamed(strict: ParleyProcess, tool_server: ToolServer) -> None:
    client, tool = strict.client(), mcp_tool(tool_server)
    names, response = streamed(
        client, model=SCRIPT, input='sleep {"seconds": 5}', tools=[tool], previous_response_id=listed(client, tool)
    )
    call = response.output[0]
    assert_call_failed_in_stream(names, call)
    assert call.error.type == "mcp_protocol_error" and "did not answer within 1 s" in call.error.message


def test_long_output_is_cut_and_says_so(strict: ParleyProcess, tool_server: ToolServer) -> None:
    client, tool = strict.client(), mcp_tool(tool_server)
    response = client.responses.create(
        model=SCRIPT, input='big {"size": 5000}', tools=[tool], previous_response_id=listed(client, tool)
    )
    output = response.output[0].output
    assert output.startswith("x" * 1000) and "[output truncated: 1000 of 5000 characters]" in output


def test_iteration_bound_ends_incomplete(strict: ParleyProcess, tool_server: ToolServer) -> None:
    client, tool = strict.client(), mcp_tool(tool_server)
    response = client.responses.create(
        model=SCRIPT, input='echo {"text": "again"} | forever', tools=[tool], previous_response_id=listed(client, tool)
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert types(response).count("mcp_call") == 3


def test_loopback_can_be_refused(tmp_path: Path, fake_upstream: FakeUpstream, tool_server: ToolServer) -> None:
    config = parley_config(fake_upstream, f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    config["tools"] = {"mcp": {"allow_loopback": False}}
    server = ParleyProcess(tmp_path / "parley", config)
    server.start()
    port = tool_server.port
    # Every way of naming this machine: the unspecified addresses and IPv4-mapped loopback reach it too.
    hosts = [
        "127.0.0.1",
        "LOCALHOST",
        "127.1",
        "0.0.0.0",
        "0",
        "[::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:2]",
    ]
    tools = [
        mcp_tool(tool_server, server_label=f"host{i}", server_url=f"http://{host}:{port}/mcp")
        for i, host in enumerate(hosts)
    ]
    refusals = []
    try:
        for tool in tools:
            with pytest.raises(openai.APIStatusError) as raised:
                server.client().responses.create(model="fake/fake-echo", input="hi", tools=[tool])
            refusals.append((raised.value.status_code, raised.value.message))
    finally:
        server.stop()
    for host, (status, message) in zip(hosts, refusals, strict=True):
        assert status == 424 and "may not be reached" in message, (host, message)


def test_allowed_hosts_ignore_case(tmp_path: Path, fake_upstream: FakeUpstream, tool_server: ToolServer) -> None:
    config = parley_config(fake_upstream, f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    config["tools"] = {"mcp": {"allowed_hosts": ["LocalHost"]}}
    server = ParleyProcess(tmp_path / "parley", config)
    server.start()
    named = mcp_tool(tool_server, server_label="named", server_url=f"http://LOCALHOST:{tool_server.port}/mcp")
    other = mcp_tool(tool_server, server_label="other")  # 127.0.0.1: the same server, not an allowed host
    try:
        response = server.client().responses.create(model="fake/fake-echo", input="hi", tools=[named])
        with pytest.raises(openai.APIStatusError) as refused:
            server.client().responses.create(model="fake/fake-echo", input="hi", tools=[named, other])
    finally:
        server.stop()
    allowed = response.output[0]
    assert (allowed.server_label, allowed.status, allowed.error) == ("named", "completed", None)
    assert "peek" in {tool.name for tool in allowed.tools}
    assert refused.value.status_code == 424
    assert "'other'" in refused.value.message and "not among the allowed hosts" in refused.value.message


def test_embedded_model_calls_an_mcp_tool(strict: ParleyProcess, tool_server: ToolServer) -> None:
    """Live, on SmolLM2: the tool call is real and runs; the loop stops at the iteration bound at worst."""
    response = strict.client(timeout=180).responses.create(
        model="smollm2-135m",
        input="Add 2 and 3 with the add tool.",
        tools=[mcp_tool(tool_server, allowed_tools=["add"])],
        tool_choice="required",
        temperature=0,
        max_output_tokens=200,
    )
    call = next(item for item in response.output if item.type == "mcp_call")
    arguments = json.loads(call.arguments)
    assert call.name == "add" and set(arguments) == {"a", "b"}
    assert call.output == str(arguments["a"] + arguments["b"])
    assert response.status in ("completed", "incomplete")


def test_sessions_are_reused_across_responses_with_the_same_credentials(
    client: openai.OpenAI, tool_server: ToolServer
) -> None:
    def handshakes(run: str) -> int:
        """How many times a client connected (the modern protocol's `server/discover`)."""
        return sum(
            1 for h in tool_server.headers if h.get("x-test-run") == run and h.get("mcp-method") == "server/discover"
        )

    run = uuid.uuid4().hex
    for _ in range(3):
        response = client.responses.create(
            model=SCRIPT, input='add {"a": 1, "b": 1}', tools=[mcp_tool(tool_server, headers={"X-Test-Run": run})]
        )
        assert response.output[1].output == "2"
    assert handshakes(run) == 1

    other = uuid.uuid4().hex  # other headers, another session: credentials are never shared
    client.responses.create(
        model=SCRIPT, input='add {"a": 1, "b": 1}', tools=[mcp_tool(tool_server, headers={"X-Test-Run": other})]
    )
    assert handshakes(other) == 1 and handshakes(run) == 1


def test_a_nul_character_in_tool_output_is_stored(client: openai.OpenAI, tool_server: ToolServer) -> None:
    # Requests may not carry a NUL (a 400), but a tool may return one. PostgreSQL's jsonb
    # cannot hold it, so it is stored there as U+FFFD; the turn is stored either way.
    conversation = client.conversations.create()
    script = 'echo {"text": "a\\u0000b"}'  # the escape reaches the tool as arguments JSON
    response = client.responses.create(
        model=SCRIPT,
        input=script,
        tools=[mcp_tool(tool_server, require_approval="never")],
        conversation=conversation.id,
    )
    assert response.status == "completed"
    assert response.output[1].output == "a\x00b"  # the caller gets the tool's output as it was
    stored = client.responses.retrieve(response.id)
    assert stored.status == "completed"
    assert stored.output[1].output in ("a\x00b", "a\ufffdb")
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [item.type for item in items] == ["message", "mcp_list_tools", "mcp_call", "message"]
    assert items[2].output == stored.output[1].output


def test_a_tool_choice_of_an_mcp_server_forces_its_tool(
    client: openai.OpenAI, tool_server: ToolServer, fake_upstream: FakeUpstream
) -> None:
    label = mcp_tool(tool_server)["server_label"]
    tools = [mcp_tool(tool_server, allowed_tools=["add", "echo"])]
    response = client.responses.create(
        model=SCRIPT,
        input='add {"a": 1, "b": 2}',
        tools=tools,
        tool_choice={"type": "mcp", "server_label": label, "name": "add"},
    )
    assert response.output_text == "Results: 3"
    first = next(request for request in fake_upstream.requests[-2:] if request.get("tool_choice") != "auto")
    assert first["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    # Naming the server alone: one of its tools must be called.
    client.responses.create(
        model=SCRIPT, input='add {"a": 1, "b": 2}', tools=tools, tool_choice={"type": "mcp", "server_label": label}
    )
    assert fake_upstream.requests[-2]["tool_choice"] == "required"


def test_a_tool_whose_schema_nests_too_deep_is_left_out(client: openai.OpenAI, parley: ParleyProcess) -> None:
    """Stored in the listing, it could not be read back: the rest of the server's tools are listed."""
    server = DeepSchemaToolServer().start()
    try:
        response = client.responses.create(model="fake/fake-echo", input="list", tools=[mcp_tool(server)])
        (listing, _message) = response.output
        names = {tool.name for tool in listing.tools}
        assert "deep" not in names and {"add", "echo"} <= names
        # And the listing reads back, as every list of responses that includes it must.
        assert client.responses.retrieve(response.id).output[0].type == "mcp_list_tools"
        with parley.http() as http:
            assert http.get("/v1/responses", params={"limit": 1}).json()["data"][0]["id"] == response.id
    finally:
        server.stop()
