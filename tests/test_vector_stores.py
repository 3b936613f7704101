"""`/v1/vector_stores` (issue 14): vector stores, their files and file batches, with openai-python, on both databases.

A Parley of this module's own per database, with keys for three owners (alice and bob; carol only pages)
and the embedded embedding model. Files are ingested in the background: each test adds them and polls
(the client's own `poll`, `create_and_poll`, `upload_and_poll`) until they end. The ingestion's own
behaviour (each file type, broken files, restarts, replicas, cancelling, fairness) is in
tests/test_vector_store_ingestion.py; search in tests/test_vector_store_search.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import sqlalchemy as sa

from tests.conftest import ParleyProcess
from tests.support.calls import error_of, status_error
from tests.support.own_server import own_database, owner_client, owners_auth, run_sql

ALICE = "sk-alice-vectors-0123456789abcdef"
BOB = "sk-bob-vectors-0123456789abcdef00"
CAROL = "sk-carol-vectors-0123456789abcdef"
DAY = 24 * 3600
AUTO = {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}


def embeddings_config() -> dict[str, Any]:
    """The embedded static embedding model only, the stores' default: no chat model is loaded."""
    models = {"all-minilm-l6-v2-static": {"kind": "static"}}
    return {"inference": {"providers": {"local-embeddings": {"type": "local-embeddings", "models": models}}}}


# A database of this module's own: the expiry sweep of a server on another module's would reach these stores.
database_url = own_database("vector-stores")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[ParleyProcess]:
    config = embeddings_config()
    config["storage"] = {"url": database_url}
    config["auth"] = owners_auth(alice=ALICE, bob=BOB, carol=CAROL)
    config["vector_stores"] = {"poll_seconds": 0.2, "expiry_sweep_seconds": 0.3}
    config["files"] = {"expiry_sweep_seconds": 0.3}
    parley = ParleyProcess(tmp_path_factory.mktemp("vector-stores"), config)
    parley.start()
    yield parley
    parley.stop()


alice = owner_client("alice", ALICE)
bob = owner_client("bob", BOB)


def upload(client: openai.OpenAI, filename: str, data: bytes) -> str:
    return client.files.create(file=(filename, data), purpose="assistants").id


