"""Chat completions through Parley's `openai` provider, over the fake upstream.

Parley runs as its own process (the `upstream` fixture) and is driven with the
official openai client; `fake_upstream.requests` shows what Parley sent on.
Raw httpx is used only to look at the SSE framing the client hides, and to
hang up mid-stream.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.conftest import ParleyProcess
from tests.fake_upstream import CREATED, FakeUpstream

pytestmark = pytest.mark.timeout(60)

HELLO = [{"role": "user", "content": "hello there world"}]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PARIS = '{"city": "Paris"}'


@pytest.fixture(scope="module")
def client(upstream: ParleyProcess) -> Iterator[openai.OpenAI]:
    with upstream.client(timeout=20) as c:
        yield c


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def stream_text(chunks: list[Any]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def assemble_tool_calls(chunks: list[Any]) -> list[dict[str, Any]]:
    """Tool calls put together from their deltas, as a client does it."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": None, "type": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["type"] = delta.type or call["type"]
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    return [
        {"id": c["id"], "type": c["type"], "function": {"name": c["name"], "arguments": c["arguments"]}}
        for _, c in sorted(calls.items())
    ]


def sse_data_lines(lines: list[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


# Plain completions -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fake/fake-echo", "echo"])
def test_completion_echoes_the_user_message_under_the_requested_model(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(model=model, messages=HELLO)

    assert completion.id.startswith("chatcmpl-")
    assert completion.model_dump(exclude_unset=True, exclude={"id", "created"}) == {
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello there world", "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(3, 3),
        "system_fingerprint": None,
    }


def test_completion_reports_length_when_max_tokens_cuts_it(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="echo", messages=HELLO, max_completion_tokens=2)

    assert completion.choices[0].message.content == "hello there"
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", ["fake/fake-echo", "echo"])
def test_stream_with_include_usage_ends_with_a_usage_chunk_without_choices(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(model=model, messages=HELLO, stream=True, stream_options={"include_usage": True})
    )

    assert {chunk.model for chunk in chunks} == {model}
    assert len({chunk.id for chunk in chunks}) == 1
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    *content_chunks, usage_chunk = chunks
    assert [c.choices[0].delta.content for c in content_chunks] == ["", "hello", " there", " world", None]
    assert [c.choices[0].finish_reason for c in content_chunks] == [None, None, None, None, "stop"]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in content_chunks)
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.model_dump(exclude_unset=True) == usage(3, 3)


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}], ids=["absent", "false"])
def test_stream_without_include_usage_has_no_usage_chunk(
    client: openai.OpenAI, stream_options: dict[str, Any] | None
) -> None:
    options = {} if stream_options is None else {"stream_options": stream_options}
    chunks = list(client.chat.completions.create(model="echo", messages=HELLO, stream=True, **options))

    assert stream_text(chunks) == "hello there world"
    assert all(chunk.usage is None and len(chunk.choices) == 1 for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


# What reaches the upstream ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_receives_the_request_with_fields_passed_through(
    client: openai.OpenAI, fake_upstream: FakeUpstream, stream: bool
) -> None:
    messages = [{"role": "system", "content": "be brief"}, *HELLO]
    reply = client.chat.completions.create(
        model="fake/fake-echo",
        messages=messages,  # type: ignore[arg-type]
        stream=stream,
        max_completion_tokens=50,
        temperature=0.5,
        top_p=0.9,
        seed=7,
        stop=["END"],
        presence_penalty=0.25,
        frequency_penalty=-0.5,
        user="user-1",
        extra_body={"reasoning_effort": "low", "top_k": 5},
    )
    if stream:
        assert stream_text(list(reply)) == "hello there world"  # type: ignore[arg-type]

    # The upstream is always streamed from, and always asked for usage.
    assert fake_upstream.requests[-1] == {
        "model": "fake-echo",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        # As the client named it: OpenAI's reasoning models refuse `max_tokens`.
        "max_completion_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["END"],
        "presence_penalty": 0.25,
        "frequency_penalty": -0.5,
        "user": "user-1",
        "reasoning_effort": "low",
        "top_k": 5,
    }


