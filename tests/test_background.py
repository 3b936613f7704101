"""Background responses (issue 15): `background: true`, `POST /v1/responses/{id}/cancel`, and the stream followed
again with `GET /v1/responses/{id}?stream=true&starting_after=N`, over openai-python, on both databases.

The model is the fake upstream, paced (a chunk every 20 ms) so that a run lasts long enough to be watched:
`fake-long` streams `max_output_tokens` tokens, `fake-hang` never answers, `fake-stall` streams three chunks and
then nothing, until its caller goes away; `fake-script` calls the tools its input names, here those of the MCP test
server (tests/mcp_servers.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.mcp_servers import ToolServer
from tests.support.migrations import query
from tests.support.own_server import own_database, owners_auth
from tests.support.tools import mcp_tool

CONCURRENCY = 4
ALICE = "sk-alice-background-0123456789abcdef"
BOB = "sk-bob-background-0123456789abcdef00"
SHARED_KEY = "cGFybGV5IGJhY2tncm91bmQgdGVzdHMgc2hhcmVkISE="
database_url = own_database("background")


def config_of(paced: FakeUpstream, database_url: str, **engine: Any) -> dict[str, Any]:
    config = upstream_config(paced, read_timeout=90)
    config["storage"] = {"url": database_url, "lease_seconds": 2}
    # Servers that run each other's jobs share the key that seals them.
    config["engine"] = {"background_concurrency": CONCURRENCY, "reasoning_key": SHARED_KEY, **engine}
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, paced: FakeUpstream, database_url: str) -> Iterator[ParleyProcess]:
    with ParleyProcess(tmp_path_factory.mktemp("background"), config_of(paced, database_url)) as parley:
        yield parley


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ended(client: openai.OpenAI, response_id: str, timeout: float = 20.0) -> Any:
    """The response once it has left `queued` and `in_progress`."""

    def check() -> Any:
        response = client.responses.retrieve(response_id)
        return response if response.status not in ("queued", "in_progress") else None

    return wait_for(check, timeout, f"{response_id} to end")


def events_of(reply: httpx.Response) -> list[dict[str, Any]]:
    """The events of an SSE reply, read to `[DONE]`, each checked to have its `event:` line."""
    assert reply.status_code == 200, reply.read()
    events: list[dict[str, Any]] = []
    event_type = None
    done = False
    for line in reply.iter_lines():
        if line.startswith("event: "):
            event_type = line[7:]
        elif line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            event = json.loads(line[6:])
            assert event["type"] == event_type
            events.append(event)
    assert done, "the stream did not end with [DONE]"
    return events


def followed(server: ParleyProcess, response_id: str, starting_after: int | None = None) -> list[dict[str, Any]]:
    """The events of `GET /v1/responses/{id}?stream=true` (from `starting_after`), read to `[DONE]`."""
    params: dict[str, Any] = {"stream": "true"}
    if starting_after is not None:
        params["starting_after"] = starting_after
    with server.http() as http, http.stream("GET", f"/v1/responses/{response_id}", params=params) as reply:
        return events_of(reply)


def streamed(server: ParleyProcess, **body: Any) -> list[dict[str, Any]]:
    """The events of a streamed `POST /v1/responses`, as they came."""
    with server.http() as http, http.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
        return events_of(reply)


# Create, poll, complete ----------------------------------------------------------------------------------


def test_a_background_response_is_queued_at_once_then_runs_to_the_end(client: openai.OpenAI) -> None:
    queued = client.responses.create(model="fake/fake-echo", input="hello from the background", background=True)
    assert queued.status == "queued"
    assert queued.background is True
    assert queued.output == []
    done = ended(client, queued.id)
    assert done.status == "completed"
    assert done.background is True
    assert done.output_text == "hello from the background"
    assert [item.id for item in client.responses.input_items.list(queued.id).data]


def test_postgresql_compresses_a_jobs_large_items_with_lz4(client: openai.OpenAI, database_url: str) -> None:
    """A job's items over PostgreSQL's 2 KB threshold are compressed with lz4, which took its CPU a third of
    pglz's (migration 0011); its events, compressed by Parley (migration 0012), are not compressed again."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite compresses nothing itself")
    # Echoed a word a chunk (80 chunks of the paced upstream): an input item and an output of 5 KB, and events.
    text = " ".join(["compressible" * 5] * 80)
    queued = client.responses.create(model="fake/fake-echo", input=text, background=True)
    assert ended(client, queued.id).status == "completed"
    items = query(
        database_url, "SELECT pg_column_compression(data) FROM response_items WHERE response_id = :id", id=queued.id
    )
    assert "lz4" in [row[0] for row in items], items
    assert "pglz" not in [row[0] for row in items], items
    events = query(
        database_url, "SELECT pg_column_compression(events) FROM response_events WHERE response_id = :id", id=queued.id
    )
    assert events and all(row[0] is None for row in events), events


