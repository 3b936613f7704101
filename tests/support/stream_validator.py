"""One validator for every Responses API stream a test produces.

The openai SDK hides the SSE frames, so a stream is checked as the bytes that
crossed the wire: `parse_sse` turns them into frames, `validate_response_stream`
checks the frames and the events they carry, and `collect_stream` /
`acollect_stream` POST a request and validate what comes back. A response made
in WebSocket mode is checked by `validate_websocket_stream`, from the messages
that carried its events (one JSON object each, no SSE framing, no `[DONE]`):
every rule below but the framing ones applies the same.

Rules (each violation raises AssertionError naming the event index):

- framing: strict SSE; every frame has an `event:` line equal to its data's
  `type`; the stream ends with `data: [DONE]` and nothing after it;
- `sequence_number` is 0, 1, 2, ... in frame order;
- every event validates as openai's `ResponseStreamEvent` (unknown types fail),
  and, unless switched off, against OpenAI's and Open Responses' schemas
  (`tests.support.spec`);
- `response.created` (status `in_progress` or `queued`) then
  `response.in_progress` open the stream; exactly one terminal event
  (`response.completed`, `.incomplete`, `.failed`) closes it, optionally
  preceded by one `error` event when the terminal event is `response.failed`;
  an `error` event has no `error` key (openai-python would raise on it) and is
  checked against OpenAI's schema only;
- items: `output_item.added` assigns output_index 0, 1, 2, ... and comes
  before any event naming the item; each item gets exactly one
  `output_item.done`; content parts (and reasoning summary parts) are added
  with indexes 0, 1, 2, ..., and each gets its done before its item's done;
  nothing names an item or part after its done;
- text: a part starts empty; its deltas concatenated equal its `*.done` text,
  the part in `content_part.done` and the part in the item's
  `output_item.done` (output_text, refusal, reasoning_text, reasoning summary
  text); likewise the argument/input/code deltas of function, MCP, custom tool
  and code interpreter calls against their `*.done` and the item;
- the terminal response has the created response's `id`, the terminal event's
  status, and `output` equal to the `output_item.done` items in output_index
  order; every output item carries `id`, `type` and `status` (but a
  compaction item, which has no status in OpenAI's types);
- compaction: a compaction item is added with empty `encrypted_content`, gets
  exactly one `response.compaction.compacting` before its done, and is done
  with its `encrypted_content` (unless the response failed).
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pydantic
from openai.types.responses import Response, ResponseStreamEvent

from tests.support import spec

DONE = "[DONE]"
_EVENT_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
_LINE_END = re.compile(r"\r\n|\r|\n")
_ENDS_WITH_DONE = re.compile(r"(?:^|\r\n|\r|\n)data: ?\[DONE\](?:\r\n|\r|\n){2}\Z")


_EVENT_MODELS: dict[str, type[pydantic.BaseModel]] = {
    typing.get_args(model.model_fields["type"].annotation)[0]: model
    for model in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}
EVENT_TYPES = frozenset(_EVENT_MODELS)
"""Every event type the installed openai package knows."""

TERMINAL_STATUS = {
    event_type: status
    for event_type, status in {
        "response.completed": "completed",
        "response.incomplete": "incomplete",
        "response.failed": "failed",
        "response.cancelled": "cancelled",  # only if this openai version defines it
    }.items()
    if event_type in EVENT_TYPES
}

# Text that streams into a content part: event family -> (part type, field of
# the `.done` event, field of the part).
_PART_STREAMS = {
    "response.output_text": ("output_text", "text", "text"),
    "response.refusal": ("refusal", "refusal", "refusal"),
    "response.reasoning_text": ("reasoning_text", "text", "text"),
}
_SUMMARY_STREAM = "response.reasoning_summary_text"
# Text that streams into an item's own field: event family -> (item type,
# field of the `.done` event, field of the item).
_ITEM_STREAMS = {
    "response.function_call_arguments": ("function_call", "arguments", "arguments"),
    "response.mcp_call_arguments": ("mcp_call", "arguments", "arguments"),
    "response.custom_tool_call_input": ("custom_tool_call", "input", "input"),
    "response.code_interpreter_call_code": ("code_interpreter_call", "code", "code"),
}
# Progress events of tool calls: event family -> the item type they must name.
_ITEM_EVENTS = {
    "response.web_search_call": "web_search_call",
    "response.file_search_call": "file_search_call",
    "response.code_interpreter_call": "code_interpreter_call",
    "response.image_generation_call": "image_generation_call",
    "response.mcp_call": "mcp_call",
    "response.mcp_list_tools": "mcp_list_tools",
}
# Item types whose stream must be closed by its `.done` event.
_REQUIRED_ITEM_STREAMS = {"function_call": "response.function_call_arguments"}
# Items whose progress events are all required: `.in_progress` once Parley starts on it, then one
# of `.completed` or `.failed`, matching the status it is done with (a call closed before it ran,
# when its response failed, has `.failed` alone).
_REQUIRED_PROGRESS = {"mcp_call", "mcp_list_tools"}
# Item types that have no `status` in OpenAI's types.
_NO_STATUS = {"compaction"}


@dataclass(frozen=True)
class SSEFrame:
    """One dispatched server-sent event. `line` is where it starts, for messages."""

    event: str | None
    data: str
    id: str | None = None
    line: int = field(default=0, compare=False)


def parse_sse(raw: bytes | str) -> list[SSEFrame]:
    """Parse SSE wire text strictly.

    Lines end in LF, CRLF or CR; a blank line ends a frame; `:` lines are
    comments. Unlike a lenient browser parser this rejects: bytes that are not
    UTF-8, a byte-order mark, a line without a colon, a field other than
    `event`, `data`, `id` or `retry`, a frame with no `data` line or with two
    `event` lines, an empty event name, and a last frame with no blank line
    after it (a truncated stream).
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AssertionError(f"SSE stream is not UTF-8: {exc}") from exc
    else:
        text = raw
    if text.startswith("\ufeff"):
        raise AssertionError("SSE stream starts with a byte-order mark")
    lines = _LINE_END.split(text)
    if lines[-1] != "":
        raise AssertionError(f"SSE stream ends mid-line, without a line end: {lines[-1][:120]!r}")
    lines.pop()

    frames: list[SSEFrame] = []
    fields: list[tuple[str, str]] = []
    start = 0
    for number, line in enumerate(lines, start=1):
        if line == "":
            if fields:
                frames.append(_dispatch(fields, start))
                fields = []
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise AssertionError(f"SSE line {number}: no colon in {line[:120]!r}")
        if name not in ("event", "data", "id", "retry"):
            raise AssertionError(f"SSE line {number}: unknown field {name!r}")
        if not fields:
            start = number
        fields.append((name, value[1:] if value.startswith(" ") else value))
    if fields:
        raise AssertionError(f"SSE stream ends inside the frame at line {start}: no blank line closes it")
    return frames