def test_upstream_receives_max_tokens_as_max_tokens(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    client.chat.completions.create(model="fake/fake-echo", messages=HELLO, max_tokens=50)

    sent = fake_upstream.requests[-1]
    assert (sent["max_tokens"], "max_completion_tokens" in sent) == (50, False)


@pytest.mark.parametrize(
    ("stop", "sent"),
    [([""], None), (["", "END"], ["END"]), ("", None)],
    ids=["only-empty", "empty-and-other", "empty-string"],
)
def test_empty_stop_strings_are_ignored(
    client: openai.OpenAI, fake_upstream: FakeUpstream, stop: Any, sent: Any
) -> None:
    reply = client.chat.completions.create(model="fake/fake-echo", messages=HELLO, stop=stop)

    assert reply.choices[0].message.content == "hello there world"
    assert fake_upstream.requests[-1].get("stop") == sent


# Invalid fields are refused before any provider sees them: strict types, as OpenAI's.
INVALID_FIELDS = [
    ({"stream": "yes"}, "stream"),
    ({"temperature": "0.5"}, "temperature"),
    ({"max_tokens": 2.0}, "max_tokens"),
    ({"max_completion_tokens": "5"}, "max_completion_tokens"),
    ({"seed": True}, "seed"),
    ({"messages": [{"role": "assistant", "tool_calls": 5}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [5]}]}, "messages[0].tool_calls[0]"),
    (
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}]},
        "messages[0].tool_calls[0].function.arguments",
    ),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]"),
]


@pytest.mark.parametrize(("fields", "param"), INVALID_FIELDS, ids=[param for _, param in INVALID_FIELDS])
def test_invalid_field_is_a_400_naming_it(
    upstream: ParleyProcess, fake_upstream: FakeUpstream, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "fake/fake-echo", "messages": HELLO, **fields}
    before = len(fake_upstream.requests)
    with upstream.http() as http:
        response = http.post("/v1/chat/completions", json=body)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert len(fake_upstream.requests) == before


def test_assistant_tool_calls_and_text_parts_pass_validation_unchanged(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
    ]
    client.chat.completions.create(model="fake/fake-echo", messages=messages, tools=[WEATHER_TOOL])  # type: ignore[arg-type]

    assert fake_upstream.requests[-1]["messages"] == messages


