"""Record, then replay: Parley records a fake upstream, then replays the same requests with it stopped.

The replayed event streams must be byte-identical to the recorded ones apart
from ids and timestamps. The recording files must follow the shared layout,
hold no secret, and say which test made them.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ROOT, ParleyProcess
from tests.recording_fixtures import (
    API_KEY,
    COMPLETION_TYPE,
    EMBEDDING_MODEL,
    HEADER_KEY,
    EmbeddingUpstream,
    chunk,
    normalized,
    recording_config,
    replay_config,
    write_chat_recording,
)

HEADER = "X-Parley-Test-Id"
SCENARIO = "tests/test_recording.py::scenario"
OTHER_TEST = "tests/test_recording.py::another_test"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def exchange(server: ParleyProcess) -> dict[str, bytes]:
    """The same requests, made against a recording or a replaying Parley: each reply, normalized."""
    out: dict[str, bytes] = {}
    scoped = {HEADER: SCENARIO}
    with httpx.Client(base_url=server.base_url, timeout=30, headers=scoped) as http:

        def stream(name: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            with http.stream("POST", path, json=body, headers=headers) as reply:
                assert reply.status_code == 200, reply.read()
                raw = reply.read()
            if path == "/v1/responses":
                from tests.support.stream_validator import validate_response_stream

                validate_response_stream(raw)  # recorded and replayed alike follow the protocol
            out[name] = normalized(raw)

        def post(name: str, path: str, body: dict[str, Any]) -> None:
            reply = http.post(path, json=body)
            assert reply.status_code == 200, reply.text
            out[name] = normalized(reply.content)

        stream("responses stream", "/v1/responses", {"model": "fake/fake-echo", "input": "Hello there", "stream": True})
        post("responses", "/v1/responses", {"model": "fake/fake-echo", "input": "Hello again"})
        tool_call = {"model": "fake/fake-tool", "input": "Weather in Paris?", "tools": [WEATHER_TOOL]}
        stream("responses tool stream", "/v1/responses", {**tool_call, "stream": True})
        post("responses tool", "/v1/responses", tool_call)
        chat = {"model": "fake/fake-echo", "messages": [{"role": "user", "content": "Say this back"}]}
        stream(
            "chat stream", "/v1/chat/completions", {**chat, "stream": True, "stream_options": {"include_usage": True}}
        )
        post("chat", "/v1/chat/completions", chat)
        # The same conversation under another test: a file of its own.
        stream("chat other test", "/v1/chat/completions", {**chat, "stream": True}, headers={HEADER: OTHER_TEST})
        post("embeddings", "/v1/embeddings", {"model": f"fake/{EMBEDDING_MODEL}", "input": ["one", "two words"]})
        post(
            "embeddings base64",
            "/v1/embeddings",
            {"model": f"fake/{EMBEDDING_MODEL}", "input": "three", "encoding_format": "base64", "dimensions": 4},
        )
        listing = http.get("/v1/models")
        assert listing.status_code == 200, listing.text
        out["models"] = listing.content
    # And one stream read by the official client, which checks the event protocol.
    events = server.client().responses.create(
        model="fake/fake-echo", input="Checked by the validator", stream=True, extra_headers=scoped
    )
    out["validated stream"] = normalized(json.dumps([e.type for e in events]).encode())
    return out


@dataclass
class RecordThenReplay:
    directory: Path
    recorded: dict[str, bytes]
    replayed: dict[str, bytes]
    upstream_calls: int
    record_output: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def record_then_replay(tmp_path_factory: pytest.TempPathFactory) -> RecordThenReplay:
    directory = tmp_path_factory.mktemp("recordings")
    with EmbeddingUpstream() as upstream:
        recorder = ParleyProcess(
            tmp_path_factory.mktemp("recorder"), recording_config(upstream.base_url, "record", directory)
        )
        recorder.start()
        try:
            recorded = exchange(recorder)
        finally:
            recorder.stop()
        calls = len(upstream.app.requests) + len(upstream.app.embedding_requests) + upstream.app.model_listings
        base_url = upstream.base_url
    # The upstream is gone: replay must not need it.
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + "/models", timeout=2)
    replayer = ParleyProcess(tmp_path_factory.mktemp("replayer"), recording_config(base_url, "replay", directory))
    replayer.start()
    try:
        replayed = exchange(replayer)
    finally:
        replayer.stop()
    return RecordThenReplay(directory, recorded, replayed, calls, recorder.output)


def recording_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


def test_replay_gives_the_recorded_streams_and_objects_byte_for_byte(record_then_replay: RecordThenReplay) -> None:
    recorded, replayed = record_then_replay.recorded, record_then_replay.replayed
    assert list(replayed) == list(recorded)
    for name in recorded:
        assert replayed[name] == recorded[name], name
    assert b"Hello there" in recorded["responses stream"]
    assert b"get_weather" in recorded["responses tool stream"]
    assert b'"discovered/fake-echo"' in recorded["models"]


def test_every_call_upstream_has_a_recording(record_then_replay: RecordThenReplay) -> None:
    files = recording_files(record_then_replay.directory)
    # 8 chat calls (one under another test), 2 embeddings, 1 model listing. Parley
    # streams from upstream whether its caller streams or not, so a request made
    # both ways is one call, recorded once (twice over the same file).
    assert record_then_replay.upstream_calls == 11
    assert len(files) == 9
    assert not list(record_then_replay.directory.glob(".recording-*")), "a temporary file was left behind"


def test_recording_files_follow_the_shared_layout(record_then_replay: RecordThenReplay) -> None:
    endpoints = []
    for path in recording_files(record_then_replay.directory):
        data = json.loads(path.read_text())
        assert set(data) == {"test_id", "request", "response", "id_normalization_mapping"}
        request, response = data["request"], data["response"]
        assert {"method", "url", "headers", "body", "endpoint", "model"} <= set(request)
        assert set(response) == {"body", "is_streaming"}
        endpoints.append(request["endpoint"])
        if request["endpoint"] == "/v1/chat/completions":
            assert request["method"] == "POST"
            assert request["url"].endswith("/v1/chat/completions")
            assert request["body"]["stream"] is True
            assert response["is_streaming"] is True
            for chunk in response["body"]:
                assert chunk["__type__"] == "openai.types.chat.chat_completion_chunk.ChatCompletionChunk"
                assert chunk["__data__"]["object"] == "chat.completion.chunk"
            assert response["body"][-1]["__data__"]["usage"]["total_tokens"] > 0
        elif request["endpoint"] == "/v1/embeddings":
            assert response["is_streaming"] is False
            assert response["body"]["__type__"] == "openai.types.create_embedding_response.CreateEmbeddingResponse"
        else:
            assert request["method"] == "GET"
            assert [m["__type__"] for m in response["body"]] == ["openai.types.model.Model"] * len(response["body"])
        assert path.name == path.stem + ".json" and len(path.stem) == 64
    assert sorted(set(endpoints)) == ["/v1/chat/completions", "/v1/embeddings", "/v1/models"]


def test_no_secret_is_written(record_then_replay: RecordThenReplay) -> None:
    for path in recording_files(record_then_replay.directory):
        text = path.read_text()
        assert API_KEY not in text
        assert HEADER_KEY not in text
        assert "authorization" not in text.lower()
        headers = json.loads(text)["request"]["headers"]
        if json.loads(text)["request"]["provider"] == "fake":
            assert headers == {"X-Fake-Tenant": "parley-tests"}


def test_each_file_names_the_test_that_made_it(record_then_replay: RecordThenReplay) -> None:
    by_test: dict[Any, list[str]] = {}
    for path in recording_files(record_then_replay.directory):
        data = json.loads(path.read_text())
        by_test.setdefault(data["test_id"], []).append(data["request"]["endpoint"])
    # The model listing is shared by every test, but still says who asked first.
    assert set(by_test) == {SCENARIO, OTHER_TEST}
    assert by_test[OTHER_TEST] == ["/v1/chat/completions"]


def parley_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley", "recordings", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_cli_lists_shows_and_checks_recordings(record_then_replay: RecordThenReplay) -> None:
    directory = record_then_replay.directory
    listing = parley_cli("list", str(directory))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 9
    chat_lines = [line.split("\t") for line in lines if "message" in line]
    assert ["fake-echo", "1 message", "streaming"] in [fields[2:] for fields in chat_lines]
    assert any(line.split("\t")[1] == OTHER_TEST for line in lines)
    assert any("2 inputs\tnot streaming" in line for line in lines)
    assert any("model listing" in line for line in lines)

    check = parley_cli("check", str(directory))
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip().endswith("9 ok, 0 broken")

    (echo,) = [
        path
        for path in recording_files(directory)
        if json.loads(path.read_text())["request"]["body"].get("messages")
        == [{"role": "user", "content": "Hello there"}]
    ]
    show = parley_cli("show", str(echo))
    assert show.returncode == 0, show.stderr
    assert "[user] Hello there" in show.stdout
    assert "-- reply\n[assistant] Hello there\nfinish: stop" in show.stdout


def test_cli_takes_the_directory_from_the_configuration(tmp_path: Path, record_then_replay: RecordThenReplay) -> None:
    config = tmp_path / "parley.yaml"
    config.write_text(f"inference:\n  recording:\n    mode: replay\n    dir: {record_then_replay.directory}\n")
    check = parley_cli("check", "--config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "9 ok" in check.stdout
    unset = parley_cli("check")
    assert unset.returncode != 0
    assert "inference.recording.dir" in unset.stderr


@pytest.fixture(scope="module")
def live_upstream() -> Iterator[EmbeddingUpstream]:
    with EmbeddingUpstream() as upstream:
        yield upstream


def test_record_if_missing_calls_upstream_only_for_what_is_not_recorded(
    tmp_path: Path, live_upstream: EmbeddingUpstream
) -> None:
    directory = tmp_path / "recordings"
    server = ParleyProcess(
        tmp_path / "parley", recording_config(live_upstream.base_url, "record-if-missing", directory)
    )
    server.start()
    try:
        client = server.client()
        calls = live_upstream.app.requests

        def ask(text: str) -> str:
            reply = client.chat.completions.create(model="fake/fake-echo", messages=[{"role": "user", "content": text}])
            return reply.choices[0].message.content or ""

        before = len(calls)
        assert ask("first question") == "first question"
        assert len(calls) == before + 1
        assert len(recording_files(directory)) == 1
        assert ask("first   question") == "first question"  # the same conversation: replayed
        assert len(calls) == before + 1
        assert ask("second question") == "second question"
        assert len(calls) == before + 2
        assert len(recording_files(directory)) == 2

        before = len(live_upstream.app.embedding_requests)
        for _ in range(2):
            reply = client.embeddings.create(model=f"fake/{EMBEDDING_MODEL}", input="embed me")
            assert len(reply.data[0].embedding) == 8
        assert len(live_upstream.app.embedding_requests) == before + 1
    finally:
        server.stop()


def test_a_failed_call_is_not_recorded(tmp_path: Path, live_upstream: EmbeddingUpstream) -> None:
    directory = tmp_path / "recordings"
    server = ParleyProcess(tmp_path / "parley", recording_config(live_upstream.base_url, "record", directory))
    server.start()
    try:
        with pytest.raises(openai.BadRequestError):
            server.client().chat.completions.create(
                model="fake/fake-error-400", messages=[{"role": "user", "content": "hi"}]
            )
        assert recording_files(directory) == []
    finally:
        server.stop()


def test_a_corrupt_or_truncated_file_is_named(tmp_path: Path, record_then_replay: RecordThenReplay) -> None:
    directory = tmp_path / "recordings"
    directory.mkdir()
    files = recording_files(record_then_replay.directory)
    (echo,) = [path for path in files if b'"content": "Hello again"' in path.read_bytes()]
    truncated = directory / echo.name
    truncated.write_bytes(echo.read_bytes()[:700])
    wrong = directory / ("0" * 64 + ".json")
    wrong.write_text(json.dumps({"test_id": None, "request": {"endpoint": "/v1/chat/completions", "body": {}}}))
    shutil.copy(files[0] if files[0] != echo else files[1], directory)

    check = parley_cli("check", str(directory))
    assert check.returncode == 1
    assert f"BROKEN {truncated}: is not valid JSON (truncated or corrupt?)" in check.stdout
    assert f"BROKEN {wrong}: has no 'response.body'" in check.stdout
    assert "3 recording(s)" in check.stdout and "1 ok, 2 broken" in check.stdout

    server = ParleyProcess(tmp_path / "parley", recording_config("http://127.0.0.1:9/v1", "replay", directory))
    server.start()  # the broken files do not keep the others from being served
    try:
        assert any(truncated.name in line for line in server.output), "the log names the broken file"
        with pytest.raises(openai.NotFoundError) as caught:
            server.client().responses.create(model="fake/fake-echo", input="Hello again")
        message = str(caught.value)
        assert "could not be read" in message
        assert f"{truncated.name} (is not valid JSON (truncated or corrupt?)" in message
        assert wrong.name in message
    finally:
        server.stop()


def test_a_replayed_embeddings_miss_names_the_difference(tmp_path: Path, record_then_replay: RecordThenReplay) -> None:
    server = ParleyProcess(tmp_path, recording_config("http://127.0.0.1:9/v1", "replay", record_then_replay.directory))
    server.start()
    try:
        client = server.client()
        # The official client asks for base64 unless told otherwise; the scenario asked for floats.
        reply = client.embeddings.create(
            model=f"fake/{EMBEDDING_MODEL}",
            input=["one", "two words"],
            encoding_format="float",
            extra_headers={HEADER: "tests/elsewhere"},
        )
        assert [item.index for item in reply.data] == [0, 1]
        with pytest.raises(openai.NotFoundError) as caught:
            client.embeddings.create(
                model=f"fake/{EMBEDDING_MODEL}", input=["one", "three words"], encoding_format="float"
            )
        assert 'first difference: input: the request has ["one","three words"]' in str(caught.value)
    finally:
        server.stop()


def test_the_embedded_model_is_recorded_and_replayed_without_loading_it(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    directory = tmp_path / "recordings"
    request = {
        "model": "local/smollm2-135m",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8,
        "seed": 1,
        "temperature": 0,
    }
    replies = []
    for mode in ("record", "replay"):
        model: dict[str, Any] = {}
        if mode == "replay":
            # Replay never loads the weights: a file that does not exist is never noticed.
            model = {"path": str(tmp_path / "missing.gguf")}
        providers = {"local": {"type": "local", "models": {"smollm2-135m": model}}}
        config = {"inference": {"providers": providers, "recording": {"mode": mode, "dir": str(directory)}}}
        server = ParleyProcess(tmp_path / mode, config)
        server.start()
        try:
            replies.append(server.client().chat.completions.create(**request).choices[0].message.content)  # type: ignore[call-overload]
        finally:
            server.stop()
    assert replies[0] and replies[0] == replies[1]
    (path,) = recording_files(directory)
    recorded = json.loads(path.read_text())["request"]
    assert recorded["url"] == "local://local/v1/chat/completions"
    assert recorded["body"]["model"] == "smollm2-135m"


def test_embeddings_need_a_provider_that_serves_them(embedded: ParleyProcess) -> None:
    with embedded.http() as http:
        reply = http.post("/v1/embeddings", json={"model": "smollm2-135m", "input": "hello"})
        assert reply.status_code == 400
        assert reply.json()["error"]["message"] == "Provider 'local' does not serve embeddings."
        assert reply.json()["error"]["param"] == "model"
        empty = http.post("/v1/embeddings", json={"model": "smollm2-135m", "input": []})
        assert empty.status_code == 400
        assert empty.json()["error"]["param"] == "input"
        unknown = http.post("/v1/embeddings", json={"model": "nope", "input": "x"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"


# Files written by hand, as another recorder (or a bad copy) could have left them.

HELLO = [{"role": "user", "content": "Hello"}]
ANSWER = [chunk(role="assistant"), chunk("Hi "), chunk("there."), chunk(finish="stop")]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        pytest.param(["hi"], "'request.body.messages[0]' is not a message object", id="a string as message"),
        pytest.param([{"content": "hi"}], "'request.body.messages[0].role' is not a string", id="no role"),
        pytest.param(
            [{"role": "assistant", "content": None, "tool_calls": "x"}],
            "'request.body.messages[0].tool_calls' is not a list",
            id="tool_calls not a list",
        ),
        pytest.param(
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": "lookup"}]}],
            "'request.body.messages[0].tool_calls[0]' is not a tool call with a 'function' object",
            id="function not an object",
        ),
        pytest.param(
            [{"role": "user", "content": 3}],
            "'request.body.messages[0].content' is neither a string nor a list of parts",
            id="content a number",
        ),
    ],
)
def test_check_reports_a_malformed_message_and_show_never_tracebacks(
    tmp_path: Path, messages: list[Any], field: str
) -> None:
    path = write_chat_recording(tmp_path / "bad.json", messages, ANSWER)
    write_chat_recording(tmp_path / "good.json", HELLO, ANSWER)
    check = parley_cli("check", str(tmp_path))
    assert check.returncode == 1
    assert check.stdout.splitlines() == [
        f"BROKEN {path}: {field}",
        f"2 recording(s) in {tmp_path}: 1 ok, 1 broken",
    ]
    show = parley_cli("show", str(path))
    assert show.returncode == 1
    assert "Traceback" not in show.stderr
    assert show.stderr.strip() == f"Error: Recording file {path}: {field}"
    assert "[assistant] Hi there." in parley_cli("show", str(tmp_path / "good.json")).stdout


TRUNCATED = {
    "no chunks": ([], "'response.body' holds no choice: the reply is empty or truncated"),
    "cut before finish_reason": (
        ANSWER[:3],
        "'response.body' ends before a finish_reason for choice 0: the reply is truncated",
    ),
}


def test_a_reply_cut_short_is_broken_for_check_and_named_on_replay(tmp_path: Path) -> None:
    directory = tmp_path / "recordings"
    paths = {}
    for index, (name, (chunks, _)) in enumerate(TRUNCATED.items()):
        question = [{"role": "user", "content": f"Question {index}"}]
        paths[name] = write_chat_recording(directory / f"{index}{'0' * 63}.json", question, chunks)
    check = parley_cli("check", str(directory))
    assert check.returncode == 1
    for name, (_, problem) in TRUNCATED.items():
        assert f"BROKEN {paths[name]}: {problem}" in check.stdout
    assert "0 ok, 2 broken" in check.stdout

    server = ParleyProcess(tmp_path / "parley", replay_config(directory))
    server.start()
    try:
        client = server.client()
        for index, (name, (_, problem)) in enumerate(TRUNCATED.items()):
            messages: Any = [{"role": "user", "content": f"Question {index}"}]
            for stream in (False, True):
                # Never an empty completed answer: an error that names the file and what is wrong.
                with pytest.raises(openai.NotFoundError) as caught:
                    reply = client.chat.completions.create(model="openai/gpt-4o", messages=messages, stream=stream)
                    list(reply) if stream else reply  # type: ignore[arg-type]
                assert f"{paths[name].name} ({problem})" in str(caught.value), name
            with pytest.raises(openai.NotFoundError) as caught:
                client.responses.create(model="openai/gpt-4o", input=f"Question {index}")
            assert f"{paths[name].name} ({problem})" in str(caught.value), name
    finally:
        server.stop()


def test_cli_list_of_a_missing_directory_is_an_error_like_check(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    for command in ("list", "check"):
        result = parley_cli(command, str(missing))
        assert result.returncode == 1, command
        assert result.stdout == ""
        assert result.stderr.strip() == f"Error: {missing} is not a directory", command


def test_a_non_streaming_recording_replays_through_chat_and_responses(tmp_path: Path) -> None:
    completion = {
        "id": "rec-0123456789ab",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Recorded without streaming."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }
    directory = tmp_path / "recordings"
    path = write_chat_recording(
        directory / "completion.json", HELLO, {"__type__": COMPLETION_TYPE, "__data__": completion}, streaming=False
    )
    listing = parley_cli("list", str(directory))
    assert listing.stdout.split("\t")[2:] == ["gpt-4o", "1 message", "not streaming\n"]
    assert "[assistant] Recorded without streaming.\nfinish: stop" in parley_cli("show", str(path)).stdout

    server = ParleyProcess(tmp_path / "parley", replay_config(directory))
    server.start()
    try:
        client = server.client()
        reply = client.chat.completions.create(model="openai/gpt-4o", messages=HELLO)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == "Recorded without streaming."
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage is not None and reply.usage.total_tokens == 9
        chunks = list(
            client.chat.completions.create(
                model="openai/gpt-4o",
                messages=HELLO,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Recorded without streaming."
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 9
        response = client.responses.create(model="openai/gpt-4o", input="Hello")
        assert (response.status, response.output_text) == ("completed", "Recorded without streaming.")
        events = list(client.responses.create(model="openai/gpt-4o", input="Hello", stream=True))
        assert events[-1].type == "response.completed"
        assert events[-1].response.output_text == "Recorded without streaming."  # type: ignore[union-attr]
    finally:
        server.stop()


def test_restored_ids_are_id_values_only_never_message_text(tmp_path: Path) -> None:
    # The recorder wrote "call_NORMALIZED" for the call id "call_original"; the
    # model's text mentions the normalized string too, and must reach the client as it was.
    text = "Your ticket is call_NORMALIZED; call_NORMALIZED-2 is another."
    call = {"index": 0, "id": "call_NORMALIZED", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    chunks = [chunk(text, role="assistant"), chunk(tool_calls=[call]), chunk(finish="tool_calls")]
    directory = tmp_path / "recordings"
    write_chat_recording(
        directory / "ids.json", HELLO, chunks, tools=[tool], mapping={"call_original": "call_NORMALIZED"}
    )
    server = ParleyProcess(tmp_path / "parley", replay_config(directory))
    server.start()
    try:
        reply = server.client().chat.completions.create(model="openai/gpt-4o", messages=HELLO, tools=[tool])  # type: ignore[arg-type, list-item]
        message = reply.choices[0].message
        assert message.content == text
        assert [(c.id, c.function.name) for c in message.tool_calls or []] == [("call_original", "lookup")]  # type: ignore[union-attr]
    finally:
        server.stop()


PERSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "description": "A person.",
        "schema": {
            "type": "object",
            "description": "Someone.",
            "properties": {
                "name": {"type": "string", "description": "Their name."},
                "description": {"type": "string", "description": "What they do."},
            },
            "required": ["name", "description"],
        },
    },
}


def test_response_format_ignores_descriptions_but_not_a_property_called_description(tmp_path: Path) -> None:
    directory = tmp_path / "recordings"
    reply = [chunk('{"name": "Ada", "description": "mathematician"}', role="assistant"), chunk(finish="stop")]
    write_chat_recording(directory / "format.json", HELLO, reply, response_format=PERSON_FORMAT)
    reworded = copy.deepcopy(PERSON_FORMAT)
    reworded["json_schema"]["description"] = "Somebody."
    schema = reworded["json_schema"]["schema"]
    schema["description"] = "Anyone."
    schema["properties"]["name"]["description"] = "What they are called."
    schema["properties"]["description"]["description"] = "Their work."
    renamed = copy.deepcopy(PERSON_FORMAT)
    properties = renamed["json_schema"]["schema"]["properties"]
    properties["summary"] = properties.pop("description")
    renamed["json_schema"]["schema"]["required"] = ["name", "summary"]

    server = ParleyProcess(tmp_path / "parley", replay_config(directory))
    server.start()
    try:
        client = server.client()
        answer = client.chat.completions.create(model="openai/gpt-4o", messages=HELLO, response_format=reworded)  # type: ignore[arg-type]
        assert json.loads(answer.choices[0].message.content or "") == {"name": "Ada", "description": "mathematician"}
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="openai/gpt-4o", messages=HELLO, response_format=renamed)  # type: ignore[arg-type]
        assert "first difference: response_format:" in str(caught.value)
        assert "summary" in str(caught.value)
    finally:
        server.stop()


@pytest.mark.parametrize("failure", ["read-only directory", "directory in the file's place"])
def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, live_upstream: EmbeddingUpstream, failure: str
) -> None:
    if failure == "read-only directory" and os.geteuid() == 0:
        pytest.skip("root writes to a read-only directory; the other case fails the write for real")
    directory = tmp_path / "recordings"
    server = ParleyProcess(tmp_path / "parley", recording_config(live_upstream.base_url, "record", directory))
    server.start()
    client = server.client()
    messages: Any = [{"role": "user", "content": "write me down"}]
    try:
        assert client.chat.completions.create(model="fake/fake-echo", messages=messages).choices
        (written,) = recording_files(directory)
        if failure == "read-only directory":
            directory.chmod(0o555)
        else:
            written.unlink()
            written.mkdir()
        # The upstream answered, but the recording cannot be written: an error, not a silent loss.
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="fake/fake-echo", messages=messages)
        assert [path.name for path in directory.iterdir() if path.name.startswith(".recording-")] == []
        if failure != "read-only directory":
            assert written.is_dir() and list(written.iterdir()) == []
    finally:
        directory.chmod(0o755)
        server.stop()


WEATHER = [{"role": "user", "content": "Weather in Paris and Rome?"}]
WEATHER_CHAT_TOOL = {"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}


def weather_calls(*cities: str) -> list[dict[str, Any]]:
    """The chunks of a reply that calls get_weather for each city, in one message."""
    calls = [
        chunk(
            tool_calls=[
                {
                    "index": index,
                    "id": f"call_{city}",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
                }
            ]
        )
        for index, city in enumerate(cities)
    ]
    return [chunk(role="assistant"), *calls, chunk(finish="tool_calls")]


def test_parallel_tool_calls_picks_the_recording_made_with_the_same_setting(tmp_path: Path) -> None:
    # Both files were recorded at another temperature, so neither is the same request: each
    # must be found as the same conversation, and parallel_tool_calls is part of it (issue 13:
    # a request with it false was served the two-call reply, first by file name).
    directory = tmp_path / "recordings"
    write_chat_recording(
        directory / "a-parallel.json",
        WEATHER,
        weather_calls("Paris", "Rome"),
        tools=[WEATHER_CHAT_TOOL],
        temperature=0.7,
    )
    write_chat_recording(
        directory / "b-one-call.json",
        WEATHER,
        weather_calls("Paris"),
        tools=[WEATHER_CHAT_TOOL],
        temperature=0.7,
        parallel_tool_calls=False,
    )
    server = ParleyProcess(tmp_path / "parley", replay_config(directory))
    server.start()
    try:
        client = server.client()
        for parallel, cities in ((None, ["Paris", "Rome"]), (True, ["Paris", "Rome"]), (False, ["Paris"])):
            setting: dict[str, Any] = {} if parallel is None else {"parallel_tool_calls": parallel}
            reply = client.chat.completions.create(
                model="openai/gpt-4o",
                messages=WEATHER,  # type: ignore[arg-type]
                tools=[WEATHER_CHAT_TOOL],  # type: ignore[list-item]
                **setting,
            )
            calls = reply.choices[0].message.tool_calls or []
            assert [json.loads(c.function.arguments)["city"] for c in calls] == cities, parallel  # type: ignore[union-attr]
            response = client.responses.create(
                model="openai/gpt-4o",
                input="Weather in Paris and Rome?",
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
                **setting,
            )
            items = [item for item in response.output if item.type == "function_call"]
            assert [json.loads(item.arguments)["city"] for item in items] == cities, parallel  # type: ignore[union-attr]
    finally:
        server.stop()


def test_a_recording_without_strict_answers_a_strict_response_format(tmp_path: Path) -> None:
    # A recorder may drop json_schema.strict from what it writes (issue 13): strict or not, the same answer.
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    directory = tmp_path / "recordings"
    reply = [chunk('{"name": "Ada"}', role="assistant"), chunk(finish="stop")]
    unstrict = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    write_chat_recording(directory / "format.json", HELLO, reply, response_format=unstrict)
    server = ParleyProcess(tmp_path / "parley", replay_config(directory))
    server.start()
    try:
        client = server.client()
        for strict in (True, False):
            fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": strict}}
            answer = client.chat.completions.create(model="openai/gpt-4o", messages=HELLO, response_format=fmt)  # type: ignore[arg-type]
            assert answer.choices[0].message.content == '{"name": "Ada"}'
            response = client.responses.create(
                model="openai/gpt-4o",
                input="Hello",
                text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": strict}},
            )
            assert response.output_text == '{"name": "Ada"}'
    finally:
        server.stop()
