"""How a background response's events are kept (migration 0012): compressed, and read back the same, on both
databases; those kept as text before the migration are compressed by it, and read back the same too.

Over HTTP with the official client and `GET /v1/responses/{id}?stream=true`; the rows read directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.support.migrations import migrate_to, query
from tests.support.own_server import own_database
from tests.test_background import ended, followed

database_url = own_database("kept-events")
TOKENS = 200


def config_of(fake: FakeUpstream, database_url: str) -> dict[str, Any]:
    return {**upstream_config(fake), "storage": {"url": database_url}}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, database_url: str
) -> Iterator[ParleyProcess]:
    with ParleyProcess(tmp_path_factory.mktemp("kept-events"), config_of(fake_upstream, database_url)) as parley:
        yield parley


def a_job(client: openai.OpenAI) -> str:
    """A background response of `TOKENS` tokens, run to its end: its id."""
    queued = client.responses.create(model="fake/fake-long", input="go", background=True, max_output_tokens=TOKENS)
    assert ended(client, queued.id).status == "completed"
    return queued.id


def kept(database_url: str, response_id: str) -> list[Any]:
    """The stored `events` of each of the response's batches, in order."""
    rows = query(
        database_url, 'SELECT events FROM response_events WHERE response_id = :id ORDER BY "first"', id=response_id
    )
    return [row[0] for row in rows]


def test_a_jobs_events_are_kept_compressed_and_followed_again_whole(server: ParleyProcess, database_url: str) -> None:
    client = server.client()
    response_id = a_job(client)
    events = followed(server, response_id)
    types = [event["type"] for event in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == TOKENS
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "".join(f"tok{i} " for i in range(TOKENS))
    assert followed(server, response_id, starting_after=len(events) // 2) == events[len(events) // 2 + 1 :]

    batches = kept(database_url, response_id)
    assert batches and all(isinstance(batch, bytes) for batch in batches)
    # The stream as JSON is about 60 KB; kept, it takes a fraction of that.
    size = len(json.dumps(events))
    assert sum(len(batch) for batch in batches) < size / 5, (sum(len(batch) for batch in batches), size)


def test_events_kept_as_text_before_the_upgrade_are_compressed_by_it(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, database_url: str, server: ParleyProcess
) -> None:
    client = server.client()
    response_ids = [a_job(client) for _ in range(3)]
    before = {response_id: followed(server, response_id) for response_id in response_ids}
    server.stop()
    try:
        migrate_to(database_url, "0011")
        # Down to the schema before: the events are text again, the same JSON.
        texts = kept(database_url, response_ids[0])
        assert texts and all(isinstance(text, str) for text in texts)
        pairs = [pair for text in texts for pair in json.loads(text)]
        assert [json.loads(data) for _, data in pairs] == before[response_ids[0]]

        # A server that starts migrates them up, and follows each stream again as it was.
        config = config_of(fake_upstream, database_url)
        with ParleyProcess(tmp_path_factory.mktemp("kept-events-upgraded"), config) as upgraded:
            for response_id in response_ids:
                assert all(isinstance(batch, bytes) for batch in kept(database_url, response_id))
                assert followed(upgraded, response_id) == before[response_id]
                assert followed(upgraded, response_id, starting_after=3) == before[response_id][4:]
            # And keeps the events of a new job as before.
            new = a_job(upgraded.client())
            assert followed(upgraded, new)[-1]["type"] == "response.completed"
    finally:
        server.start()
