"""Parley's create fields follow the installed `openai` package.

When a new `openai` release adds a field to `ResponseCreateParams`, this
test fails until the field is handled, ignored or refused on purpose:
accepted requests never depend on someone noticing.
"""

from __future__ import annotations

import openai
import pytest

from parley.engine.request import (
    IGNORED_FIELDS,
    KNOWN_FIELDS,
    LAGGING_FIELDS,
    PACKAGE_FIELDS,
    REFUSED_FIELDS,
    WEBSOCKET_FIELDS,
    CreateResponseRequest,
)
from tests.conftest import ParleyProcess


def test_every_field_the_package_knows_is_handled_ignored_or_refused() -> None:
    handled = set(CreateResponseRequest.model_fields)
    decided = handled | IGNORED_FIELDS.keys() | REFUSED_FIELDS.keys()
    undecided = sorted(PACKAGE_FIELDS - decided)
    assert not undecided, f"fields of the openai package that Parley neither handles nor refuses: {undecided}"


def test_every_field_parley_takes_is_known_to_the_api() -> None:
    # Parley declares no create field of its own: each is the package's, or one it lags behind on, or one that
    # the package's WebSocket `response.create` adds (`generate`), which no body may set.
    declared = set(CreateResponseRequest.model_fields) | IGNORED_FIELDS.keys() | REFUSED_FIELDS.keys()
    assert declared <= KNOWN_FIELDS | WEBSOCKET_FIELDS, sorted(declared - KNOWN_FIELDS - WEBSOCKET_FIELDS)
    assert not WEBSOCKET_FIELDS & KNOWN_FIELDS


def test_lagging_fields_are_only_those_the_package_lacks() -> None:
    # Once the package declares a lagging field, it should leave LAGGING_FIELDS.
    assert not LAGGING_FIELDS.keys() & PACKAGE_FIELDS, sorted(LAGGING_FIELDS.keys() & PACKAGE_FIELDS)


def test_a_conversation_takes_the_fields_the_package_knows(upstream: ParleyProcess) -> None:
    client = upstream.client()
    conversation = client.conversations.create(safety_identifier="user-7", metadata={"topic": "x"})
    assert conversation.metadata == {"topic": "x"}
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.create(extra_body={"bogus": 1})
    assert raised.value.body["code"] == "unknown_parameter"  # type: ignore[index]
    assert raised.value.body["param"] == "bogus"  # type: ignore[index]


def test_an_unknown_field_of_an_input_item_is_named_at_its_place(upstream: ParleyProcess) -> None:
    item = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "bogus": 1}
    with pytest.raises(openai.BadRequestError) as raised:
        upstream.client().responses.create(model="echo", input=[{"role": "user", "content": "hi"}, item])
    assert raised.value.body["param"] == "input[1].bogus"  # type: ignore[index]
    assert raised.value.body["code"] == "unknown_parameter"  # type: ignore[index]


def test_a_field_the_package_knows_on_an_input_item_is_kept(upstream: ParleyProcess) -> None:
    client = upstream.client()
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "caller": {"type": "direct"}}
    output = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    response = client.responses.create(
        model="echo", input=[{"role": "user", "content": "hi"}, call, output], tools=[tool]
    )
    stored = client.responses.input_items.list(response.id, order="asc").data
    assert stored[1].model_dump()["caller"] == {"type": "direct"}
