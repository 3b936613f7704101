"""The chunk index (parley.vectors.index) and its search, in-process, on real SQLite and PostgreSQL databases.

Vectors here are made by hand (unit vectors along chosen axes) so that which chunk is nearest is known exactly;
the HTTP tests (tests/test_vector_store_search.py) search text embedded by the real model.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from parley.errors import InvalidRequestError
from parley.store.database import Database
from parley.store.tables import files, vector_store_files, vector_stores
from parley.vectors.filters import check_filter
from parley.vectors.index import ChunkIndex, terms_of
from parley.vectors.search import search
from tests.postgres import PostgresServer

DIMS = 8


@dataclass
class Chunk:
    text: str
    tokens: int = 10


@dataclass(frozen=True)
class Store:
    id: str
    embedding_model: str = "test/axes"


def axis(*weights: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A unit vector with the given leading components."""
    vector = np.zeros(DIMS, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


# Each database, by each of its paths: what a search reads from memory (SQLite's copy of the vectors, the stores'
# files of parley.vectors.catalog) and what it asks the database; PostgreSQL ranked exactly (as a store of a few
# thousand chunks is) and by its HNSW index (as a large store is, each kind of filter its own way).
VARIANTS: dict[str, dict[str, int]] = {
    "sqlite": {},
    "sqlite-in-sql": {"cache_bytes": 0, "catalog_files": 0},
    "postgresql": {},
    "postgresql-hnsw": {"exact_chunks": 0},
    "postgresql-hnsw-in-sql": {"exact_chunks": 0, "catalog_files": 0},
}


@pytest.fixture(params=list(VARIANTS))
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChunkIndex]:
    if request.param.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'index.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database(f"index_{os.getpid()}_{time.monotonic_ns()}")
    database = Database(url)
    await database.migrate()
    yield ChunkIndex(database, **VARIANTS[request.param])
    await database.close()


async def add_file(
    db: Database, store: str, file_id: str, attributes: dict[str, Any] | None = None, status: str = "completed"
) -> None:
    now = int(time.time())

    def work(connection: sa.Connection) -> None:
        if connection.execute(sa.select(vector_stores.c.id).where(vector_stores.c.id == store)).first() is None:
            connection.execute(
                vector_stores.insert().values(
                    id=store, created_at=now, last_active_at=now, metadata={}, embedding_model="test/axes"
                )
            )
        connection.execute(
            files.insert().values(
                id=file_id, created_at=now, filename=f"{file_id}.txt", purpose="assistants", bytes=1, blob_key=file_id
            )
        )
        connection.execute(
            vector_store_files.insert().values(
                vector_store_id=store,
                file_id=file_id,
                created_at=now,
                status=status,
                attributes=attributes,
                chunking_strategy={"type": "static"},
            )
        )

    await db.write(work)


