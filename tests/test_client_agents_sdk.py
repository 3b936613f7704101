"""The OpenAI Agents SDK (`openai-agents`), unmodified, against Parley through its `OpenAIResponsesModel`.

The SDK's agents run their loop on the client side: they send the Responses
API what a real agent sends (function tools, structured output schemas,
handoffs as `transfer_to_<agent>` tools, hosted MCP servers, conversations
through the Conversations API) and parse every answer with openai's types.
The model is the fake upstream: `fake-script` calls the tools its user message
names and then answers "Results: " and what they returned, `fake-json` answers
`{"answer": 42}`, `fake-echo` echoes. Every stream the SDK reads is checked
by the stream validator (`ParleyProcess.async_client`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    HostedMCPTool,
    MCPToolApprovalFunctionResult,
    MCPToolApprovalRequest,
    MultiProvider,
    OpenAIConversationsSession,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.items import MCPApprovalRequestItem, MCPApprovalResponseItem, MCPListToolsItem, ToolCallItem
from agents.models import _openai_shared
from pydantic import BaseModel

from tests.conftest import ParleyProcess
from tests.fake_upstream import FakeUpstream
from tests.mcp_servers import ToolServer

SCRIPT = "fake/fake-script"
JSON = "fake/fake-json"
ECHO = "fake/fake-echo"


class Answer(BaseModel):
    answer: int


@pytest.fixture(scope="module", autouse=True)
def _no_tracing() -> Iterator[None]:
    # The SDK would otherwise export traces to OpenAI's platform, which no test may reach.
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


@pytest.fixture
def client(upstream: ParleyProcess) -> openai.AsyncOpenAI:
    return upstream.async_client()


def model(client: openai.AsyncOpenAI, name: str) -> OpenAIResponsesModel:
    return OpenAIResponsesModel(model=name, openai_client=client)


def messages_sent(fake: FakeUpstream) -> list[tuple[str, str]]:
    """The roles and texts of the messages in Parley's last request to the upstream (tool calls left out)."""
    return [(m["role"], m["content"]) for m in fake.requests[-1]["messages"] if isinstance(m.get("content"), str)]


@pytest.fixture
def default_client(client: openai.AsyncOpenAI) -> Iterator[openai.AsyncOpenAI]:
    """Parley's client as the SDK's default one, as an application sets it up; the previous default after."""
    previous = _openai_shared.get_default_openai_client()
    set_default_openai_client(client, use_for_tracing=False)
    yield client
    _openai_shared.set_default_openai_client(previous)  # type: ignore[arg-type]