def _dispatch(fields: list[tuple[str, str]], line: int) -> SSEFrame:
    events = [value for name, value in fields if name == "event"]
    data = [value for name, value in fields if name == "data"]
    ids = [value for name, value in fields if name == "id"]
    for name, value in fields:
        if name == "retry" and not value.isdigit():
            raise AssertionError(f"SSE frame at line {line}: retry {value!r} is not a number")
    if len(events) > 1:
        raise AssertionError(f"SSE frame at line {line}: {len(events)} event lines")
    if events and not events[0]:
        raise AssertionError(f"SSE frame at line {line}: empty event name")
    if not data:
        raise AssertionError(f"SSE frame at line {line}: no data line")
    return SSEFrame(event=events[0] if events else None, data="\n".join(data), id=ids[-1] if ids else None, line=line)


@dataclass
class ValidatedStream:
    """A stream that passed every rule."""

    frames: list[SSEFrame]
    raw_events: list[dict[str, Any]]
    events: list[Any]  # openai.types.responses.ResponseStreamEvent members
    response: Response

    @property
    def types(self) -> list[str]:
        return [event["type"] for event in self.raw_events]

    @property
    def text(self) -> str:
        """All output_text of the final response's messages, concatenated."""
        return self.response.output_text


def validate_response_stream(
    raw: bytes | str, *, openai_spec: bool = True, openresponses_spec: bool = True
) -> ValidatedStream:
    """Check a `/v1/responses` stream as sent over the wire; see the module docstring.

    `openai_spec` / `openresponses_spec` also validate each event against the
    schemas in shared/specs. Open Responses defines only part of the API (no
    MCP, web search or file search events or items): streams that use those
    pass `openresponses_spec=False`.
    """
    frames = parse_sse(raw)
    return _validate_events(frames, _decode_frames(frames, raw), openai_spec, openresponses_spec)


