"""openai-node against a running Parley: each scenario is a small Node script in
tests/clients/node, run with the pinned `openai` package, printing what the
client handed back as JSON; the test asserts on that.

The upstream is the scripted fake one (tests/fake_upstream.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.conftest import ParleyProcess
from tests.support.node_clients import SCRIPTS, installed_version, node, pinned_version


def run_script(base_url: str, name: str) -> dict[str, Any]:
    """Runs tests/clients/node/<name>.mjs against the Parley at base_url and returns the JSON it printed."""
    env = {**os.environ, "PARLEY_BASE_URL": base_url + "/v1"}
    env.pop("OPENAI_BASE_URL", None)
    done = subprocess.run(
        [node(), str(SCRIPTS / f"{name}.mjs")],
        cwd=SCRIPTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"{name}.mjs failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(lines[-1])


def test_the_pinned_openai_node_is_the_one_installed() -> None:
    node()
    assert installed_version("openai") == pinned_version("openai")
    assert installed_version("zod") == pinned_version("zod")


def test_create_answers_and_a_function_call_round_trips(upstream: ParleyProcess) -> None:
    result = run_script(upstream.base_url, "create")

    assert result["plain"]["object"] == "response"
    assert result["plain"]["status"] == "completed"
    assert result["plain"]["id"].startswith("resp_")
    assert result["plain"]["output_text"] == "hello from node"
    call = result["call"]
    assert (call["type"], call["name"], call["arguments"], call["status"]) == (
        "function_call",
        "get_weather",
        {"city": "Paris"},
        "completed",
    )
    assert result["answered"]["previous_response_id"] == call["response_id"]
    assert result["answered"]["output_text"] == "The tool said: sunny"
    assert result["retrieved"] == {"id": result["answered"]["id"], "output_text": "The tool said: sunny"}


def test_stream_helper_yields_every_event_and_the_final_response(upstream: ParleyProcess) -> None:
    result = run_script(upstream.base_url, "stream")

    assert result["events"] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert result["sequence"] == list(range(len(result["events"])))
    assert result["deltas"] == "one two three"
    final = result["final"]
    assert final["status"] == "completed"
    assert final["output_text"] == "one two three"
    [message] = final["output"]
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert [part["text"] for part in message["content"]] == ["one two three"]


def test_conversation_create_turn_and_items(upstream: ParleyProcess) -> None:
    result = run_script(upstream.base_url, "conversations")

    conversation = result["conversation"]
    assert conversation["id"].startswith("conv_")
    assert conversation["object"] == "conversation"
    assert conversation["metadata"] == {"topic": "node"}
    assert result["turn"] == {"conversation": {"id": conversation["id"]}, "output_text": "second words"}
    assert result["items"] == [
        {"type": "message", "role": "user", "text": "first words"},
        {"type": "message", "role": "user", "text": "second words"},
        {"type": "message", "role": "assistant", "text": "second words"},
    ]


def test_parse_with_a_zod_text_format(upstream: ParleyProcess) -> None:
    result = run_script(upstream.base_url, "parse")

    assert result["output_parsed"] == {"answer": 42}
    assert json.loads(result["output_text"]) == {"answer": 42}
    fmt = result["format"]
    assert (fmt["type"], fmt["name"], fmt["strict"]) == ("json_schema", "answer", True)
    assert fmt["schema"]["properties"] == {"answer": {"type": "number"}}


@pytest.mark.parametrize("script", ["create", "stream", "conversations", "parse"])
def test_scripts_report_a_failure_as_a_failure(script: str) -> None:
    # Nothing listens on port 9: the script must exit non-zero, or the tests above could not fail.
    with pytest.raises(AssertionError, match=f"{script}.mjs failed"):
        run_script("http://127.0.0.1:9", script)
