"""The Conversations API, and responses that read and append their conversation's items (issue 6).

Over HTTP with the official client, on SQLite and on PostgreSQL. The model is
the fake upstream: `fake_upstream.requests[-1]["messages"]` is what the model
was sent, so what a turn sees of its conversation can be checked exactly. MCP
turns use `fake-script` against a real MCP server (tests/mcp_servers.py).
Every stream a client here reads is checked by the stream validator.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import threading
import time
import typing
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.conversations import Conversation, ConversationDeletedResource, ConversationItem

from tests import test_responses_output_kinds as output_kinds
from tests.conftest import ParleyProcess, parley_config
from tests.fake_upstream import FakeUpstream
from tests.mcp_servers import ToolServer
from tests.support.at_once import at_once
from tests.support.spec import openai_document, validate_openai
from tests.support.tools import CLOCK, WEATHER, mcp_tool

ECHO = "fake/fake-echo"
TOOL = "fake/fake-tool"
SCRIPT = "fake/fake-script"

# openai's item classes by their `type`: ConversationItem is a union without a discriminator,
# so validating against the one class an item claims gives errors that say something.
_ITEM_CLASSES: dict[str, type[Any]] = {
    typing.get_args(model.model_fields["type"].annotation)[0]: model
    for model in typing.get_args(typing.get_args(ConversationItem)[0])
}
# Parley's id prefixes, OpenAI's where OpenAI's are known (msg_, fc_, mcpl_, mcp_, mcpr_).
ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "mcp_list_tools": "mcpl",
    "mcp_call": "mcp",
    "mcp_approval_request": "mcpr",
    "mcp_approval_response": "mcpa",
    "reasoning": "rs",
}


class AnyId:
    """Equal to any id in OpenAI's style with this prefix: `msg_` and 48 hex digits."""

    def __init__(self, prefix: str) -> None:
        self.pattern = re.compile(rf"{prefix}_[0-9a-f]{{48}}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and self.pattern.fullmatch(other) is not None

    def __repr__(self) -> str:
        return f"AnyId({self.pattern.pattern!r})"


# Fields of OpenAI's items that Parley has nothing to put in: the account that created
# an item, and the namespace of a namespaced function (Parley's functions have none).
_NOT_PARLEYS = {"created_by", "namespace"}
# Fields OpenAI itself leaves out unless asked for them (`include=["reasoning.encrypted_content"]`).
_ONLY_WHEN_ASKED = {"reasoning": {"content", "encrypted_content"}}
# Fields Parley leaves out of the items it is given: none.
KNOWN_GAPS: dict[str, set[str]] = {}
# Parley puts `status` on every item it stores (the stream validator wants it on every
# output item), including the two types whose schemas lack it.
_EXTRA = {"status"}


def _for_the_spec(item: dict[str, Any]) -> dict[str, Any]:
    # OpenAI's 2.3.0 document requires `request_id` on MCPApprovalResponseResource but
    # never defines it (a slip for `approval_request_id`; the openai package has no such
    # field), so no approval response can pass as is. Supply it, and check the rest.
    if item.get("type") == "mcp_approval_response":
        return {**item, "request_id": item["approval_request_id"]}
    return item


def _spec_properties(name: str) -> set[str]:
    schema = openai_document().schemas[name]
    found: set[str] = set()
    for part in schema.get("allOf", [schema]):
        if "$ref" in part:
            found |= _spec_properties(part["$ref"].rsplit("/", 1)[1])
        else:
            found |= set(part.get("properties", {}))
    return found


_SPEC_SCHEMAS = {
    "message": "Message",
    "function_call": "FunctionToolCallResource",
    "function_call_output": "FunctionToolCallOutputResource",
    "mcp_list_tools": "MCPListTools",
    "mcp_call": "MCPToolCall",
    "mcp_approval_request": "MCPApprovalRequest",
    "mcp_approval_response": "MCPApprovalResponseResource",
    "reasoning": "ReasoningItem",
}


def check_item(item: dict[str, Any], gaps: dict[str, set[str]] = KNOWN_GAPS) -> None:
    """The item as sent: OpenAI's schema, and openai's class for its type, strictly.

    It carries every field the spec gives its type (but those Parley has no
    use for, those OpenAI sends only when asked, and the known `gaps`), and
    none that openai's class does not know (but `status`).
    """
    validate_openai(_for_the_spec(item), "ConversationItem")
    model = _ITEM_CLASSES[item["type"]]
    model.model_validate(item, strict=True)
    known = {field.alias or name for name, field in model.model_fields.items()}
    assert set(item) <= known | _EXTRA, f"{item['type']} has fields openai does not know: {set(item) - known}"
    kind = item["type"]
    wanted = _spec_properties(_SPEC_SCHEMAS[kind]) - _NOT_PARLEYS - _ONLY_WHEN_ASKED.get(kind, set())
    wanted -= gaps.get(kind, set())
    assert wanted <= set(item), f"{item['type']} lacks {wanted - set(item)}"
    assert item["id"] == AnyId(ID_PREFIXES[item["type"]])


def check_page(page: dict[str, Any]) -> None:
    """A page of items as sent, with `first_id` and `last_id` naming its ends."""
    assert set(page) == {"object", "data", "first_id", "last_id", "has_more"}
    assert page["object"] == "list"
    data = page["data"]
    assert page["first_id"] == (data[0]["id"] if data else None)
    assert page["last_id"] == (data[-1]["id"] if data else None)
    if data:  # the spec types first_id and last_id as strings; an empty page has neither
        validate_openai({**page, "data": [_for_the_spec(item) for item in data]}, "ConversationItemList")
    for item in data:
        check_item(item)


def check_conversation(conversation: dict[str, Any]) -> None:
    validate_openai(conversation, "ConversationResource")
    Conversation.model_validate(conversation, strict=True)
    assert set(conversation) == {"id", "object", "created_at", "metadata"}
    assert conversation["id"] == AnyId("conv")


@pytest.fixture
def client(parley: ParleyProcess) -> openai.OpenAI:
    return parley.client()


@pytest.fixture
def http(parley: ParleyProcess) -> Iterator[httpx.Client]:
    with parley.http() as client:
        yield client


def page(http: httpx.Client, conversation_id: str, **params: Any) -> dict[str, Any]:
    """One page of the conversation's items, checked."""
    answer = http.get(f"/v1/conversations/{conversation_id}/items", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    check_page(body)
    return body


def items(http: httpx.Client, conversation_id: str) -> list[dict[str, Any]]:
    """Every item of the conversation, oldest first, read page by page (100 a page)."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"order": "asc", "limit": 100}
    while True:
        body = page(http, conversation_id, **params)
        found += body["data"]
        if not body["has_more"]:
            return found
        params["after"] = body["last_id"]


def ids(listed: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in listed]


def user(text: str) -> dict[str, Any]:
    """A user message as a conversation stores it."""
    return {
        "id": AnyId("msg"),
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
        "status": "completed",
    }


def output(response: Any) -> list[dict[str, Any]]:
    return [item.to_dict(mode="json") for item in response.output]


def error(answer: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()["error"]
    return body


# -- conversations ------------------------------------------------------------


def test_create_retrieve_update_delete(http: httpx.Client, client: openai.OpenAI) -> None:
    created = http.post("/v1/conversations", json={"metadata": {"topic": "demo", "owner": "ada"}}).json()
    check_conversation(created)
    assert created["object"] == "conversation" and created["metadata"] == {"topic": "demo", "owner": "ada"}
    assert http.get(f"/v1/conversations/{created['id']}").json() == created
    assert client.conversations.retrieve(created["id"]).to_dict() == created

    updated = http.post(f"/v1/conversations/{created['id']}", json={"metadata": {"topic": "changed"}}).json()
    assert updated == {**created, "metadata": {"topic": "changed"}}
    assert client.conversations.retrieve(created["id"]).to_dict() == updated

    bare = client.conversations.create()
    check_conversation(bare.to_dict())
    assert bare.metadata == {} and bare.id != created["id"]
    empty_body = http.post("/v1/conversations")  # no body at all
    assert empty_body.status_code == 200 and empty_body.json()["metadata"] == {}

    deleted = http.delete(f"/v1/conversations/{created['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": created["id"], "object": "conversation.deleted", "deleted": True}
    validate_openai(deleted.json(), "DeletedConversationResource")
    ConversationDeletedResource.model_validate(deleted.json(), strict=True)
    assert client.conversations.delete(bare.id).deleted is True


@pytest.mark.parametrize("count", [0, 1, 20])
def test_create_with_items(http: httpx.Client, client: openai.OpenAI, count: int) -> None:
    given = [
        {"role": "user", "content": f"question {i}"}
        if i % 2 == 0
        else {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": f"answer {i}"}]}
        for i in range(count)
    ]
    conversation = client.conversations.create(items=given, metadata={"count": str(count)})
    check_conversation(conversation.to_dict())
    listed = items(http, conversation.id)
    assert [item["role"] for item in listed] == [item["role"] for item in given]
    assert [item["content"][0]["text"] for item in listed] == [
        f"{'question' if i % 2 == 0 else 'answer'} {i}" for i in range(count)
    ]
    if count:
        assert listed[0] == user("question 0")
    if count > 1:
        assert listed[1] == {
            "id": AnyId("msg"),
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "answer 1", "annotations": [], "logprobs": []}],
            "status": "completed",
        }
    assert len(set(ids(listed))) == count


def test_more_than_20_items_is_a_400_naming_items(http: httpx.Client, client: openai.OpenAI) -> None:
    many = [{"role": "user", "content": f"m{i}"} for i in range(21)]
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.create(items=many)
    assert raised.value.param == "items"
    conversation = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.create(conversation.id, items=many)
    assert raised.value.param == "items"
    assert page(http, conversation.id)["data"] == []


def test_bad_items_are_a_400_naming_the_item(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.create(items=[{"role": "user", "content": "fine"}, {"type": "telepathy"}])
    assert raised.value.param == "items[1].type"


def test_items_given_carry_every_field_of_their_type(http: httpx.Client, client: openai.OpenAI) -> None:
    given = [
        {"type": "mcp_list_tools", "server_label": "s", "tools": []},
        {"type": "mcp_call", "server_label": "s", "name": "n", "arguments": "{}"},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": False},
    ]
    conversation = client.conversations.create(items=given)
    listed = http.get(f"/v1/conversations/{conversation.id}/items", params={"order": "asc"}).json()["data"]
    assert [item["type"] for item in listed] == [item["type"] for item in given]
    for item in listed:
        check_item(item, gaps={})


def test_metadata_limits(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(metadata={f"k{i}": "v" for i in range(16)})
    assert len(conversation.metadata) == 16
    too_many = {f"k{i}": "v" for i in range(17)}
    for bad in (too_many, {"k" * 65: "v"}, {"k": "v" * 513}):
        with pytest.raises(openai.BadRequestError) as raised:
            client.conversations.create(metadata=bad)
        assert raised.value.param == "metadata"
        with pytest.raises(openai.BadRequestError) as raised:
            client.conversations.update(conversation.id, metadata=bad)
        assert raised.value.param == "metadata"
    assert client.conversations.retrieve(conversation.id).metadata == conversation.metadata


def test_deleted_conversation_is_a_404_everywhere(http: httpx.Client, client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "soon gone"}])
    item_id = page(http, conversation.id)["data"][0]["id"]
    client.conversations.delete(conversation.id)

    cid = conversation.id
    calls = {
        "retrieve": lambda: client.conversations.retrieve(cid),
        "update": lambda: client.conversations.update(cid, metadata={"a": "b"}),
        "delete": lambda: client.conversations.delete(cid),
        "list items": lambda: client.conversations.items.list(cid),
        "add items": lambda: client.conversations.items.create(cid, items=[{"role": "user", "content": "x"}]),
        "get item": lambda: client.conversations.items.retrieve(item_id, conversation_id=cid),
        "delete item": lambda: client.conversations.items.delete(item_id, conversation_id=cid),
    }
    for name, call in calls.items():
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert cid in raised.value.message, name
    for conversation_param in (cid, {"id": cid}):
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as raised:
                client.responses.create(model=ECHO, input="hello?", conversation=conversation_param, stream=stream)
            assert raised.value.param == "conversation"
    answer = http.get(f"/v1/conversations/{cid}")
    assert answer.status_code == 404 and error(answer)["type"] == "invalid_request_error"


# -- items --------------------------------------------------------------------


def test_add_items(http: httpx.Client, client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "first"}])
    one = http.post(
        f"/v1/conversations/{conversation.id}/items",
        params={"include": ["message.output_text.logprobs"]},
        json={"items": [{"role": "user", "content": "second"}]},
    )
    assert one.status_code == 200, one.text
    added = one.json()
    check_page(added)
    assert added["data"] == [user("second")] and added["has_more"] is False

    twenty = client.conversations.items.create(
        conversation.id, items=[{"role": "user", "content": f"batch {i}"} for i in range(20)]
    )
    assert [item.content[0].text for item in twenty.data] == [f"batch {i}" for i in range(20)]
    listed = items(http, conversation.id)
    assert [item["content"][0]["text"] for item in listed] == ["first", "second", *(f"batch {i}" for i in range(20))]
    assert ids(listed)[1:] == [added["data"][0]["id"], *(item.id for item in twenty.data)]
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.create(conversation.id, items=[])
    assert raised.value.param == "items"


def test_items_pagination(http: httpx.Client, client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": f"m{i}"} for i in range(5)])
    cid = conversation.id
    every = page(http, cid, order="asc")
    assert every["has_more"] is False
    m = ids(every["data"])
    assert [item["content"][0]["text"] for item in every["data"]] == [f"m{i}" for i in range(5)]

    def ends(**params: Any) -> tuple[list[str], bool]:
        body = page(http, cid, **params)
        return ids(body["data"]), body["has_more"]

    # Newest first by default.
    assert ends() == (m[::-1], False)
    assert ends(order="desc") == (m[::-1], False)
    # Pages forwards and backwards.
    assert ends(order="asc", limit=2) == (m[0:2], True)
    assert ends(order="asc", limit=2, after=m[1]) == (m[2:4], True)
    assert ends(order="asc", limit=2, after=m[3]) == ([m[4]], False)
    assert ends(limit=2) == ([m[4], m[3]], True)
    assert ends(limit=2, after=m[3]) == ([m[2], m[1]], True)
    assert ends(limit=2, after=m[1]) == ([m[0]], False)
    # Exact boundaries: a page that ends on the last item says there is no more.
    assert ends(order="asc", limit=5) == (m, False)
    assert ends(order="asc", limit=4) == (m[:4], True)
    assert ends(order="asc", limit=1, after=m[3]) == ([m[4]], False)
    assert ends(limit=1, after=m[1]) == ([m[0]], False)
    assert ends(order="asc", limit=100) == (m, False)
    assert ends(order="asc", after=m[4]) == ([], False)
    assert ends(after=m[0]) == ([], False)
    assert ends(limit=1) == ([m[4]], True)

    # A cursor naming a deleted item still has its place.
    client.conversations.items.delete(m[2], conversation_id=cid)
    assert ends(order="asc", after=m[2]) == (m[3:], False)
    assert ends(after=m[2]) == ([m[1], m[0]], False)
    assert ends(order="asc", limit=1, after=m[2]) == ([m[3]], True)
    assert ends(order="asc", limit=2, after=m[1]) == (m[3:], False)
    assert ends(order="asc") == ([m[0], m[1], m[3], m[4]], False)

    # The client's auto-pagination follows last_id.
    assert [item.id for item in client.conversations.items.list(cid, order="asc", limit=1)] == [m[0], m[1], m[3], m[4]]
    assert [item.id for item in client.conversations.items.list(cid, limit=3)] == [m[4], m[3], m[1], m[0]]


def test_an_unknown_after_is_a_400_naming_it(http: httpx.Client, client: openai.OpenAI) -> None:
    """Never an empty page, which a client would take for the end of the list."""
    cid = client.conversations.create(items=[{"role": "user", "content": "here"}]).id
    elsewhere = client.conversations.create(items=[{"role": "user", "content": "there"}]).id
    [other] = page(http, elsewhere)["data"]
    for item_id in ("msg_nowhere", other["id"]):
        answer = http.get(f"/v1/conversations/{cid}/items", params={"after": item_id})
        assert answer.status_code == 400
        assert error(answer) == {
            "message": f"Invalid value for 'after': '{item_id}' is not an id in this list.",
            "type": "invalid_request_error",
            "param": "after",
            "code": "invalid_value",
        }
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.list(cid, after="msg_nowhere")
    assert raised.value.param == "after"


def test_empty_conversation_pages(http: httpx.Client, client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    for params in ({}, {"order": "asc"}, {"order": "desc", "limit": 1}, {"order": "asc", "limit": 100}):
        assert page(http, conversation.id, **params) == {
            "object": "list",
            "data": [],
            "first_id": None,
            "last_id": None,
            "has_more": False,
        }
    assert list(client.conversations.items.list(conversation.id)) == []


def test_list_parameter_bounds(http: httpx.Client, client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "x"}])
    url = f"/v1/conversations/{conversation.id}/items"
    for limit in (0, 101, -1):
        answer = http.get(url, params={"limit": limit})
        assert answer.status_code == 400 and error(answer)["param"] == "limit"
    for limit in (1, 100):
        assert http.get(url, params={"limit": limit}).status_code == 200
    answer = http.get(url, params={"order": "sideways"})
    assert answer.status_code == 400 and error(answer)["param"] == "order"
    assert http.get(url, params={"include": ["message.output_text.logprobs"]}).status_code == 200


def test_retrieve_and_delete_one_item(http: httpx.Client, client: openai.OpenAI) -> None:
    conversation = client.conversations.create(
        items=[{"role": "user", "content": "keep"}, {"role": "user", "content": "drop"}], metadata={"k": "v"}
    )
    keep, drop = items(http, conversation.id)
    answer = http.get(f"/v1/conversations/{conversation.id}/items/{drop['id']}")
    assert answer.status_code == 200 and answer.json() == drop
    check_item(answer.json())
    assert client.conversations.items.retrieve(drop["id"], conversation_id=conversation.id).to_dict() == drop

    deleted = http.delete(f"/v1/conversations/{conversation.id}/items/{drop['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == conversation.to_dict()  # the conversation, as OpenAI answers
    check_conversation(deleted.json())

    assert items(http, conversation.id) == [keep]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(drop["id"], conversation_id=conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(drop["id"], conversation_id=conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve("msg_missing", conversation_id=conversation.id)
    # An item is found only through its own conversation.
    other = client.conversations.create()
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(keep["id"], conversation_id=other.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(keep["id"], conversation_id=other.id)
    assert items(http, conversation.id) == [keep]


def test_an_item_id_already_in_the_conversation_is_a_400(parley: ParleyProcess, http: httpx.Client) -> None:
    mine = {"type": "message", "id": "msg_" + "c0ffee" * 8, "role": "user", "content": "once"}
    cid = http.post("/v1/conversations", json={"items": [mine]}).json()["id"]
    before = items(http, cid)
    with parley.http() as fresh:  # a 500 closes the connection
        again = fresh.post(f"/v1/conversations/{cid}/items", json={"items": [mine]})
    assert again.status_code == 400 and error(again)["param"] == "items[0].id"
    with parley.http() as fresh:
        twice = fresh.post("/v1/conversations", json={"items": [mine, {**mine, "content": "twice"}]})
    assert twice.status_code == 400 and error(twice)["param"] == "items[1].id"
    assert items(http, cid) == before


# -- responses in a conversation ----------------------------------------------


@pytest.mark.parametrize("form", ["id", "object"])
def test_response_reads_and_appends_its_conversation(
    http: httpx.Client, client: openai.OpenAI, fake_upstream: FakeUpstream, form: str
) -> None:
    conversation = client.conversations.create(
        items=[
            {"role": "developer", "content": "Be kind."},
            {"role": "user", "content": "my name is Ada"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello Ada"}]},
        ]
    )
    before = items(http, conversation.id)
    reference: Any = conversation.id if form == "id" else {"id": conversation.id}
    response = client.responses.create(model=ECHO, input="what is my name", conversation=reference)

    assert response.status == "completed" and response.output_text == "what is my name"
    assert response.conversation is not None and response.conversation.id == conversation.id
    assert response.to_dict()["conversation"] == {"id": conversation.id}
    validate_openai(response.to_dict(mode="json"), "Response")
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "hello Ada"},
        {"role": "user", "content": "what is my name"},
    ]
    assert items(http, conversation.id) == [*before, user("what is my name"), *output(response)]
    stored = client.responses.retrieve(response.id)
    assert stored.model_dump() == response.model_dump()
    assert [item.id for item in client.responses.input_items.list(response.id)] == [
        ids(items(http, conversation.id))[3]
    ]


def test_conversation_with_previous_response_id_is_a_400(client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    first = client.responses.create(model=ECHO, input="start", conversation=conversation.id)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=ECHO, input="x", conversation=conversation.id, previous_response_id=first.id)
    assert raised.value.param in ("previous_response_id", "conversation")
    assert "conversation" in raised.value.message and "previous_response_id" in raised.value.message


def test_unknown_conversation_is_a_404_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model=ECHO, input="x", conversation="conv_missing")
    assert raised.value.param == "conversation"
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list("conv_missing")


def test_items_api_edits_change_what_the_model_sees(
    http: httpx.Client, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "secret: 42"}])
    first = client.responses.create(model=ECHO, input="one", conversation=conversation.id)
    secret = items(http, conversation.id)[0]["id"]

    client.conversations.items.delete(secret, conversation_id=conversation.id)
    client.conversations.items.create(
        conversation.id,
        items=[
            {"role": "user", "content": "inserted"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "noted"}]},
        ],
    )
    client.conversations.items.delete(first.output[0].id, conversation_id=conversation.id)
    client.responses.create(model=ECHO, input="two", conversation=conversation.id)

    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "inserted"},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "two"},
    ]


def test_a_chain_through_a_conversation_sees_its_items_deleted_later(
    http: httpx.Client, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    """A response chained onto a conversation's turn reads that turn's items as they are at each turn.

    The server keeps the context of the responses it stores for the turns that
    continue them; not one that holds a conversation's items, which can be deleted.
    """
    conversation = client.conversations.create()
    first = client.responses.create(model=ECHO, input="one", conversation=conversation.id)
    second = client.responses.create(model=ECHO, input="two", previous_response_id=first.id)
    question = items(http, conversation.id)[0]
    assert question["content"][0]["text"] == "one"

    client.conversations.items.delete(question["id"], conversation_id=conversation.id)
    client.responses.create(model=ECHO, input="three", previous_response_id=second.id)

    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]


@pytest.mark.parametrize(
    ("model", "stream"),
    [
        ("fake/fake-error-500", False),
        ("fake/fake-error-500", True),
        ("fake/fake-midstream-error", False),
        ("fake/fake-midstream-error", True),
    ],
)
def test_failed_turn_appends_nothing(
    http: httpx.Client, client: openai.OpenAI, fake_upstream: FakeUpstream, model: str, stream: bool
) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "before"}])
    before = items(http, conversation.id)
    if model.endswith("midstream-error") and stream:
        events = list(client.responses.create(model=model, input="doomed", conversation=conversation.id, stream=True))
        assert events[-1].type == "response.failed"
        assert events[-1].response.conversation.id == conversation.id
        # The failed response keeps what it had written, outside the conversation.
        stored = client.responses.retrieve(events[-1].response.id)
        assert stored.status == "failed" and stored.output == events[-1].response.output
        assert stored.output[0].status == "incomplete"
        assert [item.content[0].text for item in client.responses.input_items.list(stored.id).data] == ["doomed"]
    else:
        with pytest.raises(openai.APIStatusError) as raised:
            result = client.responses.create(model=model, input="doomed", conversation=conversation.id, stream=stream)
            if stream:
                list(result)
        assert raised.value.status_code == 502
    assert items(http, conversation.id) == before

    # The conversation is free for the next turn, which does not see the failed one.
    after = client.responses.create(model=ECHO, input="after", conversation=conversation.id)
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "before"},
        {"role": "user", "content": "after"},
    ]
    assert items(http, conversation.id) == [*before, user("after"), *output(after)]


def test_a_turn_must_answer_the_calls_of_its_conversation(
    http: httpx.Client, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    cid = client.conversations.create().id
    [call] = client.responses.create(model=TOOL, input="Weather in Paris?", tools=[WEATHER], conversation=cid).output
    assert call.type == "function_call"
    before, sent = items(http, cid), len(fake_upstream.requests)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=TOOL, input="Never mind.", tools=[WEATHER], conversation=cid)
    assert raised.value.body["message"] == f"No tool output found for function call {call.call_id}."  # type: ignore[index]
    stray = [{"type": "function_call_output", "call_id": "call_elsewhere", "output": "x"}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=TOOL, input=stray, tools=[WEATHER], conversation=cid)  # type: ignore[arg-type]
    assert raised.value.param == "input" and "call_elsewhere" in raised.value.message
    assert items(http, cid) == before and len(fake_upstream.requests) == sent

    answer = [{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}]
    answered = client.responses.create(model=TOOL, input=answer, tools=[WEATHER], conversation=cid)  # type: ignore[arg-type]
    assert answered.output_text == "The tool said: Sunny"


def test_a_turn_repeating_an_item_of_its_conversation_is_refused(parley: ParleyProcess, http: httpx.Client) -> None:
    """Stateless habits in a conversation: sending back an item the conversation already holds."""
    client = parley.client(timeout=3)
    conversation = client.conversations.create(items=[{"role": "user", "content": "seed"}])
    before = items(http, conversation.id)
    # Streamed, so that the hung request ends when the client gives up (a plain one hangs too,
    # and keeps the server from stopping until it is killed).
    with pytest.raises(openai.BadRequestError):
        list(
            client.responses.create(
                model=ECHO,
                input=[before[0], {"role": "user", "content": "again"}],
                conversation=conversation.id,
                stream=True,
            )
        )
    assert items(http, conversation.id) == before


def test_item_reference_to_a_conversation_item(
    http: httpx.Client, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "from the items api"}])
    [item] = items(http, conversation.id)
    client.responses.create(
        model=ECHO, input=[{"type": "item_reference", "id": item["id"]}, {"role": "user", "content": "ok"}]
    )
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "from the items api"},
        {"role": "user", "content": "ok"},
    ]


def test_incomplete_turn_appends(http: httpx.Client, client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    words = " ".join(f"w{i}" for i in range(20))
    response = client.responses.create(model=ECHO, input=words, max_output_tokens=16, conversation=conversation.id)
    assert response.status == "incomplete" and response.output_text == words.rsplit(" ", 4)[0]
    assert items(http, conversation.id) == [user(words), *output(response)]


def test_store_false_still_appends(http: httpx.Client, client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    conversation = client.conversations.create()
    response = client.responses.create(model=ECHO, input="off the record", store=False, conversation=conversation.id)
    assert response.store is False and response.conversation.id == conversation.id
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    assert items(http, conversation.id) == [user("off the record"), *output(response)]

    streamed = list(
        client.responses.create(
            model=ECHO, input="also unstored", store=False, conversation=conversation.id, stream=True
        )
    )[-1].response
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(streamed.id)
    client.responses.create(model=ECHO, input="next", conversation=conversation.id)
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "off the record"},
        {"role": "assistant", "content": "off the record"},
        {"role": "user", "content": "also unstored"},
        {"role": "assistant", "content": "also unstored"},
        {"role": "user", "content": "next"},
    ]


def test_streamed_turn(http: httpx.Client, client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "earlier"}])
    events = list(client.responses.create(model=ECHO, input="stream me now", conversation=conversation.id, stream=True))

    assert events[0].type == "response.created"
    assert events[0].response.conversation.id == conversation.id
    final = events[-1].response
    assert events[-1].type == "response.completed" and final.output_text == "stream me now"
    [message] = final.output
    added = [e for e in events if e.type == "response.output_item.added"]
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [(e.item.type, e.item.id) for e in added] == [("message", message.id)]
    assert [e.item.to_dict() for e in done] == [message.to_dict()]
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "user", "content": "earlier"},
        {"role": "user", "content": "stream me now"},
    ]
    listed = items(http, conversation.id)
    assert listed[1:] == [user("stream me now"), message.to_dict(mode="json")]
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()


@pytest.fixture(scope="module")
def reasoning_parley(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, storage_url: str
) -> Iterator[ParleyProcess]:
    """A Parley on the `parley` fixture's database that also has the scripted upstream's reasoning model."""
    config = parley_config(fake_upstream, storage_url)
    with output_kinds.scripted_upstream() as base_url:
        config["inference"]["providers"]["s"] = {"type": "openai", "base_url": base_url, "models": ["reasoning"]}
        server = ParleyProcess(tmp_path_factory.mktemp("reasoning"), config)
        server.start()
        yield server
        server.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_reasoning_item_is_appended_in_output_order(
    reasoning_parley: ParleyProcess, fake_upstream: FakeUpstream, stream: bool
) -> None:
    client = reasoning_parley.client()
    cid = client.conversations.create(items=[{"role": "user", "content": "seed"}]).id
    if stream:
        events = list(client.responses.create(model="s/reasoning", input="hi", conversation=cid, stream=True))
        response = events[-1].response
    else:
        response = client.responses.create(model="s/reasoning", input="hi", conversation=cid)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    with reasoning_parley.http() as http:
        listed = items(http, cid)
        assert listed[1:] == [user("hi"), *output(response)]
        assert listed[2]["content"] == [{"type": "reasoning_text", "text": "The user greets me."}]

        # The next turn's model is sent the conversation without the reasoning, which chat models do not take.
        client.responses.create(model=ECHO, input="and now?", conversation=cid)
        assert fake_upstream.requests[-1]["messages"] == [
            {"role": "user", "content": "seed"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "and now?"},
        ]
        assert [item["type"] for item in items(http, cid)] == ["message", "message", "reasoning", "message"] + [
            "message"
        ] * 2


def test_ten_turns_of_text_functions_and_mcp(
    http: httpx.Client, client: openai.OpenAI, tool_server: ToolServer, fake_upstream: FakeUpstream
) -> None:
    """Each turn appends its input items, then its output items; the conversation is exactly that."""
    cid = client.conversations.create().id
    never = [mcp_tool(tool_server)]
    always = [mcp_tool(tool_server, require_approval="always")]
    expected: list[Any] = []

    def turn(model: str, given: Any, stream: bool = False, **request: Any) -> Any:
        if stream:
            events = list(client.responses.create(model=model, input=given, conversation=cid, stream=True, **request))
            response = events[-1].response
        else:
            response = client.responses.create(model=model, input=given, conversation=cid, **request)
        assert response.status == "completed", response.error
        return response

    def kinds(response: Any) -> list[str]:
        return [item.type for item in response.output]

    # 1. Text.
    first = turn(ECHO, "hello there")
    expected += [user("hello there"), *output(first)]
    # 2. A function call: the turn ends waiting for its output.
    call = turn(TOOL, "Weather in Paris?", tools=[WEATHER])
    assert kinds(call) == ["function_call"]
    expected += [user("Weather in Paris?"), *output(call)]
    # 3. The next turn brings the output.
    call_id = call.output[0].call_id
    answered = turn(TOOL, [{"type": "function_call_output", "call_id": call_id, "output": "Sunny"}], tools=[WEATHER])
    assert answered.output_text == "The tool said: Sunny"
    expected += [
        {
            "id": AnyId("fco"),
            "type": "function_call_output",
            "call_id": call_id,
            "output": "Sunny",
            "status": "completed",
        },
        *output(answered),
    ]
    # 4. Text again, streamed.
    streamed = turn(ECHO, "and now?", stream=True)
    expected += [user("and now?"), *output(streamed)]
    # 5. An MCP call: the listing, the call, the answer.
    mcp = turn(SCRIPT, 'add {"a": 2, "b": 3}', tools=never)
    assert kinds(mcp) == ["mcp_list_tools", "mcp_call", "message"]
    assert mcp.output_text == "Results: 5"
    expected += [user('add {"a": 2, "b": 3}'), *output(mcp)]
    # 6. Another, streamed: the listing is the conversation's already.
    again = turn(SCRIPT, 'echo {"text": "in a conversation"}', stream=True, tools=never)
    assert kinds(again) == ["mcp_call", "message"]
    expected += [user('echo {"text": "in a conversation"}'), *output(again)]
    # 7. A call that needs approval: the turn ends with the request.
    asked = turn(SCRIPT, 'add {"a": 20, "b": 22}', tools=always)
    assert kinds(asked) == ["mcp_approval_request"]
    expected += [user('add {"a": 20, "b": 22}'), *output(asked)]
    # 8. The approval runs the call.
    request_id = asked.output[0].id
    approved = turn(
        SCRIPT, [{"type": "mcp_approval_response", "approval_request_id": request_id, "approve": True}], tools=always
    )
    assert kinds(approved) == ["mcp_call", "message"] and approved.output[0].output == "42"
    assert approved.output[0].approval_request_id == request_id
    expected += [
        {
            "id": AnyId("mcpa"),
            "type": "mcp_approval_response",
            "approval_request_id": request_id,
            "approve": True,
            "reason": None,
            "status": "completed",
        },
        *output(approved),
    ]
    # 9. Two function calls at once, 10. both outputs in one turn.
    both = turn(TOOL, "Weather and time?", tools=[WEATHER, CLOCK])
    assert kinds(both) == ["function_call", "function_call"]
    expected += [user("Weather and time?"), *output(both)]
    outputs = [
        {"type": "function_call_output", "call_id": item.call_id, "output": f"result {n}"}
        for n, item in enumerate(both.output)
    ]
    last = turn(TOOL, outputs, stream=True, tools=[WEATHER, CLOCK])
    assert last.output_text == "The tool said: result 1"
    expected += [{"id": AnyId("fco"), **given, "status": "completed"} for given in outputs] + output(last)

    listed = items(http, cid)
    assert listed == expected
    assert len(set(ids(listed))) == len(listed)
    # The last turn saw every item before it, as chat messages.
    sent = fake_upstream.requests[-1]["messages"]
    assert [m["role"] for m in sent] == [
        "user", "assistant",  # 1
        "user", "assistant",  # 2
        "tool", "assistant",  # 3
        "user", "assistant",  # 4
        "user", "assistant", "tool", "assistant",  # 5
        "user", "assistant", "tool", "assistant",  # 6
        "user", "assistant",  # 7
        "tool", "assistant",  # 8
        "user", "assistant",  # 9
        "tool", "tool",  # 10
    ]  # fmt: skip


def test_mcp_listing_is_reused_while_label_and_url_stay(
    http: httpx.Client, client: openai.OpenAI, tool_server: ToolServer
) -> None:
    cid = client.conversations.create().id

    def turn(tool: dict[str, Any]) -> list[str]:
        response = client.responses.create(model=SCRIPT, input='add {"a": 1, "b": 1}', conversation=cid, tools=[tool])
        assert response.output_text == "Results: 2"
        return [item.type for item in response.output]

    assert turn(mcp_tool(tool_server)) == ["mcp_list_tools", "mcp_call", "message"]
    assert turn(mcp_tool(tool_server)) == ["mcp_call", "message"]
    assert turn(mcp_tool(tool_server, require_approval={"never": {"tool_names": ["add"]}})) == ["mcp_call", "message"]
    assert turn(mcp_tool(tool_server, server_url=tool_server.sse_url)) == ["mcp_list_tools", "mcp_call", "message"]
    assert turn(mcp_tool(tool_server, server_url=tool_server.sse_url)) == ["mcp_call", "message"]
    assert turn(mcp_tool(tool_server, server_label="renamed")) == ["mcp_list_tools", "mcp_call", "message"]
    assert [item["type"] for item in items(http, cid)].count("mcp_list_tools") == 3


def test_mcp_listing_is_reused_after_an_unstored_turn(client: openai.OpenAI, tool_server: ToolServer) -> None:
    cid = client.conversations.create().id
    sse = mcp_tool(tool_server, server_url=tool_server.sse_url)

    def turn(tool: dict[str, Any], store: bool = True) -> list[str]:
        response = client.responses.create(
            model=SCRIPT, input='add {"a": 1, "b": 1}', conversation=cid, tools=[tool], store=store
        )
        return [item.type for item in response.output]

    assert turn(mcp_tool(tool_server)) == ["mcp_list_tools", "mcp_call", "message"]
    # The server moves, in a turn that is not stored: listed again, and that listing is in the conversation.
    assert turn(sse, store=False) == ["mcp_list_tools", "mcp_call", "message"]
    # Same label, same URL as the turn before: the conversation's latest listing is still good.
    assert turn(sse) == ["mcp_call", "message"]


def test_deleting_a_conversation_deletes_its_items_and_responses(
    http: httpx.Client, client: openai.OpenAI, storage_url: str
) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "seed"}])
    responses = [client.responses.create(model=ECHO, input=f"turn {n}", conversation=conversation.id) for n in range(3)]
    kept = client.conversations.create(items=[{"role": "user", "content": "bystander"}])
    assert count_rows(storage_url, "conversation_items", conversation.id) == 7

    client.conversations.delete(conversation.id)
    assert count_rows(storage_url, "conversation_items", conversation.id) == 0
    for response in responses:
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.input_items.list(response.id)
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model=ECHO, input="x", previous_response_id=responses[-1].id)
    assert raised.value.code == "previous_response_not_found"
    # Its items are nobody's to reference any more.
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=ECHO, input=[{"type": "item_reference", "id": responses[0].output[0].id}])
    assert [item["content"][0]["text"] for item in items(http, kept.id)] == ["bystander"]


def count_rows(storage_url: str, table: str, conversation_id: str) -> int:
    """Rows of `table` for the conversation, read from the database itself (deleted or not)."""
    return _count(storage_url, f"SELECT count(*) FROM {table} WHERE conversation_id = '{conversation_id}'")


def _count(storage_url: str, query: str) -> int:
    """The number a `SELECT count(*)` query finds, asked of the database itself."""
    if storage_url.startswith("sqlite"):
        with sqlite3.connect(Path(storage_url.split("///", 1)[1])) as connection:
            return int(connection.execute(query).fetchone()[0])
    url = storage_url.replace("postgresql+asyncpg", "postgresql")
    result = subprocess.run(["psql", url, "-At", "-c", query], capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


# -- what the database cannot hold, and turns that cannot be stored -----------

LONG_ID = "q" * 70  # item ids are stored in 64 characters


def _visible_responses(storage_url: str, conversation_id: str) -> int:
    """Rows of `responses` for the conversation that the API would show."""
    return _count(
        storage_url, f"SELECT count(*) FROM responses WHERE conversation_id = '{conversation_id}' AND NOT deleted"
    )


_UNHOLDABLE = [
    ("create", {"items": [{"type": "message", "id": LONG_ID, "role": "user", "content": "z"}]}, "items[0].id"),
    ("create", {"items": [{"role": "user", "content": "z\u0000"}]}, "items[0].content"),
    ("create", {"metadata": {"topic": "a\u0000b"}}, "metadata.topic"),
    (
        "add",
        {"items": [{"role": "user", "content": "ok"}, {"role": "user", "id": LONG_ID, "content": "z"}]},
        "items[1].id",
    ),
    (
        "add",
        {"items": [{"role": "user", "content": [{"type": "input_text", "text": "\u0000"}]}]},
        "items[0].content[0].text",
    ),
    ("respond", {"input": [{"type": "message", "id": LONG_ID, "role": "user", "content": "z"}]}, "input[0].id"),
    ("respond", {"input": [{"type": "item_reference", "id": LONG_ID}]}, "input[0].id"),
    ("respond", {"input": [{"type": "message", "role": "user", "content": "z\u0000"}]}, "input[0].content"),
    ("respond", {"input": "z\u0000"}, "input"),
    ("respond", {"input": "z", "metadata": {"k": "\u0000"}}, "metadata.k"),
    ("respond", {"input": "z", "instructions": "be \u0000 kind"}, "instructions"),
]


@pytest.mark.parametrize(
    ("where", "body", "param", "stream"),
    [(*case, False) for case in _UNHOLDABLE] + [(*case, True) for case in _UNHOLDABLE if case[0] == "respond"],
)
def test_what_the_database_cannot_hold_is_a_400_naming_it(
    parley: ParleyProcess,
    http: httpx.Client,
    storage_url: str,
    where: str,
    body: dict[str, Any],
    param: str,
    stream: bool,
) -> None:
    """Ids longer than their column, and NUL characters (which PostgreSQL's JSONB refuses), on both backends alike."""
    cid = http.post("/v1/conversations", json={"items": [{"role": "user", "content": "seed"}]}).json()["id"]
    before = items(http, cid)
    url = {"create": "/v1/conversations", "add": f"/v1/conversations/{cid}/items", "respond": "/v1/responses"}[where]
    if where == "respond":
        body = {"model": ECHO, "conversation": cid, "stream": stream, **body}
    with parley.http() as fresh:  # a 500 closes the connection
        answer = fresh.post(url, json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "error": {
            "message": answer.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": param,
            "code": "invalid_value",
        }
    }
    assert param in answer.json()["error"]["message"]
    assert items(http, cid) == before
    assert _visible_responses(storage_url, cid) == 0


def test_a_turn_outside_conversations_with_an_over_long_id_is_a_400(parley: ParleyProcess) -> None:
    given = [{"type": "function_call_output", "id": LONG_ID, "call_id": "call_1", "output": "x"}]
    with parley.http() as fresh:
        answer = fresh.post("/v1/responses", json={"model": ECHO, "input": given})
    assert answer.status_code == 400 and error(answer)["param"] == "input[0].id"


@pytest.mark.parametrize("stream", [False, True])
def test_a_turn_whose_append_fails_fails_and_appends_nothing(
    parley: ParleyProcess, http: httpx.Client, tool_server: ToolServer, stream: bool
) -> None:
    """While the turn runs, the Items API adds an item with the id of the turn's input: its append cannot commit."""
    client = parley.client()
    cid = client.conversations.create(items=[{"role": "user", "content": "seed"}]).id
    mine = {"type": "message", "id": "msg_" + ("5eed" if stream else "beef") * 12, "role": "user"}
    request: dict[str, Any] = {
        "model": SCRIPT,
        "input": [{**mine, "content": 'sleep {"seconds": 1}'}],
        "tools": [mcp_tool(tool_server)],
        "conversation": cid,
    }

    def add_the_same_id() -> None:
        with parley.http() as other:
            added = other.post(f"/v1/conversations/{cid}/items", json={"items": [{**mine, "content": "first"}]})
        assert added.status_code == 200, added.text

    if stream:
        events = []
        for event in client.responses.create(**request, stream=True):
            events.append(event)
            if event.type == "response.mcp_call.in_progress":  # the sleep has started
                add_the_same_id()
        final = events[-1]
        assert final.type == "response.failed", [e.type for e in events]
        assert final.response.error is not None and "Duplicate item" in final.response.error.message
        response_id = final.response.id
        assert not any(e.type == "response.completed" for e in events)
    else:
        timer = threading.Timer(0.4, add_the_same_id)
        timer.start()
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(**request)
        timer.join()
        assert raised.value.param == "input" and "Duplicate item" in raised.value.message
        [response_id] = [r["id"] for r in http.get("/v1/responses", params={"limit": 1}).json()["data"]]

    stored = client.responses.retrieve(response_id)
    assert stored.status == "failed" and stored.conversation.id == cid and stored.completed_at is None
    assert [item.type for item in stored.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert [t["content"][0]["text"] for t in items(http, cid)] == ["seed", "first"]


@pytest.fixture(scope="module")
def slow_mcp_server() -> Iterator[str]:
    """An MCP server URL that answers every request with a 503, after 0.3 s."""

    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            time.sleep(0.3)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/mcp"
    server.shutdown()


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_refused_inside_its_turn_leaves_no_response(
    parley: ParleyProcess, http: httpx.Client, storage_url: str, slow_mcp_server: str, stream: bool
) -> None:
    """The MCP server's listing fails (a 424, before the response starts), well after the response's row was
    written."""
    client = parley.client()
    cid = client.conversations.create().id
    slow = {"type": "mcp", "server_label": "slow", "server_url": slow_mcp_server, "require_approval": "never"}
    with pytest.raises(openai.APIStatusError) as raised:
        result = client.responses.create(model=ECHO, input="x", tools=[slow], conversation=cid, stream=stream)
        if stream:
            list(result)
    assert (raised.value.status_code, raised.value.body["param"]) == (424, "tools")  # type: ignore[index]
    assert _visible_responses(storage_url, cid) == 0
    assert items(http, cid) == []


def test_completed_turns_are_listed_and_retrievable_as_soon_as_they_complete(
    parley: ParleyProcess, http: httpx.Client
) -> None:
    """A client acting on `response.completed` at once finds the turn in its conversation, and the response stored."""
    client = parley.client()
    cid = client.conversations.create().id
    for n in range(8):
        for event in client.responses.create(model=ECHO, input=f"turn {n}", conversation=cid, stream=True):
            if event.type == "response.completed":
                listed = page(http, cid, limit=2)["data"]
                assert [item["content"][0]["text"] for item in listed] == [f"turn {n}"] * 2
                assert http.get(f"/v1/responses/{event.response.id}").json()["status"] == "completed"
        for event in client.responses.create(model=ECHO, input=f"alone {n}", stream=True):
            if event.type == "response.completed":
                stored = http.get(f"/v1/responses/{event.response.id}").json()
                assert stored["status"] == "completed" and stored["output"] == [event.response.output[0].to_dict()]


# -- concurrency --------------------------------------------------------------


def test_sixteen_concurrent_turns_lose_nothing(
    parley: ParleyProcess, http: httpx.Client, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    """Turns on one conversation take turns: each sees all of those before it, and its items stay together."""
    cid = client.conversations.create().id
    count = 16
    results: dict[int, Any] = {}
    seen_before = len(fake_upstream.requests)

    def one_turn(n: int) -> None:
        own = parley.client()
        text = f"concurrent turn {n}"
        if n % 2:
            events = list(own.responses.create(model=ECHO, input=text, conversation=cid, stream=True))
            results[n] = events[-1].response
        else:
            results[n] = own.responses.create(model=ECHO, input=text, conversation=cid)

    at_once(count, one_turn)
    assert sorted(results) == list(range(count))

    listed = items(http, cid)
    assert len(listed) == 2 * count and len(set(ids(listed))) == 2 * count
    # Pairs: each turn's input, then its output, together.
    order = []
    for position in range(0, len(listed), 2):
        text = listed[position]["content"][0]["text"]
        n = int(text.rsplit(" ", 1)[1])
        order.append(n)
        assert listed[position] == user(f"concurrent turn {n}")
        assert [listed[position + 1]] == output(results[n])
    assert sorted(order) == list(range(count))

    # The conversation's order is the order the responses were created in (listed newest first).
    newest_first = [r["id"] for r in http.get("/v1/responses", params={"limit": count}).json()["data"]]
    assert newest_first[::-1] == [results[n].id for n in order]

    # Each turn saw exactly the turns before it.
    sent = fake_upstream.requests[seen_before:]
    assert len(sent) == count
    for k, (n, request) in enumerate(zip(order, sent, strict=True)):
        before = [f"concurrent turn {order[j]}" for j in range(k) for _ in ("input", "output")]
        assert [m["content"] for m in request["messages"]] == [*before, f"concurrent turn {n}"]


@pytest.fixture(scope="module")
def replica(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, storage_url: str
) -> Iterator[ParleyProcess]:
    """A second Parley on the `parley` fixture's database, as a second replica would be."""
    server = ParleyProcess(tmp_path_factory.mktemp("replica"), parley_config(fake_upstream, storage_url))
    server.start()
    yield server
    server.stop()


def test_two_servers_on_one_database_keep_each_turn_whole(
    parley: ParleyProcess, replica: ParleyProcess, http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    """Turns on one conversation take turns across servers, on both databases (a hold on the conversation's row).

    Each turn then sees every turn before it, whichever server ran it; every
    turn's items land together, and none is lost.
    """
    cid = parley.client().conversations.create().id
    count = 16
    seen_before = len(fake_upstream.requests)

    def one_turn(n: int) -> None:
        own = (parley if n % 2 else replica).client()
        own.responses.create(model=ECHO, input=f"replicated turn {n}", conversation=cid)

    at_once(count, one_turn)

    texts = [item["content"][0]["text"] for item in items(http, cid)]
    assert texts[0::2] == texts[1::2]  # input, then its echo, side by side
    assert sorted(texts[0::2]) == sorted(f"replicated turn {n}" for n in range(count))
    sent = fake_upstream.requests[seen_before:]
    assert len(sent) == count
    for k, request in enumerate(sent):
        context = [m["content"] for m in request["messages"][:-1]]
        assert context == texts[: 2 * k], f"turn {k} missed a turn of the other server"


def test_ids_look_like_openai(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": "x"}])
    assert conversation.id == AnyId("conv")
    response = client.responses.create(model=ECHO, input="y", conversation=conversation.id)
    assert response.id == AnyId("resp") and response.output[0].id == AnyId("msg")
    assert json.loads(response.model_dump_json())["conversation"] == {"id": conversation.id}


def test_an_unknown_include_on_the_items_endpoints_is_a_400_naming_it(
    http: httpx.Client, client: openai.OpenAI
) -> None:
    """As on `/v1/responses/{id}/input_items`: each `include` value from OpenAI's list, checked before anything else."""
    cid = client.conversations.create(items=[{"role": "user", "content": "x"}]).id
    [item] = items(http, cid)
    good = ["message.output_text.logprobs"]
    for method, path in (
        ("GET", f"/v1/conversations/{cid}/items"),
        ("GET", f"/v1/conversations/{cid}/items/{item['id']}"),
        ("POST", f"/v1/conversations/{cid}/items"),
    ):
        body = {"items": [{"role": "user", "content": "more"}]} if method == "POST" else None
        assert http.request(method, path, params={"include": good}, json=body).status_code == 200
        bad = http.request(method, path, params={"include": [*good, "bogus"]}, json=body)
        assert bad.status_code == 400, (method, path, bad.text)
        found = error(bad)
        assert found["message"].startswith("Invalid value for 'include[1]': 'bogus'; expected one of ")
        assert found | {"message": ""} == {
            "message": "",
            "type": "invalid_request_error",
            "param": "include",
            "code": "invalid_value",
        }
    # The refused POST added nothing.
    assert [i["content"][0]["text"] for i in items(http, cid)] == ["x", "more"]

    # openai-python sends `include[]=...`: that form is checked too.
    assert http.get(f"/v1/conversations/{cid}/items", params={"include[]": good}).status_code == 200
    bad = http.get(f"/v1/conversations/{cid}/items", params={"include[]": "bogus"})
    assert bad.status_code == 400 and error(bad)["param"] == "include"
    assert len(client.conversations.items.list(cid, include=["message.output_text.logprobs"]).data) == 2
    bogus: Any = ["bogus"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.list(cid, include=bogus)
    assert raised.value.param == "include"
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.retrieve(item["id"], conversation_id=cid, include=bogus)
    assert raised.value.param == "include"
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.create(cid, items=[{"role": "user", "content": "no"}], include=bogus)
    assert raised.value.param == "include"
    assert len(items(http, cid)) == 2
