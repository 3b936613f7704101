"""pydantic-ai's `OpenAIResponsesModel` (`pydantic-ai-slim[openai]`), unmodified, against Parley.

pydantic-ai runs its agent loop on the client side over the Responses API:
function tools it runs itself, streamed runs, native structured output (a
strict `json_schema` text format), and server-side chaining through
`openai_previous_response_id`. The model is the fake upstream: `fake-script`
calls the tools its message names and then answers "Results: " and what they
returned, `fake-json` answers `{"answer": 42}`, `fake-echo` echoes. Every
stream the client reads is checked by the stream validator.
"""

from __future__ import annotations

import openai
import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.models.openai import OpenAIResponsesModel, OpenAIResponsesModelSettings
from pydantic_ai.providers.openai import OpenAIProvider

from tests.conftest import ParleyProcess
from tests.fake_upstream import FakeUpstream

SCRIPT = "fake/fake-script"
JSON = "fake/fake-json"
ECHO = "fake/fake-echo"


class Answer(BaseModel):
    answer: int


@pytest.fixture
def client(upstream: ParleyProcess) -> openai.AsyncOpenAI:
    return upstream.async_client()


def model(client: openai.AsyncOpenAI, name: str) -> OpenAIResponsesModel:
    return OpenAIResponsesModel(name, provider=OpenAIProvider(openai_client=client))


def adder(client: openai.AsyncOpenAI, calls: list[tuple[int, int]]) -> Agent[None, str]:
    agent = Agent(model(client, SCRIPT), instructions="Add what you are asked to.")

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        calls.append((a, b))
        return a + b

    return agent


async def test_tool_round_trip(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    calls: list[tuple[int, int]] = []
    result = await adder(client, calls).run('add {"a": 2, "b": 3}')

    assert calls == [(2, 3)]
    assert result.output == "Results: 5"
    responses = [m for m in result.all_messages() if isinstance(m, ModelResponse)]
    [call] = [part for response in responses for part in response.parts if isinstance(part, ToolCallPart)]
    assert call.tool_name == "add" and call.args_as_dict() == {"a": 2, "b": 3}
    # Two responses from Parley: the call, then the answer.
    ids = [response.provider_response_id or "" for response in responses]
    assert len(set(ids)) == 2 and all(i.startswith("resp_") for i in ids)
    sent = fake_upstream.requests[-1]
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.tool_call_id, "content": "5"}
    assert sent["tools"][0]["function"]["name"] == "add"


async def test_run_stream_text(client: openai.AsyncOpenAI) -> None:
    agent = Agent(model(client, ECHO))
    async with agent.run_stream("streamed to pydantic ai") as result:
        # Not debounced: each delta as it arrived.
        deltas = [delta async for delta in result.stream_text(delta=True, debounce_by=None)]

    assert deltas == ["streamed", " to", " pydantic", " ai"]
    assert await result.get_output() == "streamed to pydantic ai"


async def test_run_stream_after_a_tool_call(client: openai.AsyncOpenAI) -> None:
    calls: list[tuple[int, int]] = []
    async with adder(client, calls).run_stream('add {"a": 4, "b": 5}') as result:
        text = [text async for text in result.stream_text()]

    assert calls == [(4, 5)]
    assert text[-1] == "Results: 9"


async def test_native_structured_output(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    agent = Agent(model(client, JSON), output_type=NativeOutput(Answer))
    result = await agent.run("What is the answer?")

    assert result.output == Answer(answer=42)
    sent = fake_upstream.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["properties"]["answer"]["type"] == "integer"
    assert "tools" not in fake_upstream.requests[-1]


async def test_previous_response_id_auto(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    agent = Agent(model(client, ECHO), instructions="Repeat.")
    settings = OpenAIResponsesModelSettings(openai_previous_response_id="auto")
    first = await agent.run("remember the word banana", model_settings=settings)
    second = await agent.run("what was the word", message_history=first.all_messages(), model_settings=settings)

    assert second.output == "what was the word"
    first_id = first.response.provider_response_id
    response = await client.responses.retrieve(second.response.provider_response_id)
    assert first_id is not None and response.previous_response_id == first_id
    # Only the new message was sent; Parley read the first turn back from its store.
    items = await client.responses.input_items.list(response.id)
    assert [item.content[0].text for item in items.data] == ["what was the word"]
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "system", "content": "Repeat."},
        {"role": "user", "content": "remember the word banana"},
        {"role": "assistant", "content": "remember the word banana"},
        {"role": "user", "content": "what was the word"},
    ]


async def test_previous_response_id_given(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    agent = Agent(model(client, ECHO))
    first = await agent.run("the first turn")
    first_id = first.response.provider_response_id
    assert first_id is not None
    # No message history: the chain is the only way the model sees the first turn.
    second = await agent.run(
        "the second turn", model_settings=OpenAIResponsesModelSettings(openai_previous_response_id=first_id)
    )

    assert second.output == "the second turn"
    assert [m["content"] for m in fake_upstream.requests[-1]["messages"]] == [
        "the first turn",
        "the first turn",
        "the second turn",
    ]


async def test_openai_conversation_id(client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    conversation = await client.conversations.create()
    agent = Agent(model(client, ECHO))
    settings = OpenAIResponsesModelSettings(openai_conversation_id=conversation.id)
    await agent.run("held by the conversation", model_settings=settings)
    second = await agent.run("and read back", model_settings=settings)

    assert second.output == "and read back"
    assert [m["content"] for m in fake_upstream.requests[-1]["messages"]] == [
        "held by the conversation",
        "held by the conversation",
        "and read back",
    ]
    items = [item async for item in client.conversations.items.list(conversation.id, order="asc")]
    assert [(item.role, item.content[0].text) for item in items] == [
        ("user", "held by the conversation"),
        ("assistant", "held by the conversation"),
        ("user", "and read back"),
        ("assistant", "and read back"),
    ]
