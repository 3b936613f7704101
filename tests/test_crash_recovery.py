"""A server that dies mid-response leaves no response `in_progress` for ever (both backends)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import ParleyProcess, parley_config
from tests.fake_upstream import FakeUpstream


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
