"""Reasoning, refusals, and text followed by a call, as an upstream streams them, through /v1/responses.

The shared fake upstream speaks plain text and tool calls only; this module's
own scripted upstream sends the other delta kinds of the chat-completions
protocol (`reasoning_content`, `refusal`). Every stream is checked by the
stream validator.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ParleyProcess


def _frames(deltas: list[dict[str, Any]], finish: str) -> bytes:
    head = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{**head, "choices": [{"index": 0, "delta": delta}]} for delta in deltas]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    usage = {"prompt_tokens": 3, "completion_tokens": len(deltas), "total_tokens": 3 + len(deltas)}
    chunks.append({**head, "choices": [], "usage": usage})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
SCRIPTS = {
    "reasoning": _frames(
        [
            {"reasoning_content": "The user "},
            {"reasoning_content": "greets me."},
            {"content": "Hello"},
            {"content": "!"},
        ],
        "stop",
    ),
    "refusal": _frames([{"refusal": "I can't "}, {"refusal": "help with that."}], "stop"),
    "text-then-call": _frames(
        [
            {"content": "Let me check."},
            {"tool_calls": [CALL]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]},
        ],
        "tool_calls",
    ),
    # A name in pieces and no arguments: the call opens at the end of the stream.
    "split-name-only": _frames(
        [
            {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "look"}}]},
            {"tool_calls": [{"index": 0, "function": {"name": "up"}}]},
        ],
        "tool_calls",
    ),
    # A name in pieces, then text: the call opens before the message does.
    "split-name-then-text": _frames(
        [
            {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "lo"}}]},
            {"tool_calls": [{"index": 0, "function": {"name": "okup"}}]},
            {"content": "Looking."},
        ],
        "tool_calls",
    ),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        body = SCRIPTS[request["model"]]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def scripted_upstream() -> Iterator[str]:
    """The scripted upstream (its models are SCRIPTS) on a loopback port, as its base URL."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{upstream.server_address[1]}/v1"
    finally:
        upstream.shutdown()


@pytest.fixture(scope="module")
def parley_over_scripts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    workdir: Path = tmp_path_factory.mktemp("kinds")
    with scripted_upstream() as base_url:
        config = {
            "inference": {
                "providers": {"s": {"type": "openai", "base_url": base_url, "models": list(SCRIPTS)}},
                "aliases": {},
            },
            "storage": {"url": f"sqlite+aiosqlite:///{workdir / 'parley.db'}"},
        }
        server = ParleyProcess(workdir, config)
        server.start()
        yield server
        server.stop()


@pytest.fixture
def client(parley_over_scripts: ParleyProcess) -> openai.OpenAI:
    return parley_over_scripts.client()


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_becomes_a_reasoning_item(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        events = list(client.responses.create(model="s/reasoning", input="hi", stream=True))
        response = events[-1].response
        deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
        assert deltas == ["The user ", "greets me."]
    else:
        response = client.responses.create(model="s/reasoning", input="hi")
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert [part.text for part in reasoning.content] == ["The user greets me."]
    assert message.type == "message" and response.output_text == "Hello!"
    assert client.responses.retrieve(response.id).output[0].content[0].text == "The user greets me."


@pytest.mark.parametrize("stream", [False, True])
def test_refusal_becomes_a_refusal_part(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        events = list(client.responses.create(model="s/refusal", input="do wrong", stream=True))
        response = events[-1].response
        assert [e.delta for e in events if e.type == "response.refusal.delta"] == ["I can't ", "help with that."]
        assert any(e.type == "response.refusal.done" for e in events)
    else:
        response = client.responses.create(model="s/refusal", input="do wrong")
    [message] = response.output
    [part] = message.content
    assert (part.type, part.refusal) == ("refusal", "I can't help with that.")


def test_text_then_a_call_are_two_items_in_order(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    events = list(client.responses.create(model="s/text-then-call", input="look it up", tools=[tool], stream=True))
    response = events[-1].response
    message, call = response.output
    assert message.type == "message" and message.content[0].text == "Let me check."
    assert (call.type, call.name, call.arguments, call.call_id) == ("function_call", "lookup", '{"q": "x"}', "call_1")
    done = [e.output_index for e in events if e.type == "response.output_item.done"]
    assert done == [0, 1], "the message closes before the call's item is done"


LOOKUP = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}


@pytest.mark.parametrize("stream", [False, True])
def test_a_name_in_pieces_without_arguments_is_one_call(client: openai.OpenAI, stream: bool) -> None:
    request: dict[str, Any] = {"model": "s/split-name-only", "input": "look it up", "tools": [LOOKUP]}
    if stream:
        events = list(client.responses.create(**request, stream=True))
        response = events[-1].response
        [added] = [e.item for e in events if e.type == "response.output_item.added"]
        assert (added.type, added.name) == ("function_call", "lookup")
    else:
        response = client.responses.create(**request)
    [call] = response.output
    assert (call.type, call.name, call.arguments, call.call_id) == ("function_call", "lookup", "", "call_1")


def test_a_call_whose_name_is_in_pieces_opens_before_the_text_after_it(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model="s/split-name-then-text", input="look it up", tools=[LOOKUP], stream=True)
    )
    response = events[-1].response
    assert [(item.type, getattr(item, "name", None)) for item in response.output] == [
        ("function_call", "lookup"),
        ("message", None),
    ]
    assert response.output[1].content[0].text == "Looking."