class Axes:
    """An embedder over a fixed vocabulary: each query text names its vector."""

    def __init__(self, vectors: dict[str, np.ndarray[Any, np.dtype[np.float32]]]) -> None:
        self.vectors = vectors

    async def __call__(self, model: str, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.vstack([self.vectors[text] for text in texts])


async def test_replace_file_keeps_one_set_of_chunks_and_file_chunks_reads_them_in_order(index: ChunkIndex) -> None:
    db = index.db
    await add_file(db, "vs_a", "file-1")
    await index.replace_file("vs_a", "file-1", [Chunk("one"), Chunk("two")], np.vstack([axis(1), axis(0, 1)]))
    await index.replace_file("vs_a", "file-1", [Chunk("three"), Chunk("four")], np.vstack([axis(1), axis(0, 1)]))
    assert await index.file_chunks("vs_a", "file-1") == ["three", "four"]
    await index.remove_file("vs_a", "file-1")
    assert await index.file_chunks("vs_a", "file-1") == []


async def test_nearest_chunk_by_vector_and_rare_word_by_keywords(index: ChunkIndex) -> None:
    db = index.db
    await add_file(db, "vs_a", "file-1")
    await add_file(db, "vs_a", "file-2")
    await index.replace_file(
        "vs_a",
        "file-1",
        [Chunk("the pump needs seal XK4471 every year"), Chunk("the pump is blue")],
        np.vstack([axis(0, 0, 1), axis(0, 1)]),
    )
    await index.replace_file("vs_a", "file-2", [Chunk("maintenance of the engine")], np.vstack([axis(1)]))
    embedder = Axes({"engine care": axis(1, 0.1), "XK4471": axis(0, 0, 0, 1)})

    results = await search(index, embedder, [Store("vs_a")], "engine care")
    assert results.hits[0].text == "maintenance of the engine"

    # The part number's vector is near nothing; its word is in one chunk only.
    results = await search(index, embedder, [Store("vs_a")], "XK4471")
    assert results.hits[0].text == "the pump needs seal XK4471 every year"
    assert results.hits[0].file_id == "file-1"
    assert results.hits[0].filename == "file-1.txt"
    assert 0 < results.hits[0].score <= 1


async def test_search_sees_chunks_added_and_removed_after_it_first_ran(index: ChunkIndex) -> None:
    db = index.db
    store = [Store("vs_a")]
    embedder = Axes({"x": axis(1)})
    await add_file(db, "vs_a", "file-1")
    await add_file(db, "vs_a", "file-2")
    await index.replace_file("vs_a", "file-1", [Chunk("far")], np.vstack([axis(0, 1)]))
    assert [(h.text, h.score) for h in (await search(index, embedder, store, "x")).hits] == [("far", 0.0)]
    await index.replace_file("vs_a", "file-2", [Chunk("near")], np.vstack([axis(1, 0.2)]))
    assert [h.text for h in (await search(index, embedder, store, "x")).hits] == ["near", "far"]
    await index.replace_file("vs_a", "file-1", [Chunk("nearest")], np.vstack([axis(1)]))
    assert [h.text for h in (await search(index, embedder, store, "x")).hits] == ["nearest", "near"]
    await index.remove_file("vs_a", "file-2")
    assert [h.text for h in (await search(index, embedder, store, "x")).hits] == ["nearest"]
    await index.remove_store("vs_a")
    assert (await search(index, embedder, store, "x")).hits == []


async def test_a_copy_of_the_vectors_another_process_holds_never_passes_for_current(index: ChunkIndex) -> None:
    # Another server on the same database empties the store and fills it again, as many changes as this one
    # saw: this server's copy of the vectors (SQLite) must not be taken for the store's.
    db = index.db
    other = ChunkIndex(db)
    embedder = Axes({"x": axis(1)})
    await add_file(db, "vs_a", "file-1")
    await index.replace_file("vs_a", "file-1", [Chunk("old")], np.vstack([axis(1)]))
    assert [h.text for h in (await search(index, embedder, [Store("vs_a")], "x")).hits] == ["old"]
    await other.remove_store("vs_a")
    await other.replace_file("vs_a", "file-1", [Chunk("new")], np.vstack([axis(1, 1)]))
    assert [h.text for h in (await search(index, embedder, [Store("vs_a")], "x")).hits] == ["new"]


async def test_only_completed_files_are_searched(index: ChunkIndex) -> None:
    db = index.db
    await add_file(db, "vs_a", "file-1")
    await add_file(db, "vs_a", "file-2", status="in_progress")
    await index.replace_file("vs_a", "file-1", [Chunk("done")], np.vstack([axis(1, 1)]))
    await index.replace_file("vs_a", "file-2", [Chunk("not yet")], np.vstack([axis(1)]))
    results = await search(index, Axes({"x": axis(1)}), [Store("vs_a")], "x")
    assert [h.text for h in results.hits] == ["done"]


async def test_a_filter_keeps_every_match_however_far_down_the_vector_ranking(index: ChunkIndex) -> None:
    # 120 chunks nearer the query than the one allowed file's: a KNN that filtered afterwards would lose it.
    db = index.db
    for i in range(120):
        await add_file(db, "vs_a", f"file-{i}", {"kind": "noise"})
        await index.replace_file("vs_a", f"file-{i}", [Chunk(f"noise {i}")], np.vstack([axis(1, 0.01 * i)]))
    await add_file(db, "vs_a", "file-far", {"kind": "wanted"})
    await index.replace_file("vs_a", "file-far", [Chunk("wanted")], np.vstack([axis(1, 3)]))
    results = await search(
        index,
        Axes({"x": axis(1)}),
        [Store("vs_a")],
        "x",
        filters={"type": "eq", "key": "kind", "value": "wanted"},
    )
    assert [h.text for h in results.hits] == ["wanted"]
    assert results.hits[0].attributes == {"kind": "wanted"}


async def test_a_change_to_a_stores_files_is_searched_at_once_by_every_process(index: ChunkIndex) -> None:
    # Each change that a search reads of a store's files, made in the database as another server would make it:
    # this index's copy of the store's files (parley.vectors.catalog) must not hide it.
    db = index.db
    embedder = Axes({"x": axis(1)})
    wanted = {"type": "eq", "key": "kind", "value": "wanted"}
    await add_file(db, "vs_a", "file-1", {"kind": "wanted"})
    await add_file(db, "vs_a", "file-2", {"kind": "other"})
    await index.replace_file("vs_a", "file-1", [Chunk("one")], np.vstack([axis(1)]))
    await index.replace_file("vs_a", "file-2", [Chunk("two")], np.vstack([axis(1, 1)]))

    async def found(filters: dict[str, Any] | None = None) -> list[str]:
        return [h.text for h in (await search(index, embedder, [Store("vs_a")], "x", filters=filters)).hits]

    async def change(statement: Any) -> None:
        await db.write(lambda connection: connection.execute(statement))

    of = vector_store_files.c
    assert await found(wanted) == ["one"]
    await change(vector_store_files.update().where(of.file_id == "file-2").values(attributes={"kind": "wanted"}))
    assert await found(wanted) == ["one", "two"]
    await change(vector_store_files.update().where(of.file_id == "file-1").values(status="in_progress"))
    assert await found(wanted) == ["two"]
    assert await found() == ["two"]
    await change(vector_store_files.update().where(of.file_id == "file-1").values(status="completed"))
    await change(vector_store_files.delete().where(of.file_id == "file-2"))  # its chunks are still there
    assert await found() == ["one"]
    await add_file(db, "vs_a", "file-3", {"kind": "wanted"}, status="in_progress")
    await index.replace_file("vs_a", "file-3", [Chunk("three")], np.vstack([axis(1, 0.5)]))
    assert await found(wanted) == ["one"]
    await change(vector_store_files.update().where(of.file_id == "file-3").values(status="completed"))
    assert await found(wanted) == ["one", "three"]


async def test_a_file_past_its_expiry_is_not_searched(index: ChunkIndex) -> None:
    db = index.db
    embedder = Axes({"x": axis(1)})
    await add_file(db, "vs_a", "file-1")
    await add_file(db, "vs_a", "file-2")
    await index.replace_file("vs_a", "file-1", [Chunk("lasting")], np.vstack([axis(1)]))
    await index.replace_file("vs_a", "file-2", [Chunk("expiring")], np.vstack([axis(1, 1)]))
    expiry = int(time.time()) + 1
    await db.write(
        lambda connection: connection.execute(files.update().where(files.c.id == "file-2").values(expires_at=expiry))
    )
    assert [h.text for h in (await search(index, embedder, [Store("vs_a")], "x")).hits] == ["lasting", "expiring"]
    await asyncio.sleep(max(0.0, expiry - time.time()) + 0.1)
    assert [h.text for h in (await search(index, embedder, [Store("vs_a")], "x")).hits] == ["lasting"]


ATTRIBUTES = {
    "a": {"region": "eu", "year": 2023, "draft": False, "date": "2024-01-05"},
    "b": {"region": "us", "year": 2024, "draft": True, "date": "2024-11-30"},
    "c": {"region": "eu", "year": 2024.0, "draft": True, "score": "7"},
    "d": None,
}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"type": "eq", "key": "region", "value": "eu"}, "ac"),
        ({"key": "region", "value": "eu"}, "ac"),  # `type` defaults to eq
        ({"type": "ne", "key": "region", "value": "eu"}, "bd"),
        ({"type": "eq", "key": "year", "value": 2024}, "bc"),  # 2024 is 2024.0
        ({"type": "eq", "key": "draft", "value": True}, "bc"),
        ({"type": "eq", "key": "draft", "value": False}, "a"),
        ({"type": "eq", "key": "score", "value": 7}, ""),  # "7" is not 7
        ({"type": "gt", "key": "year", "value": 2023}, "bc"),
        ({"type": "gte", "key": "year", "value": 2023}, "abc"),
        ({"type": "lt", "key": "year", "value": 2024}, "a"),
        ({"type": "lte", "key": "year", "value": 2024.5}, "abc"),
        ({"type": "gt", "key": "date", "value": "2024-06-01"}, "b"),
        ({"type": "lt", "key": "region", "value": 5}, ""),  # a string is not compared with a number
        ({"type": "in", "key": "region", "value": ["us", "jp"]}, "b"),
        ({"type": "in", "key": "year", "value": [2023, "2024"]}, "a"),
        ({"type": "nin", "key": "region", "value": ["us"]}, "acd"),
        ({"type": "in", "key": "region", "value": []}, ""),
        (
            {
                "type": "and",
                "filters": [
                    {"type": "eq", "key": "region", "value": "eu"},
                    {"type": "eq", "key": "draft", "value": True},
                ],
            },
            "c",
        ),
        (
            {
                "type": "or",
                "filters": [
                    {"type": "eq", "key": "region", "value": "us"},
                    {"type": "and", "filters": [{"type": "lt", "key": "year", "value": 2024}]},
                ],
            },
            "ab",
        ),
        ({"type": "lt", "key": "year", "value": 10**30}, "abc"),  # past 64 bits: compared as a float
        ({"type": "and", "filters": []}, "abcd"),
        ({"type": "or", "filters": []}, ""),
    ],
)
async def test_filters_select_files_by_attributes(index: ChunkIndex, filters: dict[str, Any], expected: str) -> None:
    db = index.db
    for name, attributes in ATTRIBUTES.items():
        await add_file(db, "vs_a", f"file-{name}", attributes)
        await index.replace_file("vs_a", f"file-{name}", [Chunk(name)], np.vstack([axis(1, 0.1 * ord(name))]))
    results = await search(index, Axes({"x": axis(1)}), [Store("vs_a")], "x", filters=filters, max_num_results=50)
    assert "".join(sorted(h.text for h in results.hits)) == expected