def test_upstream_receives_the_model_name_behind_the_alias(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    client.chat.completions.create(model="echo", messages=HELLO)

    assert fake_upstream.requests[-1]["model"] == "fake-echo"


def sse(*chunks: dict[str, Any], done: bool = True, newline: bytes = b"\n") -> bytes:
    """An SSE body: one chat.completion.chunk frame per dict, then `[DONE]` unless `done` is false."""
    head = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": CREATED, "model": "m"}
    frames = [b"data: " + json.dumps({**head, **chunk}).encode() for chunk in chunks]
    if done:
        frames.append(b"data: [DONE]")
    return b"".join(frame + newline + newline for frame in frames)


def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


# What the scripted upstream answers, by model: content type and body.
SCRIPTS: dict[str, tuple[str, bytes]] = {
    "one-word": ("text/event-stream", sse(choice({"role": "assistant", "content": "recorded"}), choice({}, "stop"))),
    "close-delimited": (
        "text/event-stream",
        sse(choice({"role": "assistant", "content": "until"}), choice({"content": " closed"}, "stop")),
    ),
    "crlf": (
        "text/event-stream",
        sse(choice({"role": "assistant", "content": "cr"}), choice({"content": "lf"}, "stop"), newline=b"\r\n"),
    ),
    "comments-and-other-events": (
        "text/event-stream",
        b": keep-alive\n\nevent: ping\ndata: {}\n\n"
        + sse(choice({"role": "assistant", "content": "still here"}), {"choices": []}, choice({}, "stop")),
    ),
    "tool-call-without-index": (
        "text/event-stream",
        sse(
            choice({"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
            choice({}, "tool_calls"),
        ),
    ),
    # Two chunks, then the body ends: no finish_reason, no [DONE].
    "truncated": (
        "text/event-stream",
        sse(choice({"role": "assistant", "content": "par"}), choice({"content": "tial"}), done=False),
    ),
    # One chunk with the whole answer and its finish_reason, then the body ends without [DONE].
    "one-chunk-no-done": (
        "text/event-stream",
        sse(choice({"role": "assistant", "content": "all at once"}, "stop"), done=False),
    ),
    # An upstream (or a proxy in front of it) that ignores `stream: true`.
    "not-streamed": (
        "application/json",
        json.dumps(
            {
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "created": CREATED,
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}
                ],
            }
        ).encode(),
    ),
}


# 3,000 chunks of 1 KiB: more than Parley buffers from a connection before it stops reading it.
LARGE_PIECE = "x" * 1024
SCRIPTS["large"] = (
    "text/event-stream",
    sse(
        choice({"role": "assistant", "content": ""}),
        *(choice({"content": LARGE_PIECE}) for _ in range(3000)),
        choice({}, "stop"),
    ),
)


class _ScriptedUpstream(http.server.ThreadingHTTPServer):
    """Answers each chat completion from SCRIPTS, and keeps each request's headers.

    The shared fake records bodies only and always speaks its protocol
    correctly; these are the replies and headers it cannot show. Some models
    are about the connection rather than the body:

        close-delimited     a reply without Content-Length, ended by closing the connection
        not-http            bytes that are not an HTTP response
        one-per-connection  answers a connection's first request; closes it, unanswered, on the next
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.headers: list[dict[str, str]] = []
        self.connections = 0


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: _ScriptedUpstream
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1
        self.answered = 0

    def do_POST(self) -> None:
        self.server.headers.append({k.lower(): v for k, v in self.headers.items()})
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        model = request["model"]
        if model == "not-http":
            self.wfile.write(b"this is not HTTP at all\r\n\r\n")
            self.close_connection = True
            return
        if model == "one-per-connection" and self.answered:
            self.close_connection = True  # as a server whose keep-alive timer ran out at that moment
            return
        self.answered += 1
        content_type, body = SCRIPTS["one-word" if model == "one-per-connection" else model]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if model == "close-delimited":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openai.OpenAI, _ScriptedUpstream]]:
    """A client of a Parley whose provider `s` is the scripted upstream."""
    recorder = _ScriptedUpstream()
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    config = {
        "inference": {
            "providers": {
                "s": {
                    "type": "openai",
                    "base_url": f"http://127.0.0.1:{recorder.server_address[1]}/v1",
                    "api_key": "sk-test-secret",
                    "headers": {"X-Fake-Tenant": "parley-tests"},
                    "models": [*SCRIPTS, "not-http", "one-per-connection"],
                    "timeout": {"read": 3},
                }
            },
            "aliases": {},
        }
    }
    server = ParleyProcess(tmp_path_factory.mktemp("scripted"), config)
    try:
        server.start()
        with server.client(timeout=20) as client:
            yield client, recorder
    finally:
        server.stop()
        recorder.shutdown()
        recorder.server_close()


def test_upstream_receives_the_configured_api_key_and_headers_not_the_clients(
    scripted: tuple[openai.OpenAI, _ScriptedUpstream],
) -> None:
    client, recorder = scripted
    completion = client.chat.completions.create(model="s/one-word", messages=HELLO)

    assert completion.choices[0].message.content == "recorded"
    headers = recorder.headers[-1]
    assert headers["authorization"] == "Bearer sk-test-secret"  # the client sent "Bearer test-key"
    assert headers["x-fake-tenant"] == "parley-tests"
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "content", "finish_reason"),
    [
        ("crlf", "crlf", "stop"),
        ("comments-and-other-events", "still here", "stop"),
    ],
)
def test_upstream_sse_variants_are_read(
    scripted: tuple[openai.OpenAI, _ScriptedUpstream], model: str, content: str, finish_reason: str, stream: bool
) -> None:
    client, _ = scripted
    reply = client.chat.completions.create(model=f"s/{model}", messages=HELLO, stream=stream)

    if stream:
        chunks = list(reply)  # type: ignore[arg-type]
        assert (stream_text(chunks), chunks[-1].choices[0].finish_reason) == (content, finish_reason)
    else:
        choice = reply.choices[0]  # type: ignore[union-attr]
        assert (choice.message.content, choice.finish_reason) == (content, finish_reason)


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_reply_ended_by_closing_the_connection_is_read_whole(
    scripted: tuple[openai.OpenAI, _ScriptedUpstream], stream: bool
) -> None:
    client, _ = scripted
    assert _answer(client, "s/close-delimited", stream) == "until closed"


def _answer(client: openai.OpenAI, model: str, stream: bool) -> str | None:
    """The text of a completion from `model`, streamed or not."""
    reply = client.chat.completions.create(model=model, messages=HELLO, stream=stream)
    return stream_text(list(reply)) if stream else reply.choices[0].message.content  # type: ignore[union-attr,arg-type]


def test_upstream_reply_that_is_not_http_is_a_502(scripted: tuple[openai.OpenAI, _ScriptedUpstream]) -> None:
    client, _ = scripted
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="s/not-http", messages=HELLO)

    assert (info.value.status_code, info.value.type) == (502, "upstream_error")
    # The provider is still usable afterwards.
    assert client.chat.completions.create(model="s/one-word", messages=HELLO).choices[0].message.content == "recorded"


def test_connections_to_the_upstream_are_kept_alive(scripted: tuple[openai.OpenAI, _ScriptedUpstream]) -> None:
    client, recorder = scripted
    client.chat.completions.create(model="s/one-word", messages=HELLO)
    before = recorder.connections
    for stream in (False, True, False, True):
        reply = client.chat.completions.create(model="s/one-word", messages=HELLO, stream=stream)
        list(reply) if stream else None  # type: ignore[call-overload]

    assert recorder.connections == before  # every request went over the connection the first one left open


def test_kept_alive_connection_closed_by_the_upstream_is_replaced_without_an_error(
    scripted: tuple[openai.OpenAI, _ScriptedUpstream],
) -> None:
    client, recorder = scripted
    before = recorder.connections
    replies = [
        client.chat.completions.create(model="s/one-per-connection", messages=HELLO).choices[0].message.content
        for _ in range(3)
    ]

    assert replies == ["recorded"] * 3
    # Each reuse found its connection closed, unanswered, and sent the request again on a new one.
    assert recorder.connections - before >= 3


def test_reply_larger_than_the_read_buffer_streams_whole(scripted: tuple[openai.OpenAI, _ScriptedUpstream]) -> None:
    client, _ = scripted
    chunks = list(client.chat.completions.create(model="s/large", messages=HELLO, stream=True))

    assert stream_text(chunks) == LARGE_PIECE * 3000
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_upstream_tool_call_delta_without_index_is_the_first_call(
    scripted: tuple[openai.OpenAI, _ScriptedUpstream],
) -> None:
    client, _ = scripted
    completion = client.chat.completions.create(model="s/tool-call-without-index", messages=HELLO)

    assert [call.model_dump(exclude_unset=True) for call in completion.choices[0].message.tool_calls or []] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]


def test_upstream_stream_cut_short_is_a_502_not_a_complete_answer(
    scripted: tuple[openai.OpenAI, _ScriptedUpstream],
) -> None:
    client, _ = scripted
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="s/truncated", messages=HELLO)

    assert (info.value.status_code, info.value.type) == (502, "upstream_error")


@pytest.mark.parametrize("stream", [False, True])
def test_a_finished_answer_without_done_is_complete(
    scripted: tuple[openai.OpenAI, _ScriptedUpstream], stream: bool
) -> None:
    """[DONE] is a courtesy: a choice that has its finish_reason is finished, in its first chunk too."""
    client, _ = scripted
    assert _answer(client, "s/one-chunk-no-done", stream) == "all at once"


def test_upstream_reply_that_is_not_streamed_is_not_lost(scripted: tuple[openai.OpenAI, _ScriptedUpstream]) -> None:
    client, _ = scripted
    # Either reading the JSON completion or a 502 is fine; an empty "successful" answer is not.
    try:
        completion = client.chat.completions.create(model="s/not-streamed", messages=HELLO)
    except openai.InternalServerError as exc:
        assert exc.type == "upstream_error"
    else:
        assert completion.choices[0].message.content == "whole"


# Tool calls ------------------------------------------------------------------------------------


def test_completion_with_two_parallel_tool_calls(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    completion = client.chat.completions.create(
        model="fake/fake-tool",
        messages=[{"role": "user", "content": "weather and time in Paris?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [call.model_dump(exclude_unset=True) for call in choice.message.tool_calls or []] == [
        {"id": "call_fake_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}},
        {"id": "call_fake_2", "type": "function", "function": {"name": "get_time", "arguments": PARIS}},
    ]
    assert fake_upstream.requests[-1]["tools"] == [WEATHER_TOOL, TIME_TOOL]


def test_stream_with_two_parallel_tool_calls_assembles_ids_names_and_arguments(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fake/fake-tool",
            messages=[{"role": "user", "content": "weather and time in Paris?"}],
            tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
            stream=True,
        )
    )

    assert assemble_tool_calls(chunks) == [
        {"id": "call_fake_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}},
        {"id": "call_fake_2", "type": "function", "function": {"name": "get_time", "arguments": PARIS}},
    ]
    # The arguments really arrive in pieces, so the assembly above is tested.
    pieces = [
        d.function.arguments
        for c in chunks
        for d in c.choices[0].delta.tool_calls or []
        if d.index == 0 and d.function and d.function.arguments
    ]
    assert pieces == ['{"ci', 'ty": "Pa', 'ris"}']
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert stream_text(chunks) == ""


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_false_gives_one_call(
    client: openai.OpenAI, fake_upstream: FakeUpstream, stream: bool
) -> None:
    reply = client.chat.completions.create(
        model="fake/fake-tool",
        messages=[{"role": "user", "content": "weather and time in Paris?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
        parallel_tool_calls=False,
        stream=stream,
    )

    if stream:
        calls = assemble_tool_calls(list(reply))  # type: ignore[arg-type]
    else:
        message = reply.choices[0].message  # type: ignore[union-attr]
        calls = [c.model_dump(exclude_unset=True) for c in message.tool_calls or []]
    assert calls == [{"id": "call_fake_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}]
    assert fake_upstream.requests[-1]["parallel_tool_calls"] is False


def test_named_tool_choice_reaches_the_upstream_and_picks_the_tool(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    tool_choice = {"type": "function", "function": {"name": "get_time"}}
    completion = client.chat.completions.create(
        model="fake/fake-tool",
        messages=[{"role": "user", "content": "time?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
        tool_choice=tool_choice,  # type: ignore[arg-type]
    )

    calls = completion.choices[0].message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_time"]  # type: ignore[union-attr]
    assert fake_upstream.requests[-1]["tool_choice"] == tool_choice


@pytest.mark.parametrize("stream", [False, True])
def test_tool_result_turn_is_passed_on_and_answered(
    client: openai.OpenAI, fake_upstream: FakeUpstream, stream: bool
) -> None:
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_fake_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_fake_1", "content": "sunny, 21 C"},
    ]
    reply = client.chat.completions.create(
        model="fake/fake-tool",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream=stream,
    )

    if stream:
        chunks = list(reply)  # type: ignore[arg-type]
        text, finish = stream_text(chunks), chunks[-1].choices[0].finish_reason
    else:
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason  # type: ignore[union-attr]
    assert (text, finish) == ("The tool said: sunny, 21 C", "stop")
    assert fake_upstream.requests[-1]["messages"] == messages


# Structured output and logprobs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]},
                "strict": True,
            },
        },
    ],
    ids=["json_object", "json_schema"],
)
def test_response_format_reaches_the_upstream(
    client: openai.OpenAI, fake_upstream: FakeUpstream, response_format: dict[str, Any]
) -> None:
    completion = client.chat.completions.create(
        model="fake/fake-json",
        messages=[{"role": "user", "content": "the answer, as JSON"}],
        response_format=response_format,  # type: ignore[arg-type]
    )

    assert json.loads(completion.choices[0].message.content or "") == {"answer": 42}
    assert fake_upstream.requests[-1]["response_format"] == response_format


def expected_logprob(token: str) -> dict[str, Any]:
    """The fake's logprob for `token`, with two alternatives."""
    return {
        "token": token,
        "logprob": -0.5,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": token, "logprob": -0.5, "bytes": list(token.encode())},
            {"token": "alt1", "logprob": -1.5, "bytes": list(b"alt1")},
        ],
    }


