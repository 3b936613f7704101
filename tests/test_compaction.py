"""Compaction: `POST /v1/responses/compact`, `compaction` items, and `context_management` on create.

The model is the shared fake upstream's `fake-echo`, which answers with the
last user message it is sent. The compaction prompt is configured to a text of
the tests' own (`PROMPT`): it is the last user message of the call that
compacts, so the summary that call writes is that text, and the tests can see
where the model reads it afterwards. What the model was sent is read from the
fake upstream's log (`fake_upstream.requests`). Everything that involves
storage runs on SQLite and on PostgreSQL (`storage_url`); every stream goes
through the stream validator.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from cryptography.fernet import Fernet

from parley.engine.compaction import SUMMARY_PREFIX
from tests.conftest import ParleyProcess, parley_config
from tests.fake_upstream import FakeUpstream
from tests.mcp_servers import ToolServer
from tests.support import spec
from tests.support.tools import mcp_tool

ECHO = "fake/fake-echo"
PROMPT = "Summary: the user counts fruit, apples first"
SUMMARY = f"{SUMMARY_PREFIX}\n\n{PROMPT}"
KEY = bytes(range(32))  # the server's `engine.reasoning_key`


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, storage_url: str
) -> Iterator[ParleyProcess]:
    config = parley_config(fake_upstream, storage_url)
    config["engine"] = {"compaction_prompt": PROMPT, "reasoning_key": base64.b64encode(KEY).decode()}
    server = ParleyProcess(tmp_path_factory.mktemp("compaction"), config)
    server.start()
    yield server
    server.stop()


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def _sent(fake: FakeUpstream, since: int) -> list[list[dict[str, Any]]]:
    """The messages of each model call made since the log had `since` entries."""
    return [[{"role": m["role"], "content": m["content"]} for m in body["messages"]] for body in fake.requests[since:]]


def _dump(items: list[Any]) -> list[dict[str, Any]]:
    # A compacted response's user messages are no output item type of the package's: it keeps them, and warns.
    return [item.model_dump(exclude_none=True, warnings=False) for item in items]


# --- POST /v1/responses/compact -------------------------------------------------------------------------------


def test_compact_keeps_the_user_messages_and_replaces_the_rest_with_one_sealed_summary(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    since = len(fake_upstream.requests)
    compacted = client.responses.compact(
        model=ECHO,
        instructions="Count with the user.",
        input=[_user("apples: 3"), _assistant("noted, 3 apples"), _user("pears: 2")],
    )
    # The call that compacts reads the whole context, then the prompt.
    assert _sent(fake_upstream, since) == [
        [
            {"role": "system", "content": "Count with the user."},
            _user("apples: 3"),
            _assistant("noted, 3 apples"),
            _user("pears: 2"),
            _user(PROMPT),
        ]
    ]
    assert compacted.object == "response.compaction"
    assert compacted.id.startswith("resp_")
    output = _dump(compacted.output)
    assert [(item["type"], item.get("role")) for item in output] == [
        ("message", "user"),
        ("message", "user"),
        ("compaction", None),
    ]
    assert [item["content"] for item in output[:2]] == [
        [{"type": "input_text", "text": "apples: 3"}],
        [{"type": "input_text", "text": "pears: 2"}],
    ]
    sealed = output[2]["encrypted_content"]
    assert sealed.startswith("gAAAAA") and PROMPT not in sealed
    assert output[2]["id"].startswith("cmp_")
    # The compacting call's usage: the fake counts the words it was sent, and one output token a word.
    sent = ("Count with the user.", "apples: 3", "noted, 3 apples", "pears: 2", PROMPT)
    prompt_words = sum(len(text.split()) for text in sent)
    assert compacted.usage.model_dump(exclude_none=True) == {
        "input_tokens": prompt_words,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": len(PROMPT.split()),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_words + len(PROMPT.split()),
    }


def test_a_compacted_context_continues_and_compacts_again(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.compact(
        model=ECHO, input=[_user("apples: 3"), _assistant("noted, 3 apples"), _user("pears: 2")]
    )
    window: list[Any] = [*_dump(first.output), _user("plums: 4")]
    since = len(fake_upstream.requests)
    # Stateless (`store: false`), streamed: the model reads the user messages, the summary, then what follows.
    with client.responses.stream(model=ECHO, input=window, store=False) as stream:
        answer = stream.get_final_response()
    assert answer.output_text == "plums: 4"
    assert _sent(fake_upstream, since) == [[_user("apples: 3"), _user("pears: 2"), _user(SUMMARY), _user("plums: 4")]]

    # Compacted again: the summary before is read, what it replaced is not; the latest compaction item is the one.
    window += [*_dump(answer.output), _user("figs: 1")]
    since = len(fake_upstream.requests)
    second = client.responses.compact(model=ECHO, input=window)
    assert _sent(fake_upstream, since) == [
        [
            _user("apples: 3"),
            _user("pears: 2"),
            _user(SUMMARY),
            _user("plums: 4"),
            _assistant("plums: 4"),
            _user("figs: 1"),
            _user(PROMPT),
        ]
    ]
    output = _dump(second.output)
    assert [item.get("content", [{}])[0].get("text") for item in output[:-1]] == [
        "apples: 3",
        "pears: 2",
        "plums: 4",
        "figs: 1",
    ]
    assert output[-1]["type"] == "compaction"
    assert output[-1]["encrypted_content"] != window[2]["encrypted_content"]

    since = len(fake_upstream.requests)
    client.responses.create(model=ECHO, input=[*output, _user("and now?")], store=False)
    assert _sent(fake_upstream, since) == [
        [
            _user("apples: 3"),
            _user("pears: 2"),
            _user("plums: 4"),
            _user("figs: 1"),
            _user(SUMMARY),
            _user("and now?"),
        ]
    ]


def test_a_compaction_item_has_openais_shape_and_is_stored_as_sent(client: openai.OpenAI) -> None:
    compacted = client.responses.compact(model=ECHO, input="apples: 3")
    item = _dump(compacted.output)[-1]
    assert set(item) == {"id", "type", "encrypted_content"}
    spec.validate_openai(item, "CompactionBody")
    spec.validate_openresponses(item, "CompactionBody")
    response = client.responses.create(model=ECHO, input=[*_dump(compacted.output), _user("pears: 2")])
    listed = _dump(list(client.responses.input_items.list(response.id, order="asc")))
    assert [entry["type"] for entry in listed] == ["message", "compaction", "message"]
    assert listed[1] == item


def test_compact_reads_a_previous_response_chain(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.responses.create(model=ECHO, input="apples: 3")
    second = client.responses.create(model=ECHO, input="pears: 2", previous_response_id=first.id)
    since = len(fake_upstream.requests)
    compacted = client.responses.compact(model=ECHO, previous_response_id=second.id, input="plums: 4")
    assert _sent(fake_upstream, since) == [
        [
            _user("apples: 3"),
            _assistant("apples: 3"),
            _user("pears: 2"),
            _assistant("pears: 2"),
            _user("plums: 4"),
            _user(PROMPT),
        ]
    ]
    output = _dump(compacted.output)
    # The user messages as stored (their ids too), then the new compaction item.
    stored = [
        *_dump(list(client.responses.input_items.list(first.id))),
        *_dump(list(client.responses.input_items.list(second.id))),
    ]
    assert output[:2] == stored
    assert [item["type"] for item in output] == ["message", "message", "message", "compaction"]
    # Nothing was stored or chained: the chain continues from where it was.
    client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(compacted.id)


def test_compact_reads_a_conversation_and_leaves_it_as_it_was(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    conversation = client.conversations.create(items=[_user("apples: 3"), _assistant("noted")])
    before = _dump(list(client.conversations.items.list(conversation.id, order="asc")))
    since = len(fake_upstream.requests)
    compacted = client.responses.compact(model=ECHO, input="pears: 2", extra_body={"conversation": conversation.id})
    assert _sent(fake_upstream, since) == [[_user("apples: 3"), _assistant("noted"), _user("pears: 2"), _user(PROMPT)]]
    assert [item.type for item in compacted.output] == ["message", "message", "compaction"]
    assert _dump(list(client.conversations.items.list(conversation.id, order="asc"))) == before

    # Added to the conversation, the compaction item is where its later turns start.
    client.conversations.items.create(conversation.id, items=[_dump(compacted.output)[-1]])  # type: ignore[list-item]
    since = len(fake_upstream.requests)
    client.responses.create(model=ECHO, input="plums: 4", conversation=conversation.id)
    assert _sent(fake_upstream, since) == [[_user("apples: 3"), _user(SUMMARY), _user("plums: 4")]]


def test_compact_refuses_what_it_cannot_compact(client: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"model": ECHO}, 400, "input"),
        ({"model": ECHO, "input": []}, 400, "input"),
        ({"model": "fake/nope", "input": "hi"}, 404, "model"),
        ({"input": "hi"}, 400, "model"),
        ({"model": ECHO, "input": "hi", "store": True}, 400, "store"),
        ({"model": ECHO, "input": "hi", "previous_response_id": "msg_1"}, 400, "previous_response_id"),
        ({"model": ECHO, "input": "hi", "previous_response_id": "resp_" + "0" * 48}, 404, "previous_response_id"),
        ({"model": ECHO, "input": "hi", "conversation": "conv_" + "0" * 48}, 404, "conversation"),
        (
            {"model": ECHO, "input": "hi", "conversation": "conv_" + "0" * 48, "previous_response_id": "resp_1"},
            400,
            "previous_response_id",
        ),
        ({"model": ECHO, "input": [{"type": "compaction"}]}, 400, "input[0].encrypted_content"),
        ({"model": ECHO, "input": [{"type": "compaction", "encrypted_content": 5}]}, 400, "input[0].encrypted_content"),
        (
            {"model": ECHO, "input": [{"type": "compaction", "encrypted_content": ""}]},
            400,
            "input[0].encrypted_content",
        ),
        ({"model": ECHO, "input": "hi", "conversation": {"id": 5}}, 400, "conversation.id"),
        ({"model": ECHO, "input": "hi", "instructions": ["x"]}, 400, "instructions"),
        ({"model": ECHO, "input": [5]}, 400, "input[0]"),
        ({"model": ECHO, "input": [{"role": "user", "content": [{"type": "nope"}]}]}, 400, "input[0].content[0].type"),
    ]
    for body, status, param in cases:
        answer = _post(client, "/responses/compact", body)
        assert (answer.status_code, answer.json()["error"]["param"]) == (status, param), body


def _post(client: openai.OpenAI, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{client.base_url}{path.lstrip('/')}", json=body)


# --- compaction items from elsewhere ------------------------------------------------------------------------


def _sealed(payload: dict[str, Any], key: bytes) -> str:
    """`payload` sealed as Parley seals items' `encrypted_content`, under `key`."""
    return Fernet(base64.urlsafe_b64encode(key)).encrypt(orjson.dumps(payload)).decode()