def validate_websocket_stream(
    messages: Sequence[bytes | str], *, openai_spec: bool = True, openresponses_spec: bool = True
) -> ValidatedStream:
    """Check one response's events as WebSocket mode sent them: a JSON object a message, from its
    `response.created` to its terminal event; the rules of `validate_response_stream` but SSE's."""
    return _validate_events([], _decode_messages(messages), openai_spec, openresponses_spec)


def _validate_events(
    frames: list[SSEFrame], raw_events: list[dict[str, Any]], openai_spec: bool, openresponses_spec: bool
) -> ValidatedStream:
    events = [_parse_event(index, event) for index, event in enumerate(raw_events)]
    lifecycle = _Lifecycle()
    for index, event in enumerate(raw_events):
        lifecycle.feed(index, event)
    final = lifecycle.finish()
    for index, event in enumerate(raw_events):
        if openai_spec:
            _at(index, event, spec.validate_openai_event)
        # Open Responses nests an `error` event's fields under `error`; openai-python raises
        # APIError at any frame whose data has a truthy `error` (openai/_streaming.py), so the
        # stream could not be read on to its `response.failed`. OpenAI's `ResponseErrorEvent`
        # (code, message, param at the top) is the one a stream can follow.
        if openresponses_spec and event["type"] != "error":
            _at(index, event, spec.validate_openresponses_event)
    return ValidatedStream(frames=frames, raw_events=raw_events, events=events, response=final)


def _at(index: int, event: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> None:
    try:
        check(event)
    except AssertionError as exc:
        raise AssertionError(f"event {index} ({event['type']}): {exc}") from None


def _decode_frames(frames: list[SSEFrame], raw: bytes | str) -> list[dict[str, Any]]:
    if not frames:
        raise AssertionError("empty stream: no SSE frames")
    first_done = next((i for i, frame in enumerate(frames) if frame.data == DONE), None)
    if first_done is not None and first_done != len(frames) - 1:
        following = len(frames) - 1 - first_done
        raise AssertionError(f"{following} frame(s) follow `data: [DONE]` (line {frames[first_done].line})")
    last = frames[-1]
    if last.data != DONE:
        raise AssertionError(
            f"stream does not end with `data: [DONE]`; last frame (line {last.line}) is {last.data[:120]!r}"
        )
    if last.event is not None:
        raise AssertionError(
            f"the [DONE] frame (line {last.line}) has an event line {last.event!r}; it must be data only"
        )
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if not _ENDS_WITH_DONE.search(text):
        raise AssertionError("the stream goes on after `data: [DONE]` (comments or blank lines)")
    raw_events = []
    for index, frame in enumerate(frames[:-1]):
        where = f"frame {index} (line {frame.line})"
        if frame.event is None:
            raise AssertionError(f"{where}: no `event:` line (data {frame.data[:120]!r})")
        try:
            payload = json.loads(frame.data)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{where}: data is not JSON ({exc}): {frame.data[:120]!r}") from exc
        if not isinstance(payload, dict):
            raise AssertionError(f"{where}: data is not a JSON object: {frame.data[:120]!r}")
        if payload.get("type") != frame.event:
            raise AssertionError(f"{where}: `event: {frame.event}` but data type is {payload.get('type')!r}")
        sequence_number = payload.get("sequence_number")
        if type(sequence_number) is not int or sequence_number != index:
            raise AssertionError(f"{where} ({frame.event}): sequence_number is {sequence_number!r}, expected {index}")
        raw_events.append(payload)
    return raw_events


def _decode_messages(messages: Sequence[bytes | str]) -> list[dict[str, Any]]:
    if not messages:
        raise AssertionError("empty stream: no WebSocket messages")
    raw_events = []
    for index, message in enumerate(messages):
        where = f"message {index}"
        try:
            payload = json.loads(message)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{where}: not JSON ({exc}): {message[:120]!r}") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            raise AssertionError(f"{where}: not a JSON object with a `type`: {message[:120]!r}")
        sequence_number = payload.get("sequence_number")
        if type(sequence_number) is not int or sequence_number != index:
            raise AssertionError(
                f"{where} ({payload['type']}): sequence_number is {sequence_number!r}, expected {index}"
            )
        raw_events.append(payload)
    return raw_events


def _parse_event(index: int, event: dict[str, Any]) -> Any:
    if event["type"] not in EVENT_TYPES:
        raise AssertionError(
            f"event {index}: unknown event type {event['type']!r} (not in openai's ResponseStreamEvent)"
        )
    try:
        return _EVENT_ADAPTER.validate_python(event)
    except pydantic.ValidationError:
        pass
    # The union's errors list every member; the event's own model says what is wrong.
    try:
        _EVENT_MODELS[event["type"]].model_validate(event)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(event)'}: {e['msg']}" for e in _telling(exc.errors())[:5]
        )
        raise AssertionError(
            f"event {index} ({event['type']}): not a valid openai ResponseStreamEvent: {problems}"
        ) from None
    raise AssertionError(f"event {index} ({event['type']}): not a valid openai ResponseStreamEvent")


