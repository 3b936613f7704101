"""The shared tool-execution recordings, end to end: Responses with an MCP tool, replayed offline.

Parley replays the model's side of each multi-step flow from ../shared/recordings
and runs every tool call on the real MCP server of `tests/mcp_server.py`; each
step's request (with the tool's real result in it) must match its recording,
so the flow completes only if the server answers exactly as the recorded one did.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ParleyProcess
from tests.mcp_server import RecordedToolServer
from tests.recording_fixtures import SHARED_RECORDINGS, replay_config

pytestmark = pytest.mark.skipif(not SHARED_RECORDINGS.is_dir(), reason="../shared/recordings is not here")

# case -> the tools called in order, their results, and what the final answer says.
CASES = {
    "user_file_access_check": (["get_user_id", "check_file_access"], ["user_12345", "yes"], "yes"),
    "user_permissions_workflow": (
        ["get_user_id", "get_user_permissions", "check_file_access"],
        ["user_11111", "admin", "no"],
        "no",
    ),
    "experiment_results_lookup": (["get_experiment_id", "get_experiment_results"], ["exp_004", None], "100°C"),
    "experiment_analysis_streaming": (["get_experiment_id", "get_experiment_results"], ["exp_003", None], "85%"),
}


def first_prompts() -> dict[str, tuple[str, str]]:
    """case -> (a test id that recorded it, the user prompt), from the recordings' first steps."""
    found: dict[str, tuple[str, str]] = {}
    if not SHARED_RECORDINGS.is_dir():
        return found
    for path in sorted(SHARED_RECORDINGS.glob("*.json")):
        data = json.loads(path.read_text())
        messages = data["request"]["body"]["messages"]
        if "tool_execution" in data["test_id"] and len(messages) == 1:
            case = data["test_id"].rsplit("gpt-4o-", 1)[1].rstrip("]")
            found.setdefault(case, (data["test_id"], messages[0]["content"]))
    return found


PROMPTS = first_prompts()


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with RecordedToolServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    server = ParleyProcess(tmp_path_factory.mktemp("replay-tools"), replay_config(SHARED_RECORDINGS))
    server.start()
    yield server.client()
    server.stop()


def test_every_tool_execution_case_is_covered() -> None:
    assert set(PROMPTS) == set(CASES)


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_multi_step_mcp_flow_replays_to_its_recorded_answer(
    client: openai.OpenAI, mcp_url: str, case: str, stream: bool
) -> None:
    test_id, prompt = PROMPTS[case]
    tool: Any = {"type": "mcp", "server_label": "localmcp", "server_url": mcp_url, "require_approval": "never"}
    request: dict[str, Any] = {"model": "openai/gpt-4o", "input": prompt, "tools": [tool]}
    headers = {"X-Parley-Test-Id": test_id}
    if stream:
        events = list(client.responses.create(**request, stream=True, extra_headers=headers))
        assert events[-1].type == "response.completed"
        response = events[-1].response  # type: ignore[union-attr]
    else:
        response = client.responses.create(**request, extra_headers=headers)
    names, outputs, answer = CASES[case]
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["mcp_list_tools", *["mcp_call"] * len(names), "message"]
    calls = [item for item in response.output if item.type == "mcp_call"]
    assert [call.name for call in calls] == names  # type: ignore[union-attr]
    for call, output in zip(calls, outputs, strict=True):
        assert call.error is None  # type: ignore[union-attr]
        if output is not None:
            assert call.output == output  # type: ignore[union-attr]
    assert answer in response.output_text


@pytest.fixture
def first_step_only(tmp_path: Path) -> tuple[Path, list[str]]:
    """The permissions flow's first step as recorded; its second step with another tool result.

    The first step replays (the model calls get_user_id), the real tool answers
    `user_11111`, and the second step's request then matches no recording: the
    files say the tool answered `user_22222`.
    """
    test_id, _ = PROMPTS["user_permissions_workflow"]
    directory = tmp_path / "recordings"
    directory.mkdir()
    edited = []
    for path in sorted(SHARED_RECORDINGS.glob("*.json")):
        data = json.loads(path.read_text())
        messages = data["request"]["body"]["messages"]
        if data["test_id"] != test_id or len(messages) not in (1, 3):
            continue
        if len(messages) == 3:
            assert messages[2]["content"] == [{"type": "text", "text": "user_11111"}]
            messages[2]["content"] = [{"type": "text", "text": "user_22222"}]
            edited.append(path.name)
        (directory / path.name).write_text(json.dumps(data))
    assert edited
    return directory, edited


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
def test_a_miss_in_the_middle_of_a_flow_fails_the_response_naming_the_closest_file(
    tmp_path: Path, mcp_url: str, first_step_only: tuple[Path, list[str]], stream: bool
) -> None:
    directory, edited = first_step_only
    test_id, prompt = PROMPTS["user_permissions_workflow"]
    server = ParleyProcess(tmp_path / "parley", replay_config(directory))
    server.start()
    try:
        client = server.client(timeout=30)
        tool: Any = {"type": "mcp", "server_label": "localmcp", "server_url": mcp_url, "require_approval": "never"}
        request: dict[str, Any] = {"model": "openai/gpt-4o", "input": prompt, "tools": [tool]}
        headers = {"X-Parley-Test-Id": test_id}
        started = time.monotonic()
        if stream:
            events = list(client.responses.create(**request, stream=True, extra_headers=headers))
            # The first step was replayed and its tool run before the miss.
            assert "response.mcp_call.completed" in [event.type for event in events]
            assert events[-1].type == "response.failed"
            error = events[-1].response.error  # type: ignore[union-attr]
            assert error is not None  # its code is one of the Responses API's (here invalid_prompt)
            message = error.message
        else:
            with pytest.raises(openai.NotFoundError) as caught:
                client.responses.create(**request, extra_headers=headers)
            assert isinstance(caught.value.body, dict)
            assert caught.value.body["code"] == "recording_not_found"
            message = caught.value.body["message"]
        assert time.monotonic() - started < 20
        assert f"No recording in {directory}" in message
        assert f"The closest is {edited[0]}" in message
        assert 'first difference: messages[2].content: the request has "user_11111"' in message
        assert 'where the recording has "user_22222"' in message
    finally:
        server.stop()


def test_a_flow_recorded_with_parallel_calls_does_not_answer_a_request_without_them(
    client: openai.OpenAI, mcp_url: str
) -> None:
    # The shared files were recorded with parallel tool calls allowed (said or by default): a
    # reply of theirs may hold several calls, which a request with them off must never get (issue 13).
    test_id, prompt = PROMPTS["user_file_access_check"]
    tool: Any = {"type": "mcp", "server_label": "localmcp", "server_url": mcp_url, "require_approval": "never"}
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(
            model="openai/gpt-4o",
            input=prompt,
            tools=[tool],
            parallel_tool_calls=False,
            extra_headers={"X-Parley-Test-Id": test_id},
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "recording_not_found"
    assert (
        "first difference: parallel_tool_calls: the request has false where the recording has true"
        in (caught.value.body["message"])
    )
