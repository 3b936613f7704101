"""Three replicas on one PostgreSQL (issue 15): background jobs each run once, turns on one conversation take turns
across servers, and a replica killed mid-job leaves nothing in progress.

Each replica has a fake upstream of its own (paced, a chunk every 20 ms), so what reached a model, and through
which replica, is known: `FakeUpstream.requests` holds every body its replica sent. The replicas share the
database and `engine.reasoning_key`, and hold their jobs under a 2-second lease (`config_of`), as the background
tests' servers do. PostgreSQL only: replicas on several machines are a PostgreSQL deployment (several processes
on one SQLite file are tests/test_deploying.py's).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ParleyProcess
from tests.fake_upstream import FakeUpstream
from tests.postgres import PostgresServer
from tests.support.at_once import at_once
from tests.test_background import config_of, ended, followed, wait_for

ECHO = "fake/fake-echo"
_databases = itertools.count()


def new_database(postgres: PostgresServer, name: str) -> str:
    return postgres.create_database(f"parley_{name}_{os.getpid()}_{next(_databases)}")


def started(servers: list[ParleyProcess]) -> list[ParleyProcess]:
    """The servers, started together, as replicas are (they take turns migrating the empty database)."""
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda server: server.start(), servers))
    return servers


def last_user_text(request: dict[str, Any]) -> str:
    """What a chat-completions body asked: its last message, which is the user's."""
    content = request["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def sent_since(upstreams: list[FakeUpstream], marks: list[int]) -> list[list[dict[str, Any]]]:
    """Each upstream's requests since `marks` (its request count then)."""
    return [upstream.requests[mark:] for upstream, mark in zip(upstreams, marks, strict=True)]


def tracebacks(servers: list[ParleyProcess], marks: list[int]) -> list[str]:
    """The servers' output since `marks` (their line counts then), where it holds a traceback."""
    return [
        "".join(s.output[mark:])
        for s, mark in zip(servers, marks, strict=True)
        if "Traceback" in "".join(s.output[mark:])
    ]


def opened(streams: ExitStack, server: ParleyProcess, model: str, text: str, until: str) -> str:
    """Creates a streamed background response on `server` and reads its stream to the event `until`, leaving it
    open in `streams`; the response's id."""
    http = streams.enter_context(server.http())
    body = {"model": model, "input": text, "background": True, "stream": True}
    reply = streams.enter_context(http.stream("POST", "/v1/responses", json=body))
    assert reply.status_code == 200
    response_id = None
    for line in reply.iter_lines():
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            response_id = response_id or event["response"]["id"]
            if event["type"] == until:
                return str(response_id)
    raise AssertionError(f"the stream ended before {until}")


def one_run(events: list[dict[str, Any]]) -> list[str]:
    """The types of a background response's kept events, checked to be those of one run: numbered from 0 with
    none missing, opening with `response.created`, `response.queued` and one `response.in_progress`."""
    numbers = [event["sequence_number"] for event in events]
    missing = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
    assert numbers == list(range(len(events))), f"events {missing} of {events[0]['response']['id']} are missing"
    types = [event["type"] for event in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert types.count("response.in_progress") == 1
    return types


@pytest.fixture(scope="module")
def upstreams() -> Iterator[list[FakeUpstream]]:
    with ExitStack() as stack:
        yield [stack.enter_context(FakeUpstream(delay=0.02)) for _ in range(3)]


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, upstreams: list[FakeUpstream]
) -> Iterator[list[ParleyProcess]]:
    database_url = new_database(postgres, "replicas")
    root = tmp_path_factory.mktemp("replicas")
    servers = [
        ParleyProcess(root / f"replica{i}", config_of(upstream, database_url)) for i, upstream in enumerate(upstreams)
    ]
    try:
        yield started(servers)
    finally:
        for server in servers:
            server.stop()


def test_sixty_background_jobs_across_three_replicas_each_run_exactly_once(
    replicas: list[ParleyProcess], upstreams: list[FakeUpstream]
) -> None:
    marks = [len(upstream.requests) for upstream in upstreams]
    lines = [len(replica.output) for replica in replicas]
    clients = [replica.client() for replica in replicas]
    count = 60
    texts = [f"background job {n} of {count}" for n in range(count)]

    # Job n is created through replica n % 3, six at a time, so that the replicas claim while others create.
    def create(n: int) -> str:
        queued = clients[n % 3].responses.create(model=ECHO, input=texts[n], background=True)
        assert queued.status == "queued"
        return queued.id

    with ThreadPoolExecutor(6) as pool:
        job_ids = list(pool.map(create, range(count)))
    assert len(set(job_ids)) == count

    # Each ends `completed` with the answer to its own input, read through a replica other than its creator's.
    done = [ended(clients[(n + 1) % 3], job_id, timeout=60) for n, job_id in enumerate(job_ids)]
    assert [(r.status, r.error, r.output_text) for r in done] == [("completed", None, text) for text in texts]

    # Each reached a model once, through one replica: the three upstreams saw each input once, and nothing else.
    sent = sent_since(upstreams, marks)
    asked = Counter(last_user_text(request) for requests in sent for request in requests)
    assert asked == Counter(texts)
    # Each replica is woken by the jobs created through it and takes them unless another's poll got there first:
    # the sixty do not all run on one.
    assert sum(1 for requests in sent if requests) > 1, [len(requests) for requests in sent]

    # And ran once: its kept events, followed through a third replica, are one run from `response.created` to
    # `response.completed`.
    for n, job_id in enumerate(job_ids):
        events = followed(replicas[(n + 2) % 3], job_id)
        types = one_run(events)
        assert types[-1] == "response.completed" and types.count("response.completed") == 1
        assert events[-1]["response"]["output"] == [item.to_dict(mode="json") for item in done[n].output]

    assert not tracebacks(replicas, lines)


def test_sixteen_concurrent_turns_on_one_conversation_across_replicas_take_turns(
    replicas: list[ParleyProcess], upstreams: list[FakeUpstream]
) -> None:
    marks = [len(upstream.requests) for upstream in upstreams]
    lines = [len(replica.output) for replica in replicas]
    conversation_id = replicas[0].client().conversations.create().id
    count = 16
    texts = [f"replicated turn {n}" for n in range(count)]
    results: dict[int, Any] = {}

    def one_turn(n: int) -> None:
        client = replicas[n % 3].client()
        results[n] = client.responses.create(model=ECHO, input=texts[n], conversation=conversation_id)

    at_once(count, one_turn)
    assert [(results[n].status, results[n].output_text) for n in range(count)] == [("completed", t) for t in texts]

    # Every item once, each turn's input followed at once by its output: the turns never interleave.
    listed: list[dict[str, Any]] = [
        item.to_dict(mode="json")
        for item in replicas[1].client().conversations.items.list(conversation_id, order="asc", limit=5)
    ]
    assert len(listed) == 2 * count
    assert len({item["id"] for item in listed}) == 2 * count
    order = [texts.index(item["content"][0]["text"]) for item in listed[0::2]]
    assert sorted(order) == list(range(count))
    for k, n in enumerate(order):
        turn = listed[2 * k : 2 * k + 2]
        assert turn[0] == {
            "id": turn[0]["id"],
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": texts[n]}],
            "status": "completed",
        }
        assert turn[1:] == [item.to_dict(mode="json") for item in results[n].output]

    # Each turn ran on the replica it was sent to, and saw every turn before it in the conversation (whichever
    # replica ran that one): the k-th turn's model request carried the k turns before it, and its own input.
    sent = sent_since(upstreams, marks)
    assert Counter(last_user_text(request) for requests in sent for request in requests) == Counter(texts)
    ran_on = {last_user_text(request): i for i, requests in enumerate(sent) for request in requests}
    assert ran_on == {texts[n]: n % 3 for n in range(count)}
    conversation = [item["content"][0]["text"] for item in listed]
    context_of = {last_user_text(r): [m["content"] for m in r["messages"]] for requests in sent for r in requests}
    for k, n in enumerate(order):
        assert context_of[texts[n]] == [*conversation[: 2 * k], texts[n]], f"turn {k} did not see the {k} before it"

    assert not tracebacks(replicas, lines)


def test_a_replica_killed_mid_job(tmp_path: Path, postgres: PostgresServer, upstreams: list[FakeUpstream]) -> None:
    """Killed (kill -9) with two jobs running: the one that had produced nothing runs again on another replica,
    to its end; the one that had produced output is failed once its lease runs out, with what it had produced.

    The model `flaky` never answers on the replica that is killed (its alias is `fake-hang` there, `fake-echo` on
    the others), so the job it took is certainly in its model call when it dies, and certainly ends elsewhere.
    """
    database_url = new_database(postgres, "replicas_killed")
    configs = [config_of(upstream, database_url) for upstream in upstreams]
    for config, model in zip(configs, ["fake/fake-hang", ECHO, ECHO], strict=True):
        config["inference"]["aliases"]["flaky"] = model
    doomed, *survivors = started([ParleyProcess(tmp_path / f"replica{i}", c) for i, c in enumerate(configs)])
    marks = [len(upstream.requests) for upstream in upstreams]
    try:
        client = survivors[0].client()
        with ExitStack() as streams:
            # Streamed, so that the doomed replica runs them (a streamed job is its creator's).
            silent = opened(streams, doomed, "flaky", "nothing yet", until="response.queued")
            talking = opened(streams, doomed, "fake/fake-stall", "something", until="response.output_text.delta")
            wait_for(lambda: "nothing yet" in map(last_user_text, upstreams[0].requests[marks[0] :]), what="a hang")
            # Its output kept in the database (the heartbeat keeps it every lease/3), which the others read.
            wait_for(lambda: client.responses.retrieve(talking).output, what="the output kept")
            time.sleep(0.3)  # and its events written (every 0.1 s at most)
            assert client.responses.retrieve(silent).status == "in_progress"
            doomed.kill()
            killed = time.monotonic()

        failed = ended(client, talking, timeout=30)
        assert time.monotonic() - killed < 10, "a dead replica's job outlived its lease by far"
        assert failed.status == "failed"
        assert failed.error is not None and failed.error.code == "server_error"
        [message] = failed.output
        assert message.type == "message" and message.status == "incomplete"
        assert failed.output_text and "one two three".startswith(failed.output_text)

        rerun = ended(client, silent, timeout=30)
        assert time.monotonic() - killed < 10
        assert (rerun.status, rerun.error, rerun.output_text) == ("completed", None, "nothing yet")
        # It reached the doomed replica's model once (which never answered), then one survivor's, once.
        sent = sent_since(upstreams, marks)
        asked = [Counter(last_user_text(request) for request in requests) for requests in sent]
        assert asked[0] == Counter(["nothing yet", "something"])
        assert asked[1] + asked[2] == Counter(["nothing yet"])
        # Its events are one run, the doomed replica's start of it gone.
        types = one_run(followed(survivors[1], silent))
        assert types[-1] == "response.completed" and types.count("response.completed") == 1

        # Nothing stays in progress, on either survivor.
        for survivor in survivors:
            with survivor.http() as http:
                listed = http.get("/v1/responses", params={"limit": 100}).json()["data"]
            assert sorted((r["id"], r["status"]) for r in listed) == sorted(
                [(talking, "failed"), (silent, "completed")]
            )

        # The failed one's stream, followed through a survivor, ends as it was stored: `response.failed`, after
        # its open items are closed, as a failure mid-stream ends on a live server.
        events = followed(survivors[1], talking)
        types = one_run(events)
        assert types[-1] == "response.failed", f"the follower's stream ends {types[-3:]}, with no terminal event"
        assert events[-1]["response"]["status"] == "failed"
        assert events[-1]["response"]["error"]["code"] == "server_error"
        added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
        assert [e["item"]["id"] for e in events if e["type"] == "response.output_item.done"] == added
    finally:
        for server in [doomed, *survivors]:
            server.stop()