def test_logprobs_are_requested_and_returned(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    completion = client.chat.completions.create(model="echo", messages=HELLO, logprobs=True, top_logprobs=2)

    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert [entry.model_dump(exclude_unset=True) for entry in logprobs.content or []] == [
        expected_logprob(token) for token in ("hello", " there", " world")
    ]
    assert (fake_upstream.requests[-1]["logprobs"], fake_upstream.requests[-1]["top_logprobs"]) == (True, 2)


def test_streamed_logprobs_come_with_their_chunks(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="echo", messages=HELLO, logprobs=True, top_logprobs=2, stream=True)
    )

    logprobs = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].delta.content]
    assert [[entry.model_dump(exclude_unset=True) for entry in lp.content or []] for lp in logprobs if lp] == [
        [expected_logprob(token)] for token in ("hello", " there", " world")
    ]
    assert len(logprobs) == 3


# Upstream errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_400_keeps_its_status_message_code_and_param(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake/fake-error-400", messages=HELLO, stream=stream)

    assert info.value.status_code == 400
    assert info.value.body == {
        "message": "fake bad request",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "fake_code",
    }


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_429_is_a_rate_limit_error_with_the_upstream_message(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake/fake-error-429", messages=HELLO, stream=stream)

    assert info.value.status_code == 429
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"] == "fake rate limit"
    assert info.value.code == "rate_limit_exceeded"
    # When to try again, as the upstream said it: the OpenAI SDKs wait that long.
    headers = info.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("2", "1500")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "provider", "code"),
    [
        ("fake/fake-error-500", "fake", "upstream_unavailable"),
        ("down/any", "down", "upstream_unavailable"),
    ],
)
def test_failing_or_unreachable_upstream_is_a_502_naming_the_provider(
    client: openai.OpenAI, model: str, provider: str, code: str, stream: bool
) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=model, messages=HELLO, stream=stream)

    assert info.value.status_code == 502
    assert (info.value.type, info.value.code, info.value.param) == ("upstream_error", code, None)
    assert f"Provider '{provider}'" in info.value.body["message"]  # type: ignore[index]


