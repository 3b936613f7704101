"""A server that dies mid-response leaves no response `in_progress` for ever, and keeps what it streamed; a
request refused before its first event leaves nothing (both backends)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ParleyProcess, parley_config
from tests.fake_upstream import FakeUpstream
from tests.postgres import PostgresServer
from tests.support.at_once import at_once


def test_response_of_a_crashed_server_ends_failed(
    tmp_path: Path, fake_upstream: FakeUpstream, storage_url: str
) -> None:
    config = parley_config(fake_upstream, storage_url)
    config["storage"]["lease_seconds"] = 1
    doomed = ParleyProcess(tmp_path / "doomed", config)
    doomed.start()

    def hang() -> None:
        body = {"model": "fake/fake-hang", "input": "never answered", "metadata": {"test": "crash"}}
        with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
            httpx.post(doomed.base_url + "/v1/responses", json=body, timeout=20)

    caller = threading.Thread(target=hang, daemon=True)
    caller.start()
    with doomed.http() as http:
        deadline = time.monotonic() + 10
        while True:
            newest = http.get("/v1/responses", params={"limit": 1}).json()["data"]
            if newest and newest[0]["metadata"] == {"test": "crash"}:
                break
            assert time.monotonic() < deadline, "the response row was not written"
            time.sleep(0.05)
    response_id = newest[0]["id"]
    assert newest[0]["status"] == "in_progress"
    doomed.kill()
    caller.join(30)

    survivor = ParleyProcess(tmp_path / "survivor", config)
    survivor.start()
    try:
        with survivor.http() as http:
            deadline = time.monotonic() + 15
            while True:
                stored = http.get(f"/v1/responses/{response_id}").json()
                if stored["status"] != "in_progress" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
    finally:
        survivor.stop()
    assert stored["status"] == "failed"
    assert stored["error"] == {"code": "server_error", "message": "The server producing this response stopped."}


def _tagged(http: httpx.Client, tag: str) -> list[dict[str, Any]]:
    """The stored responses whose metadata carries `tag`, newest first."""
    data = http.get("/v1/responses", params={"limit": 100}).json()["data"]
    return [response for response in data if response["metadata"] == {"test": tag}]


def test_a_killed_server_leaves_what_it_had_streamed(
    tmp_path: Path, fake_upstream: FakeUpstream, storage_url: str
) -> None:
    config = parley_config(fake_upstream, storage_url)
    config["storage"]["lease_seconds"] = 1
    doomed = ParleyProcess(tmp_path / "doomed", config)
    doomed.start()
    survivor = ParleyProcess(tmp_path / "survivor", config)
    survivor.start()
    streamed: list[str] = []

    def stream() -> None:
        # Three deltas, then the model stalls: the server is killed while the client still reads.
        body = {"model": "fake/fake-stall", "input": "go", "stream": True, "metadata": {"test": "killed"}}
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("POST", doomed.base_url + "/v1/responses", json=body, timeout=30) as reply,
        ):
            for line in reply.iter_lines():
                if line.startswith("data: ") and '"response.output_text.delta"' in line:
                    streamed.append(json.loads(line[6:])["delta"])

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    try:
        with survivor.http() as http:
            # Another server on the same database sees the output so far once the heartbeat kept it.
            deadline = time.monotonic() + 20
            while True:
                found = _tagged(http, "killed")
                kept = found[0]["output"] if found else []
                if kept and kept[0]["content"] and kept[0]["content"][0]["text"] == "one two three":
                    break
                assert time.monotonic() < deadline, f"the output was not kept: {found}"
                time.sleep(0.1)
            assert found[0]["status"] == "in_progress"
            doomed.kill()
            reader.join(30)
            deadline = time.monotonic() + 20
            while True:
                stored = http.get(f"/v1/responses/{found[0]['id']}").json()
                if stored["status"] != "in_progress":
                    break
                assert time.monotonic() < deadline, "the killed response stayed in progress"
                time.sleep(0.1)
    finally:
        survivor.stop()
    assert "".join(streamed) == "one two three"
    assert stored["status"] == "failed"
    assert stored["error"] == {"code": "server_error", "message": "The server producing this response stopped."}
    (message,) = stored["output"]
    assert message["status"] == "incomplete"
    assert message["content"][0]["text"] == "one two three"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["fake/fake-slow-error-400", "fake/fake-error-500"])
def test_a_request_refused_before_its_first_event_leaves_nothing(
    tmp_path: Path, fake_upstream: FakeUpstream, storage_url: str, model: str, stream: bool
) -> None:
    """Refused after its row was written (the slow 400), or with a 5xx: its client never saw its id."""
    config = parley_config(fake_upstream, storage_url)
    config["storage"]["lease_seconds"] = 0.3
    server = ParleyProcess(tmp_path / "server", config)
    server.start()
    try:
        tag = f"refused-{model}-{stream}"
        body = {"model": model, "input": "hi", "stream": stream, "metadata": {"test": tag}}
        with server.http() as http:
            reply = http.post("/v1/responses", json=body)
            assert reply.status_code in (400, 502), reply.text
            assert "error" in reply.json()
            # Time for a lease to run out, and for the server's keeper to look at it, several times over.
            time.sleep(1.5)
            assert _tagged(http, tag) == []
    finally:
        server.stop()
    logged = [line for line in server.output if line.startswith(("WARNING", "ERROR"))]
    assert not [line for line in logged if "left in progress" in line or line.startswith("ERROR")], logged
    if "400" in model:  # a client's mistake is not the operator's concern; an upstream's failure is, in one line
        assert not [line for line in logged if "Authentication is off" not in line], logged


def test_a_restart_of_postgresql_fails_no_request(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """PostgreSQL restarted under a running server closes every pooled connection: each is replaced as it is
    taken (parley.store.database), so nothing fails on one: no request, and none of the server's own work."""
    database = PostgresServer()
    database.start()
    try:
        with ParleyProcess(
            tmp_path / "parley", parley_config(fake_upstream, database.create_database("restart"))
        ) as server:
            client = server.client()
            # Concurrent turns leave several connections idle in the pool.
            before: list[str] = []
            at_once(8, lambda n: before.append(client.responses.create(model="fake/fake-echo", input=f"{n}").id))
            logged = len(server.output)
            database.restart()
            for n in range(12):
                response = client.responses.create(model="fake/fake-echo", input=f"after {n}")
                assert client.responses.retrieve(response.id).output_text == response.output_text
            time.sleep(1.5)  # the background worker's look for queued jobs, every 0.5 s, takes a connection too
            # Nothing failed on a closed connection (asyncpg's InterfaceError), the requests' nor the server's own
            # work (its looks for jobs, its leases, its reads of the API keys). What ran while the database was
            # down may have failed to connect: that is another error, and nothing is lost by it.
            log = "".join(server.output[logged:])
            assert "InterfaceError" not in log and "connection is closed" not in log
            assert all(client.responses.retrieve(response_id).status == "completed" for response_id in before)
    finally:
        database.stop()