def test_background_without_store_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="fake/fake-echo", input="hi", background=True, store=False)
    assert refused.value.body["param"] == "background"  # type: ignore[index]


def test_a_streamed_background_response_opens_queued_and_streams_its_run(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model="fake/fake-long", input="go", background=True, stream=True, max_output_tokens=20)
    )
    types = [event.type for event in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0].response.status == "queued"
    assert types[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response
    assert final.background is True
    assert final.output_text == "".join(f"tok{i} " for i in range(20))


def test_every_one_of_many_jobs_runs_once_with_at_most_the_limit_at_once(client: openai.OpenAI) -> None:
    # Jobs that never end (fake-hang) fill the slots: the next ones wait queued, the oldest taken first.
    hanging = [client.responses.create(model="fake/fake-hang", input=f"h{i}", background=True) for i in range(6)]
    running = wait_for(
        lambda: (
            [r.id for r in hanging if client.responses.retrieve(r.id).status == "in_progress"]
            if sum(client.responses.retrieve(r.id).status == "in_progress" for r in hanging) == CONCURRENCY
            else None
        ),
        what=f"{CONCURRENCY} jobs in progress",
    )
    time.sleep(0.5)
    statuses = [client.responses.retrieve(r.id).status for r in hanging]
    assert statuses == ["in_progress"] * CONCURRENCY + ["queued"] * (6 - CONCURRENCY)
    assert running == [r.id for r in hanging[:CONCURRENCY]]
    for response in hanging:
        assert client.responses.cancel(response.id).status == "cancelled"
    # Twenty short jobs, with the slots free again: every one completes, each with its own answer.
    jobs = [client.responses.create(model="fake/fake-echo", input=f"job {i}", background=True) for i in range(20)]
    answers = [ended(client, job.id, timeout=60).output_text for job in jobs]
    assert answers == [f"job {i}" for i in range(20)]


# Cancel -----------------------------------------------------------------------------------------------------


def test_cancel_while_queued(server: ParleyProcess, client: openai.OpenAI) -> None:
    blockers = [client.responses.create(model="fake/fake-hang", input="b", background=True) for _ in range(CONCURRENCY)]
    queued = client.responses.create(model="fake/fake-echo", input="never run", background=True)
    try:
        wait_for(lambda: all(client.responses.retrieve(b.id).status == "in_progress" for b in blockers))
        cancelled = client.responses.cancel(queued.id)
        assert cancelled.status == "cancelled"
        assert cancelled.output == []
    finally:
        for blocker in blockers:
            client.responses.cancel(blocker.id)
    time.sleep(0.3)
    assert client.responses.retrieve(queued.id).status == "cancelled"


def test_cancel_while_the_model_streams_closes_what_was_open(client: openai.OpenAI) -> None:
    # fake-stall: three chunks of text, then nothing.
    response = client.responses.create(model="fake/fake-stall", input="go", background=True)
    wait_for(lambda: client.responses.retrieve(response.id).output, what="some output")
    cancelled = client.responses.cancel(response.id)
    assert cancelled.status == "cancelled"
    [message] = cancelled.output
    assert message.status == "incomplete"
    assert client.responses.retrieve(response.id).status == "cancelled"


def test_a_streamed_response_cancelled_ends_its_stream_with_every_item_closed(
    server: ParleyProcess, client: openai.OpenAI
) -> None:
    # Read raw: the stream validator wants a terminal event, and a cancelled stream has none (OpenAI's events
    # have no `response.cancelled`); it ends with its items closed and `[DONE]`.
    body = {"model": "fake/fake-stall", "input": "go", "background": True, "stream": True}
    events: list[dict[str, Any]] = []
    lines = []
    cancelled = False
    with server.http() as http, http.stream("POST", "/v1/responses", json=body) as reply:
        for line in reply.iter_lines():
            if line:
                lines.append(line)
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if events[-1]["type"] == "response.output_text.delta" and not cancelled:
                    assert client.responses.cancel(events[0]["response"]["id"]).status == "cancelled"
                    cancelled = True
    assert lines[-1] == "data: [DONE]"
    types = [event["type"] for event in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert not {"response.completed", "response.failed", "response.incomplete"} & set(types)
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert added and [item["id"] for item in done] == added
    assert all(item["status"] == "incomplete" for item in done)
    assert types.count("response.content_part.added") == types.count("response.content_part.done")


def test_cancel_while_an_mcp_tool_runs_does_not_wait_for_it_and_its_late_answer_changes_nothing(
    server: ParleyProcess, client: openai.OpenAI, tool_server: ToolServer
) -> None:
    # Issue 15: "cancel while an MCP tool runs". The tool sleeps `seconds`, far longer than a cancel may take.
    seconds = 5
    response = client.responses.create(
        model="fake/fake-script",
        input=f'sleep {{"seconds": {seconds}}}',
        tools=[mcp_tool(tool_server)],
        background=True,
    )
    started = time.monotonic()
    # Followed raw, as the streamed cancel above is: a cancelled stream has no terminal event for the validator.
    events: list[dict[str, Any]] = []
    lines = []
    cancelled, took = None, 0.0
    with server.http() as http, http.stream("GET", f"/v1/responses/{response.id}", params={"stream": "true"}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line:
                lines.append(line)
            if not line.startswith("data: {"):
                continue
            events.append(json.loads(line[6:]))
            if events[-1]["type"] == "response.mcp_call.in_progress":
                time.sleep(0.3)  # the call on its way to the tool server, and the tool asleep
                running = client.responses.retrieve(response.id)
                assert running.status == "in_progress"
                assert [(item.type, item.status) for item in running.output] == [
                    ("mcp_list_tools", "completed"),
                    ("mcp_call", "in_progress"),
                ]
                asked = time.monotonic()
                cancelled = client.responses.cancel(response.id)
                took = time.monotonic() - asked
    assert cancelled is not None, "the stream ended before the call was in progress"
    assert took < 2, f"the cancel took {took:.2f} s: it waited for the tool"
    assert time.monotonic() - started < seconds, "the stream did not end before the tool would have answered"
    assert cancelled.status == "cancelled"
    listing, call = cancelled.output
    assert (listing.type, listing.status) == ("mcp_list_tools", "completed")
    assert (call.type, call.name, call.status, call.output) == ("mcp_call", "sleep", "incomplete", None)
    assert client.responses.retrieve(response.id) == cancelled

    # The followed stream closes what it opened, the call with `.failed` (OpenAI's MCP events have no
    # `.incomplete`) and no terminal event (nor a `response.cancelled`), then ends with `[DONE]`.
    assert lines[-1] == "data: [DONE]"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert [event["type"] for event in events] == [
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.output_item.added",
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.failed",
        "response.output_item.done",
    ]
    done = [event["item"] for event in events if event["type"] == "response.output_item.done"]
    assert done == [item.model_dump(exclude_unset=True) for item in cancelled.output]

    # Once the tool has answered: still cancelled, unchanged, and the stream followed again is the one followed
    # live.
    time.sleep(max(0.0, started + seconds + 1.5 - time.monotonic()))
    assert client.responses.retrieve(response.id) == cancelled
    assert followed(server, response.id) == events
    # Nor does it reach the next call to the same server (Parley keeps its MCP sessions across responses).
    after = client.responses.create(
        model="fake/fake-script", input='echo {"text": "after the cancel"}', tools=[mcp_tool(tool_server)]
    )
    assert after.output_text == "Results: after the cancel"


def test_cancel_twice_returns_the_cancelled_response(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake/fake-hang", input="x", background=True)
    first = client.responses.cancel(response.id)
    second = client.responses.cancel(response.id)
    assert first.status == second.status == "cancelled"
    assert second.id == response.id


def test_a_cancel_as_its_job_is_taken_stops_it(client: openai.OpenAI) -> None:
    # A cancel can come between the worker taking the job and the job's first step (the agent loop not yet
    # started): the job is cancelled then too, rather than run to its end while the cancel waits for it.
    for n in range(20):
        response = client.responses.create(model="fake/fake-hang", input=f"cancelled at once {n}", background=True)
        started = time.monotonic()
        assert client.responses.cancel(response.id).status == "cancelled"
        assert time.monotonic() - started < 5


def test_cancel_of_an_ended_or_a_foreground_response_is_a_400(client: openai.OpenAI) -> None:
    done = client.responses.create(model="fake/fake-echo", input="quick", background=True)
    ended(client, done.id)
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a completed response"):
        client.responses.cancel(done.id)
    words = " ".join(f"w{i}" for i in range(20))
    cut = client.responses.create(model="fake/fake-echo", input=words, max_output_tokens=16, background=True)
    assert ended(client, cut.id).status == "incomplete"
    with pytest.raises(openai.BadRequestError, match="Cannot cancel an incomplete response"):
        client.responses.cancel(cut.id)
    foreground = client.responses.create(model="fake/fake-echo", input="quick")
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.cancel(foreground.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_" + "0" * 48)


# Following the stream again -------------------------------------------------------------------------------


def test_the_stream_is_followed_again_from_any_point_after_the_end(
    server: ParleyProcess, client: openai.OpenAI
) -> None:
    original = streamed(server, model="fake/fake-long", input="go", background=True, max_output_tokens=16)
    response_id = original[0]["response"]["id"]
    last = original[-1]["sequence_number"]
    assert followed(server, response_id) == original
    assert followed(server, response_id, starting_after=0) == original[1:]
    assert followed(server, response_id, starting_after=5) == original[6:]
    assert followed(server, response_id, starting_after=last - 1) == original[-1:]
    assert followed(server, response_id, starting_after=last) == []


def test_the_stream_is_followed_while_the_run_goes_on(server: ParleyProcess, client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake/fake-long", input="go", background=True, max_output_tokens=60)
    wait_for(lambda: client.responses.retrieve(response.id).status == "in_progress")
    events = followed(server, response.id)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "".join(f"tok{i} " for i in range(60))


def test_following_an_unknown_or_a_foreground_response(server: ParleyProcess, client: openai.OpenAI) -> None:
    with server.http() as http:
        missing = http.get(f"/v1/responses/resp_{'0' * 48}", params={"stream": "true"})
        assert missing.status_code == 404
        foreground = client.responses.create(model="fake/fake-echo", input="x")
        refused = http.get(f"/v1/responses/{foreground.id}", params={"stream": "true"})
        assert refused.status_code == 400
        assert refused.json()["error"]["type"] == "invalid_request_error"
        # A sequence number no stream reaches, or none at all, is a 400 naming it.
        background = client.responses.create(model="fake/fake-echo", input="x", background=True)
        for bad in (str(10**30), "-5", "abc"):
            wrong = http.get(f"/v1/responses/{background.id}", params={"stream": "true", "starting_after": bad})
            assert wrong.status_code == 400, (bad, wrong.text)
            assert wrong.json()["error"]["param"] == "starting_after"


# Several servers, restarts and crashes --------------------------------------------------------------------


def test_a_run_is_followed_from_another_server(
    tmp_path: Path, paced: FakeUpstream, database_url: str, server: ParleyProcess, client: openai.OpenAI
) -> None:
    other = ParleyProcess(tmp_path / "other", config_of(paced, database_url))
    other.start()
    try:
        body = {"model": "fake/fake-long", "input": "go", "background": True, "stream": True, "max_output_tokens": 80}
        with server.http() as http, http.stream("POST", "/v1/responses", json=body) as reply:
            lines = reply.iter_lines()
            opening = next(line for line in lines if line.startswith("data: "))
            response_id = json.loads(opening[6:])["response"]["id"]
            # Followed from the other server from the start, while this one runs it, to its end.
            from_other = followed(other, response_id)
            original = [json.loads(opening[6:])] + [
                json.loads(line[6:]) for line in lines if line.startswith("data: {")
            ]
        assert from_other == original
        assert original[-1]["type"] == "response.completed"
    finally:
        other.stop()


def test_a_run_is_cancelled_through_another_server(
    tmp_path: Path, paced: FakeUpstream, database_url: str, server: ParleyProcess
) -> None:
    # Streamed, so that the module's server runs it; the cancel goes to the other, which asks it through the
    # database (and, on PostgreSQL, a NOTIFY).
    with ParleyProcess(tmp_path / "other", config_of(paced, database_url)) as other:
        body = {"model": "fake/fake-stall", "input": "go", "background": True, "stream": True}
        with server.http() as http, http.stream("POST", "/v1/responses", json=body) as reply:
            lines = reply.iter_lines()
            response_id = json.loads(next(line for line in lines if line.startswith("data: "))[6:])["response"]["id"]
            next(line for line in lines if "response.output_text.delta" in line)
            started = time.monotonic()
            cancelled = other.client().responses.cancel(response_id)
            took = time.monotonic() - started
            rest = [line for line in lines if line]
        assert cancelled.status == "cancelled"
        assert took < 2
        assert rest[-1] == "data: [DONE]"
        assert server.client().responses.retrieve(response_id).status == "cancelled"


@pytest.fixture
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> str:
    """A database of the module's backend that no other server uses: whichever server runs a job is known."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("postgres").create_database(f"background_{time.monotonic_ns()}"))


def test_queued_jobs_of_a_stopped_server_run_on_the_next(
    tmp_path: Path, paced: FakeUpstream, fresh_database: str
) -> None:
    # The first server's one slot is held by a job that never answers; three more wait queued when it stops.
    first = ParleyProcess(tmp_path / "first", config_of(paced, fresh_database, background_concurrency=1))
    first.start()
    try:
        client = first.client()
        hanging = client.responses.create(model="fake/fake-hang", input="h", background=True)
        wait_for(lambda: client.responses.retrieve(hanging.id).status == "in_progress")
        jobs = [client.responses.create(model="fake/fake-echo", input=f"later {i}", background=True) for i in range(3)]
        assert [client.responses.retrieve(job.id).status for job in jobs] == ["queued"] * 3
    finally:
        first.stop()
    second = ParleyProcess(tmp_path / "second", config_of(paced, fresh_database))
    second.start()
    try:
        client = second.client()
        answers = [ended(client, job.id, timeout=30).output_text for job in jobs]
        assert answers == [f"later {i}" for i in range(3)]
        # The hanging job had produced nothing when its server stopped: it was given back, and runs here.
        wait_for(lambda: client.responses.retrieve(hanging.id).status == "in_progress")
        assert client.responses.cancel(hanging.id).status == "cancelled"
    finally:
        second.stop()


def test_a_stopped_server_finishes_the_jobs_it_had_started_and_gives_back_the_others(
    tmp_path: Path, paced: FakeUpstream, fresh_database: str
) -> None:
    """A rolling restart loses no job: SIGTERM lets a job that has output run to its end, and puts one that has
    none back in the queue at once."""
    stopping = ParleyProcess(tmp_path / "stopping", config_of(paced, fresh_database))
    stopping.start()
    client = stopping.client()
    silent = client.responses.create(model="fake/fake-hang", input="nothing yet", background=True)
    talking = client.responses.create(model="fake/fake-long", input="go", background=True, max_output_tokens=150)
    wait_for(lambda: client.responses.retrieve(silent.id).status == "in_progress")
    wait_for(lambda: client.responses.retrieve(talking.id).output, what="some output")
    started = time.monotonic()
    stopping.stop()  # SIGTERM, and up to 10 s to exit
    assert time.monotonic() - started < 9, "it was killed, not stopped"
    successor = ParleyProcess(tmp_path / "successor", config_of(paced, fresh_database))
    successor.start()
    try:
        client = successor.client()
        done = client.responses.retrieve(talking.id)
        assert done.status == "completed"
        assert done.output_text == "".join(f"tok{i} " for i in range(150))
        # The silent one went back to the queue when its server stopped, and runs here.
        wait_for(lambda: client.responses.retrieve(silent.id).status == "in_progress", timeout=30)
        assert client.responses.cancel(silent.id).status == "cancelled"
    finally:
        successor.stop()


def test_a_killed_servers_job_runs_again_if_it_had_produced_nothing_and_fails_if_it_had(
    tmp_path: Path, paced: FakeUpstream, fresh_database: str
) -> None:
    doomed = ParleyProcess(tmp_path / "doomed", config_of(paced, fresh_database))
    doomed.start()
    client = doomed.client()
    silent = client.responses.create(model="fake/fake-hang", input="nothing yet", background=True)
    talking = client.responses.create(model="fake/fake-stall", input="something", background=True)
    wait_for(lambda: client.responses.retrieve(silent.id).status == "in_progress")
    wait_for(lambda: client.responses.retrieve(talking.id).output, what="some output")
    time.sleep(0.5)  # its first events written (every 0.1 s at most)
    doomed.kill()
    survivor = ParleyProcess(tmp_path / "survivor", config_of(paced, fresh_database))
    survivor.start()
    try:
        client = survivor.client()
        failed = ended(client, talking.id, timeout=30)
        assert failed.status == "failed"
        assert failed.error is not None and failed.error.code == "server_error"
        # Its stream, kept, ends as a failed stream does: what it opened closed, then `error` and `response.failed`.
        events = followed(survivor, talking.id)
        types = [event["type"] for event in events]
        assert types[-2:] == ["error", "response.failed"]
        assert [event["sequence_number"] for event in events] == list(range(len(events)))
        added = [event["output_index"] for event in events if event["type"] == "response.output_item.added"]
        done = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
        assert added and set(done) == set(added) and all(item["status"] == "incomplete" for item in done.values())
        assert types.count("response.content_part.added") == types.count("response.content_part.done")
        assert events[-1]["response"]["output"] == [done[index] for index in added]
        # The silent one went back to the queue, and the survivor took it: it cancels it at once, as its own.
        wait_for(lambda: client.responses.retrieve(silent.id).status == "in_progress", timeout=30)
        started = time.monotonic()
        assert client.responses.cancel(silent.id).status == "cancelled"
        assert time.monotonic() - started < 2
    finally:
        survivor.stop()


def test_another_owners_background_response_is_not_found(
    tmp_path: Path, paced: FakeUpstream, fresh_database: str
) -> None:
    config = config_of(paced, fresh_database)
    config["auth"] = owners_auth(alice=ALICE, bob=BOB)
    with ParleyProcess(tmp_path / "owners", config) as keyed:
        alice, bob = keyed.client(api_key=ALICE), keyed.client(api_key=BOB)
        response = alice.responses.create(model="fake/fake-hang", input="mine", background=True)
        wait_for(lambda: alice.responses.retrieve(response.id).status == "in_progress")
        with pytest.raises(openai.NotFoundError):
            bob.responses.cancel(response.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(response.id)
        with keyed.http() as http:
            headers = {"Authorization": f"Bearer {BOB}"}
            followed_by_bob = http.get(f"/v1/responses/{response.id}", params={"stream": "true"}, headers=headers)
            assert followed_by_bob.status_code == 404
        assert alice.responses.retrieve(response.id).status == "in_progress"
        assert alice.responses.cancel(response.id).status == "cancelled"
