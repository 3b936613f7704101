"""The test suite's own checkers: the Responses stream validator and the spec validators.

Each stream here is written by hand, as Parley should send it, then broken in
one way per test to show the validator names that rule.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openai.types.responses import Response, ResponseTextDeltaEvent

from tests.support import spec
from tests.support.stream_validator import (
    SSEFrame,
    acollect_stream,
    collect_stream,
    parse_sse,
    validate_response_stream,
    validate_websocket_stream,
)
from tests.support.validating_transport import WebSocketStreams

Events = list[dict[str, Any]]

RESPONSE_ID = "resp_0001"
MESSAGE_ID = "msg_0001"
CALL_ITEM_ID = "fc_0001"


def make_response(status: str, output: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    """A full response object, as both specs and openai's `Response` want it."""
    done = status not in ("in_progress", "queued")
    response: dict[str, Any] = {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1767225600,
        "status": status,
        "completed_at": 1767225601 if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "test-model",
        "output": output or [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "background": False,
        "service_tier": "default",
        "temperature": 1.0,
        "top_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "top_logprobs": 0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "truncation": "disabled",
        "usage": {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 14,
        }
        if done
        else None,
        "user": None,
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }
    response.update(overrides)
    return response


def message(text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": MESSAGE_ID, "type": "message", "role": "assistant", "status": status, "content": content}


def text_events(deltas: tuple[str, ...] = ("Hello", " world")) -> Events:
    """A realistic one-message text stream, without sequence numbers."""
    text = "".join(deltas)
    at = {"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0}
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    return [
        {"type": "response.created", "response": make_response("in_progress")},
        {"type": "response.in_progress", "response": make_response("in_progress")},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message("", "in_progress"), "content": []},
        },
        {"type": "response.content_part.added", **at, "part": empty_part},
        *({"type": "response.output_text.delta", **at, "delta": delta, "logprobs": []} for delta in deltas),
        {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": {**empty_part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": message(text)},
        {"type": "response.completed", "response": make_response("completed", [message(text)])},
    ]


def function_call(arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": CALL_ITEM_ID,
        "type": "function_call",
        "call_id": "call_0001",
        "name": "get_weather",
        "arguments": arguments,
        "status": status,
    }


def function_call_events() -> Events:
    arguments = '{"city": "Paris"}'
    at = {"item_id": CALL_ITEM_ID, "output_index": 0}
    return [
        {"type": "response.created", "response": make_response("in_progress")},
        {"type": "response.in_progress", "response": make_response("in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": function_call("", "in_progress")},
        {"type": "response.function_call_arguments.delta", **at, "delta": '{"city": '},
        {"type": "response.function_call_arguments.delta", **at, "delta": '"Paris"}'},
        {"type": "response.function_call_arguments.done", **at, "name": "get_weather", "arguments": arguments},
        {"type": "response.output_item.done", "output_index": 0, "item": function_call(arguments)},
        {"type": "response.completed", "response": make_response("completed", [function_call(arguments)])},
    ]


def reasoning(summary: str | None, text: str | None, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "rs_0001",
        "type": "reasoning",
        "status": status,
        "summary": [] if summary is None else [{"type": "summary_text", "text": summary}],
        "content": [] if text is None else [{"type": "reasoning_text", "text": text}],
    }


def refusal_message(refusal: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "refusal", "refusal": refusal}]
    return {"id": MESSAGE_ID, "type": "message", "role": "assistant", "status": status, "content": content}


def reasoning_then_refusal_events() -> Events:
    """Two items: reasoning (text and summary parts), then a refused message; cut off by max_output_tokens."""
    rs = {"item_id": "rs_0001", "output_index": 0}
    msg = {"item_id": MESSAGE_ID, "output_index": 1, "content_index": 0}
    output = [reasoning("Sum", "Think"), refusal_message("No.")]
    return [
        {"type": "response.created", "response": make_response("in_progress")},
        {"type": "response.in_progress", "response": make_response("in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": reasoning(None, None, "in_progress")},
        {
            "type": "response.content_part.added",
            **rs,
            "content_index": 0,
            "part": {"type": "reasoning_text", "text": ""},
        },
        {"type": "response.reasoning_text.delta", **rs, "content_index": 0, "delta": "Think"},
        {"type": "response.reasoning_text.done", **rs, "content_index": 0, "text": "Think"},
        {
            "type": "response.content_part.done",
            **rs,
            "content_index": 0,
            "part": {"type": "reasoning_text", "text": "Think"},
        },
        {
            "type": "response.reasoning_summary_part.added",
            **rs,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        },
        {"type": "response.reasoning_summary_text.delta", **rs, "summary_index": 0, "delta": "Sum"},
        {"type": "response.reasoning_summary_text.done", **rs, "summary_index": 0, "text": "Sum"},
        {
            "type": "response.reasoning_summary_part.done",
            **rs,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": "Sum"},
        },
        {"type": "response.output_item.done", "output_index": 0, "item": output[0]},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {**refusal_message("", "in_progress"), "content": []},
        },
        {"type": "response.content_part.added", **msg, "part": {"type": "refusal", "refusal": ""}},
        {"type": "response.refusal.delta", **msg, "delta": "No"},
        {"type": "response.refusal.delta", **msg, "delta": "."},
        {"type": "response.refusal.done", **msg, "refusal": "No."},
        {"type": "response.content_part.done", **msg, "part": {"type": "refusal", "refusal": "No."}},
        {"type": "response.output_item.done", "output_index": 1, "item": output[1]},
        {
            "type": "response.incomplete",
            "response": make_response("incomplete", output, incomplete_details={"reason": "max_output_tokens"}),
        },
    ]


def mcp_call(arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "mcp_0001",
        "type": "mcp_call",
        "name": "roll",
        "server_label": "dice",
        "arguments": arguments,
        "status": status,
    }


def mcp_call_events() -> Events:
    at = {"item_id": "mcp_0001", "output_index": 0}
    return [
        {"type": "response.created", "response": make_response("in_progress")},
        {"type": "response.in_progress", "response": make_response("in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": mcp_call("", "in_progress")},
        {"type": "response.mcp_call.in_progress", **at},
        {"type": "response.mcp_call_arguments.delta", **at, "delta": '{"sides": 6}'},
        {"type": "response.mcp_call_arguments.done", **at, "arguments": '{"sides": 6}'},
        {"type": "response.mcp_call.completed", **at},
        {"type": "response.output_item.done", "output_index": 0, "item": mcp_call('{"sides": 6}')},
        {"type": "response.completed", "response": make_response("completed", [mcp_call('{"sides": 6}')])},
    ]


def encode(events: Events, *, done: bool = True) -> str:
    """Frame events as Parley's api/ does; stamps sequence_number unless an event has one."""
    frames = []
    for number, event in enumerate(events):
        payload = {**event, "sequence_number": event.get("sequence_number", number)}
        frames.append(f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n")
    if done:
        frames.append("data: [DONE]\n\n")
    return "".join(frames)


def index_of(events: Events, event_type: str) -> int:
    return next(i for i, event in enumerate(events) if event["type"] == event_type)


def assert_rejected(raw: str | bytes, pattern: str) -> None:
    with pytest.raises(AssertionError, match=pattern):
        validate_response_stream(raw)


# --- streams that pass ---------------------------------------------------------


def test_a_correct_text_stream_passes() -> None:
    raw = encode(text_events())

    stream = validate_response_stream(raw)

    assert stream.text == "Hello world"
    assert stream.types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert isinstance(stream.events[4], ResponseTextDeltaEvent)
    assert stream.raw_events[4]["delta"] == "Hello"
    assert isinstance(stream.response, Response)
    assert stream.response.status == "completed"
    assert stream.response.model_dump(mode="json", exclude_unset=True) == make_response(
        "completed", [message("Hello world")]
    )
    assert stream.frames[-1] == SSEFrame(event=None, data="[DONE]")


def test_the_hand_written_response_is_a_valid_openai_response() -> None:
    response = Response.model_validate(make_response("completed", [message("Hello world")]))

    assert response.output_text == "Hello world"
    assert response.usage is not None and response.usage.input_tokens_details.cache_write_tokens == 0


def test_a_function_call_stream_passes() -> None:
    stream = validate_response_stream(encode(function_call_events()))

    assert stream.text == ""
    assert stream.response.output[0].type == "function_call"
    assert stream.response.output[0].arguments == '{"city": "Paris"}'


def test_reasoning_and_refusal_parts_pass_both_specs() -> None:
    stream = validate_response_stream(encode(reasoning_then_refusal_events()))

    assert stream.response.status == "incomplete"
    assert [item.type for item in stream.response.output] == ["reasoning", "message"]
    assert stream.text == ""


def test_a_queued_response_may_report_queued_before_in_progress() -> None:
    events = text_events()
    events[0]["response"]["status"] = "queued"
    events.insert(1, {"type": "response.queued", "response": make_response("queued")})

    assert validate_response_stream(encode(events)).types[:3] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]


def test_a_failed_stream_may_send_an_error_event_before_response_failed() -> None:
    error = {"code": "server_error", "message": "upstream went away"}
    events = [
        *text_events()[:-1],
        {
            "type": "error",
            "code": "server_error",
            "message": "upstream went away",
            "param": None,
        },
        {
            "type": "response.failed",
            "response": make_response("failed", [message("Hello world")], error=error, usage=None),
        },
    ]

    stream = validate_response_stream(encode(events))

    assert stream.response.status == "failed"
    assert stream.types[-2:] == ["error", "response.failed"]

    # An `error` key on that event makes openai-python raise instead of yielding it.
    events[-2] = {**events[-2], "error": {**error, "type": "server_error", "param": None}}
    with pytest.raises(AssertionError, match="`error` key"):
        validate_response_stream(encode(events))


def messages(events: Events) -> list[str]:
    """Events as WebSocket mode sends them: one JSON message each, numbered."""
    return [json.dumps({**event, "sequence_number": number}) for number, event in enumerate(events)]


def test_a_websocket_stream_passes_the_same_rules_without_sse_framing() -> None:
    stream = validate_websocket_stream(messages(text_events()))

    assert stream.text == "Hello world"
    assert stream.types == validate_response_stream(encode(text_events())).types
    assert stream.frames == []


@pytest.mark.parametrize(
    ("broken", "pattern"),
    [
        (lambda ms: ms[:3] + ms[4:], r"message 3 \(response.output_text.delta\): sequence_number is 4, expected 3"),
        (lambda ms: [*ms[:-1], "not json"], r"message 9: not JSON"),
        (lambda ms: ms[:-1], r"no terminal event|ended without"),
        (lambda ms: [ms[0], ms[0]], r"sequence_number is 0, expected 1"),
    ],
)
def test_a_broken_websocket_stream_is_named(broken: Callable[[list[str]], list[str]], pattern: str) -> None:
    with pytest.raises(AssertionError, match=pattern):
        validate_websocket_stream(broken(messages(text_events())))


def test_websocket_streams_split_a_socket_into_responses_and_skip_refusals() -> None:
    streams = WebSocketStreams()
    refusal = {"type": "error", "status": 400, "error": {"type": "invalid_request_error", "message": "no"}}
    for message in [json.dumps(refusal), *messages(text_events()), *messages(function_call_events())]:
        streams.feed(message)

    assert [stream.types[-1] for stream in streams.validated] == ["response.completed", "response.completed"]
    assert streams.failures == []
    # A refusal inside a response is the response's failure.
    streams.feed(messages(text_events())[0])
    streams.feed(json.dumps(refusal))
    streams.feed(messages(text_events())[-1])
    assert len(streams.failures) == 1


def test_crlf_line_ends_and_comments_are_accepted() -> None:
    raw = ": keep-alive\n\n" + encode(text_events())

    assert validate_response_stream(raw.replace("\n", "\r\n")).text == "Hello world"


def test_parse_sse_joins_data_lines_and_keeps_ids() -> None:
    frames = parse_sse(b"event: x\nid: 7\ndata: a\ndata:b\n\n: comment\n\ndata: [DONE]\n\n")

    assert frames == [SSEFrame(event="x", data="a\nb", id="7"), SSEFrame(event=None, data="[DONE]")]


# --- each rule, broken once --------------------------------------------------


def _without_event_line(events: Events) -> str:
    raw = encode(events)
    return raw.replace("event: response.in_progress\n", "", 1)


def _drop(event_type: str) -> Callable[[Events], Events]:
    def mutate(events: Events) -> Events:
        del events[index_of(events, event_type)]
        return events

    return mutate


def _move_before(event_type: str, before: str) -> Callable[[Events], Events]:
    def mutate(events: Events) -> Events:
        event = events.pop(index_of(events, event_type))
        events.insert(index_of(events, before), event)
        return events

    return mutate


def _set(event_type: str, path: str, value: Any) -> Callable[[Events], Events]:
    def mutate(events: Events) -> Events:
        target: Any = events[index_of(events, event_type)]
        *parents, last = path.split(".")
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
        return events

    return mutate


def _insert_after(event_type: str, event: dict[str, Any]) -> Callable[[Events], Events]:
    def mutate(events: Events) -> Events:
        events.insert(index_of(events, event_type) + 1, event)
        return events

    return mutate


def _append(*extra: dict[str, Any]) -> Callable[[Events], Events]:
    return lambda events: [*events, *extra]


EXTRA_DELTA = {
    "type": "response.output_text.delta",
    "item_id": MESSAGE_ID,
    "output_index": 0,
    "content_index": 0,
    "delta": "!",
    "logprobs": [],
}


def _refusal_into_text() -> str:
    events = text_events()
    at = {"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0}
    events.insert(
        index_of(events, "response.output_text.done"), {"type": "response.refusal.delta", **at, "delta": "No"}
    )
    return encode(events)


def _summary_on_message() -> str:
    events = text_events()
    part = {"type": "summary_text", "text": ""}
    events.insert(
        3,
        {
            "type": "response.reasoning_summary_part.added",
            "item_id": MESSAGE_ID,
            "output_index": 0,
            "summary_index": 0,
            "part": part,
        },
    )
    return encode(events)


def _insert_error(events: Events) -> Events:
    error = {
        "type": "error",
        "code": "server_error",
        "message": "boom",
        "param": None,
    }
    events.insert(index_of(events, "response.completed"), error)
    return events


def _stream(mutate: Callable[[Events], Events], base: Callable[[], Events] = text_events) -> str:
    return encode(mutate(copy.deepcopy(base())))


BROKEN_STREAMS: list[tuple[str, Callable[[], str | bytes], str]] = [
    ("missing event line", lambda: _without_event_line(text_events()), r"frame 1 \(line \d+\): no `event:` line"),
    (
        "event line differs from type",
        lambda: encode(text_events()).replace("event: response.output_text.done", "event: response.output_text.delta"),
        r"`event: response.output_text.delta` but data type is 'response.output_text.done'",
    ),
    (
        "sequence gap",
        lambda: _stream(_set("response.output_text.done", "sequence_number", 7)),
        r"sequence_number is 7, expected 6",
    ),
    (
        "sequence not from zero",
        lambda: _stream(_set("response.created", "sequence_number", 1)),
        r"sequence_number is 1, expected 0",
    ),
    ("missing [DONE]", lambda: encode(text_events(), done=False), r"does not end with `data: \[DONE\]`"),
    (
        "frames after [DONE]",
        lambda: encode(text_events()) + encode(text_events()[:1], done=False),
        r"1 frame\(s\) follow `data: \[DONE\]`",
    ),
    ("comment after [DONE]", lambda: encode(text_events()) + ": bye\n\n", r"goes on after `data: \[DONE\]`"),
    (
        "[DONE] with an event line",
        lambda: encode(text_events()).replace("data: [DONE]", "event: done\ndata: [DONE]"),
        r"\[DONE\] frame .* has an event line",
    ),
    ("truncated frame", lambda: encode(text_events())[:-1], r"ends inside the frame"),
    ("field without colon", lambda: "event response.created\n\n", r"no colon"),
    ("unknown field", lambda: "evnt: x\ndata: {}\n\n", r"unknown field 'evnt'"),
    ("not utf-8", lambda: b"data: \xff\n\n", r"not UTF-8"),
    (
        "data is not JSON",
        lambda: encode(text_events()).replace('"type": "response.created"', "'type'", 1),
        r"data is not JSON",
    ),
    (
        "unknown event type",
        lambda: encode(text_events()).replace("response.completed", "response.finished"),
        r"unknown event type 'response.finished'",
    ),
    (
        "event fails openai's type",
        lambda: _stream(_set("response.output_text.delta", "delta", 5)),
        r"not a valid openai ResponseStreamEvent",
    ),
    (
        "first event is not created",
        lambda: _stream(_move_before("response.in_progress", "response.created")),
        r"first event must be response.created",
    ),
    (
        "created is not followed by in_progress",
        lambda: _stream(_drop("response.in_progress")),
        r"must be followed by response.in_progress",
    ),
    (
        "created with status completed",
        lambda: _stream(_set("response.created", "response.status", "completed")),
        r"expected in_progress or queued",
    ),
    (
        "delta before item added",
        lambda: _stream(_move_before("response.output_text.delta", "response.output_item.added")),
        r"output_index 0 before its response.output_item.added",
    ),
    (
        "delta before part added",
        lambda: _stream(_move_before("response.output_text.delta", "response.content_part.added")),
        r"part 0 was not added",
    ),
    (
        "item never done",
        lambda: _stream(_drop("response.output_item.done")),
        r"item 0 \(msg_0001\) never got response.output_item.done",
    ),
    (
        "part never done",
        lambda: _stream(_drop("response.content_part.done")),
        r"content part 0 of item msg_0001 was never done",
    ),
    ("text done missing", lambda: _stream(_drop("response.output_text.done")), r"done before its text's .done event"),
    (
        "delta text differs from done",
        lambda: _stream(_set("response.output_text.delta", "delta", "Howdy")),
        r"text 'Hello world' != the deltas concatenated 'Howdy world'",
    ),
    (
        "part text differs from done",
        lambda: _stream(_set("response.content_part.done", "part.text", "Hello")),
        r"part text 'Hello' != the .done text 'Hello world'",
    ),
    (
        "item text differs from part",
        lambda: _stream(_set("response.output_item.done", "item.content.0.text", "Hi")),
        r"item.content\[0\].text is 'Hi', expected 'Hello world'",
    ),
    (
        "final output differs",
        lambda: _stream(_set("response.completed", "response.output.0.content.0.text", "Bye")),
        r"final response differs from output_item.done 0: output\[0\].content\[0\].text is 'Bye'",
    ),
    (
        "final output misses an item",
        lambda: _stream(_set("response.completed", "response.output", [])),
        r"response.output has 0 items, but 1 were streamed",
    ),
    (
        "final id differs",
        lambda: _stream(_set("response.completed", "response.id", "resp_other")),
        r"differs from the created response's",
    ),
    (
        "terminal status differs",
        lambda: _stream(_set("response.completed", "response.status", "incomplete")),
        r"status is 'incomplete', expected 'completed'",
    ),
    (
        "part done before text done",
        lambda: _stream(_move_before("response.content_part.done", "response.output_text.done")),
        r"part 0 \(output_text\) is done before its text's .done event",
    ),
    (
        "delta after text done",
        lambda: _stream(_insert_after("response.output_text.done", EXTRA_DELTA)),
        r"event 7 \(response.output_text.delta\): comes after its .done event",
    ),
    (
        "delta after part done",
        lambda: _stream(_insert_after("response.content_part.done", EXTRA_DELTA)),
        r"event 8 \(response.output_text.delta\): part 0 is already done",
    ),
    (
        "delta after item done",
        lambda: _stream(_insert_after("response.output_item.done", EXTRA_DELTA)),
        r"event 9 \(response.output_text.delta\): item 0 \(msg_0001\) is already done",
    ),
    ("event after terminal", lambda: _stream(_append(text_events()[-1])), r"comes after the terminal event"),
    ("no terminal event", lambda: _stream(_drop("response.completed")), r"no terminal event"),
    ("error before completed", lambda: _stream(_insert_error), r"error event 9 must be followed by response.failed"),
    (
        "output_index skips",
        lambda: _stream(_set("response.output_item.added", "output_index", 1)),
        r"output_index 1, expected 0",
    ),
    (
        "item without status",
        lambda: _stream(_set("response.output_item.done", "item.status", None), function_call_events),
        r"output item has no 'status'",
    ),
    (
        "message without status fails openai's type",
        lambda: _stream(_set("response.output_item.added", "item.status", None)),
        r"not a valid openai ResponseStreamEvent: item.ResponseOutputMessage.status",
    ),
    (
        "item_id names another item",
        lambda: _stream(_set("response.output_text.delta", "item_id", "msg_other")),
        r"item_id 'msg_other' is not the id of output item 0",
    ),
    (
        "part does not start empty",
        lambda: _stream(_set("response.content_part.added", "part.text", "Hi")),
        r"a part starts empty",
    ),
    (
        "arguments differ from done",
        lambda: _stream(_set("response.function_call_arguments.done", "arguments", "{}"), function_call_events),
        r"arguments '\{\}' != the deltas concatenated",
    ),
    (
        "item arguments differ",
        lambda: _stream(_set("response.output_item.done", "item.arguments", "{}"), function_call_events),
        r"item arguments '\{\}' != response.function_call_arguments.done",
    ),
    (
        "reasoning summary text differs",
        lambda: _stream(_set("response.reasoning_summary_text.done", "text", "Sun"), reasoning_then_refusal_events),
        r"text 'Sun' != the deltas concatenated 'Sum'",
    ),
    (
        "reasoning text missing from item",
        lambda: _stream(_set("response.output_item.done", "item.content", []), reasoning_then_refusal_events),
        r"item.content\[0\] is None",
    ),
    ("refusal delta into a message's text part", _refusal_into_text, r"refusal text for a part of type output_text"),
    (
        "summary part on a message",
        _summary_on_message,
        r"response.reasoning_summary_part event for item 0, a message \(expected reasoning\)",
    ),
    (
        "incomplete without details",
        lambda: _stream(
            _set("response.incomplete", "response.incomplete_details", None), reasoning_then_refusal_events
        ),
        r"needs incomplete_details",
    ),
    (
        "mcp arguments differ",
        lambda: _stream(_set("response.mcp_call_arguments.done", "arguments", "{}"), mcp_call_events),
        r"arguments '\{\}' != the deltas concatenated",
    ),
    (
        "tool event names another item type",
        lambda: encode(mcp_call_events()).replace(
            "response.mcp_call.in_progress", "response.web_search_call.in_progress"
        ),
        r"response.web_search_call event for item 0, a mcp_call \(expected web_search_call\)",
    ),
    (
        "arguments done missing",
        lambda: _stream(_drop("response.function_call_arguments.done"), function_call_events),
        r"got no response.function_call_arguments.done",
    ),
]


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [(make, pattern) for _, make, pattern in BROKEN_STREAMS],
    ids=[name for name, _, _ in BROKEN_STREAMS],
)
def test_each_broken_rule_is_named(raw: Callable[[], str | bytes], pattern: str) -> None:
    assert_rejected(raw(), pattern)


def test_errors_name_the_spec_when_an_event_breaks_a_schema() -> None:
    # openai's type makes `name` optional here; OpenAI's document requires it.
    events = function_call_events()
    del events[index_of(events, "response.function_call_arguments.done")]["name"]

    with pytest.raises(
        AssertionError,
        match=r"(?s)event 5 \(response.function_call_arguments.done\): openai-openapi.yml: .*'name' is a required",
    ):
        validate_response_stream(encode(events))
    validate_response_stream(encode(events), openai_spec=False)


def test_type_errors_name_the_item_type_that_was_meant() -> None:
    events = function_call_events()
    events[index_of(events, "response.output_item.done")]["item"]["call_id"] = 7

    with pytest.raises(
        AssertionError,
        match=r"ResponseStreamEvent: item.ResponseFunctionToolCall.call_id: Input should be a valid string$",
    ):
        validate_response_stream(encode(events))


def test_streams_outside_open_responses_can_skip_it() -> None:
    # Open Responses has no MCP items or events.
    with pytest.raises(AssertionError, match=r"event 2 \(response.output_item.added\): openresponses-openapi.json"):
        validate_response_stream(encode(mcp_call_events()))

    stream = validate_response_stream(encode(mcp_call_events()), openresponses_spec=False)

    assert stream.response.output[0].type == "mcp_call"


# --- collecting over HTTP ------------------------------------------------------


def _sse_app(body: str, status: int = 200) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"model": "test-model", "input": "hi", "stream": True}
        return httpx.Response(
            status, headers={"content-type": "text/event-stream; charset=utf-8"}, content=body.encode()
        )

    return httpx.MockTransport(handle)


def test_collect_stream_posts_and_validates_the_raw_bytes() -> None:
    with httpx.Client(transport=_sse_app(encode(text_events())), base_url="http://parley.test") as client:
        stream = collect_stream(client, "/v1/responses", {"model": "test-model", "input": "hi", "stream": True})

    assert stream.text == "Hello world"


def test_collect_stream_rejects_an_http_error() -> None:
    transport = _sse_app('{"error": {}}', status=400)
    with (
        httpx.Client(transport=transport, base_url="http://parley.test") as client,
        pytest.raises(AssertionError, match="HTTP 400"),
    ):
        collect_stream(client, "/v1/responses", {"model": "test-model", "input": "hi", "stream": True})


async def test_acollect_stream_validates_too() -> None:
    async with httpx.AsyncClient(transport=_sse_app(encode(text_events())), base_url="http://parley.test") as client:
        stream = await acollect_stream(client, "/v1/responses", {"model": "test-model", "input": "hi", "stream": True})

    assert stream.response.id == RESPONSE_ID


# --- spec.py -------------------------------------------------------------------


def test_the_hand_written_response_matches_both_specs() -> None:
    response = make_response("completed", [message("Hello world")])

    spec.validate_openai(response, "Response")
    spec.validate_openresponses(response, "ResponseResource")


def test_null_temperature_fails_open_responses_but_not_openai() -> None:
    response = make_response("completed", [message("Hello world")], temperature=None)

    spec.validate_openai(response, "Response")
    with pytest.raises(
        AssertionError,
        match=r"(?s)openresponses-openapi.json: .*'ResponseResource'.*\$.temperature: None is not of type 'number'",
    ):
        spec.validate_openresponses(response, "ResponseResource")


def test_open_responses_requires_its_response_fields() -> None:
    response = make_response("completed", [message("Hello world")])
    del response["tools"]

    with pytest.raises(AssertionError, match=r"'tools' is a required property"):
        spec.validate_openresponses(response, "ResponseResource")


def test_null_identifiers_are_tolerated_on_the_response_only() -> None:
    # A narrow tolerance: openai's Response has them Optional; the request schema keeps them strict.
    spec.validate_openai(make_response("completed", user=None, safety_identifier=None), "Response")
    with pytest.raises(AssertionError, match=r"\$.user: None is not of type 'string'"):
        spec.validate_openai({"model": "test-model", "input": "hi", "user": None}, "CreateResponse")


def test_an_echoed_json_schema_format_may_hold_its_schema() -> None:
    # A narrow tolerance: Open Responses' document allows only null there, its request side an object.
    fmt = {"type": "json_schema", "name": "Answer", "description": None, "strict": True}
    spec.validate_openresponses({**fmt, "schema": {"type": "object"}}, "JsonSchemaResponseFormat")
    with pytest.raises(AssertionError, match=r"\$.schema: 'object' is not valid"):
        spec.validate_openresponses({**fmt, "schema": "object"}, "JsonSchemaResponseFormat")
    with pytest.raises(AssertionError, match=r"'description' is a required property"):
        spec.validate_openresponses({"type": "json_schema", "name": "A", "schema": {}}, "JsonSchemaResponseFormat")


def test_an_echoed_json_schema_format_may_have_a_null_description() -> None:
    # A narrow tolerance: openai's ResponseFormatTextJSONSchemaConfig has it Optional; 2.3.0 a plain string.
    fmt = {"type": "json_schema", "name": "Answer", "schema": {"type": "object"}, "strict": True}
    spec.validate_openai({**fmt, "description": None}, "TextResponseFormatJsonSchema")
    with pytest.raises(AssertionError, match=r"\$.description: 7 is not valid"):
        spec.validate_openai({**fmt, "description": 7}, "TextResponseFormatJsonSchema")


def test_a_chat_completion_matches_create_chat_completion_response() -> None:
    completion: dict[str, Any] = {
        "id": "chatcmpl-0001",
        "object": "chat.completion",
        "created": 1767225600,
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris.", "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }

    spec.validate_openai(completion, "CreateChatCompletionResponse")
    with pytest.raises(AssertionError, match=r"\$.choices\[0\].finish_reason: 'done' is not one of"):
        spec.validate_openai(
            {**completion, "choices": [{**completion["choices"][0], "finish_reason": "done"}]},
            "CreateChatCompletionResponse",
        )


def test_nullable_true_in_the_openai_document_accepts_null() -> None:
    # The document is OpenAPI 3.1 yet writes 3.0's `nullable: true` (here on
    # finish_reason and usage); read literally, null would be rejected.
    chunk: dict[str, Any] = {
        "id": "chatcmpl-0001",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "test-model",
        "choices": [{"index": 0, "delta": {"content": "Par"}, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }

    spec.validate_openai(chunk, "CreateChatCompletionStreamResponse")
    with pytest.raises(AssertionError, match="finish_reason"):
        spec.validate_openai(
            {**chunk, "choices": [{**chunk["choices"][0], "finish_reason": 3}]}, "CreateChatCompletionStreamResponse"
        )


def test_models_and_errors_have_schemas() -> None:
    model = {"id": "test-model", "object": "model", "created": 1767225600, "owned_by": "parley"}

    spec.validate_openai({"object": "list", "data": [model]}, "ListModelsResponse")
    spec.validate_openai(
        {
            "error": {
                "message": "No such model",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        },
        "ErrorResponse",
    )


def test_event_schemas_are_found_by_type() -> None:
    assert spec.openai_document().event_schemas["response.output_text.delta"] == "ResponseTextDeltaEvent"
    assert (
        spec.openresponses_document().event_schemas["response.output_text.delta"]
        == "ResponseOutputTextDeltaStreamingEvent"
    )
    # openai's package calls reasoning text events `reasoning_text`, Open Responses `reasoning`.
    spec.validate_openresponses_event(
        {
            "type": "response.reasoning_text.delta",
            "sequence_number": 3,
            "item_id": "rs_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hm",
        }
    )


def test_schema_errors_name_the_closest_union_branch() -> None:
    item = function_call('{"city": "Paris"}') | {"call_id": 7}

    with pytest.raises(
        AssertionError, match=r"at \$.item: .* \(closest branch: at \$.item.call_id: 7 is not of type 'string'\)"
    ):
        spec.validate_openai(
            {"type": "response.output_item.done", "sequence_number": 6, "output_index": 0, "item": item},
            "ResponseOutputItemDoneEvent",
        )


def test_an_unknown_schema_name_is_an_error() -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        spec.validate_openai({}, "NoSuchSchema")


def test_error_messages_point_into_the_instance() -> None:
    response = make_response("completed", [message("Hello world")])
    response["output"][0]["content"][0]["annotations"] = None

    with pytest.raises(AssertionError, match=re.escape("$.output[0]")):
        spec.validate_openai(response, "Response")