def test_upstream_500_message_is_kept_in_the_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fake/fake-error-500", messages=HELLO)

    assert "fake upstream crash" in info.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_hanging_upstream_is_a_504_after_the_read_timeout(client: openai.OpenAI, stream: bool) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fake/fake-hang", messages=HELLO, stream=stream)
    elapsed = time.monotonic() - started

    assert info.value.status_code == 504
    assert (info.value.type, info.value.code) == ("upstream_error", "upstream_timeout")
    assert "Provider 'fake'" in info.value.body["message"]  # type: ignore[index]
    assert 2.5 < elapsed < 15  # the configured read timeout is 3 s


def test_upstream_api_key_appears_in_no_error_and_no_log_line(client: openai.OpenAI, upstream: ParleyProcess) -> None:
    bodies = []
    for model in ("fake/fake-error-400", "fake/fake-error-500", "fake/fake-malformed"):
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=model, messages=HELLO)
        bodies.append(info.value.response.text)

    assert [text for text in bodies + upstream.output if "sk-test-secret" in text] == []


@pytest.mark.parametrize(
    ("model", "status"),
    [("fake/fake-error-400", 400), ("fake/fake-error-429", 429), ("fake/fake-error-500", 502), ("down/any", 502)],
)
def test_streamed_request_failing_before_the_first_chunk_is_an_http_error_not_a_stream(
    upstream: ParleyProcess, model: str, status: int
) -> None:
    with upstream.http() as http:
        response = http.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "stream": True})

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# Failures in the middle of a stream ------------------------------------------------------------