def wait_until(condition: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


# Stores: create, retrieve, update, delete -------------------------------------------------------------


def test_a_vector_store_is_created_retrieved_updated_and_deleted_as_openais(alice: openai.OpenAI) -> None:
    before = int(time.time())
    created = alice.vector_stores.create(
        name="Handbook",
        description="What the team knows",
        metadata={"team": "docs"},
        expires_after={"anchor": "last_active_at", "days": 7},
    )
    assert created.id.startswith("vs_")
    assert before <= created.created_at <= time.time()
    assert created.model_dump() == {
        "id": created.id,
        "object": "vector_store",
        "created_at": created.created_at,
        "name": "Handbook",
        "usage_bytes": 0,
        "file_counts": {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0},
        "status": "completed",
        "expires_after": {"anchor": "last_active_at", "days": 7},
        "expires_at": created.created_at + 7 * DAY,
        "last_active_at": created.created_at,
        "metadata": {"team": "docs"},
    }
    assert alice.vector_stores.retrieve(created.id) == created

    renamed = alice.vector_stores.update(created.id, name="Team handbook")
    assert (renamed.name, renamed.metadata, renamed.expires_after) == (
        "Team handbook",
        {"team": "docs"},
        created.expires_after,
    )
    changed = alice.vector_stores.update(
        created.id, metadata={"team": "eng"}, expires_after={"anchor": "last_active_at", "days": 2}
    )
    assert changed.metadata == {"team": "eng"}
    # The new expiry counts from the last activity, as its anchor says.
    assert changed.expires_at == created.last_active_at + 2 * DAY
    never = alice.vector_stores.update(created.id, expires_after=None)
    assert (never.expires_after, never.expires_at, never.name) == (None, None, "Team handbook")
    assert alice.vector_stores.retrieve(created.id) == never

    deleted = alice.vector_stores.delete(created.id)
    assert deleted.model_dump() == {"id": created.id, "object": "vector_store.deleted", "deleted": True}
    status, body = error_of(lambda: alice.vector_stores.retrieve(created.id))
    assert status == 404
    assert body["message"] == f"No vector store found with id '{created.id}'."
    assert status_error(lambda: alice.vector_stores.delete(created.id)).status_code == 404


def test_a_store_made_with_nothing_has_no_name_and_no_expiry(alice: openai.OpenAI) -> None:
    created = alice.vector_stores.create()
    assert (created.name, created.metadata, created.expires_after, created.expires_at) == ("", {}, None, None)
    assert created.status == "completed"


def test_vector_stores_page_by_after_before_limit_and_order(server: ParleyProcess) -> None:
    # Carol's stores are listed for nobody else, so this list is this test's alone.
    carol = server.client(api_key=CAROL)
    ids = [carol.vector_stores.create(name=f"store {n}").id for n in range(5)]
    newest_first = list(reversed(ids))

    first = carol.vector_stores.list(limit=2)
    assert [store.id for store in first.data] == newest_first[:2]
    assert first.has_more is True
    # openai-python's auto-paging follows `after` with the last id of each page.
    assert [store.id for store in carol.vector_stores.list(limit=2)] == newest_first
    assert [store.id for store in carol.vector_stores.list(limit=2, order="asc")] == ids
    after = carol.vector_stores.list(after=ids[1], order="asc")
    assert [store.id for store in after.data] == ids[2:]
    assert after.has_more is False
    before = carol.vector_stores.list(before=ids[3], order="asc")
    assert [store.id for store in before.data] == ids[:3]
    between = carol.vector_stores.list(after=ids[3], before=ids[0])
    assert [store.id for store in between.data] == [ids[2], ids[1]]
    # The default page is OpenAI's 20.
    assert [store.id for store in carol.vector_stores.list().data] == newest_first
    status, body = error_of(lambda: carol.vector_stores.list(after="vs_nothing"))
    assert (status, body["param"]) == (400, "after")
    assert status_error(lambda: carol.vector_stores.list(limit=101)).status_code == 400


def test_another_owners_store_and_its_files_are_not_found(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    store = alice.vector_stores.create(name="alice's")
    file_id = upload(alice, "alice.txt", b"Alice's notes on the harbour.")
    alice.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id, max_wait_seconds=60)
    calls = [
        lambda: bob.vector_stores.retrieve(store.id),
        lambda: bob.vector_stores.update(store.id, name="mine"),
        lambda: bob.vector_stores.delete(store.id),
        lambda: bob.vector_stores.files.list(vector_store_id=store.id),
        lambda: bob.vector_stores.files.retrieve(file_id, vector_store_id=store.id),
        lambda: bob.vector_stores.files.content(file_id, vector_store_id=store.id),
        lambda: bob.vector_stores.files.delete(file_id, vector_store_id=store.id),
        lambda: bob.vector_stores.files.create(vector_store_id=store.id, file_id=upload(bob, "b.txt", b"bob")),
    ]
    for call in calls:
        status, body = error_of(call)
        assert (status, body["message"]) == (404, f"No vector store found with id '{store.id}'.")
    assert store.id not in [listed.id for listed in bob.vector_stores.list()]
    # Nor may Bob put Alice's File in a store of his.
    own = bob.vector_stores.create()
    status, body = error_of(lambda: bob.vector_stores.files.create(vector_store_id=own.id, file_id=file_id))
    assert (status, body["param"], body["message"]) == (404, "file_id", f"Files [{file_id}] were not found.")
    assert alice.vector_stores.retrieve(store.id).file_counts.completed == 1


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"expires_after": {"anchor": "last_active_at", "days": 0}}, "expires_after.days"),
        ({"expires_after": {"anchor": "last_active_at", "days": 366}}, "expires_after.days"),
        ({"expires_after": {"anchor": "created_at", "days": 1}}, "expires_after.anchor"),
        (
            {
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 50, "chunk_overlap_tokens": 0},
                }
            },
            "chunking_strategy.static.max_chunk_size_tokens",
        ),
        (
            {
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 400, "chunk_overlap_tokens": 300},
                }
            },
            "chunking_strategy.static.chunk_overlap_tokens",
        ),
        ({"chunking_strategy": {"type": "fancy"}}, "chunking_strategy.type"),
        ({"name": 5}, "name"),
        ({"file_ids": ["abc"]}, "file_ids[0]"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_parameter_of_a_new_store_is_a_400_naming_it(
    alice: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    status, body = error_of(lambda: alice.post("/vector_stores", body=fields, cast_to=object))
    assert (status, body["param"], body["type"]) == (400, param, "invalid_request_error")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"attributes": {f"k{n}": n for n in range(17)}}, "attributes"),
        ({"attributes": {"k" * 65: "v"}}, "attributes"),
        ({"attributes": {"k": "v" * 513}}, "attributes"),
        ({"attributes": {"k": {"nested": 1}}}, "attributes.k"),
        ({"attributes": {"k": [1]}}, "attributes.k"),
        ({"file_id": "abc"}, "file_id"),
        ({"file_id": 7}, "file_id"),
        ({"file_id": None}, "file_id"),
        (
            {
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 5000, "chunk_overlap_tokens": 0},
                }
            },
            "chunking_strategy.static.max_chunk_size_tokens",
        ),
    ],
)
def test_a_bad_parameter_of_a_new_store_file_is_a_400_naming_it(
    alice: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    store = alice.vector_stores.create()
    body = {"file_id": upload(alice, "ok.txt", b"fine"), **fields}
    status, error = error_of(lambda: alice.post(f"/vector_stores/{store.id}/files", body=body, cast_to=object))
    assert (status, error["param"]) == (400, param)


def test_ids_no_object_could_have_are_400s_and_well_formed_unknown_ones_404s(alice: openai.OpenAI) -> None:
    status, body = error_of(lambda: alice.vector_stores.retrieve("abc"))
    assert (status, body["param"], body["code"]) == (400, "vector_store_id", "invalid_value")
    store = alice.vector_stores.create()
    status, body = error_of(lambda: alice.vector_stores.files.retrieve("nope", vector_store_id=store.id))
    assert (status, body["param"]) == (400, "file_id")
    status, body = error_of(lambda: alice.vector_stores.file_batches.retrieve("batch", vector_store_id=store.id))
    assert (status, body["param"]) == (400, "batch_id")
    status, body = error_of(lambda: alice.vector_stores.files.retrieve("file-nothing", vector_store_id=store.id))
    assert (status, body["message"]) == (404, f"No file found with id 'file-nothing' in vector store '{store.id}'.")
    status, body = error_of(lambda: alice.vector_stores.file_batches.retrieve("vsfb_nothing", vector_store_id=store.id))
    assert status == 404


def test_files_that_do_not_exist_cannot_be_added(alice: openai.OpenAI) -> None:
    real = upload(alice, "real.txt", b"real")
    status, body = error_of(lambda: alice.vector_stores.create(file_ids=[real, "file-missing"]))
    assert (status, body["param"], body["message"]) == (404, "file_ids", "Files [file-missing] were not found.")
    # Nothing was made of a request that failed.
    assert "file-missing" not in str([store.model_dump() for store in alice.vector_stores.list()])
    store = alice.vector_stores.create()
    status, body = error_of(lambda: alice.vector_stores.files.create(vector_store_id=store.id, file_id="file-missing"))
    assert (status, body["param"]) == (404, "file_id")
    status, body = error_of(
        lambda: alice.vector_stores.file_batches.create(store.id, file_ids=[real, "file-missing", "file-gone"])
    )
    assert (status, body["message"]) == (404, "Files [file-missing, file-gone] were not found.")
    assert alice.vector_stores.retrieve(store.id).file_counts.total == 0


# Files: ingestion, listing, attributes, content, removal ---------------------------------------------


def test_a_file_is_added_in_progress_and_ingested_in_the_background(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create(name="notes")
    file_id = upload(alice, "harbour.md", b"# Harbour\n\nThe harbour master keeps the tide tables in the blue binder.")
    added = alice.vector_stores.files.create(
        vector_store_id=store.id, file_id=file_id, attributes={"author": "alice", "year": 2024, "draft": False}
    )
    assert added.model_dump() == {
        "id": file_id,
        "object": "vector_store.file",
        "usage_bytes": 0,
        "created_at": added.created_at,
        "vector_store_id": store.id,
        "status": "in_progress",
        "last_error": None,
        "chunking_strategy": AUTO,
        "attributes": {"author": "alice", "year": 2024, "draft": False},
    }
    done = alice.vector_stores.files.poll(file_id, vector_store_id=store.id, poll_interval_ms=50, max_wait_seconds=60)
    assert done.status == "completed"
    assert done.last_error is None
    assert done.usage_bytes > 0
    assert done.model_dump(exclude={"status", "usage_bytes"}) == added.model_dump(exclude={"status", "usage_bytes"})
    counted = alice.vector_stores.retrieve(store.id)
    assert counted.file_counts.model_dump() == {
        "in_progress": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
        "total": 1,
    }
    assert counted.usage_bytes == done.usage_bytes
    assert counted.status == "completed"
    assert counted.last_active_at >= store.last_active_at


def test_a_file_comes_back_as_its_parsed_text_in_order(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    paragraphs = [f"Paragraph {n} tells of lighthouse number {n} and its keeper." * 6 for n in range(12)]
    html = (
        "<html><head><title>x</title><script>alert(1)</script></head><body>"
        + "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
        + "</body></html>"
    )
    file_id = upload(alice, "lighthouses.html", html.encode())
    strategy = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}}
    done = alice.vector_stores.files.create_and_poll(
        file_id, vector_store_id=store.id, chunking_strategy=strategy, max_wait_seconds=60
    )
    assert done.status == "completed"
    assert done.chunking_strategy is not None and done.chunking_strategy.model_dump() == strategy
    page = alice.vector_stores.files.content(file_id, vector_store_id=store.id)
    texts = [part.text for part in page]
    assert len(texts) > 1 and all(part.type == "text" for part in page)
    joined = " ".join(texts)
    assert "alert" not in joined and "<p>" not in joined
    # With no overlap the chunks are the text, in order.
    assert [n for n in range(12) if f"lighthouse number {n} " in joined] == list(range(12))
    assert joined.index("Paragraph 3 ") < joined.index("Paragraph 9 ")
    raw = alice.get(f"/vector_stores/{store.id}/files/{file_id}/content", cast_to=object)
    assert isinstance(raw, dict)
    assert (raw["object"], raw["has_more"], raw["next_page"]) == ("vector_store.file_content.page", False, None)


def test_a_store_lists_its_files_by_status_and_pages(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    good = [upload(alice, f"good{n}.txt", f"Good file number {n}.".encode()) for n in range(3)]
    bad = upload(alice, "bad.exe", b"MZ\x90\x00")
    for file_id in [*good, bad]:
        alice.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id, max_wait_seconds=60)
    everything = [*good, bad]

    assert [f.id for f in alice.vector_stores.files.list(vector_store_id=store.id)] == list(reversed(everything))
    assert [f.id for f in alice.vector_stores.files.list(vector_store_id=store.id, order="asc", limit=1)] == everything
    completed = alice.vector_stores.files.list(vector_store_id=store.id, filter="completed", order="asc")
    assert [f.id for f in completed] == good
    failed = alice.vector_stores.files.list(vector_store_id=store.id, filter="failed")
    assert [f.id for f in failed] == [bad]
    assert not alice.vector_stores.files.list(vector_store_id=store.id, filter="cancelled").data
    first = alice.vector_stores.files.list(vector_store_id=store.id, limit=2, order="asc")
    assert ([f.id for f in first.data], first.has_more) == (good[:2], True)
    before = alice.vector_stores.files.list(vector_store_id=store.id, before=good[2], order="asc")
    assert [f.id for f in before.data] == good[:2]
    status, body = error_of(lambda: alice.vector_stores.files.list(vector_store_id=store.id, filter="done"))  # type: ignore[arg-type]
    assert (status, body["param"]) == (400, "filter")
    status, body = error_of(lambda: alice.vector_stores.files.list(vector_store_id=store.id, after="file-nothing"))
    assert (status, body["param"]) == (400, "after")
    counts = alice.vector_stores.retrieve(store.id).file_counts
    assert counts.model_dump() == {"in_progress": 0, "completed": 3, "failed": 1, "cancelled": 0, "total": 4}


def test_a_files_attributes_are_replaced_and_cleared(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    file_id = upload(alice, "a.txt", b"attributes")
    alice.vector_stores.files.create_and_poll(
        file_id, vector_store_id=store.id, attributes={"a": "1", "b": 2.5}, max_wait_seconds=60
    )
    updated = alice.vector_stores.files.update(file_id, vector_store_id=store.id, attributes={"c": True})
    assert (updated.attributes, updated.status) == ({"c": True}, "completed")
    assert alice.vector_stores.files.retrieve(file_id, vector_store_id=store.id).attributes == {"c": True}
    cleared = alice.vector_stores.files.update(file_id, vector_store_id=store.id, attributes=None)
    assert cleared.attributes is None
    status, body = error_of(lambda: alice.post(f"/vector_stores/{store.id}/files/{file_id}", body={}, cast_to=object))
    assert (status, body["param"]) == (400, "attributes")


def test_a_file_taken_out_of_a_store_stays_a_file(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    file_id = upload(alice, "out.txt", b"Taken out, not deleted.")
    done = alice.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id, max_wait_seconds=60)
    deleted = alice.vector_stores.files.delete(file_id, vector_store_id=store.id)
    assert deleted.model_dump() == {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}
    assert (
        status_error(lambda: alice.vector_stores.files.retrieve(file_id, vector_store_id=store.id)).status_code == 404
    )
    assert status_error(lambda: alice.vector_stores.files.content(file_id, vector_store_id=store.id)).status_code == 404
    assert alice.files.retrieve(file_id).id == file_id
    counted = alice.vector_stores.retrieve(store.id)
    assert (counted.file_counts.total, counted.usage_bytes) == (0, 0)
    # It can go back in, and is ingested again.
    again = alice.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id, max_wait_seconds=60)
    assert (again.status, again.usage_bytes) == ("completed", done.usage_bytes)
    assert [part.text for part in alice.vector_stores.files.content(file_id, vector_store_id=store.id)] == [
        "Taken out, not deleted."
    ]


def test_a_file_added_again_is_ingested_again_with_what_the_request_says(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    file_id = upload(alice, "twice.txt", b"Added twice.")
    alice.vector_stores.files.create_and_poll(
        file_id, vector_store_id=store.id, attributes={"v": 1}, max_wait_seconds=60
    )
    again = alice.vector_stores.files.create(vector_store_id=store.id, file_id=file_id, attributes={"v": 2})
    assert (again.status, again.attributes) == ("in_progress", {"v": 2})
    done = alice.vector_stores.files.poll(file_id, vector_store_id=store.id, max_wait_seconds=60)
    assert (done.status, done.attributes) == ("completed", {"v": 2})
    assert alice.vector_stores.retrieve(store.id).file_counts.total == 1


def test_deleting_a_file_takes_it_out_of_every_store(alice: openai.OpenAI) -> None:
    first, second = alice.vector_stores.create(), alice.vector_stores.create()
    file_id = upload(alice, "shared.txt", b"In two stores at once.")
    kept = upload(alice, "kept.txt", b"Stays.")
    for store in (first, second):
        alice.vector_stores.file_batches.create_and_poll(store.id, file_ids=[file_id, kept])
    alice.files.delete(file_id)
    for store in (first, second):
        gone = status_error(lambda store=store: alice.vector_stores.files.retrieve(file_id, vector_store_id=store.id))
        assert gone.status_code == 404
        assert [f.id for f in alice.vector_stores.files.list(vector_store_id=store.id)] == [kept]
        assert alice.vector_stores.retrieve(store.id).file_counts.total == 1


def test_an_expired_file_leaves_its_stores_too(alice: openai.OpenAI, database_url: str) -> None:
    from parley.store.tables import files

    store = alice.vector_stores.create()
    file_id = upload(alice, "brief.txt", b"Here for a short while.")
    alice.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id, max_wait_seconds=60)
    run_sql(database_url, sa.update(files).where(files.c.id == file_id).values(expires_at=int(time.time()) - 1))
    wait_until(lambda: alice.vector_stores.retrieve(store.id).file_counts.total == 0, timeout=10)


def test_deleting_a_store_deletes_its_files_and_batches(alice: openai.OpenAI) -> None:
    file_id = upload(alice, "in-store.txt", b"Inside.")
    store = alice.vector_stores.create(file_ids=[file_id])
    batch = alice.vector_stores.file_batches.create_and_poll(store.id, file_ids=[file_id])
    alice.vector_stores.delete(store.id)
    for call in (
        lambda: alice.vector_stores.files.list(vector_store_id=store.id),
        lambda: alice.vector_stores.files.retrieve(file_id, vector_store_id=store.id),
        lambda: alice.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id),
    ):
        assert status_error(call).status_code == 404
    # The File itself is the caller's still.
    assert alice.files.retrieve(file_id).id == file_id


