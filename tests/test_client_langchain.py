"""LangChain's `ChatOpenAI(use_responses_api=True)` (`langchain-openai`), unmodified, against Parley.

LangChain turns its messages into Responses API input items (tool calls as
`function_call` items, `ToolMessage`s as `function_call_output`) and reads
the answer back into `AIMessage`s. The model is the fake upstream:
`fake-echo` echoes, `fake-script` calls the tools its message names and then
answers "Results: " and what they returned, `fake-json` answers
`{"answer": 42}`. The client's HTTP goes through the stream validator.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.conftest import ParleyProcess
from tests.fake_upstream import FakeUpstream
from tests.support.validating_transport import AsyncValidatingTransport, ValidatingTransport

SCRIPT = "fake/fake-script"
JSON = "fake/fake-json"
ECHO = "fake/fake-echo"


class Answer(BaseModel):
    answer: int


@tool
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@pytest.fixture
def chat(upstream: ParleyProcess) -> Callable[..., ChatOpenAI]:
    """ChatOpenAI on the Responses API against Parley: call it with `model=` and any other settings."""

    def make(**settings: object) -> ChatOpenAI:
        sync, asynchronous = ValidatingTransport(), AsyncValidatingTransport()
        upstream.transports += [sync, asynchronous]
        return ChatOpenAI(
            base_url=upstream.base_url + "/v1",
            api_key="test-key",
            use_responses_api=True,
            max_retries=0,
            http_client=httpx.Client(transport=sync, timeout=60),
            http_async_client=httpx.AsyncClient(transport=asynchronous, timeout=60),
            **settings,
        )

    return make


def test_invoke(chat: Callable[..., ChatOpenAI], upstream: ParleyProcess) -> None:
    message = chat(model=ECHO).invoke("hello from langchain")

    assert isinstance(message, AIMessage)
    assert message.text == "hello from langchain"
    response_id = message.response_metadata["id"]
    assert response_id.startswith("resp_") and message.response_metadata["status"] == "completed"
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] == 3
    stored = upstream.client().responses.retrieve(response_id)
    assert stored.output_text == "hello from langchain"


def test_stream(chat: Callable[..., ChatOpenAI]) -> None:
    chunks = list(chat(model=ECHO).stream("streamed word by word"))

    texts = [chunk.text for chunk in chunks if chunk.text]
    assert texts == ["streamed", " word", " by", " word"]
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.text == "streamed word by word"
    assert whole.response_metadata["id"].startswith("resp_")


async def test_astream(chat: Callable[..., ChatOpenAI]) -> None:
    texts = [chunk.text async for chunk in chat(model=ECHO).astream("async as well") if chunk.text]

    assert "".join(texts) == "async as well"


def test_bind_tools_round_trip(chat: Callable[..., ChatOpenAI], fake_upstream: FakeUpstream) -> None:
    model = chat(model=SCRIPT).bind_tools([add])
    question = HumanMessage('add {"a": 2, "b": 3}')
    call_message = model.invoke([question])

    [call] = call_message.tool_calls
    assert call["name"] == "add" and call["args"] == {"a": 2, "b": 3}
    assert fake_upstream.requests[-1]["tools"][0]["function"]["name"] == "add"

    result = ToolMessage(content=str(add.invoke(call["args"])), tool_call_id=call["id"])
    final = model.invoke([question, call_message, result])

    assert final.text == "Results: 5" and not final.tool_calls
    # LangChain sent the whole exchange again; Parley gave the upstream the call and its result.
    sent = fake_upstream.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call["id"]
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"a": 2, "b": 3}
    assert sent[2] == {"role": "tool", "tool_call_id": call["id"], "content": "5"}


def test_bind_tools_round_trip_with_previous_response_id(
    chat: Callable[..., ChatOpenAI], upstream: ParleyProcess, fake_upstream: FakeUpstream
) -> None:
    model = chat(model=SCRIPT, use_previous_response_id=True).bind_tools([add])
    question = HumanMessage('add {"a": 20, "b": 22}')
    call_message = model.invoke([question])
    [call] = call_message.tool_calls
    result = ToolMessage(content=str(add.invoke(call["args"])), tool_call_id=call["id"])
    final = model.invoke([question, call_message, result])

    assert final.text == "Results: 42"
    # Only the tool's output was sent, chained to the response that made the call.
    client = upstream.client()
    second = client.responses.retrieve(final.response_metadata["id"])
    assert second.previous_response_id == call_message.response_metadata["id"]
    assert [item.type for item in client.responses.input_items.list(second.id).data] == ["function_call_output"]
    assert [m["role"] for m in fake_upstream.requests[-1]["messages"]] == ["user", "assistant", "tool"]


def test_with_structured_output(chat: Callable[..., ChatOpenAI], fake_upstream: FakeUpstream) -> None:
    answer = chat(model=JSON).with_structured_output(Answer).invoke("What is the answer?")

    assert answer == Answer(answer=42)
    sent = fake_upstream.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Answer"


def test_with_structured_output_include_raw(chat: Callable[..., ChatOpenAI]) -> None:
    result = chat(model=JSON).with_structured_output(Answer, include_raw=True).invoke("What is the answer?")

    assert result["parsed"] == Answer(answer=42) and result["parsing_error"] is None
    assert result["raw"].text == '{"answer": 42}'
