"""Replaying the shared recordings (../shared/recordings) through Parley, offline.

Parley runs in `replay` mode with an `openai` provider for gpt-4o whose
upstream is a closed port: every reply below comes from a recording file.
The test header carries the shared files' own test ids where a test needs
its recording to be the one that test made.
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
from tests.recording_fixtures import SHARED_RECORDINGS, replay_config

pytestmark = pytest.mark.skipif(not SHARED_RECORDINGS.is_dir(), reason="../shared/recordings is not here")

HEADER = "X-Parley-Test-Id"
BASIC = "tests/integration/responses/test_basic_responses.py::"
EARTH = "Which planet do humans live on?"
SATURN = "Which planet has rings around it with a name starting with letter S?"
FOLLOW_UP = "Repeat your previous response in all caps."


def shared_test_id(streaming: bool, case: str) -> str:
    kind = "streaming" if streaming else "non_streaming"
    return f"{BASIC}test_response_{kind}_basic[openai_client-txt=openai/gpt-4o-{case}]"


def recorded_text(name_prefix: str) -> str:
    """The text of the reply recorded in the shared file whose name starts with `name_prefix`."""
    (path,) = SHARED_RECORDINGS.glob(f"{name_prefix}*.json")
    chunks = json.loads(path.read_text())["response"]["body"]
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["__data__"]["choices"])


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyProcess]:
    server = ParleyProcess(tmp_path_factory.mktemp("replay-shared"), replay_config(SHARED_RECORDINGS))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(replay: ParleyProcess) -> openai.OpenAI:
    return replay.client()


def ask(client: openai.OpenAI, stream: bool, test: str | None, **params: Any) -> tuple[str, str]:
    """Creates a response; returns its id and its text, read from the events when streaming."""
    headers = {HEADER: test} if test else {}
    if not stream:
        response = client.responses.create(model="openai/gpt-4o", extra_headers=headers, **params)
        assert response.status == "completed"
        return response.id, response.output_text
    deltas, final = [], None
    for event in client.responses.create(model="openai/gpt-4o", stream=True, extra_headers=headers, **params):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            final = event.response
    assert final is not None and final.output_text == "".join(deltas)
    return final.id, final.output_text


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
@pytest.mark.parametrize(
    ("case", "question", "recordings"),
    [
        # The reply each test recorded for itself (several files share one request: the first by name wins).
        ("earth", EARTH, {False: "a99db6a1", True: "1b7afa7b"}),
        ("saturn", SATURN, {False: "4bfb6985", True: "80f1f524"}),
    ],
)
def test_basic_questions_come_back_with_the_recorded_text(
    client: openai.OpenAI, stream: bool, case: str, question: str, recordings: dict[bool, str]
) -> None:
    _, text = ask(client, stream, shared_test_id(stream, case), input=question)
    assert text == recorded_text(recordings[stream])
    assert ("Earth" if case == "earth" else "Saturn") in text


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
@pytest.mark.parametrize(
    ("case", "question", "answer"),
    [
        ("earth", EARTH, "HUMANS LIVE ON EARTH."),
        ("saturn", SATURN, 'THE PLANET WITH RINGS AROUND IT THAT HAS A NAME STARTING WITH THE LETTER "S" IS SATURN.'),
    ],
)
def test_follow_up_through_previous_response_id_matches_its_three_message_recording(
    client: openai.OpenAI, stream: bool, case: str, question: str, answer: str
) -> None:
    # The non-streaming tests recorded both turns; the first turn's reply is
    # what the 3-message recording has as its assistant message.
    test = shared_test_id(False, case)
    first_id, _ = ask(client, stream, test, input=question)
    _, text = ask(client, stream, test, input=FOLLOW_UP, previous_response_id=first_id)
    assert text == answer


def test_a_request_without_test_id_falls_back_to_every_recording(client: openai.OpenAI) -> None:
    # Exact matches for the Saturn question: 4bfb6985 and 80f1f524; the first by name.
    _, text = ask(client, False, None, input=SATURN)
    assert text == recorded_text("4bfb6985")


def test_an_unknown_test_id_falls_back_to_every_recording(client: openai.OpenAI) -> None:
    _, text = ask(client, True, "tests/test_nothing.py::test_never_recorded", input=SATURN)
    assert text == recorded_text("4bfb6985")


def test_the_test_id_picks_that_tests_own_recording(client: openai.OpenAI) -> None:
    _, streaming = ask(client, False, shared_test_id(True, "saturn"), input=SATURN)
    _, non_streaming = ask(client, False, shared_test_id(False, "saturn"), input=SATURN)
    assert streaming == recorded_text("80f1f524")
    assert non_streaming == recorded_text("4bfb6985")
    assert streaming != non_streaming


def test_matching_ignores_whitespace_and_sampling_parameters(client: openai.OpenAI) -> None:
    spaced = "  Which planet do   humans\nlive on?  "
    _, text = ask(client, False, None, input=spaced, temperature=0.3, top_p=0.5, max_output_tokens=50)
    assert text == "Humans live on Earth."


def test_a_miss_names_the_closest_recording_and_the_first_difference(client: openai.OpenAI) -> None:
    first_id, _ = ask(client, False, shared_test_id(False, "earth"), input=EARTH)
    with pytest.raises(openai.NotFoundError) as caught:
        ask(client, False, shared_test_id(False, "earth"), input="Repeat it in French.", previous_response_id=first_id)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "recording_not_found"
    assert error["type"] == "invalid_request_error"
    message = error["message"]
    assert str(SHARED_RECORDINGS) in message
    # Both 3-message "earth" recordings differ only in their last message; the test's own comes first.
    assert "The closest is 8010b623" in message
    assert 'first difference: messages[2].content: the request has "Repeat it in French."' in message
    assert f'where the recording has "{FOLLOW_UP}"' in message


def test_a_miss_on_a_stream_is_an_http_error_not_a_hang(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.NotFoundError) as caught:
        ask(client, True, None, input="Which planet is the hottest?")
    assert time.monotonic() - started < 10
    assert "No recording in" in str(caught.value)
    assert "messages[0].content" in str(caught.value)


def test_a_miss_says_when_the_number_of_messages_differs(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="openai/gpt-4o",
            messages=[
                {"role": "user", "content": EARTH},
                {"role": "assistant", "content": "Humans live on Earth."},
            ],
        )
    assert "the request has 2 messages where the recording has" in str(caught.value)


def test_chat_completions_replay_streaming_and_not(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": EARTH}]
    completion = client.chat.completions.create(model="openai/gpt-4o", messages=messages)
    assert completion.choices[0].message.content == "Humans live on Earth."
    assert completion.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model="openai/gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Humans live on Earth."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


# The tool-execution recordings: the step where, after get_user_id and
# get_user_permissions, the model calls check_file_access (4078aa36 and others).
SECURITY_CHECK = (
    "Help me with this security check: First, get the user ID for 'charlie', then get the permissions for that "
    "user ID, and finally check if that user can access 'secret_file.txt'. Stream your progress as you work "
    "through each step. Return only one tool call per step. Summarize the final result with a single 'yes' or "
    "'no' response."
)


def recorded_tools() -> list[dict[str, Any]]:
    (path,) = SHARED_RECORDINGS.glob("4078aa36*.json")
    return json.loads(path.read_text())["request"]["body"]["tools"]  # type: ignore[no-any-return]


def test_a_tool_step_matches_despite_ids_descriptions_and_result_shapes(client: openai.OpenAI) -> None:
    tools = [
        {"type": "function", "function": {**tool["function"], "description": "Reworded."}} for tool in recorded_tools()
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": SECURITY_CHECK}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_user_id", "arguments": '{"username": "charlie"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "user_11111"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_user_permissions", "arguments": '{ "user_id" : "user_11111" }'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "admin"}]},
    ]
    completion = client.chat.completions.create(
        model="openai/gpt-4o",
        messages=messages,
        tools=tools,
        temperature=0,  # type: ignore[arg-type]
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.function.name == "check_file_access"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"user_id": "user_11111", "filename": "secret_file.txt"}  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"


def test_a_tool_step_replays_through_responses_function_tools(client: openai.OpenAI) -> None:
    tools = [
        {"type": "function", "name": f["name"], "description": f["description"], "parameters": f["parameters"]}
        for f in (tool["function"] for tool in recorded_tools())
    ]
    items: list[dict[str, Any]] = [
        {"role": "user", "content": SECURITY_CHECK},
        {"type": "function_call", "call_id": "c1", "name": "get_user_id", "arguments": '{"username":"charlie"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "user_11111"},
        {
            "type": "function_call",
            "call_id": "c2",
            "name": "get_user_permissions",
            "arguments": '{"user_id":"user_11111"}',
        },
        {"type": "function_call_output", "call_id": "c2", "output": "admin"},
    ]
    for stream in (False, True):
        if stream:
            events = list(client.responses.create(model="openai/gpt-4o", input=items, tools=tools, stream=True))  # type: ignore[arg-type]
            response = events[-1].response  # type: ignore[union-attr]
        else:
            response = client.responses.create(model="openai/gpt-4o", input=items, tools=tools)  # type: ignore[arg-type]
        (call,) = [item for item in response.output if item.type == "function_call"]
        assert call.name == "check_file_access"
        assert json.loads(call.arguments) == {"user_id": "user_11111", "filename": "secret_file.txt"}


def test_a_different_set_of_tools_is_a_miss(client: openai.OpenAI) -> None:
    tools = recorded_tools()[:4]  # without get_experiment_results
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="openai/gpt-4o",
            messages=[{"role": "user", "content": SECURITY_CHECK}],
            tools=tools,  # type: ignore[arg-type]
        )
    assert "first difference: tools:" in str(caught.value)


def test_replay_paces_chunks_with_the_configured_delay(tmp_path: Path) -> None:
    server = ParleyProcess(tmp_path, replay_config(SHARED_RECORDINGS, delay_ms=60))
    server.start()
    try:
        client = server.client()
        started = time.monotonic()
        arrivals = []
        stream = client.chat.completions.create(
            model="openai/gpt-4o", messages=[{"role": "user", "content": EARTH}], stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - started)
        # "Humans live on Earth." is 6 content chunks after an empty first one: paced, they arrive apart.
        assert len(arrivals) == 6
        assert arrivals[-1] - arrivals[0] >= 5 * 0.06 * 0.8
    finally:
        server.stop()


def test_a_custom_test_header_picks_the_tests_own_recording_and_the_default_is_ignored(tmp_path: Path) -> None:
    server = ParleyProcess(tmp_path, replay_config(SHARED_RECORDINGS, test_header="X-Suite-Case"))
    server.start()
    try:
        client = server.client()
        streaming_test = shared_test_id(True, "saturn")
        own = client.responses.create(
            model="openai/gpt-4o", input=SATURN, extra_headers={"X-Suite-Case": streaming_test}
        ).output_text
        assert own == recorded_text("80f1f524")
        # The default header names the same test, but this server does not read it:
        # no test id, so every recording counts and the first by name wins.
        _, fallback = ask(client, False, streaming_test, input=SATURN)
        assert fallback == recorded_text("4bfb6985")
        assert own != fallback
    finally:
        server.stop()