MID_STREAM = [
    ("fake/fake-midstream-error", ["", "one", " two", " three"], "fake mid-stream failure"),
    ("fake/fake-malformed", ["", "one", " two"], "malformed stream chunk"),
    ("fake/fake-drop", ["", "one", " two"], "Provider 'fake'"),
]


@pytest.mark.parametrize(("model", "before", "message"), MID_STREAM)
def test_mid_stream_failure_yields_the_first_chunks_then_raises(
    client: openai.OpenAI, model: str, before: list[str], message: str
) -> None:
    received: list[str | None] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model=model, messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content)

    assert received == before
    assert isinstance(info.value.body, dict)
    assert set(info.value.body) == {"message", "type", "param", "code"}
    assert info.value.body["type"] == "upstream_error"
    assert "Provider 'fake'" in info.value.message and message in info.value.message
    # The server is still fine.
    assert client.chat.completions.create(model="echo", messages=HELLO).choices[0].message.content == (
        "hello there world"
    )


@pytest.mark.parametrize(("model", "before", "message"), MID_STREAM)
def test_mid_stream_failure_ends_with_an_error_frame_then_done(
    upstream: ParleyProcess, model: str, before: list[str], message: str
) -> None:
    with upstream.http() as http:
        response = http.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "stream": True})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    *chunks, error_frame, done = sse_data_lines(response.text.splitlines())
    assert [json.loads(c)["choices"][0]["delta"].get("content") for c in chunks] == before
    error = json.loads(error_frame)
    assert list(error) == ["error"]
    assert message in error["error"]["message"]
    assert done == "[DONE]"


