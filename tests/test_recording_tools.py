"""The shared tool-execution recordings, end to end: Responses with an MCP tool, replayed offline.

Parley replays the model's side of each multi-step flow from ../shared/recordings
and runs every tool call on the real MCP server of `tests/mcp_server.py`; each
step's request (with the tool's real result in it) must match its recording,
so the flow completes only if the server answers exactly as the recorded one did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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
