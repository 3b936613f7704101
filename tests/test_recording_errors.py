"""Replaying calls that failed, recorded by another server (`is_exception: true`, as llama-stack writes them).

A recorded failure is not a broken file: it replays as the error the call
gave. Two ways to check it:

- against the live answer: Parley answers requests live from the fake upstream
  (statuses 400, 429, 500, and a stream cut by an error frame); the calls it
  made are then made again with the OpenAI SDK and recorded as that recorder
  records a failure; a replaying Parley, the upstream gone, must answer each
  request exactly as the live one did;
- from the files in tests/recordings/upstream_errors: failures the fake
  upstream cannot give (a timeout, a connection error, a text body, the
  recorder's older message-only form, an error of the recording server itself).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ROOT, ParleyProcess
from tests.recording_fixtures import (
    EmbeddingUpstream,
    normalized,
    record_as_another_server,
    recording_config,
    replay_config,
    write_recording,
)

ERRORS = ROOT / "tests" / "recordings" / "upstream_errors"
REPLAYED_BASE_URL = "http://127.0.0.1:9/v1"  # replay_config's provider: a closed port


def requests_for(model: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, path, body): one question asked through chat completions and Responses, streamed and not."""
    question = f"Question for {model}"
    chat = {"model": f"fake/{model}", "messages": [{"role": "user", "content": question}]}
    responses = {"model": f"fake/{model}", "input": question}
    return [
        (f"{model} chat", "/v1/chat/completions", chat),
        (f"{model} chat stream", "/v1/chat/completions", {**chat, "stream": True}),
        (f"{model} responses", "/v1/responses", responses),
        (f"{model} responses stream", "/v1/responses", {**responses, "stream": True}),
    ]


FAILING_MODELS = ["fake-error-400", "fake-error-429", "fake-error-500", "fake-midstream-error"]
REQUESTS = [request for model in FAILING_MODELS for request in requests_for(model)]


def answers(server: ParleyProcess) -> dict[str, tuple[int, Any]]:
    """Each request's status and answer: the error object, or the normalized stream."""
    out: dict[str, tuple[int, Any]] = {}
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        for name, path, body in REQUESTS:
            with http.stream("POST", path, json=body) as reply:
                raw = reply.read()
            if reply.headers.get("content-type", "").startswith("text/event-stream"):
                out[name] = (reply.status_code, normalized(raw).decode())
            else:
                out[name] = (reply.status_code, json.loads(normalized(raw)))
    return out


@pytest.fixture(scope="module")
def live_and_replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], Path]:
    directory = tmp_path_factory.mktemp("failed-calls")
    with EmbeddingUpstream() as upstream:
        live = ParleyProcess(tmp_path_factory.mktemp("live"), recording_config(upstream.base_url, "live", directory))
        live.start()
        try:
            live_answers = answers(live)
        finally:
            live.stop()
        # The calls Parley made, recorded by another server making them itself.
        sent = {json.dumps(body, sort_keys=True): body for body in upstream.app.requests}
        for index, body in enumerate(sent.values()):
            response = record_as_another_server(upstream.base_url, body)
            write_recording(directory / f"{index:02d}.json", body, response, test_id="tests/elsewhere.py::test_x")
        base_url = upstream.base_url
    replay = ParleyProcess(tmp_path_factory.mktemp("replay"), recording_config(base_url, "replay", directory))
    replay.start()
    try:
        replayed = answers(replay)
    finally:
        replay.stop()
    return live_answers, replayed, directory


def test_the_recorded_failures_are_in_the_other_recorders_form(
    live_and_replayed: tuple[dict[str, Any], dict[str, Any], Path],
) -> None:
    _, _, directory = live_and_replayed
    responses = [json.loads(path.read_text())["response"] for path in sorted(directory.glob("*.json"))]
    assert len(responses) == len(FAILING_MODELS)  # one call upstream per question, however it was asked
    by_type = {response["exception_data"]["type"]: response for response in responses}
    assert set(by_type) == {"BadRequestError", "RateLimitError", "InternalServerError", "APIError"}
    for kind in ("BadRequestError", "RateLimitError", "InternalServerError"):
        assert by_type[kind]["body"] is None and by_type[kind]["is_streaming"] is False
        assert by_type[kind]["exception_data"]["category"] == "provider_sdk"
    assert by_type["BadRequestError"]["exception_data"]["body"] == {
        "message": "fake bad request",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "fake_code",
    }
    midstream = by_type["APIError"]
    assert midstream["is_streaming"] is True
    text = [
        choice["delta"].get("content") or "" for chunk in midstream["body"] for choice in chunk["__data__"]["choices"]
    ]
    assert "".join(text) == "one two three"
    assert midstream["exception_data"] == {
        "category": "unknown",
        "type": "APIError",
        "message": "fake mid-stream failure",
    }


@pytest.mark.parametrize("name", [name for name, _, _ in REQUESTS])
def test_a_recorded_failure_replays_as_the_live_answer(
    live_and_replayed: tuple[dict[str, Any], dict[str, Any], Path], name: str
) -> None:
    live, replayed, _ = live_and_replayed
    assert replayed[name] == live[name]
    status, answer = live[name]
    assert status != 404, answer  # the upstream was asked, and failed
    if "400" in name and not name.endswith("stream"):
        # The upstream's status and error, passed on, as live.
        assert (status, answer) == (
            400,
            {
                "error": {
                    "message": "fake bad request",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "fake_code",
                }
            },
        )
    if "midstream" in name and name.endswith("stream"):
        assert " two" in answer and "fake mid-stream failure" in answer  # what came first, then the error


