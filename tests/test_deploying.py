"""Parley on several processes (issue 15): `parley serve --workers N`, turns on one conversation that take turns
across processes, and turns that hold no database connection while their model runs; on both databases.

Over HTTP with the official client, against `parley serve` with `server.workers: 2`; the model is the fake
upstream, whose `requests` show what each turn sent it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.support.at_once import at_once
from tests.support.own_server import own_database, run_sql
from tests.test_background import SHARED_KEY, ended, wait_for

ECHO = "fake/fake-echo"
database_url = own_database("deploying")


def config_of(fake: FakeUpstream, database_url: str, workers: int = 2) -> dict[str, Any]:
    config = upstream_config(fake, read_timeout=90)
    config["server"] = {"workers": workers}
    config["storage"] = {"url": database_url, "lease_seconds": 2}
    # One background job at a time in each process: two at once show two processes at work.
    config["engine"] = {"background_concurrency": 1, "reasoning_key": SHARED_KEY}
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, paced: FakeUpstream, database_url: str) -> Iterator[ParleyProcess]:
    with ParleyProcess(tmp_path_factory.mktemp("workers"), config_of(paced, database_url)) as parley:
        yield parley


def children(pid: int) -> list[int]:
    """The worker processes `pid` started (Linux): those multiprocessing spawned (not its resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_banner_names_the_workers_and_each_runs_jobs(server: ParleyProcess, client: openai.OpenAI) -> None:
    assert "(2 worker processes)" in "".join(server.output)
    assert server._process is not None
    assert len(children(server._process.pid)) == 2
    # Each process runs one background job at a time: two run at once only because two processes serve.
    hanging = [client.responses.create(model="fake/fake-hang", input=f"h{i}", background=True) for i in range(3)]
    try:
        wait_for(
            lambda: sum(client.responses.retrieve(r.id).status == "in_progress" for r in hanging) == 2,
            what="two jobs in progress at once",
        )
        time.sleep(0.5)
        assert sorted(client.responses.retrieve(r.id).status for r in hanging) == ["in_progress"] * 2 + ["queued"]
    finally:
        for response in hanging:
            client.responses.cancel(response.id)
    assert all(client.responses.retrieve(r.id).status == "cancelled" for r in hanging)


def test_turns_on_one_conversation_take_turns_across_the_workers(
    server: ParleyProcess, client: openai.OpenAI, paced: FakeUpstream
) -> None:
    conversation = client.conversations.create().id
    count = 16
    seen_before = len(paced.requests)

    def one_turn(n: int) -> None:
        own = server.client()  # a connection of its own: the two processes take them as they come
        own.responses.create(model=ECHO, input=f"worker turn {n}", conversation=conversation)

    at_once(count, one_turn)

    listed = client.conversations.items.list(conversation, order="asc", limit=100).data
    texts = [item.content[0].text for item in listed]  # type: ignore[union-attr]
    assert texts[0::2] == texts[1::2]  # each input, then its echo
    assert sorted(texts[0::2]) == sorted(f"worker turn {n}" for n in range(count))
    sent = paced.requests[seen_before:]
    assert len(sent) == count
    for k, request in enumerate(sent):
        context = [message["content"] for message in request["messages"][:-1]]
        assert context == texts[: 2 * k], f"turn {k} did not see every turn before it"


def test_a_turn_that_lost_its_conversation_fails_and_adds_nothing(client: openai.OpenAI, database_url: str) -> None:
    """A turn whose hold on its conversation ran out (its server stalled past the lease) and was taken by
    another turn must not append after that turn's items."""
    conversation = client.conversations.create(items=[{"role": "user", "content": "first"}]).id
    response = client.responses.create(
        model="fake/fake-long", input="long", conversation=conversation, background=True, max_output_tokens=250
    )
    wait_for(lambda: client.responses.retrieve(response.id).output, what="some output")
    # Another server's turn takes the conversation, as if this one's hold had run out.
    conversations = sa.table("conversations", sa.column("id"), sa.column("turn"), sa.column("turn_until"))
    run_sql(
        database_url,
        conversations.update()
        .where(conversations.c.id == conversation)
        .values(turn="turn_elsewhere", turn_until=time.time() + 60),
    )
    done = ended(client, response.id, timeout=30)
    assert done.status == "failed"
    assert done.error is not None and "conversation" in done.error.message
    listed = client.conversations.items.list(conversation, order="asc").data
    assert [item.content[0].text for item in listed] == ["first"]  # type: ignore[union-attr]


def test_a_killed_worker_is_replaced_and_stopping_stops_every_worker(
    tmp_path: Path, paced: FakeUpstream, database_url: str
) -> None:
    with ParleyProcess(tmp_path, config_of(paced, database_url)) as parley:
        assert parley._process is not None
        first, second = children(parley._process.pid)
        os.kill(first, signal.SIGKILL)
        replaced = wait_for(
            lambda: (
                [pid for pid in children(parley._process.pid) if pid not in (first, second)]  # type: ignore[union-attr]
                or None
            ),
            what="a new worker",
        )
        client = parley.client()
        for n in range(8):  # served throughout, whichever worker takes each connection
            answer = parley.client().responses.create(model=ECHO, input=f"still here {n}")
            assert answer.output_text == f"still here {n}"
        assert client.models.list().data
        workers = [second, *replaced]
    assert not any(alive(pid) for pid in workers)


# PostgreSQL: a running turn holds no pooled connection ---------------------------------------------------------


def test_turns_running_hold_no_database_connection(tmp_path: Path, paced: FakeUpstream, database_url: str) -> None:
    """More turns on conversations than the pool has connections (30 on PostgreSQL) run at once, and another
    request is answered while they do: a turn's hold on its conversation is a row, not a connection held."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite's pool is its threads': PostgreSQL's is the one a held turn would exhaust")
    stalled = 34
    config = config_of(paced, database_url, workers=1)
    config["inference"]["providers"]["fake"]["timeout"]["read"] = 6  # the stalled turns end by then
    with ParleyProcess(tmp_path, config) as parley:
        client = parley.client()
        conversations = [client.conversations.create().id for _ in range(stalled + 1)]
        seen_before = len(paced.requests)
        finished: list[float] = []

        def stall(conversation: str) -> None:
            with pytest.raises(openai.APIError):
                parley.client().responses.create(model="fake/fake-stall", input="wait", conversation=conversation)
            finished.append(time.monotonic())

        threads = [threading.Thread(target=stall, args=(c,)) for c in conversations[:stalled]]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(paced.requests) - seen_before >= stalled, what="every stalled turn at its model")
        answered = client.responses.create(model=ECHO, input="not kept waiting", conversation=conversations[-1])
        answered_at = time.monotonic()
        assert answered.output_text == "not kept waiting"
        for thread in threads:
            thread.join(30)
        assert len(finished) == stalled
        assert answered_at < min(finished), "the turn waited for the stalled turns to end"
        with httpx.Client(base_url=parley.base_url) as http:
            assert http.get(f"/v1/responses/{answered.id}").json()["status"] == "completed"
