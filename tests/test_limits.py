"""What Parley keeps between requests is bounded: MCP sessions (by number and idle time), chain contexts (by bytes).

Over HTTP against Parley. MCP sessions are counted by the MCP test server
itself (the SSE sessions it holds open). Which chain contexts Parley keeps is seen by what the next turn
sends upstream: each test edits the stored items behind Parley's back, so a
turn that continues from a kept context still sends the text as it was, and
one whose context was not kept sends the text the database now holds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.mcp_servers import ToolServer
from tests.support.tools import mcp_tool

ECHO = "fake/fake-echo"


def wait_until(condition: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def tools() -> Iterator[ToolServer]:
    """An MCP server of the test's own, whose session count no other test touches."""
    server = ToolServer().start()
    yield server
    server.stop()


def start(workdir: Path, fake: FakeUpstream, **sections: Any) -> ParleyProcess:
    config = upstream_config(fake)
    config.update(sections)
    server = ParleyProcess(workdir, config)
    server.start()
    return server


def listed(parley: ParleyProcess, server: ToolServer, **fields: Any) -> None:
    """Lists the server's tools over SSE, whose sessions the server counts."""
    tool = mcp_tool(server, server_url=server.sse_url, **fields)
    response = parley.client().responses.create(model=ECHO, input="hi", tools=[tool])
    assert (response.output[0].type, response.output[0].status) == ("mcp_list_tools", "completed")


# MCP sessions


def test_an_idle_mcp_session_is_closed_on_a_timer(tmp_path: Path, fake_upstream: FakeUpstream, tools: ToolServer):
    """No later MCP request is needed: the session is ended once it stays unused for its idle time."""
    parley = start(tmp_path, fake_upstream, tools={"mcp": {"session_idle_seconds": 3}})
    try:
        listed(parley, tools)
        assert tools.open_sessions == 1  # kept for the next response
        assert wait_until(lambda: tools.open_sessions == 0), "the idle session was not closed"
    finally:
        parley.stop()


def test_mcp_sessions_are_bounded(tmp_path: Path, fake_upstream: FakeUpstream, tools: ToolServer) -> None:
    """Each caller's own headers make a session of its own; beyond `max_sessions`, the least lately used closes."""
    parley = start(tmp_path, fake_upstream, tools={"mcp": {"max_sessions": 2}})
    try:
        for caller in range(5):
            listed(parley, tools, headers={"X-Caller": str(caller)})
            assert wait_until(lambda: tools.open_sessions <= 2), f"{tools.open_sessions} sessions after {caller + 1}"
        assert tools.open_sessions == 2
        # The two kept are the latest two: their callers' next responses open no session.
        opened = tools.sessions_opened
        listed(parley, tools, headers={"X-Caller": "4"})
        listed(parley, tools, headers={"X-Caller": "3"})
        assert (tools.open_sessions, tools.sessions_opened) == (2, opened)
    finally:
        parley.stop()


def test_a_session_in_use_is_not_closed_to_make_room(
    tmp_path: Path, fake_upstream: FakeUpstream, tools: ToolServer
) -> None:
    """With room for one session, held by a response whose call is running: another caller's response gets a
    session of its own, closed as it ends, and the running call completes."""
    parley = start(tmp_path, fake_upstream, tools={"mcp": {"max_sessions": 1}})
    client = parley.client()
    results: dict[str, Any] = {}

    def slow() -> None:
        results["slow"] = client.responses.create(
            model="fake/fake-script",
            input='sleep {"seconds": 2}',
            tools=[mcp_tool(tools, server_url=tools.sse_url, headers={"X-Caller": "slow"})],
        )

    try:
        thread = threading.Thread(target=slow)
        thread.start()
        assert wait_until(lambda: tools.open_sessions == 1)
        listed(parley, tools, headers={"X-Caller": "other"})
        thread.join(30)
        assert [item.status for item in results["slow"].output[:2]] == ["completed", "completed"]
        assert results["slow"].output[1].output == "slept 2.0"
        assert wait_until(lambda: tools.open_sessions == 1)  # the other caller's, closed; the slow one's, kept
    finally:
        parley.stop()


# Chain contexts


def rewrite_stored_items(database: Path, old: str, new: str) -> None:
    """Replaces `old` with `new` in every stored response item, as Parley would not see it happen."""
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE response_items SET data = replace(data, ?, ?)", (old, new))


def sent_upstream(fake: FakeUpstream, parley: ParleyProcess, previous: str) -> str:
    """What the model is sent for a turn that continues from `previous`."""
    parley.client().responses.create(model=ECHO, input="next", previous_response_id=previous)
    return json.dumps(fake.requests[-1]["messages"])


@pytest.fixture
def bounded(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[tuple[ParleyProcess, Path]]:
    """Parley that keeps at most 100,000 bytes of chain contexts, on a SQLite file of the test's."""
    database = tmp_path / "parley.db"
    parley = start(
        tmp_path, fake_upstream, storage={"url": f"sqlite:///{database}"}, engine={"kept_context_bytes": 100_000}
    )
    yield parley, database
    parley.stop()


def test_a_context_larger_than_the_bound_is_not_kept(
    bounded: tuple[ParleyProcess, Path], fake_upstream: FakeUpstream
) -> None:
    parley, database = bounded
    client = parley.client()
    small = client.responses.create(model=ECHO, input="small-marker")
    # 150 kB in, echoed out: 300 kB, three times the bound.
    large = client.responses.create(model=ECHO, input="large-marker " + "x" * 150_000)
    rewrite_stored_items(database, "-marker", "-EDITED")
    assert "large-EDITED" in sent_upstream(fake_upstream, parley, large.id)  # read from the database
    assert "small-marker" in sent_upstream(fake_upstream, parley, small.id)  # kept


def test_the_contexts_kept_hold_at_most_the_bound(
    bounded: tuple[ParleyProcess, Path], fake_upstream: FakeUpstream
) -> None:
    """Three contexts of 40 kB each (20 kB in, echoed out) under a bound of 100 kB: the oldest goes."""
    parley, database = bounded
    client = parley.client()
    first, _, third = (client.responses.create(model=ECHO, input=f"{n}-marker " + "y" * 20_000) for n in range(3))
    rewrite_stored_items(database, "-marker", "-EDITED")
    assert "0-EDITED" in sent_upstream(fake_upstream, parley, first.id)  # let go of
    assert "2-marker" in sent_upstream(fake_upstream, parley, third.id)  # kept