async def test_models_by_name_through_the_default_client(
    default_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    # An alias of Parley's has no `/`, which the SDK would read as a provider prefix of its own.
    agent = Agent(name="Echo", instructions="Repeat.", model="echo")
    result = await Runner.run(agent, "through the default client")

    assert result.final_output == "through the default client"
    assert fake_upstream.requests[-1]["model"] == "fake-echo"

    # A `provider/model` id reaches Parley whole when the SDK passes unknown prefixes through.
    agent = Agent(name="Echo", instructions="Repeat.", model="fake/fake-echo")
    passing = RunConfig(model_provider=MultiProvider(unknown_prefix_mode="model_id"))
    result = await Runner.run(agent, "a provider and a model", run_config=passing)

    assert result.final_output == "a provider and a model"
    response = await default_client.responses.retrieve(result.last_response_id)
    assert response.model == "fake/fake-echo"


async def test_function_tool_round_trip(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    calls: list[tuple[int, int]] = []

    @function_tool
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        calls.append((a, b))
        return a + b

    agent = Agent(name="Adder", instructions="Add what you are asked to.", model=model(client, SCRIPT), tools=[add])
    result = await Runner.run(agent, 'add {"a": 2, "b": 3}')

    assert calls == [(2, 3)]
    assert result.final_output == "Results: 5"
    [call] = [item.raw_item for item in result.new_items if isinstance(item, ToolCallItem)]
    assert call.type == "function_call" and call.name == "add" and json.loads(call.arguments) == {"a": 2, "b": 3}
    # The second model call read the tool's output, under the call's id.
    tool_message = fake_upstream.requests[-1]["messages"][-1]
    assert tool_message == {"role": "tool", "tool_call_id": call.call_id, "content": "5"}
    assert fake_upstream.requests[-1]["tools"][0]["function"]["name"] == "add"


async def test_streamed_run(client: openai.AsyncOpenAI) -> None:
    @function_tool
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    agent = Agent(name="Adder", instructions="Add.", model=model(client, SCRIPT), tools=[add])
    result = Runner.run_streamed(agent, 'add {"a": 4, "b": 5}')
    raw_types: list[str] = []
    item_events: list[str] = []
    text = ""
    async for event in result.stream_events():
        if event.type == "raw_response_event":
            raw_types.append(event.data.type)
            if event.data.type == "response.output_text.delta":
                text += event.data.delta
        elif event.type == "run_item_stream_event":
            item_events.append(event.name)

    assert result.is_complete and result.final_output == "Results: 9"
    assert text == "Results: 9"
    assert item_events == ["tool_called", "tool_output", "message_output_created"]
    # Two responses, each streamed whole.
    assert raw_types.count("response.created") == 2 and raw_types.count("response.completed") == 2
    assert "response.function_call_arguments.delta" in raw_types


async def test_previous_response_id_chains_runs(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    agent = Agent(name="Echo", instructions="Repeat.", model=model(client, ECHO))
    first = await Runner.run(agent, "remember the word banana")
    second = await Runner.run(agent, "what was the word", previous_response_id=first.last_response_id)

    assert second.final_output == "what was the word"
    # The SDK sent only the new message; Parley read the first turn back from its store.
    assert messages_sent(fake_upstream) == [
        ("system", "Repeat."),
        ("user", "remember the word banana"),
        ("assistant", "remember the word banana"),
        ("user", "what was the word"),
    ]
    response = await client.responses.retrieve(second.last_response_id)
    assert response.previous_response_id == first.last_response_id
    items = await client.responses.input_items.list(second.last_response_id)
    assert [item.content[0].text for item in items.data] == ["what was the word"]


async def test_auto_previous_response_id_chains_the_tool_output(
    client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    @function_tool
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    agent = Agent(name="Adder", instructions="Add.", model=model(client, SCRIPT), tools=[add])
    result = await Runner.run(agent, 'add {"a": 1, "b": 1}', auto_previous_response_id=True)

    assert result.final_output == "Results: 2"
    # The run's second response continued its first, sending only the function's output.
    last = await client.responses.retrieve(result.last_response_id)
    assert last.previous_response_id == result.raw_responses[0].response_id
    items = await client.responses.input_items.list(result.last_response_id)
    assert [item.type for item in items.data] == ["function_call_output"]
    assert fake_upstream.requests[-1]["messages"][1] == {"role": "user", "content": 'add {"a": 1, "b": 1}'}


async def test_conversations_session_holds_the_items(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    session = OpenAIConversationsSession(openai_client=client)
    agent = Agent(name="Echo", instructions="Repeat.", model=model(client, ECHO))
    await Runner.run(agent, "first turn here", session=session)
    second = await Runner.run(agent, "second turn", session=session)

    assert second.final_output == "second turn"
    # The SDK read the conversation's items back and sent them as the input.
    assert messages_sent(fake_upstream)[1:] == [
        ("user", "first turn here"),
        ("assistant", "first turn here"),
        ("user", "second turn"),
    ]
    items = [item async for item in client.conversations.items.list(session.session_id, order="asc")]
    assert [(item.type, item.role, item.content[0].text) for item in items] == [
        ("message", "user", "first turn here"),
        ("message", "assistant", "first turn here"),
        ("message", "user", "second turn"),
        ("message", "assistant", "second turn"),
    ]
    assert [item["role"] for item in await session.get_items()] == ["user", "assistant", "user", "assistant"]


async def test_server_side_conversation(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    conversation = await client.conversations.create()
    agent = Agent(name="Echo", instructions="Repeat.", model=model(client, ECHO))
    await Runner.run(agent, "kept by the server", conversation_id=conversation.id)
    second = await Runner.run(agent, "and this", conversation_id=conversation.id)

    assert second.final_output == "and this"
    assert messages_sent(fake_upstream)[1:] == [
        ("user", "kept by the server"),
        ("assistant", "kept by the server"),
        ("user", "and this"),
    ]
    items = [item async for item in client.conversations.items.list(conversation.id, order="asc")]
    assert [item.content[0].text for item in items] == ["kept by the server"] * 2 + ["and this"] * 2


async def test_structured_output_type(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    agent = Agent(name="Oracle", instructions="Answer.", model=model(client, JSON), output_type=Answer)
    result = await Runner.run(agent, "What is the answer?")

    assert result.final_output == Answer(answer=42)
    sent = fake_upstream.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["properties"]["answer"]["type"] == "integer"


async def test_handoff_to_a_second_agent(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    billing = Agent(name="Billing", instructions="You handle billing.", model=model(client, SCRIPT))
    triage = Agent(name="Triage", instructions="Route the user.", model=model(client, SCRIPT), handoffs=[billing])
    result = await Runner.run(triage, "transfer_to_billing {}")

    assert result.last_agent is billing
    assert result.final_output == 'Results: {"assistant": "Billing"}'
    first, second = fake_upstream.requests[-2:]
    assert [tool["function"]["name"] for tool in first["tools"]] == ["transfer_to_billing"]
    # Billing answered, with its own instructions and none of Triage's tools, after the whole exchange so far.
    assert "tools" not in second
    assert second["messages"][0] == {"role": "system", "content": "You handle billing."}
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]


def hosted_mcp(server: ToolServer, require_approval: Any, **kwargs: Any) -> HostedMCPTool:
    config = {"type": "mcp", "server_label": "tools", "server_url": server.url, "require_approval": require_approval}
    return HostedMCPTool(tool_config=config, **kwargs)  # type: ignore[arg-type]


async def test_hosted_mcp_tool(client: openai.AsyncOpenAI, tool_server: ToolServer) -> None:
    agent = Agent(
        name="Calculator",
        instructions="Use the tools.",
        model=model(client, SCRIPT),
        tools=[hosted_mcp(tool_server, "never")],
    )
    result = await Runner.run(agent, 'add {"a": 20, "b": 22}')

    assert result.final_output == "Results: 42"
    # Parley listed the server's tools and ran the call itself: one response, no round trip to the SDK.
    assert len(result.raw_responses) == 1
    [listing] = [item.raw_item for item in result.new_items if isinstance(item, MCPListToolsItem)]
    assert {tool.name for tool in listing.tools} >= {"add", "echo"}
    [call] = [item.raw_item for item in result.new_items if isinstance(item, ToolCallItem)]
    assert call.type == "mcp_call" and call.name == "add" and call.output == "42"
    assert json.loads(call.arguments) == {"a": 20, "b": 22}


async def test_hosted_mcp_tool_approved_by_the_sdk(client: openai.AsyncOpenAI, tool_server: ToolServer) -> None:
    asked: list[str] = []

    def approve(request: MCPToolApprovalRequest) -> MCPToolApprovalFunctionResult:
        asked.append(request.data.name)
        return {"approve": True}

    agent = Agent(
        name="Calculator",
        instructions="Use the tools.",
        model=model(client, SCRIPT),
        tools=[hosted_mcp(tool_server, "always", on_approval_request=approve)],
    )
    result = await Runner.run(agent, 'add {"a": 1, "b": 2}')

    assert asked == ["add"]
    assert result.final_output == "Results: 3"
    # The first response asked; the SDK answered with an approval in its next request, and Parley ran the call.
    assert len(result.raw_responses) == 2
    [request] = [item.raw_item for item in result.new_items if isinstance(item, MCPApprovalRequestItem)]
    [response] = [item.raw_item for item in result.new_items if isinstance(item, MCPApprovalResponseItem)]
    assert response == {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
    [call] = [item.raw_item for item in result.new_items if isinstance(item, ToolCallItem)]
    assert call.type == "mcp_call" and call.output == "3" and call.approval_request_id == request.id


async def test_hosted_mcp_listing_in_the_input_is_reused(client: openai.AsyncOpenAI, tool_server: ToolServer) -> None:
    agent = Agent(
        name="Calculator",
        instructions="Use the tools.",
        model=model(client, SCRIPT),
        tools=[hosted_mcp(tool_server, "always", on_approval_request=lambda _: {"approve": True})],
    )
    result = await Runner.run(agent, 'add {"a": 1, "b": 2}')

    assert result.final_output == "Results: 3"
    # The SDK sends its second request stateless, with the first response's listing in its input.
    listings = [item for item in result.new_items if isinstance(item, MCPListToolsItem)]
    assert len(listings) == 1


async def test_hosted_mcp_tool_streamed(client: openai.AsyncOpenAI, tool_server: ToolServer) -> None:
    agent = Agent(
        name="Calculator",
        instructions="Use the tools.",
        model=model(client, SCRIPT),
        tools=[hosted_mcp(tool_server, "never")],
    )
    result = Runner.run_streamed(agent, 'echo {"text": "over the stream"}')
    raw_types = [event.data.type async for event in result.stream_events() if event.type == "raw_response_event"]

    assert result.final_output == "Results: over the stream"
    for kind in ("mcp_list_tools", "mcp_call"):
        assert f"response.{kind}.in_progress" in raw_types and f"response.{kind}.completed" in raw_types
    assert "response.mcp_call_arguments.done" in raw_types
    assert raw_types.count("response.completed") == 1
