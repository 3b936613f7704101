"""The stream validator's rules for server-side tool items: every progress event in place.

An `mcp_call` or `mcp_list_tools` item gets `.in_progress`, then `.completed`
or `.failed` as its done status says (a call closed unrun, in a failed
response, has `.failed` alone); an `mcp_call` done with arguments streamed
them. Parley's MCP tests hold every stream to these rules; here each rule is
shown to catch what it should.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.stream_validator import validate_response_stream
from tests.test_support import (
    Events,
    _drop,
    _set,
    _stream,
    assert_rejected,
    encode,
    make_response,
    mcp_call,
    mcp_call_events,
)


def listing_events(status: str = "completed") -> Events:
    at = {"item_id": "mcpl_0001", "output_index": 0}
    item = {"id": "mcpl_0001", "type": "mcp_list_tools", "server_label": "dice", "tools": [], "error": None}
    return [
        {"type": "response.created", "response": make_response("in_progress")},
        {"type": "response.in_progress", "response": make_response("in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress"}},
        {"type": "response.mcp_list_tools.in_progress", **at},
        {"type": f"response.mcp_list_tools.{status}", **at},
        {"type": "response.output_item.done", "output_index": 0, "item": {**item, "status": status}},
        {"type": "response.completed", "response": make_response("completed", [{**item, "status": status}])},
    ]


def _without_arguments(events: Events) -> Events:
    return [event for event in events if not event["type"].startswith("response.mcp_call_arguments")]


def _failed_call(*, started: bool) -> Events:
    """A call closed `incomplete` in a failed response, before or after Parley started on it."""
    at = {"item_id": "mcp_0001", "output_index": 0}
    error = {"code": "server_error", "message": "the model failed"}
    return [
        {"type": "response.created", "response": make_response("in_progress")},
        {"type": "response.in_progress", "response": make_response("in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": mcp_call("", "in_progress")},
        *([{"type": "response.mcp_call.in_progress", **at}] if started else []),
        {"type": "response.mcp_call.failed", **at},
        {"type": "response.output_item.done", "output_index": 0, "item": mcp_call("", "incomplete")},
        {"type": "error", "code": "server_error", "message": "the model failed", "param": None},
        {
            "type": "response.failed",
            "response": make_response("failed", [mcp_call("", "incomplete")], error=error),
        },
    ]


def test_the_complete_sequences_pass() -> None:
    for events in (mcp_call_events(), listing_events(), _failed_call(started=True), _failed_call(started=False)):
        validate_response_stream(encode(events), openresponses_spec=False)  # which has no MCP items


BROKEN: list[tuple[str, Callable[[], str], str]] = [
    (
        "call done without in_progress",
        lambda: _stream(_drop("response.mcp_call.in_progress"), mcp_call_events),
        r"mcp_call item mcp_0001 is done completed after progress events \['completed'\]",
    ),
    (
        "call done without completed",
        lambda: _stream(_drop("response.mcp_call.completed"), mcp_call_events),
        r"is done completed after progress events \['in_progress'\]",
    ),
    (
        "call done completed after failed",
        lambda: _stream(_set("response.mcp_call.completed", "type", "response.mcp_call.failed"), mcp_call_events),
        r"is done completed after progress events \['in_progress', 'failed'\]",
    ),
    (
        "listing done without completed",
        lambda: _stream(_drop("response.mcp_list_tools.completed"), listing_events),
        r"mcp_list_tools item mcpl_0001 is done completed after progress events \['in_progress'\]",
    ),
    (
        "listing failed but done completed",
        lambda: encode(listing_events()).replace("mcp_list_tools.completed", "mcp_list_tools.failed"),
        r"is done completed after progress events \['in_progress', 'failed'\]",
    ),
    (
        "a second in_progress",
        lambda: _stream(
            _set("response.mcp_call_arguments.done", "type", "response.mcp_call.in_progress"), mcp_call_events
        ),
        r"a second in_progress event for the item",
    ),
    (
        "arguments never streamed",
        lambda: _stream(_without_arguments, mcp_call_events),
        r"mcp_call item mcp_0001 is done with arguments, but none streamed",
    ),
]


@pytest.mark.parametrize(("make", "pattern"), [(m, p) for _, m, p in BROKEN], ids=[name for name, _, _ in BROKEN])
def test_each_broken_progress_rule_is_named(make: Callable[[], str], pattern: str) -> None:
    assert_rejected(make(), pattern)