# Files in the recorder's form, for failures the fake upstream cannot give.

UNAVAILABLE = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "book",
        "schema": {
            "type": "object",
            "properties": {"title": {"type": "string"}},
            "required": ["title"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
# file -> (the question, other request fields, the status and error Parley answers with)
RECORDED: dict[str, tuple[str, dict[str, Any], int, dict[str, Any]]] = {
    "timeout.json": (
        "What is the capital of France?",
        {},
        504,
        {
            "message": f"Provider 'openai' ({REPLAYED_BASE_URL}) did not answer in time.",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_timeout",
        },
    ),
    "connection_error.json": (
        "Name a prime number.",
        {},
        502,
        {
            "message": f"Provider 'openai' ({REPLAYED_BASE_URL}) is unreachable: APIConnectionError",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_unavailable",
        },
    ),
    "bad_request_message_only.json": (
        "Recommend a book as JSON.",
        {"response_format": FORMAT},
        400,
        {
            "message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        },
    ),
    "service_unavailable.json": (
        "Say hello.",
        {},
        502,
        {
            "message": f"Provider 'openai' failed with status 503: {UNAVAILABLE}",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_unavailable",
        },
    ),
    "model_not_found.json": (
        "Tell me a joke.",
        {},
        404,
        {
            "message": "Model 'gpt-4o' not found. Use 'client.models.list()' to list available Models.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        },
    ),
}
STREAMED_THEN_FAILED = "Count to five."
STREAM_FAILURE = "The server had an error while processing your request. Sorry about that!"


@pytest.fixture(scope="module")
def replay_errors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    server = ParleyProcess(tmp_path_factory.mktemp("replay-errors"), replay_config(ERRORS))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
@pytest.mark.parametrize("file", sorted(RECORDED))
def test_a_recorded_failure_replays_as_its_status_and_error(
    replay_errors: ParleyProcess, file: str, stream: bool
) -> None:
    question, fields, status, error = RECORDED[file]
    body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": question}], **fields}
    with replay_errors.http() as http:
        reply = http.post("/v1/chat/completions", json={**body, "stream": stream})
        assert (reply.status_code, reply.json()) == (status, {"error": error})
        if not fields:
            response = http.post("/v1/responses", json={"model": "openai/gpt-4o", "input": question})
            assert (response.status_code, response.json()) == (status, {"error": error})


def test_a_failure_recorded_while_streaming_replays_what_came_first_then_the_error(
    replay_errors: ParleyProcess,
) -> None:
    client = replay_errors.client()
    message = f"Provider 'openai' failed mid-stream: {STREAM_FAILURE}"
    deltas: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for item in client.chat.completions.create(
            model="openai/gpt-4o", messages=[{"role": "user", "content": STREAMED_THEN_FAILED}], stream=True
        ):
            deltas += [choice.delta.content or "" for choice in item.choices]
    assert "".join(deltas) == "One, two, three,"
    assert caught.value.message == message
    events = list(client.responses.create(model="openai/gpt-4o", input=STREAMED_THEN_FAILED, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "One, two, three,"
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None  # type: ignore[union-attr]
    assert events[-1].response.error.message == message  # type: ignore[union-attr]


def parley_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley", "recordings", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_check_list_and_show_take_a_recorded_failure_for_a_reply() -> None:
    check = parley_cli("check", str(ERRORS))
    assert check.returncode == 0, check.stdout
    assert check.stdout.strip().endswith(f"{len(RECORDED) + 1} ok, 0 broken")
    lines = {line.split("\t")[0]: line.split("\t")[3:] for line in parley_cli("list", str(ERRORS)).stdout.splitlines()}
    assert lines["service_unavailable.json"] == ["1 message", "not streaming", "failed with status 503"]
    assert lines["timeout.json"] == ["1 message", "not streaming", "failed"]
    assert lines["failed_while_streaming.json"] == ["1 message", "streaming", "failed"]
    show = parley_cli("show", str(ERRORS / "failed_while_streaming.json"))
    assert show.stdout.endswith(
        f"-- reply\n[assistant] One, two, three,\nfinish: -\nfailed: APIError: {STREAM_FAILURE}\n"
    )
    show = parley_cli("show", str(ERRORS / "bad_request_message_only.json"))
    assert show.stdout.endswith(
        "-- reply\nfailed: an exception, status 400: Invalid parameter: 'response_format' of type 'json_schema'"
        " is not supported with this model.\n"
    )


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda r: r.update(exception_data="boom"), "'response.exception_data' is not an object"),
        (lambda r: r["exception_data"].update(status_code="400"), "is not an HTTP status"),
        (lambda r: r.update(body={"choices": []}), "'response.body' of a failed call is neither null nor the chunks"),
    ],
)
def test_a_failure_the_recorder_could_not_have_written_is_broken(tmp_path: Path, edit: Any, problem: str) -> None:
    data = json.loads((ERRORS / "service_unavailable.json").read_text())
    edit(data["response"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    shutil.copy(ERRORS / "timeout.json", tmp_path)
    check = parley_cli("check", str(tmp_path))
    assert check.returncode == 1
    assert f"BROKEN {path}: " in check.stdout and problem in check.stdout
    assert "1 ok, 1 broken" in check.stdout