def _telling(errors: list[Any]) -> list[Any]:
    """Drop the errors of union members whose `type` literal did not match: noise."""
    wrong_members = [e["loc"][:-1] for e in errors if e["loc"][-1:] == ("type",) and e["type"] == "literal_error"]
    kept = [e for e in errors if not any(e["loc"][: len(m)] == m for m in wrong_members if m)]
    return kept or errors


@dataclass
class _Text:
    """Text arriving as deltas and closed by a `.done` event."""

    deltas: list[str] = field(default_factory=list)
    done: str | None = None

    @property
    def value(self) -> str:
        return "".join(self.deltas)


@dataclass
class _Part:
    type: str
    text: _Text = field(default_factory=_Text)
    done: dict[str, Any] | None = None


@dataclass
class _Item:
    output_index: int
    id: str
    type: str
    done: dict[str, Any] | None = None
    parts: dict[int, _Part] = field(default_factory=dict)
    summary_parts: dict[int, _Part] = field(default_factory=dict)
    streams: dict[str, _Text] = field(default_factory=dict)
    progress: list[str] = field(default_factory=list)  # the verbs of its progress events, in order


class _Lifecycle:
    """Walks the events in order, tracking the response, its items and their parts."""

    def __init__(self) -> None:
        self.created: dict[str, Any] | None = None
        self.in_progress = False
        self.terminal: dict[str, Any] | None = None
        self.pending_error: int | None = None
        self.items: dict[int, _Item] = {}
        self.where = ""

    def fail(self, message: str) -> typing.NoReturn:
        raise AssertionError(f"{self.where}: {message}")

    def feed(self, index: int, event: dict[str, Any]) -> None:
        kind = event["type"]
        self.where = f"event {index} ({kind})"
        if self.terminal is not None:
            self.fail(f"comes after the terminal event {self.terminal['type']}")
        if self.pending_error is not None and kind != "response.failed":
            self.fail(f"the error event {self.pending_error} must be followed by response.failed")
        if index == 0:
            return self.on_created(event)
        if kind == "response.created":
            self.fail("a second response.created")
        if not self.in_progress:
            return self.on_opening(event)
        if kind in ("response.in_progress", "response.queued"):
            self.fail("comes after response.in_progress")
        if kind in TERMINAL_STATUS:
            return self.on_terminal(event)
        if kind == "error":
            if "error" in event:
                self.fail("an error event's data has an `error` key, on which openai-python raises")
            self.pending_error = index
            return None
        if kind == "response.output_item.added":
            return self.on_item_added(event)
        if "output_index" not in event and "item_id" not in event:
            return None  # names no item (audio events)
        item = self.item_for(event)
        family, _, verb = kind.rpartition(".")
        if kind == "response.output_item.done":
            self.on_item_done(item, event)
        elif family == "response.content_part":
            self.check_item_type(item, family, "message", "reasoning")
            self.on_part(item, item.parts, "content_index", event, verb)
        elif family == "response.reasoning_summary_part":
            self.check_item_type(item, family, "reasoning")
            self.on_part(item, item.summary_parts, "summary_index", event, verb)
        elif family in _ITEM_EVENTS:
            self.check_item_type(item, family, _ITEM_EVENTS[family])
            self.on_progress(item, verb)
        elif family == "response.compaction":
            self.check_item_type(item, family, "compaction")
            if item.progress:
                self.fail(f"a second {kind} for the item")
            item.progress.append(verb)
        elif family in _PART_STREAMS:
            self.on_part_text(item.parts, "content_index", _PART_STREAMS[family], event, verb)
        elif family == _SUMMARY_STREAM:
            self.on_part_text(item.summary_parts, "summary_index", ("summary_text", "text", "text"), event, verb)
        elif family in _ITEM_STREAMS:
            self.on_item_text(item, family, event, verb)
        elif kind == "response.output_text.annotation.added":
            part = self.open_part(item.parts, event["content_index"])
            if part.type != "output_text":
                self.fail(f"annotation for a {part.type} part")
        return None

    # --- the response ---------------------------------------------------

    def on_created(self, event: dict[str, Any]) -> None:
        if event["type"] != "response.created":
            self.fail("the first event must be response.created")
        response = event["response"]
        if response.get("status") not in ("in_progress", "queued"):
            self.fail(f"created response has status {response.get('status')!r}, expected in_progress or queued")
        self.check_empty_output(response)
        self.created = response

    def on_opening(self, event: dict[str, Any]) -> None:
        assert self.created is not None
        if event["type"] == "response.queued" and self.created["status"] == "queued":
            self.check_same_response(event["response"])
            return
        if event["type"] != "response.in_progress":
            self.fail("response.created must be followed by response.in_progress")
        self.check_same_response(event["response"])
        if event["response"].get("status") != "in_progress":
            self.fail(f"response.in_progress carries status {event['response'].get('status')!r}")
        self.check_empty_output(event["response"])
        self.in_progress = True

    def check_empty_output(self, response: dict[str, Any]) -> None:
        if response.get("output") != []:
            self.fail(f"output should be empty before any item is added, got {response.get('output')!r}")

    def check_same_response(self, response: dict[str, Any]) -> None:
        assert self.created is not None
        if response.get("id") != self.created.get("id"):
            self.fail(
                f"response id {response.get('id')!r} differs from the created response's {self.created.get('id')!r}"
            )

    def on_terminal(self, event: dict[str, Any]) -> None:
        if self.pending_error is not None and event["type"] != "response.failed":
            self.fail("an error event may only precede response.failed")
        response = event["response"]
        self.check_same_response(response)
        status = TERMINAL_STATUS[event["type"]]
        if response.get("status") != status:
            self.fail(f"response status is {response.get('status')!r}, expected {status!r}")
        if status == "failed" and response.get("error") is None:
            self.fail("a failed response needs an error object")
        if status == "incomplete" and response.get("incomplete_details") is None:
            self.fail("an incomplete response needs incomplete_details")
        for item in self.items.values():
            if item.done is None:
                self.fail(f"item {item.output_index} ({item.id}) never got response.output_item.done")
        for item in self.items.values():
            if item.type == "compaction" and status != "failed" and not (item.done or {}).get("encrypted_content"):
                self.fail(f"compaction item {item.id} is done without its encrypted_content")
        expected = [self.items[i].done for i in sorted(self.items)]
        output = response.get("output")
        if not isinstance(output, list) or len(output) != len(expected):
            count = len(output) if isinstance(output, list) else output
            self.fail(f"response.output has {count} items, but {len(expected)} were streamed")
        for position, (got, want) in enumerate(zip(output, expected, strict=True)):
            difference = _difference(got, want, f"output[{position}]")
            if difference:
                self.fail(f"final response differs from output_item.done {position}: {difference}")
        self.terminal = event
        self.pending_error = None

    def finish(self) -> Response:
        self.where = "end of stream"
        if self.pending_error is not None:
            self.fail(f"the error event {self.pending_error} is not followed by response.failed")
        if self.terminal is None:
            self.fail(f"no terminal event ({', '.join(TERMINAL_STATUS)})")
        return Response.model_validate(self.terminal["response"])

    # --- items ------------------------------------------------------------

    def on_item_added(self, event: dict[str, Any]) -> None:
        item = event["item"]
        self.check_item_fields(item)
        if event["output_index"] != len(self.items):
            self.fail(f"output_index {event['output_index']}, expected {len(self.items)} (the next free index)")
        if any(known.id == item["id"] for known in self.items.values()):
            self.fail(f"item id {item['id']!r} was already used")
        if item["type"] == "message" and item.get("content") != []:
            self.fail("a message must be added with empty content; its parts arrive as content_part.added")
        if item["type"] == "compaction" and item.get("encrypted_content") != "":
            self.fail("a compaction item is added before its summary is written: with empty encrypted_content")
        for family, (item_type, _, item_field) in _ITEM_STREAMS.items():
            if item["type"] == item_type and item.get(item_field, "") != "":
                self.fail(f"{item_type} is added with {item_field} {item[item_field]!r}; {family}.delta fills it")
        self.items[event["output_index"]] = _Item(event["output_index"], item["id"], item["type"])

    def check_item_fields(self, item: dict[str, Any]) -> None:
        for key in ("id", "type") if item.get("type") in _NO_STATUS else ("id", "type", "status"):
            if item.get(key) is None:
                self.fail(f"output item has no {key!r}: {item!r}"[:400])

    def check_item_type(self, item: _Item, family: str, *types: str) -> None:
        if item.type not in types:
            self.fail(f"{family} event for item {item.output_index}, a {item.type} (expected {' or '.join(types)})")

    def item_for(self, event: dict[str, Any]) -> _Item:
        if "output_index" not in event:
            self.fail(f"names item_id {event['item_id']!r} but no output_index")
        item = self.items.get(event["output_index"])
        if item is None:
            self.fail(f"output_index {event['output_index']} before its response.output_item.added")
        if "item_id" in event and event["item_id"] != item.id:
            self.fail(f"item_id {event['item_id']!r} is not the id of output item {item.output_index} ({item.id!r})")
        if item.done is not None:
            self.fail(f"item {item.output_index} ({item.id}) is already done")
        return item

    def on_item_done(self, item: _Item, event: dict[str, Any]) -> None:
        done = event["item"]
        self.check_item_fields(done)
        if done["id"] != item.id or done["type"] != item.type:
            self.fail(f"done item is {done['type']} {done['id']!r}, added was {item.type} {item.id!r}")
        if done.get("status") == "in_progress":
            self.fail("a done item cannot be in_progress")
        if item.type == "compaction" and item.progress != ["compacting"]:
            self.fail(f"compaction item {item.id} is done after progress events {item.progress}")
        for parts, list_field in ((item.parts, "content"), (item.summary_parts, "summary")):
            for index, part in parts.items():
                if part.done is None:
                    self.fail(f"{list_field} part {index} of item {item.id} was never done")
                listed = done.get(list_field) or []
                got = listed[index] if index < len(listed) else None
                difference = _difference(got, part.done, f"item.{list_field}[{index}]")
                if difference:
                    self.fail(f"item differs from its streamed {list_field} part {index}: {difference}")
        if item.type == "message" and len(done.get("content") or []) != len(item.parts):
            self.fail(f"message has {len(done.get('content') or [])} content parts, {len(item.parts)} were streamed")
        required = _REQUIRED_ITEM_STREAMS.get(item.type)
        if required:
            item.streams.setdefault(required, _Text())
        for family, (item_type, _, item_field) in _ITEM_STREAMS.items():
            if item.type == item_type and done.get(item_field) and family not in item.streams:
                self.fail(f"{item.type} item {item.id} is done with {item_field}, but none streamed")
        for family, text in item.streams.items():
            _, _, item_field = _ITEM_STREAMS[family]
            if text.done is None:
                self.fail(f"{item.type} item {item.id} got no {family}.done")
            if done.get(item_field) != text.done:
                self.fail(f"item {item_field} {done.get(item_field)!r} != {family}.done {text.done!r}")
        if item.type in _REQUIRED_PROGRESS:
            ending = "completed" if done["status"] == "completed" else "failed"
            expected = [["in_progress", ending]] if ending == "completed" else [["in_progress", ending], [ending]]
            if item.progress not in expected:
                self.fail(f"{item.type} item {item.id} is done {done['status']} after progress events {item.progress}")
        item.done = done

    def on_progress(self, item: _Item, verb: str) -> None:
        if item.progress and item.progress[-1] in ("completed", "failed"):
            self.fail(f"{verb} after the item's {item.progress[-1]} event")
        if verb == "in_progress" and "in_progress" in item.progress:
            self.fail("a second in_progress event for the item")
        item.progress.append(verb)

    def on_item_text(self, item: _Item, family: str, event: dict[str, Any], verb: str) -> None:
        item_type, done_field, _ = _ITEM_STREAMS[family]
        self.check_item_type(item, family, item_type)
        text = item.streams.setdefault(family, _Text())
        self.on_text(text, event, verb, done_field)

    # --- parts --------------------------------------------------------------

    def open_part(self, parts: dict[int, _Part], index: int) -> _Part:
        part = parts.get(index)
        if part is None:
            self.fail(f"part {index} was not added")
        if part.done is not None:
            self.fail(f"part {index} is already done")
        return part

    def on_part(self, item: _Item, parts: dict[int, _Part], index_field: str, event: dict[str, Any], verb: str) -> None:
        index, part_dict = event[index_field], event["part"]
        if verb == "added":
            if index != len(parts):
                self.fail(f"{index_field} {index}, expected {len(parts)} (the next free index)")
            text_field = "refusal" if part_dict["type"] == "refusal" else "text"
            if part_dict.get(text_field) != "":
                self.fail(f"a part starts empty, got {text_field} {part_dict.get(text_field)!r}")
            parts[index] = _Part(part_dict["type"])
            return
        part = self.open_part(parts, index)
        if part_dict["type"] != part.type:
            self.fail(f"part {index} was added as {part.type}, done as {part_dict['type']}")
        if part.text.done is None:
            self.fail(f"part {index} ({part.type}) is done before its text's .done event")
        text_field = "refusal" if part.type == "refusal" else "text"
        if part_dict.get(text_field) != part.text.done:
            self.fail(f"part {text_field} {part_dict.get(text_field)!r} != the .done text {part.text.done!r}")
        part.done = part_dict

    def on_part_text(
        self, parts: dict[int, _Part], index_field: str, stream: tuple[str, str, str], event: dict[str, Any], verb: str
    ) -> None:
        part_type, done_field, _ = stream
        part = self.open_part(parts, event[index_field])
        if part.type != part_type:
            self.fail(f"{part_type} text for a part of type {part.type}")
        self.on_text(part.text, event, verb, done_field)

    def on_text(self, text: _Text, event: dict[str, Any], verb: str, done_field: str) -> None:
        if text.done is not None:
            self.fail(f"comes after its .done event ({verb})")
        if verb == "delta":
            text.deltas.append(event["delta"])
        elif verb == "done":
            if event[done_field] != text.value:
                self.fail(f"{done_field} {event[done_field]!r} != the deltas concatenated {text.value!r}")
            text.done = event[done_field]