async def test_keyword_weights_favour_the_rarer_word(index: ChunkIndex) -> None:
    db = index.db
    await add_file(db, "vs_a", "file-1")
    texts = [f"common word {i}" for i in range(20)] + ["common rare"]
    vectors = np.vstack([axis(0, 1) for _ in texts])
    await index.replace_file("vs_a", "file-1", [Chunk(t) for t in texts], vectors)
    found = await index.candidates("vs_a", np.vstack([axis(1)]), ["rare common"], filters=None, limit=5)
    best = max(found[0], key=lambda c: c.keywords)
    assert best.keywords == pytest.approx(1.0)
    others = [c.keywords for c in found[0] if c is not best]
    assert others and max(others) < 0.5


def test_terms_fold_case_and_accents_and_split_on_punctuation() -> None:
    expected = ["creme", "brulee", "xk", "4471", "b", "snake", "case"]
    assert terms_of("Crème BRÛLÉE, crème; XK-4471-B snake_case") == expected
    assert terms_of("x" * 65) == []


def test_filter_errors_name_the_place() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_filter({"type": "and", "filters": [{"type": "eq", "key": "a", "value": 1}, {"type": "xx"}]})
    assert caught.value.param == "filters.filters[1].type"
    with pytest.raises(InvalidRequestError) as caught:
        check_filter({"type": "in", "key": "a", "value": [1, {"x": 1}]})
    assert caught.value.param == "filters.value[1]"
    with pytest.raises(InvalidRequestError) as caught:
        check_filter({"type": "gt", "key": "a", "value": True})
    assert caught.value.param == "filters.value"
    with pytest.raises(InvalidRequestError) as caught:
        check_filter({"type": "eq", "key": "a", "value": 10**400})  # no float holds it
    assert caught.value.param == "filters.value"
    deep: dict[str, Any] = {"type": "eq", "key": "a", "value": 1}
    for _ in range(40):
        deep = {"type": "and", "filters": [deep]}
    with pytest.raises(InvalidRequestError) as caught:
        check_filter(deep)
    assert caught.value.param is not None and caught.value.param.startswith("filters.filters[0]")
