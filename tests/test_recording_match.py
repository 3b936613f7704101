"""What makes two chat requests the same conversation for replay, and what keeps secrets out of the files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from parley.config import ConfigError, load_settings
from parley.inference.recording_files import Recording, public_headers, public_url, read_recording, write_recording
from parley.inference.recording_match import compare, exact_key, signature

CHAT = "/v1/chat/completions"

BASE: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who is user alice?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"name":"alice"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "user_12345"}]},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Looks a user up.",
                "parameters": {"type": "object", "properties": {"name": {"type": "string", "title": "Name"}}},
            },
        }
    ],
    "stream": True,
}


def changed(edit: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    edit(body)
    return body


def difference(body: dict[str, Any]) -> str | None:
    found = compare(signature(CHAT, body), signature(CHAT, BASE))
    return None if found is None else found.field


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda b: b["messages"][1].update(content="  Who is\n user   alice? "), id="whitespace"),
        pytest.param(
            lambda b: b["messages"][1].update(content=[{"type": "text", "text": "Who is user alice?"}]), id="parts"
        ),
        pytest.param(lambda b: b["messages"][3].update(content="user_12345"), id="tool result as string"),
        pytest.param(lambda b: b["messages"][2].update(content=None), id="no content"),
        pytest.param(lambda b: b["messages"][2]["tool_calls"][0].update(id="call_other"), id="call id"),
        pytest.param(lambda b: b["messages"][3].update(tool_call_id="call_other"), id="tool call id"),
        pytest.param(
            lambda b: b["messages"][2]["tool_calls"][0]["function"].update(arguments='{ "name" : "alice" }'),
            id="argument spacing",
        ),
        pytest.param(lambda b: b["tools"][0]["function"].update(description="Other words."), id="description"),
        pytest.param(
            lambda b: b["tools"][0]["function"]["parameters"]["properties"]["name"].pop("title"), id="schema detail"
        ),
        pytest.param(lambda b: b.update(temperature=0.2, top_p=0.9, seed=3, max_tokens=9), id="sampling"),
        pytest.param(lambda b: b.update(stream_options={"include_usage": True}, stream=False), id="stream"),
        pytest.param(lambda b: b.update(tool_choice="auto"), id="default tool choice"),
        pytest.param(lambda b: b.update(parallel_tool_calls=True), id="default parallel tool calls"),
        pytest.param(lambda b: b.update(response_format={"type": "text"}), id="text format"),
        pytest.param(lambda b: b.update(service_tier="default", user="someone"), id="other fields"),
    ],
)
def test_what_does_not_change_the_reply_still_matches(edit: Any) -> None:
    assert difference(changed(edit)) is None


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda b: b["messages"][1].update(content="Who is user bob?"), "messages[1].content"),
        (lambda b: b["messages"][0].update(role="developer"), "messages[0].role"),
        (
            lambda b: b["messages"][2]["tool_calls"][0]["function"].update(arguments='{"name":"bob"}'),
            "messages[2].tool_calls",
        ),
        (lambda b: b["messages"][2]["tool_calls"][0]["function"].update(name="find"), "messages[2].tool_calls"),
        (lambda b: b["messages"][3].update(content="user_67890"), "messages[3].content"),
        (lambda b: b["messages"].pop(), "messages"),
        (lambda b: b["messages"].append({"role": "user", "content": "More?"}), "messages[4].role"),
        (lambda b: b["tools"][0]["function"].update(name="find"), "tools"),
        (lambda b: b.pop("tools"), "tools"),
        (
            lambda b: b["tools"][0]["function"]["parameters"].update(properties={"username": {"type": "string"}}),
            "tool parameters",
        ),
        (lambda b: b.update(tool_choice="required"), "tool_choice"),
        (lambda b: b.update(parallel_tool_calls=False), "parallel_tool_calls"),
        (lambda b: b.update(response_format={"type": "json_object"}), "response_format"),
        (lambda b: b.update(model="gpt-4o-mini"), "model"),
    ],
)
def test_what_changes_the_reply_is_a_difference(edit: Any, field: str) -> None:
    assert difference(changed(edit)) == field


def test_the_exact_key_is_the_normalized_request() -> None:
    reordered = dict(reversed(list(BASE.items())))
    assert exact_key("post", CHAT, reordered) == exact_key("POST", CHAT, BASE)
    assert exact_key("POST", CHAT, changed(lambda b: b.update(temperature=0.2))) != exact_key("POST", CHAT, BASE)


def test_descriptions_inside_a_response_format_are_ignored() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "description": "A", "schema": {"type": "object"}}}
    reworded = copy.deepcopy(fmt)
    reworded["json_schema"]["description"] = "B"
    assert (
        compare(
            signature(CHAT, {**BASE, "response_format": fmt}), signature(CHAT, {**BASE, "response_format": reworded})
        )
        is None
    )


def test_parallel_tool_calls_does_not_matter_without_tools() -> None:
    no_tools = changed(lambda b: b.pop("tools"))
    assert compare(signature(CHAT, {**no_tools, "parallel_tool_calls": False}), signature(CHAT, no_tools)) is None


@pytest.mark.parametrize("strict", [True, False])
def test_strict_in_a_response_format_is_ignored(strict: bool) -> None:
    # A recorder may drop `strict` (issue 13): with it or without it, the same conversation.
    schema = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
    recorded = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    sent = copy.deepcopy(recorded)
    sent["json_schema"]["strict"] = strict
    text_format: dict[str, Any] = {"type": "json_schema", "name": "x", "schema": schema, "strict": strict}
    for request, recording in ((sent, recorded), (recorded, sent)):
        assert (
            compare(
                signature(CHAT, {**BASE, "response_format": request}),
                signature(CHAT, {**BASE, "response_format": recording}),
            )
            is None
        )
    assert (
        compare(
            signature(CHAT, {**BASE, "response_format": text_format}),
            signature(CHAT, {**BASE, "response_format": {k: v for k, v in text_format.items() if k != "strict"}}),
        )
        is None
    )


def test_credentials_never_reach_a_file() -> None:
    assert public_headers(
        {"Authorization": "Bearer sk", "api-key": "k", "X-Api-Key": "k", "Cookie": "c", "X-Tenant": "t"}
    ) == {"X-Tenant": "t"}
    assert public_url("https://user:pw@example.test/v1/chat?key=1&api_key=2&api-version=3") == (
        "https://example.test/v1/chat?api-version=3"
    )


def test_a_written_file_reads_back_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    body = [{"__data__": {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}}]
    recording = Recording(
        tmp_path / "out" / "a.json",
        "tests/t.py::t",
        {"method": "POST", "url": "u", "headers": {}, "body": BASE, "endpoint": CHAT, "model": "gpt-4o"},
        {"body": body, "is_streaming": True},
    )
    write_recording(recording)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.json"]
    again = read_recording(recording.path)
    assert again.test_id == "tests/t.py::t" and again.body == BASE
    assert json.loads(recording.path.read_text())["id_normalization_mapping"] == {}


def test_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "parley.yaml"
    config.write_text(f"inference:\n  recording:\n    dir: {tmp_path}\n")
    monkeypatch.setenv("PARLEY_INFERENCE__RECORDING__MODE", "record-if-missing")
    monkeypatch.setenv("PARLEY_INFERENCE__RECORDING__DELAY_MS", "25")
    recording = load_settings(config).inference.recording
    assert (recording.mode, recording.dir, recording.delay_ms) == ("record-if-missing", tmp_path, 25)
    assert recording.test_header == "X-Parley-Test-Id"
    monkeypatch.delenv("PARLEY_INFERENCE__RECORDING__DELAY_MS")
    monkeypatch.setenv("PARLEY_INFERENCE__RECORDING__MODE", "replay")
    with pytest.raises(ConfigError, match=r"inference\.recording\.dir: required when mode is 'replay'"):
        load_settings()
    monkeypatch.setenv("PARLEY_INFERENCE__RECORDING__MODE", "rewind")
    with pytest.raises(ConfigError, match=r"inference\.recording\.mode"):
        load_settings(config)