def _difference(got: Any, want: Any, path: str) -> str | None:
    """The first place two JSON values differ, or None."""
    if isinstance(got, Mapping) and isinstance(want, Mapping):
        for key in sorted(set(got) | set(want)):
            if key not in got:
                return f"{path}.{key} is missing (expected {want[key]!r})"
            if key not in want:
                return f"{path}.{key} is unexpected ({got[key]!r})"
            found = _difference(got[key], want[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            return f"{path} has {len(got)} elements, expected {len(want)}"
        for position, (a, b) in enumerate(zip(got, want, strict=True)):
            found = _difference(a, b, f"{path}[{position}]")
            if found:
                return found
        return None
    if got != want or type(got) is not type(want):
        return f"{path} is {got!r}, expected {want!r}"
    return None


# --- collecting a stream over HTTP ------------------------------------------


def _check_http(response: httpx.Response, body: bytes) -> None:
    if response.status_code != 200:
        raise AssertionError(f"HTTP {response.status_code}: {body[:500]!r}")
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise AssertionError(f"content-type {content_type!r}, expected text/event-stream")


def collect_stream(
    http_client: httpx.Client,
    path: str,
    json_body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
    **options: bool,
) -> ValidatedStream:
    """POST `json_body` to `path`, read the raw SSE bytes and validate them.

    `options` are passed to `validate_response_stream` (`openai_spec`,
    `openresponses_spec`).
    """
    with http_client.stream("POST", path, json=json_body, headers=headers) as response:
        body = b"".join(response.iter_bytes())
    _check_http(response, body)
    return validate_response_stream(body, **options)


async def acollect_stream(
    http_client: httpx.AsyncClient,
    path: str,
    json_body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
    **options: bool,
) -> ValidatedStream:
    """`collect_stream` for an `httpx.AsyncClient`."""
    async with http_client.stream("POST", path, json=json_body, headers=headers) as response:
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    _check_http(response, body)
    return validate_response_stream(body, **options)