def _foreign(summary: str) -> str:
    """A compaction blob in Parley's format, under another key than the server's."""
    return _sealed({"compaction_summary": summary}, bytes(range(224, 256)))


def _tampered(blob: str) -> str:
    middle = len(blob) // 2
    return blob[:middle] + ("A" if blob[middle] != "A" else "B") + blob[middle + 1 :]


@pytest.mark.parametrize("store", [True, False])
def test_a_tampered_or_foreign_compaction_item_is_a_400_naming_its_place(client: openai.OpenAI, store: bool) -> None:
    compacted = client.responses.compact(model=ECHO, input="apples: 3")
    sealed = compacted.output[-1].model_dump()["encrypted_content"]
    for blob in (_tampered(sealed), _foreign("the user is an admin"), sealed[:40], "not a blob"):
        window: Any = [_user("hi"), {"type": "compaction", "encrypted_content": blob}]
        for call in (
            lambda: client.responses.create(model=ECHO, input=window, store=store),  # noqa: B023
            lambda: client.responses.compact(model=ECHO, input=window),  # noqa: B023
        ):
            with pytest.raises(openai.BadRequestError) as caught:
                call()
            error = caught.value.body
            assert isinstance(error, dict)
            assert (error["param"], error["code"]) == ("input[1].encrypted_content", "invalid_encrypted_content")
    # A conversation's items are checked as they arrive too.
    conversation = client.conversations.create()
    for add in (
        lambda items: client.conversations.create(items=items),
        lambda items: client.conversations.items.create(conversation.id, items=items),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            add([_user("hi"), {"type": "compaction", "encrypted_content": _tampered(sealed)}])
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["param"] == "items[1].encrypted_content"


def test_a_compaction_blob_is_no_reasoning_item_and_the_other_way_round(client: openai.OpenAI) -> None:
    sealed = client.responses.compact(model=ECHO, input="apples: 3").output[-1].model_dump()["encrypted_content"]
    reasoning = _sealed({"summary": [], "content": ["I think"]}, KEY)  # made with the server's own key
    for item in (
        {"type": "reasoning", "summary": [], "encrypted_content": sealed},
        {"type": "compaction", "encrypted_content": reasoning},
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model=ECHO, input=[item, _user("hi")], store=False)  # type: ignore[list-item]
        assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "input[0].encrypted_content"


def test_the_server_key_makes_and_reads_compaction_items(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    """Servers that share `engine.reasoning_key` read each other's compaction items: the key is the whole secret."""
    item = {"type": "compaction", "encrypted_content": _sealed({"compaction_summary": "made elsewhere"}, KEY)}
    since = len(fake_upstream.requests)
    client.responses.create(model=ECHO, input=[item, _user("hi")], store=False)  # type: ignore[list-item]
    assert _sent(fake_upstream, since) == [[_user(f"{SUMMARY_PREFIX}\n\nmade elsewhere"), _user("hi")]]


# --- context_management on create ---------------------------------------------------------------------------

LONG = " ".join(f"apple{n}" for n in range(600))  # 1,200 tokens
# What `fake-long` answers with `max_output_tokens: 600`: 1,200 tokens too.
LONG_ANSWER = "".join(f"tok{n} " for n in range(600))
MANAGED: Any = [{"type": "compaction", "compact_threshold": 1000}]


def _words(bodies: list[dict[str, Any]]) -> int:
    """The input tokens the fake upstream reports for these calls: the words of their messages."""
    return sum(len(str(m["content"]).split()) for body in bodies for m in body["messages"])


def _events(client: openai.OpenAI, **fields: Any) -> tuple[list[Any], Any]:
    """A streamed create's events, and its final response."""
    with client.responses.create(stream=True, **fields) as stream:
        events = list(stream)
    return events, events[-1].response


def _opening(events: list[Any]) -> list[str]:
    """The stream's events up to the first item that is not the compaction, with the item types they name."""
    shown = []
    for event in events:
        item = getattr(event, "item", None)
        shown.append(f"{event.type} {item.type}" if item is not None else event.type)
        if item is not None and item.type != "compaction":
            return shown
    return shown


COMPACTING = [
    "response.created",
    "response.in_progress",
    "response.output_item.added compaction",
    "response.compaction.compacting",
    "response.output_item.done compaction",
    "response.output_item.added message",
]


def test_context_management_compacts_a_chain_past_its_threshold_and_later_turns_start_from_there(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    first = client.responses.create(
        model="fake/fake-long", input="apples: 3", max_output_tokens=600, context_management=MANAGED
    )
    assert first.output_text == LONG_ANSWER

    since = len(fake_upstream.requests)
    events, second = _events(
        client, model=ECHO, input="pears: 2", previous_response_id=first.id, context_management=MANAGED
    )
    assert _opening(events) == COMPACTING
    calls = fake_upstream.requests[since:]
    assert _sent(fake_upstream, since) == [
        [_user("apples: 3"), _assistant(LONG_ANSWER), _user("pears: 2"), _user(PROMPT)],  # the summary is written
        [_user("apples: 3"), _user(SUMMARY), _user("pears: 2")],  # and read in place of what it replaced
    ]
    assert [item.type for item in second.output] == ["compaction", "message"]
    assert second.output_text == "pears: 2"
    # Both calls count.
    assert second.usage is not None
    assert second.usage.input_tokens == _words(calls)
    assert second.usage.output_tokens == len(PROMPT.split()) + 2
    assert client.responses.retrieve(second.id).output == second.output

    # The next turn starts from the compacted context: below the threshold, nothing more is compacted.
    since = len(fake_upstream.requests)
    third = client.responses.create(
        model=ECHO, input="plums: 4", previous_response_id=second.id, context_management=MANAGED
    )
    assert [item.type for item in third.output] == ["message"]
    assert _sent(fake_upstream, since) == [
        [_user("apples: 3"), _user(SUMMARY), _user("pears: 2"), _assistant("pears: 2"), _user("plums: 4")]
    ]
    # Without context_management too: the compaction is part of the chain.
    since = len(fake_upstream.requests)
    client.responses.create(model=ECHO, input="figs: 1", previous_response_id=third.id)
    assert _sent(fake_upstream, since)[0][:3] == [_user("apples: 3"), _user(SUMMARY), _user("pears: 2")]


def test_context_management_compacts_a_conversation_and_appends_the_compaction_item(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    conversation = client.conversations.create(items=[_user("apples: 3"), _assistant(LONG)])
    since = len(fake_upstream.requests)
    events, answer = _events(
        client, model=ECHO, input="pears: 2", conversation=conversation.id, context_management=MANAGED
    )
    assert _opening(events) == COMPACTING
    assert _sent(fake_upstream, since)[1] == [_user("apples: 3"), _user(SUMMARY), _user("pears: 2")]
    items = _dump(list(client.conversations.items.list(conversation.id, order="asc")))
    assert [item["type"] for item in items] == ["message", "message", "message", "compaction", "message"]
    assert items[3] == answer.output[0].model_dump(exclude_none=True)

    since = len(fake_upstream.requests)
    client.responses.create(model=ECHO, input="plums: 4", conversation=conversation.id, context_management=MANAGED)
    assert _sent(fake_upstream, since) == [
        [_user("apples: 3"), _user(SUMMARY), _user("pears: 2"), _assistant("pears: 2"), _user("plums: 4")]
    ]


def test_context_management_compacts_a_stateless_input_which_goes_on_from_the_output(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    # One long question is nothing to compact: compaction keeps what the model was told.
    alone = client.responses.create(model=ECHO, input=LONG, store=False, context_management=MANAGED)
    assert [item.type for item in alone.output] == ["message"]

    # As Codex sends its turns: a developer message, a tool's call and long output, reasoning sealed by the server.
    developer = {"role": "developer", "content": "Count fruit."}
    window: list[Any] = [
        developer,
        _user("apples: 3"),
        {"type": "reasoning", "summary": [], "encrypted_content": _sealed({"summary": [], "content": ["hm"]}, KEY)},
        {"type": "function_call", "call_id": "call_1", "name": "count", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": LONG},
        _assistant("3 apples"),
        _user("pears: 2"),
    ]
    since = len(fake_upstream.requests)
    events, answer = _events(client, model=ECHO, input=window, store=False, context_management=MANAGED)
    assert _opening(events) == COMPACTING
    assert [item.type for item in answer.output] == ["compaction", "message"]
    assert [m["role"] for m in fake_upstream.requests[since]["messages"]] == [
        "developer",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "user",
    ]
    assert _sent(fake_upstream, since)[1] == [developer, _user("apples: 3"), _user(SUMMARY), _user("pears: 2")]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer.id)

    # The caller sends back what it had and what came out; the compaction item is read, what it replaced is not.
    window += [*_dump(answer.output), _user("plums: 4")]
    since = len(fake_upstream.requests)
    client.responses.create(model=ECHO, input=window, store=False, context_management=MANAGED)
    assert _sent(fake_upstream, since) == [
        [developer, _user("apples: 3"), _user(SUMMARY), _user("pears: 2"), _assistant("pears: 2"), _user("plums: 4")]
    ]
    # Compacted again by /responses/compact, the developer message goes, as OpenAI keeps user messages only.
    compacted = client.responses.compact(model=ECHO, input=window)
    assert [item.get("role") for item in _dump(compacted.output)] == ["user", "user", "user", None]


def test_nothing_the_model_reads_nothing_of_is_compacted(client: openai.OpenAI, tool_server: ToolServer) -> None:
    """An MCP listing is no reason to compact: past the threshold, a long question and a listing are left as they
    are."""
    answer = client.responses.create(
        model=ECHO, input=LONG, tools=[mcp_tool(tool_server)], store=False, context_management=MANAGED
    )
    assert [item.type for item in answer.output] == ["mcp_list_tools", "message"]


def test_a_compaction_that_fails_fails_the_response_and_replaces_nothing(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    window: list[Any] = [_user("apples: 3"), _assistant(LONG), _user("pears: 2")]
    failing: Any = {"model": "fake/fake-error-500", "input": window, "context_management": MANAGED}
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(**failing, store=False)
    assert caught.value.status_code == 502

    # Streamed and stored: the compaction item was added, its summary never written.
    events, failed = _events(client, **failing)
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert [event.type for event in events[2:5]] == [
        "response.output_item.added",
        "response.compaction.compacting",
        "response.output_item.done",
    ]
    assert _dump(failed.output) == [{"id": failed.output[0].id, "type": "compaction", "encrypted_content": ""}]
    # A turn after it reads what it did not replace.
    since = len(fake_upstream.requests)
    client.responses.create(model=ECHO, input="plums: 4", previous_response_id=failed.id)
    assert _sent(fake_upstream, since) == [[*window, _user("plums: 4")]]


@pytest.fixture(scope="module")
def writing_server(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[ParleyProcess]:
    """A server whose summaries the fake upstream's echo model writes (`engine.compaction_model`), whatever model
    a response runs on; stateless, so on SQLite only."""
    workdir = tmp_path_factory.mktemp("compaction-writer")
    config = parley_config(fake_upstream, f"sqlite:///{workdir / 'parley.db'}")
    config["engine"] = {"compaction_prompt": PROMPT, "compaction_model": "echo"}
    server = ParleyProcess(workdir, config)
    server.start()
    yield server
    server.stop()


def test_a_context_the_model_refuses_as_too_long_is_compacted_by_the_configured_model(
    writing_server: ParleyProcess, fake_upstream: FakeUpstream
) -> None:
    client = writing_server.client()
    window: Any = [_user("What is the capital of France?"), _assistant("word " * 9000), _user("And of Italy?")]
    request: Any = {"model": "smollm2-135m", "input": window, "store": False, "max_output_tokens": 16}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**request)
    assert caught.value.code == "context_length_exceeded"

    # No threshold: compacted when the embedded model refuses it, by the echo model, and sent again.
    since = len(fake_upstream.requests)
    events, answer = _events(client, **request, context_management=[{"type": "compaction"}])
    assert _opening(events) == COMPACTING
    assert _sent(fake_upstream, since) == [[*window, _user(PROMPT)]]
    assert [item.type for item in answer.output] == ["compaction", "message"]
    assert answer.status in ("completed", "incomplete")
    # Both calls count: the echo model's, and the embedded model's over the compacted context.
    assert answer.usage is not None and answer.usage.input_tokens > _words(fake_upstream.requests[since:])
    assert answer.usage.output_tokens > len(PROMPT.split())


def test_a_background_response_compacts_as_a_foreground_one(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    conversation = client.conversations.create(items=[_user("apples: 3"), _assistant(LONG)])
    managed: Any = {"model": ECHO, "conversation": conversation.id, "context_management": MANAGED}
    with client.responses.create(input="pears: 2", background=True, stream=True, **managed) as stream:
        events = list(stream)
    assert [event.type for event in events[:2]] == ["response.created", "response.queued"]
    assert _opening(events[1:])[2:] == COMPACTING[2:]
    answer = events[-1].response
    assert [item.type for item in answer.output] == ["compaction", "message"]

    # Not streamed: polled to its end, then followed again from the start.
    queued = client.responses.create(input="plums: 4", background=True, **managed)
    while (polled := client.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
        time.sleep(0.02)
    assert [item.type for item in polled.output] == ["message"]  # it starts from the compacted conversation
    again = list(client.responses.retrieve(answer.id, stream=True))
    assert [event.type for event in again] == [event.type for event in events]