def test_a_store_made_with_files_ingests_them_with_its_chunking_strategy(alice: openai.OpenAI) -> None:
    ids = [upload(alice, f"made{n}.md", f"Made with the store, file {n}.".encode()) for n in range(2)]
    strategy = {"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 100}}
    store = alice.vector_stores.create(file_ids=[*ids, ids[0]], chunking_strategy=strategy)
    assert store.status == "in_progress"
    assert store.file_counts.model_dump() == {"in_progress": 2, "completed": 0, "failed": 0, "cancelled": 0, "total": 2}
    done = wait_until(lambda: (s := alice.vector_stores.retrieve(store.id)).status == "completed" and s, timeout=60)
    assert done.file_counts.completed == 2
    listed = alice.vector_stores.files.list(vector_store_id=store.id, order="asc")
    assert [(f.id, f.chunking_strategy.model_dump() if f.chunking_strategy else None) for f in listed] == [
        (file_id, strategy) for file_id in ids
    ]


# File batches -----------------------------------------------------------------------------------------


def test_a_batch_of_file_ids_shares_its_attributes_and_strategy(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    ids = [upload(alice, f"batch{n}.txt", f"Batch file {n}.".encode()) for n in range(3)]
    bad = upload(alice, "batch.bin", b"\x00\x01\x02")
    strategy = {"type": "static", "static": {"max_chunk_size_tokens": 300, "chunk_overlap_tokens": 0}}
    created = alice.vector_stores.file_batches.create(
        store.id, file_ids=[*ids, bad], attributes={"batch": "one"}, chunking_strategy=strategy
    )
    assert created.id.startswith("vsfb_")
    assert created.model_dump() == {
        "id": created.id,
        "object": "vector_store.files_batch",
        "created_at": created.created_at,
        "vector_store_id": store.id,
        "status": "in_progress",
        "file_counts": {"in_progress": 4, "completed": 0, "failed": 0, "cancelled": 0, "total": 4},
    }
    done = alice.vector_stores.file_batches.poll(created.id, vector_store_id=store.id, poll_interval_ms=50)
    assert done.status == "completed"
    assert done.file_counts.model_dump() == {"in_progress": 0, "completed": 3, "failed": 1, "cancelled": 0, "total": 4}
    assert alice.vector_stores.file_batches.retrieve(created.id, vector_store_id=store.id) == done
    listed = alice.vector_stores.file_batches.list_files(created.id, vector_store_id=store.id, order="asc")
    assert [f.id for f in listed] == [*ids, bad]
    for listed_file in listed:
        assert listed_file.attributes == {"batch": "one"}
        assert listed_file.chunking_strategy is not None and listed_file.chunking_strategy.model_dump() == strategy
    failed = alice.vector_stores.file_batches.list_files(created.id, vector_store_id=store.id, filter="failed")
    assert [f.id for f in failed] == [bad]
    paged = alice.vector_stores.file_batches.list_files(created.id, vector_store_id=store.id, limit=2, order="asc")
    assert ([f.id for f in paged.data], paged.has_more) == (ids[:2], True)
    assert [
        f.id for f in alice.vector_stores.file_batches.list_files(created.id, vector_store_id=store.id, limit=1)
    ] == [
        bad,
        *reversed(ids),
    ]


def test_a_batch_of_files_gives_each_its_own_attributes(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    first, second = upload(alice, "one.txt", b"One."), upload(alice, "two.txt", b"Two.")
    strategy = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50}}
    batch = alice.vector_stores.file_batches.create_and_poll(
        store.id,
        files=[{"file_id": first, "attributes": {"n": 1}}, {"file_id": second, "chunking_strategy": strategy}],
    )
    assert batch.status == "completed"
    one = alice.vector_stores.files.retrieve(first, vector_store_id=store.id)
    two = alice.vector_stores.files.retrieve(second, vector_store_id=store.id)
    assert (one.attributes, one.chunking_strategy and one.chunking_strategy.model_dump()) == ({"n": 1}, AUTO)
    assert (two.attributes, two.chunking_strategy and two.chunking_strategy.model_dump()) == (None, strategy)


def test_a_batch_names_its_files_one_way_and_its_bad_fields_are_400s(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    file_id = upload(alice, "x.txt", b"x")
    path = f"/vector_stores/{store.id}/file_batches"
    cases = [
        ({"file_ids": [file_id], "files": [{"file_id": file_id}]}, "files"),
        ({}, "file_ids"),
        ({"file_ids": []}, "file_ids"),
        ({"files": [{"file_id": "nope"}]}, "files[0].file_id"),
        ({"files": [{"file_id": file_id, "chunking_strategy": {"type": "x"}}]}, "files[0].chunking_strategy.type"),
        ({"file_ids": [file_id], "attributes": {"k": {"deep": 1}}}, "attributes.k"),
    ]
    for body, param in cases:
        status, error = error_of(lambda body=body: alice.post(path, body=body, cast_to=object))
        assert (status, error["param"]) == (400, param), body


def test_a_batch_that_has_ended_cannot_be_cancelled(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    batch = alice.vector_stores.file_batches.create_and_poll(store.id, file_ids=[upload(alice, "c.txt", b"c")])
    status, body = error_of(lambda: alice.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id))
    assert status == 400
    assert "completed" in body["message"]
    assert alice.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id).status == "completed"


# The client's helpers ---------------------------------------------------------------------------------


def test_the_clients_upload_and_poll_helpers_work_unmodified(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create()
    uploaded = alice.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("upload.txt", b"Uploaded and polled."), attributes={"via": "helper"}
    )
    assert (uploaded.status, uploaded.attributes) == ("completed", {"via": "helper"})
    batch = alice.vector_stores.file_batches.upload_and_poll(
        store.id,
        files=[("b1.md", b"# One"), ("b2.py", b"print('two')"), ("b3.json", b'{"three": 3}')],
        file_ids=[upload(alice, "b0.txt", b"zero")],
    )
    assert (batch.status, batch.file_counts.completed, batch.file_counts.total) == ("completed", 4, 4)
    assert alice.vector_stores.retrieve(store.id).file_counts.completed == 5


def test_the_async_clients_helpers_work_too(server: ParleyProcess) -> None:
    async def run() -> tuple[str, str]:
        client = server.async_client(api_key=ALICE)
        store = await client.vector_stores.create(name="async")
        uploaded = await client.vector_stores.files.upload_and_poll(
            vector_store_id=store.id, file=("async.txt", b"From the async client.")
        )
        batch = await client.vector_stores.file_batches.upload_and_poll(store.id, files=[("a2.md", b"# Two")])
        return uploaded.status, batch.status

    assert asyncio.run(run()) == ("completed", "completed")


# Expiry -----------------------------------------------------------------------------------------------


def test_an_expired_store_keeps_its_files_listed_and_takes_no_more(alice: openai.OpenAI, database_url: str) -> None:
    from parley.store.tables import vector_stores

    file_id = upload(alice, "old.txt", b"Old news.")
    store = alice.vector_stores.create(file_ids=[file_id], expires_after={"anchor": "last_active_at", "days": 1})
    wait_until(lambda: alice.vector_stores.retrieve(store.id).status == "completed", timeout=60)
    run_sql(
        database_url,
        sa.update(vector_stores).where(vector_stores.c.id == store.id).values(expires_at=int(time.time()) - 1),
    )
    expired = wait_until(lambda: (s := alice.vector_stores.retrieve(store.id)).status == "expired" and s)
    # Its files stay listed, to make a new store of them; its chunks are gone.
    assert [f.id for f in alice.vector_stores.files.list(vector_store_id=store.id)] == [file_id]
    assert expired.file_counts.completed == 1
    wait_until(lambda: not list(alice.vector_stores.files.content(file_id, vector_store_id=store.id)), timeout=10)
    status, body = error_of(lambda: alice.vector_stores.files.create(vector_store_id=store.id, file_id=file_id))
    assert (status, body["code"]) == (400, "vector_store_expired")
    status, body = error_of(lambda: alice.vector_stores.file_batches.create(store.id, file_ids=[file_id]))
    assert (status, body["code"]) == (400, "vector_store_expired")
    # An expired store is not brought back by a new policy.
    assert alice.vector_stores.update(store.id, expires_after=None).status == "expired"
    renewed = alice.vector_stores.create(
        file_ids=[f.id for f in alice.vector_stores.files.list(vector_store_id=store.id)]
    )
    assert renewed.file_counts.total == 1


# Search: the route (its ranking and filters are tests/test_vector_store_search.py's) --------------------


def test_a_store_is_searched_by_its_owner_only_and_a_search_is_activity(
    alice: openai.OpenAI, bob: openai.OpenAI, database_url: str
) -> None:
    from parley.store.tables import vector_stores

    store = alice.vector_stores.create()
    alice.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("moths.txt", b"Moths are drawn to the lamp by the pier."), attributes={"n": 1}
    )
    run_sql(database_url, sa.update(vector_stores).where(vector_stores.c.id == store.id).values(last_active_at=1))
    page = alice.vector_stores.search(store.id, query="What draws moths?")
    assert [(hit.filename, hit.attributes, [part.text for part in hit.content]) for hit in page] == [
        ("moths.txt", {"n": 1}, ["Moths are drawn to the lamp by the pier."])
    ]
    raw = alice.post(f"/vector_stores/{store.id}/search", body={"query": "moths"}, cast_to=object)
    assert isinstance(raw, dict)
    assert (raw["object"], raw["search_query"], raw["has_more"], raw["next_page"]) == (
        "vector_store.search_results.page",
        ["moths"],
        False,
        None,
    )
    assert alice.vector_stores.retrieve(store.id).last_active_at > 1
    status, body = error_of(lambda: bob.vector_stores.search(store.id, query="moths"))
    assert (status, body["message"]) == (404, f"No vector store found with id '{store.id}'.")
    status, body = error_of(lambda: alice.post(f"/vector_stores/{store.id}/search", body={}, cast_to=object))
    assert (status, body["param"]) == (400, "query")
    status, body = error_of(lambda: alice.vector_stores.search(store.id, query="moths", max_num_results=51))
    assert (status, body["param"]) == (400, "max_num_results")