@pytest.mark.parametrize(("model", "before", "message"), MID_STREAM)
def test_upstream_failing_mid_stream_is_a_502_without_stream(
    client: openai.OpenAI, model: str, before: list[str], message: str
) -> None:
    # Parley streams from the upstream even here, so the failure comes the same way.
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=model, messages=HELLO)

    assert info.value.status_code == 502
    assert info.value.type == "upstream_error"
    assert message in info.value.body["message"]  # type: ignore[index]


def test_client_hanging_up_mid_stream_leaves_the_server_healthy(upstream: ParleyProcess, client: openai.OpenAI) -> None:
    body = {"model": "fake/fake-long", "messages": HELLO, "stream": True}
    with upstream.http() as http:
        for _ in range(3):
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                first = [json.loads(data) for data in sse_data_lines([next(lines) for _ in range(6)])]
            # Three of the 1000 tokens read, then the connection is closed.
            assert [chunk["choices"][0]["delta"].get("content") for chunk in first] == ["", "tok0 ", "tok1 "]

        assert http.get("/v1/health").json()["status"] == "ok"
    chunks = list(client.chat.completions.create(model="fake/fake-long", messages=HELLO, stream=True, max_tokens=5))
    assert stream_text(chunks) == "tok0 tok1 tok2 tok3 tok4 "


# Concurrency ------------------------------------------------------------------------------------


def test_twenty_concurrent_streams_each_get_their_own_content(client: openai.OpenAI) -> None:
    def run(i: int) -> str:
        stream = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"request {i} says hello"}], stream=True
        )
        return stream_text(list(stream))

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(run, range(20), timeout=60))

    assert results == [f"request {i} says hello" for i in range(20)]
