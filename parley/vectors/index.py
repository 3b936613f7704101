"""The chunk index of vector stores: each chunk's text, vector and keyword postings, on SQLite and PostgreSQL.

`ChunkIndex` writes a file's chunks (`replace_file`, `remove_file`, `remove_store`), reads them back
(`file_chunks`), and answers the two halves of a hybrid search for one store (`candidates`): the chunks nearest
to each query vector, and the chunks that hold the query's rarer words, each candidate with both scores.
parley.vectors.search fuses them.

Vectors. What was measured (100,000 chunks of 384 dimensions, one store, this machine's 2 cores):

- sqlite-vec's `vec0` table: a KNN query 95 ms, cosine or L2 (the PyPI build has no SIMD: `vec_debug()`
  shows no build flags), int8 vectors no faster, binary ones 27 ms before rescoring; reading a store's vectors
  back 3.2 s, one by id 13 ms. With the query's embedding (7 to 15 ms) that misses 50 ms.
- numpy over the same vectors in memory: 8 ms, and exact.
- pgvector: an exact scan 65 ms; HNSW 1.5 ms.

So on SQLite a chunk's vector is a float32 blob in its row, and a search reads the store's vectors from an
in-process copy (`_VectorCache`), kept current by the store's `version` (bumped by every change, with
`removals` bumped by those that remove chunks): a copy that is behind reads only the chunks added since, and
drops removed ones by their ids. A store too large for the copy's budget is searched in SQL by sqlite-vec's
`vec_distance_cosine`, exact and slower. On PostgreSQL the vector is a `vector` column of any width, with a
partial HNSW index per width, made when a store of that width gets its first chunks. The index holds the
vectors in half precision (`embedding::halfvec(<dims>)`), which is ample to rank by, halves its size, and cut
an insert's CPU from 1.9 to 1.3 ms at 20,000 chunks (with `_HNSW_OPTIONS`; full precision with pgvector's
defaults: 2.3 ms); the scores returned are the full vectors'.

Files. Which files a search may take (completed, present, not expired, passing `filters`) comes from the
store's files in memory (parley.vectors.catalog), not from SQL at each search, which cost 20 to 45 ms at
8,500 files. On PostgreSQL, what a filter allows decides how the vectors are searched (at 100,000 chunks, this
machine): a few thousand chunks (`EXACT_CHUNKS`) are ranked exactly, found by their file (9 ms for a filter
allowing 1%, where the filtered HNSW scan took 50); a filter allowing most of the store takes the HNSW index's
nearest chunks of the whole store and keeps the allowed ones (5 ms; testing `file_id = ANY` 6,900 files in SQL
took 33); between the two, the index is scanned iteratively (pgvector 0.8) with the file test. Should either
scan come back short, it runs again exactly: a filter never loses a match that an exact search would find.

Keywords. Both databases index the same terms, cut from the text here (`terms_of`: runs of letters and digits,
case and accents folded), so that a query matches the same chunks on both; each term is indexed as
`<store key>x<term>`, so that a term's postings are those of one store. A query's terms are weighted by their
rarity in the store (BM25's inverse document frequency, from `vector_store_terms`, kept exact as chunks come
and go), and a chunk's keyword score is the share of the query's weight it holds: 1 when it holds every
term. Terms that many chunks hold say little and cost much to rank (a posting takes about half a microsecond
to read, and as much to score), so the rarest terms are taken first while their postings stay within
`POSTINGS_BUDGET`; a term held by more chunks than that is left to the vectors.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
import sqlalchemy as sa

from parley.store.database import Database
from parley.store.tables import JSONType
from parley.store.tables import files as _files
from parley.store.tables import vector_store_files as _store_files
from parley.vectors.catalog import MAX_FILES, FileCatalog
from parley.vectors.filters import compile_filter

log = logging.getLogger(__name__)

# A term longer than this is not a word anyone searches for (a hash, base64): it is not indexed.
MAX_TERM_CHARS = 64
# A query's distinct terms past this many are ignored: the first ones say what it is about.
MAX_QUERY_TERMS = 32
# How many keyword postings one query may rank, at most (see the module docstring): PostgreSQL reads about
# 2 µs of CPU a posting (a row visited for it), so this is about 10 ms of a search on it. A term left out for it
# is held by over 5% of a 100,000-chunk store (its weight ln 20 = 3, a rare word's over 10); a store of fewer
# than 5,000 chunks ranks every term.
POSTINGS_BUDGET = 5_000
# How many bytes of vectors the in-process copies of SQLite stores may hold in all (least recently searched
# go first); a store larger than this alone is searched in SQL.
VECTOR_CACHE_BYTES = 512 * 1024 * 1024
# pgvector's HNSW indexes `halfvec` (pgvector 0.7) up to 4,000 dimensions; wider is scanned exactly.
_HNSW_MAX_DIMS = 4000
_HNSW_SINCE = (0, 7)
# The index's build parameters: pgvector's default m, and a smaller ef_construction (its default is 64), which
# took inserts from 1.9 to 1.3 ms of CPU with the same recall@10 (1.00, ef_search 100) on 20,000 clustered vectors.
_HNSW_OPTIONS = "m = 16, ef_construction = 40"
# PostgreSQL's searches. Allowed chunks up to EXACT_CHUNKS (by the allowed files' share of the store's
# text) are ranked exactly, found by the chunks' file index; a filter that allows at least _POST_FILTER_SHARE of
# the store searches the whole store's HNSW index for up to _MAX_APPROXIMATE chunks and keeps the allowed ones;
# any other scans the index iteratively, testing each chunk's file.
EXACT_CHUNKS = 5_000
# PostgreSQL plans a search by the chunks table's statistics, which autovacuum renews a minute or more after a bulk
# load: planned as for an empty table, a search of a store just filled with 10,000 chunks scanned every row (72 ms
# for the vectors, 190 for the keywords, against 6 and 19 once analysed). So the index analyses the table's two id
# columns itself (41 ms at 10,000 rows) each time it has written this many chunks, or a fifth of what the table held
# at the last analysis if more.
ANALYZE_AFTER_CHUNKS = 2_000
_POST_FILTER_SHARE = 0.2
_MAX_APPROXIMATE = 1000

Vectors = np.ndarray[Any, np.dtype[np.float32]]


class ChunkLike(Protocol):
    """A chunk as parley.vectors.chunking makes it."""

    text: str
    tokens: int


@dataclass(slots=True)
class Candidate:
    """A chunk that one query of a search found, with both scores: `similarity` is the cosine similarity of its
    vector and the query's (-1 to 1); `keywords` the share of the query's keyword weight it holds (0 to 1)."""

    chunk_id: int
    file_id: str
    similarity: float
    keywords: float = 0.0


@dataclass(slots=True, frozen=True)
class ChunkResult:
    chunk_id: int
    file_id: str
    filename: str
    attributes: dict[str, Any] | None
    text: str


_TERM = re.compile(r"[^\W_]+")


def terms_of(text: str) -> list[str]:
    """The distinct terms of `text`, in order: runs of letters and digits, accents removed, case folded.

    >>> terms_of("Part XK-4471-B, Größe é")
    ['part', 'xk', '4471', 'b', 'grosse', 'e']
    """
    folded = text.casefold()
    # ASCII text has no accents to remove: skipping the per-character pass took an 800-token chunk's terms from
    # about 1 ms to 0.3 ms (the pass alone was a quarter; findall and dict.fromkeys beat a loop of matches).
    if not folded.isascii():
        folded = unicodedata.normalize("NFKD", folded)
        if not folded.isascii():
            folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return [term for term in dict.fromkeys(_TERM.findall(folded)) if len(term) <= MAX_TERM_CHARS]


def _chunk_rows(chunks: list[Any]) -> list[dict[str, Any]]:
    return [
        {"position": i, "text": chunk.text, "tokens": int(chunk.tokens), "terms": terms_of(chunk.text)}
        for i, chunk in enumerate(chunks)
    ]


def _posting(key: int, term: str) -> str:
    # The store's number, then `x`, then the term: digits only before the first `x`, so never ambiguous.
    return f"{key}x{term}"


def _idf(chunks: int, holding: int) -> float:
    # BM25's: always positive, highest for the rarest terms.
    return math.log(1 + (chunks - holding + 0.5) / (holding + 0.5))


def _as_blob(vector: Vectors) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _pg_vector(vector: Vectors) -> str:
    # Nine significant digits give every float32 back exactly (pgvector stores float32), in 3.3 KB and 74 µs for
    # 256 dimensions, where each float's repr took 5.2 KB and 170 µs: a third of a millisecond a chunk ingested.
    return "[" + ",".join(map("{:.9g}".format, np.asarray(vector, dtype=np.float32).tolist())) + "]"


class ChunkIndex:
    """The chunks of every vector store, in the database `db` (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        cache_bytes: int = VECTOR_CACHE_BYTES,
        catalog_files: int = MAX_FILES,
        exact_chunks: int = EXACT_CHUNKS,
    ) -> None:
        """`cache_bytes` bounds SQLite's in-memory copies of vectors, `catalog_files` the files of a store kept in
        memory (parley.vectors.catalog), `exact_chunks` the chunks PostgreSQL ranks exactly rather than by its
        HNSW index; each 0 takes the other path, as the tests do."""
        self.db = db
        self.exact_chunks = exact_chunks
        self.sqlite = db.is_sqlite
        self._cache = _VectorCache(cache_bytes) if self.sqlite else None
        self._catalog = FileCatalog(catalog_files)
        self._pgvector_version: tuple[int, ...] | None = None
        self._hnsw_widths: set[int] = set()
        self._written_since_analysis = 0
        self._rows_at_analysis = 0

    # Writing.

    async def replace_file(self, vector_store_id: str, file_id: str, chunks: list[Any], vectors: Vectors) -> None:
        """The file's chunks (ChunkLike: `text`, `tokens`) and their unit vectors, in place of any it had.

        Raises ValueError if the vectors' width is not the store's (a store holds one embedding model's vectors).
        """
        matrix = np.asarray(vectors, dtype=np.float32)
        if len(chunks) != (matrix.shape[0] if matrix.ndim == 2 else 0) and chunks:
            raise ValueError(f"{len(chunks)} chunks but {matrix.shape[0] if matrix.ndim == 2 else 0} vectors")
        dims = int(matrix.shape[1]) if matrix.ndim == 2 and chunks else None
        if not self.sqlite and dims is not None and self._pgvector_version is None:
            await self.db.read(self._read_pgvector_version)
        # Off the event loop: a large file's terms take tens of milliseconds.
        rows = await asyncio.to_thread(_chunk_rows, chunks)

        def work(connection: sa.Connection) -> None:
            state = self._state_for_update(connection, vector_store_id)
            if dims is not None and state.dimensions not in (None, dims) and state.chunks:
                raise ValueError(
                    f"vector store {vector_store_id} holds vectors of {state.dimensions} dimensions, not {dims}"
                )
            removed = self._delete_chunks(connection, state, file_id)
            added = self._insert_chunks(connection, state, file_id, rows, matrix) if rows else 0
            self._bump(connection, state, added - removed, removed > 0, dims if rows else None)

        # Off the event loop: a file's thousands of chunks would hold every stream of this server meanwhile.
        await self.db.write(work, offload=True)
        if not self.sqlite:
            self._written_since_analysis += len(rows)
            if self._written_since_analysis >= max(ANALYZE_AFTER_CHUNKS, self._rows_at_analysis // 5):
                self._written_since_analysis = 0
                self._rows_at_analysis = await self.db.write(_analyze_chunks)

    async def remove_file(self, vector_store_id: str, file_id: str) -> None:
        """Removes the file's chunks from the store (nothing if it has none)."""

        def work(connection: sa.Connection) -> None:
            state = self._state_for_update(connection, vector_store_id, create=False)
            if state is None:
                return
            removed = self._delete_chunks(connection, state, file_id)
            if removed:
                self._bump(connection, state, -removed, True, None)

        await self.db.write(work, offload=True)

    async def remove_store(self, vector_store_id: str) -> None:
        """Removes every chunk of the store and its term counts. Its index state stays, emptied: its `version`
        goes on rising, so that no copy of its vectors that another process holds could pass for current."""

        def work(connection: sa.Connection) -> None:
            if self.sqlite:
                connection.execute(
                    sa.text(
                        "DELETE FROM vector_store_chunks_fts WHERE rowid IN "
                        "(SELECT id FROM vector_store_chunks WHERE vector_store_id = :store)"
                    ),
                    {"store": vector_store_id},
                )
            params = {"store": vector_store_id}
            connection.execute(sa.text("DELETE FROM vector_store_chunks WHERE vector_store_id = :store"), params)
            connection.execute(sa.text("DELETE FROM vector_store_terms WHERE vector_store_id = :store"), params)
            connection.execute(
                sa.text(
                    "UPDATE vector_store_indexes SET chunks = 0, dimensions = NULL, version = version + 1, "
                    "removals = removals + 1 WHERE vector_store_id = :store"
                ),
                params,
            )

        await self.db.write(work, offload=True)
        self._catalog.drop(vector_store_id)
        if self._cache is not None:
            self._cache.drop(vector_store_id)

    async def file_chunks(self, vector_store_id: str, file_id: str) -> list[str]:
        """The texts of the file's chunks in the store, in order."""

        def work(connection: sa.Connection) -> list[str]:
            rows = connection.execute(
                sa.text(
                    "SELECT text FROM vector_store_chunks WHERE vector_store_id = :store AND file_id = :file "
                    "ORDER BY position"
                ),
                {"store": vector_store_id, "file": file_id},
            )
            return [row.text for row in rows]

        return await self.db.read(work)

    def _state_for_update(self, connection: sa.Connection, store: str, create: bool = True) -> Any:
        # PostgreSQL: the row's lock makes writers of one store take turns, so that its counts stay exact.
        lock = "" if self.sqlite else " FOR UPDATE"
        query = sa.text(
            "SELECT key, vector_store_id, dimensions, chunks, version, removals FROM vector_store_indexes "
            f"WHERE vector_store_id = :store{lock}"
        )
        row = connection.execute(query, {"store": store}).one_or_none()
        if row is None and create:
            insert = sa.text(
                "INSERT INTO vector_store_indexes (vector_store_id, chunks, version, removals) "
                "VALUES (:store, 0, 0, 0) ON CONFLICT (vector_store_id) DO NOTHING"
            )
            connection.execute(insert, {"store": store})
            row = connection.execute(query, {"store": store}).one()
        return row

    def _bump(self, connection: sa.Connection, state: Any, change: int, removed: bool, dims: int | None) -> None:
        connection.execute(
            sa.text(
                "UPDATE vector_store_indexes SET chunks = chunks + :change, version = version + 1, "
                "removals = removals + :removed, dimensions = COALESCE(:dims, dimensions) WHERE key = :key"
            ),
            {"change": change, "removed": int(removed), "dims": dims, "key": state.key},
        )

    def _delete_chunks(self, connection: sa.Connection, state: Any, file_id: str) -> int:
        rows = connection.execute(
            sa.text("SELECT id, text FROM vector_store_chunks WHERE vector_store_id = :store AND file_id = :file"),
            {"store": state.vector_store_id, "file": file_id},
        ).all()
        if not rows:
            return 0
        ids = [row.id for row in rows]
        counts: dict[str, int] = {}
        for row in rows:
            for term in terms_of(row.text):
                counts[term] = counts.get(term, 0) - 1
        store = state.vector_store_id
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            if self.sqlite:
                connection.execute(
                    _text("DELETE FROM vector_store_chunks_fts WHERE rowid IN :ids", "ids"), {"ids": batch}
                )
            connection.execute(_text("DELETE FROM vector_store_chunks WHERE id IN :ids", "ids"), {"ids": batch})
        self._count_terms(connection, store, counts)
        return len(ids)

    def _insert_chunks(
        self, connection: sa.Connection, state: Any, file_id: str, rows: list[dict[str, Any]], matrix: Vectors
    ) -> int:
        store = state.vector_store_id
        key = state.key
        if self.sqlite:
            insert = sa.text(
                "INSERT INTO vector_store_chunks (vector_store_id, file_id, position, text, tokens, embedding) "
                "VALUES (:store, :file, :position, :text, :tokens, :embedding) RETURNING id"
            )
            params = [
                {
                    "store": store,
                    "file": file_id,
                    "position": row["position"],
                    "text": row["text"],
                    "tokens": row["tokens"],
                    "embedding": _as_blob(matrix[i]),
                }
                for i, row in enumerate(rows)
            ]
            # One statement a row: RETURNING with executemany is not every driver's.
            ids = [connection.execute(insert, p).scalar_one() for p in params]
            connection.exec_driver_sql(
                "INSERT INTO vector_store_chunks_fts (rowid, terms) VALUES (?, ?)",
                [
                    (chunk_id, " ".join(_posting(key, term) for term in row["terms"]))
                    for chunk_id, row in zip(ids, rows, strict=True)
                ],
            )
        else:
            dims = int(matrix.shape[1])
            self._ensure_hnsw(connection, dims)
            # One statement of arrays, not one a chunk: a file's chunks went in three times as fast. A chunk's
            # terms travel as one string, split in the database (terms hold no spaces).
            connection.execute(
                sa.text(
                    "INSERT INTO vector_store_chunks "
                    "(vector_store_id, file_id, position, text, tokens, embedding, terms) "
                    "SELECT :store, :file, c.position, c.text, c.tokens, CAST(c.embedding AS vector), "
                    "array_to_tsvector(string_to_array(c.terms, ' ')) FROM unnest("
                    "CAST(:positions AS integer[]), CAST(:texts AS text[]), CAST(:tokens AS integer[]), "
                    "CAST(:embeddings AS text[]), CAST(:terms AS text[])) "
                    "AS c(position, text, tokens, embedding, terms)"
                ),
                {
                    "store": store,
                    "file": file_id,
                    "positions": [row["position"] for row in rows],
                    # PostgreSQL's text cannot hold NUL; a chunk's text is parsed text, which may.
                    "texts": [row["text"].replace("\x00", "\ufffd") for row in rows],
                    "tokens": [row["tokens"] for row in rows],
                    "embeddings": [_pg_vector(matrix[i]) for i in range(len(rows))],
                    "terms": [" ".join(_posting(key, term) for term in row["terms"]) for row in rows],
                },
            )
        counts: dict[str, int] = {}
        for row in rows:
            for term in row["terms"]:
                counts[term] = counts.get(term, 0) + 1
        self._count_terms(connection, store, counts)
        return len(rows)

    def _count_terms(self, connection: sa.Connection, store: str, counts: dict[str, int]) -> None:
        if not counts:
            return
        # In the terms' order: two writers of one store lock the rows they share in the same order.
        changes = [(term, n) for term, n in sorted(counts.items()) if n]
        gone = [term for term, n in changes if n < 0]
        upsert = (
            " ON CONFLICT (vector_store_id, term) DO UPDATE SET chunks = vector_store_terms.chunks + excluded.chunks"
        )
        if self.sqlite:
            connection.execute(
                sa.text(
                    f"INSERT INTO vector_store_terms (vector_store_id, term, chunks) VALUES (:store, :term, :n){upsert}"
                ),
                [{"store": store, "term": term, "n": n} for term, n in changes],
            )
            for start in range(0, len(gone), 500):
                connection.execute(
                    _text(
                        "DELETE FROM vector_store_terms "
                        "WHERE vector_store_id = :store AND term IN :terms AND chunks <= 0",
                        "terms",
                    ),
                    {"store": store, "terms": gone[start : start + 500]},
                )
            return
        # One statement for them all: a file's few thousand terms one statement each took longer than its chunks.
        connection.execute(
            sa.text(
                "INSERT INTO vector_store_terms (vector_store_id, term, chunks) "
                "SELECT :store, t.term, t.n "
                "FROM unnest(CAST(:terms AS text[]), CAST(:counts AS bigint[])) AS t(term, n) "
                f"ORDER BY t.term{upsert}"
            ),
            {"store": store, "terms": [term for term, _ in changes], "counts": [n for _, n in changes]},
        )
        if gone:
            connection.execute(
                sa.text(
                    "DELETE FROM vector_store_terms WHERE vector_store_id = :store "
                    "AND term = ANY(CAST(:terms AS text[])) AND chunks <= 0"
                ),
                {"store": store, "terms": gone},
            )

    def _read_pgvector_version(self, connection: sa.Connection) -> None:
        version = connection.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
        self._pgvector_version = tuple(int(p) for p in re.findall(r"\d+", str(version or "0")))

    def _ensure_hnsw(self, connection: sa.Connection, dims: int) -> None:
        if dims in self._hnsw_widths or not self._hnsw_serves(dims):
            return
        name = f"ix_vector_store_chunks_hnsw_{dims}"
        # Servers writing a new width at once take turns; the one that comes second finds the index made.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": 0x70766563000000 + dims})
        exists = connection.execute(sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}).scalar()
        if not exists:
            connection.execute(
                sa.text(
                    f"CREATE INDEX {name} ON vector_store_chunks USING hnsw "
                    f"((embedding::halfvec({dims})) halfvec_cosine_ops) WITH ({_HNSW_OPTIONS}) "
                    f"WHERE vector_dims(embedding) = {dims}"
                )
            )
            log.info("Made the HNSW index of %d-dimension vectors", dims)
        self._hnsw_widths.add(dims)

    def _hnsw_serves(self, dims: int) -> bool:
        return dims <= _HNSW_MAX_DIMS and (self._pgvector_version or (0,)) >= _HNSW_SINCE

    # Searching.

    async def candidates(
        self,
        vector_store_id: str,
        vectors: Vectors,
        queries: list[str],
        *,
        filters: dict[str, Any] | None,
        limit: int,
        keywords: bool = True,
    ) -> list[list[Candidate]]:
        """For each query (its text and its unit vector, a row of `vectors`), the store's chunks that may answer
        it: the `limit` nearest by vector and, with `keywords`, the `limit` best by keywords, each with both
        scores. Only chunks of the store's completed files that pass `filters` (checked by
        parley.vectors.filters.check_filter) are candidates."""
        if self._cache is None and self._pgvector_version is None:
            await self.db.read(self._read_pgvector_version)

        def work(connection: sa.Connection) -> list[list[Candidate]]:
            state = connection.execute(
                sa.text(
                    "SELECT key, i.vector_store_id, dimensions, chunks, i.version, removals, "
                    "COALESCE(f.version, 0) AS files_version FROM vector_store_indexes AS i "
                    "LEFT JOIN vector_store_file_versions AS f ON f.vector_store_id = i.vector_store_id "
                    "WHERE i.vector_store_id = :store"
                ),
                {"store": vector_store_id},
            ).one_or_none()
            if state is None or not state.chunks:
                return [[] for _ in queries]
            if not self.sqlite:
                # A search's statements are a few milliseconds each: parallel workers cost more to start.
                connection.execute(sa.text("SET LOCAL max_parallel_workers_per_gather = 0"))
            if state.dimensions != vectors.shape[1]:
                raise ValueError(
                    f"vector store {vector_store_id} holds vectors of {state.dimensions} dimensions, "
                    f"not {vectors.shape[1]}"
                )
            allowed, share = self._allowed(connection, vector_store_id, state, filters)
            if allowed is not None and not allowed:
                return [[] for _ in queries]
            search = _StoreSearch(self, connection, vector_store_id, state, allowed, share, limit)
            return [search.query(vectors[i], text, keywords) for i, text in enumerate(queries)]

        return await self.db.read(work)

    async def results(self, vector_store_id: str, chunk_ids: list[int]) -> dict[int, ChunkResult]:
        """The chunks' texts with their files' names and attributes, by chunk id."""
        if not chunk_ids:
            return {}

        def work(connection: sa.Connection) -> dict[int, ChunkResult]:
            query = _text(
                "SELECT c.id, c.text, c.file_id, f.filename, s.attributes FROM vector_store_chunks AS c "
                "JOIN vector_store_files AS s ON s.vector_store_id = c.vector_store_id AND s.file_id = c.file_id "
                "JOIN files AS f ON f.id = c.file_id WHERE c.id IN :ids",
                "ids",
            ).columns(attributes=JSONType)
            return {
                row.id: ChunkResult(row.id, row.file_id, row.filename, row.attributes, row.text)
                for row in connection.execute(query, {"ids": chunk_ids})
            }

        return await self.db.read(work)

    def _allowed(
        self, connection: sa.Connection, vector_store_id: str, state: Any, filters: dict[str, Any] | None
    ) -> tuple[set[str] | None, float]:
        """The files whose chunks may match (None when every file of the store with chunks may), and their part
        of the store's content (0 to 1), from the store's files in memory (parley.vectors.catalog) or, for a
        store of too many files, from the database."""
        files = self._catalog.current(connection, vector_store_id, int(state.files_version))
        if files is None:
            return self._allowed_files(connection, vector_store_id, filters)
        mask = files.allowed(filters, time.time())
        if mask.all():
            return None, 1.0
        return {files.file_ids[i] for i in np.flatnonzero(mask)}, files.share(mask)

    def _allowed_files(
        self, connection: sa.Connection, vector_store_id: str, filters: dict[str, Any] | None
    ) -> tuple[set[str] | None, float]:
        """`_allowed` asking the database: every file of the store is read, and its attributes parsed."""
        now = int(time.time())
        searchable = sa.and_(
            _store_files.c.status == "completed",
            _files.c.id.is_not(None),
            sa.or_(_files.c.expires_at.is_(None), _files.c.expires_at > now),
        )
        if filters is not None:
            dialect = "sqlite" if self.sqlite else "postgresql"
            searchable = sa.and_(searchable, compile_filter(filters, _store_files.c.attributes, dialect))
        # Every file of the store, and whether it is searchable: one pass over the store's files.
        query = (
            sa.select(_store_files.c.file_id, sa.case((searchable, True), else_=False))
            .select_from(_store_files.outerjoin(_files, _files.c.id == _store_files.c.file_id))
            .where(_store_files.c.vector_store_id == vector_store_id)
        )
        rows = connection.execute(query).all()
        files = {file_id for file_id, ok in rows if ok}
        return (None, 1.0) if len(files) == len(rows) else (files, len(files) / len(rows))


def _analyze_chunks(connection: sa.Connection) -> int:
    """Renews PostgreSQL's statistics of the chunks table (see ANALYZE_AFTER_CHUNKS); the rows it now counts."""
    connection.execute(sa.text("ANALYZE vector_store_chunks (vector_store_id, file_id)"))
    rows = connection.execute(
        sa.text("SELECT reltuples FROM pg_class WHERE oid = 'vector_store_chunks'::regclass")
    ).scalar()
    return max(0, int(rows or 0))


def _text(sql: str, *expanding: str) -> sa.TextClause:
    """`sa.text(sql)` whose `expanding` parameters are lists, each written as `IN :name`."""
    return sa.text(sql).bindparams(*(sa.bindparam(name, expanding=True) for name in expanding))


class _StoreSearch:
    """One search of one store, inside one read transaction."""

    def __init__(
        self,
        index: ChunkIndex,
        connection: sa.Connection,
        store: str,
        state: Any,
        allowed: set[str] | None,
        share: float,
        limit: int,
    ) -> None:
        self.index = index
        self.connection = connection
        self.store = store
        self.state = state
        self.allowed = allowed
        self.share = share  # the allowed files' part of the store's content
        self.limit = limit
        self.copy: _StoreVectors | None = None
        # The rows of `copy` that are of allowed files (None: all).
        self.allowed_rows: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        if index._cache is not None:
            self.copy = index._cache.current(connection, store, state)
            if self.copy is not None and allowed is not None:
                self.allowed_rows = self.copy.rows_of_files(allowed)

    def query(self, vector: Vectors, text: str, keywords: bool) -> list[Candidate]:
        found = {c.chunk_id: c for c in self._nearest(vector)}
        if keywords:
            weights, total = self._term_weights(text)
            if weights:
                scored = self._keyword_scores(weights, list(found))
                missing = [chunk_id for chunk_id in scored if chunk_id not in found]
                for candidate in self._similarities(vector, missing):
                    found[candidate.chunk_id] = candidate
                for chunk_id, weight in scored.items():
                    if chunk_id in found:
                        found[chunk_id].keywords = min(1.0, weight / total)
        return list(found.values())

    # The vector half.

    def _nearest(self, vector: Vectors) -> list[Candidate]:
        if self.copy is not None:
            return self.copy.nearest(vector, self.limit, self.allowed_rows)
        if self.index.sqlite:
            return self._nearest_sqlite(vector)
        return self._nearest_postgres(vector)

    def _nearest_sqlite(self, vector: Vectors) -> list[Candidate]:
        # A store past the in-memory budget: sqlite-vec computes each distance, exact.
        query = sa.text(
            "SELECT id, file_id, vec_distance_cosine(embedding, :q) AS distance FROM vector_store_chunks "
            f"WHERE vector_store_id = :store{self._file_clause()} ORDER BY distance LIMIT :limit"
        )
        rows = self.connection.execute(query, self._params(q=_as_blob(vector), limit=self.limit))
        return [Candidate(row.id, row.file_id, 1.0 - float(row.distance)) for row in rows]

    def _nearest_postgres(self, vector: Vectors) -> list[Candidate]:
        dims = int(self.state.dimensions)
        q = _pg_vector(vector)
        allowed_chunks = self.share * int(self.state.chunks)
        # A store, or a filter's part of one, no larger than a few thousand chunks is read whole, exactly.
        if not self.index._hnsw_serves(dims) or allowed_chunks <= max(self.limit, self.index.exact_chunks):
            return self._nearest_exactly(q)
        self._plan_hnsw()
        if self.allowed is not None and self.share >= _POST_FILTER_SHARE:
            # A broad filter: the nearest chunks of the whole store, enough of them that `limit` of the allowed
            # files' should be among them, kept here. A file test in SQL (`file_id = ANY` thousands of ids) costs
            # more than the search.
            wanted = min(_MAX_APPROXIMATE, math.ceil(2 * self.limit / self.share))
            rows = self._nearest_approximately(q, dims, wanted, filtered=False)
            kept = [row for row in rows if row.file_id in self.allowed][: self.limit]
            if len(kept) == self.limit:
                return [Candidate(row.id, row.file_id, 1.0 - float(row.distance)) for row in kept]
        rows = self._nearest_approximately(q, dims, self.limit, filtered=self.allowed is not None)
        if len(rows) < self.limit:  # an iterative scan that stopped short (pgvector's max_scan_tuples)
            return self._nearest_exactly(q)
        return [Candidate(row.id, row.file_id, 1.0 - float(row.distance)) for row in rows]

    def _plan_hnsw(self) -> None:
        ef_search = min(1000, max(100, 2 * self.limit))
        self.connection.execute(sa.text(f"SET LOCAL hnsw.ef_search = {ef_search}"))
        # Planned for this store's share of the rows each time: a plan cached for any store would take the
        # index for a small store as for a large one.
        self.connection.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
        if (self.index._pgvector_version or (0,)) >= (0, 8):
            self.connection.execute(sa.text("SET LOCAL hnsw.iterative_scan = strict_order"))

    def _nearest_approximately(self, q: str, dims: int, limit: int, *, filtered: bool) -> list[Any]:
        # Ordered by the index's own expression, under its predicate, so that the planner can use it; it still
        # scans the store's chunks exactly where they are few (it weighs the two by the store's share of the
        # rows). The distance returned is the full vectors'.
        approximate = f"embedding::halfvec({dims}) <=> CAST(:q AS halfvec({dims}))"
        files = self._file_clause() if filtered else ""
        rows = self.connection.execute(
            sa.text(
                "SELECT id, file_id, embedding <=> CAST(:q AS vector) AS distance FROM vector_store_chunks "
                f"WHERE vector_store_id = :store AND vector_dims(embedding) = {dims}{files} "
                f"ORDER BY {approximate} LIMIT :limit"
            ),
            self._params(q=q, limit=limit) if filtered else {"store": self.store, "q": q, "limit": limit},
        ).all()
        return list(rows)

    def _nearest_exactly(self, q: str) -> list[Candidate]:
        rows = self.connection.execute(
            sa.text(
                "SELECT id, file_id, embedding <=> CAST(:q AS vector) AS distance FROM vector_store_chunks "
                f"WHERE vector_store_id = :store{self._file_clause()} ORDER BY distance LIMIT :limit"
            ),
            self._params(q=q, limit=self.limit),
        ).all()
        return [Candidate(row.id, row.file_id, 1.0 - float(row.distance)) for row in rows]

    def _similarities(self, vector: Vectors, chunk_ids: list[int]) -> list[Candidate]:
        if not chunk_ids:
            return []
        if self.copy is not None:
            return self.copy.similarities(vector, chunk_ids)
        q: bytes | str
        if self.index.sqlite:
            distance, q = "vec_distance_cosine(embedding, :q)", _as_blob(vector)
        else:
            distance, q = "embedding <=> CAST(:q AS vector)", _pg_vector(vector)
        rows = self.connection.execute(
            _text(f"SELECT id, file_id, {distance} AS distance FROM vector_store_chunks WHERE id IN :ids", "ids"),
            {"q": q, "ids": chunk_ids},
        )
        return [Candidate(row.id, row.file_id, 1.0 - float(row.distance)) for row in rows]

    # The keyword half.

    def _term_weights(self, text: str) -> tuple[dict[str, float], float]:
        """The query's terms to rank by, with their weights (the rarest first, within POSTINGS_BUDGET), and the
        weight of all its terms: those too common to rank, and those no chunk holds, count in a chunk's share
        as terms it does not hold, so that a chunk holding one word of a long question has a small share."""
        terms = terms_of(text)[:MAX_QUERY_TERMS]
        if not terms:
            return {}, 0.0
        rows = self.connection.execute(
            _text(
                "SELECT term, chunks FROM vector_store_terms WHERE vector_store_id = :store AND term IN :terms", "terms"
            ),
            {"store": self.store, "terms": terms},
        ).all()
        chunks = int(self.state.chunks)
        held = {row.term: max(0, int(row.chunks)) for row in rows}
        total = sum(_idf(chunks, held.get(term, 0)) for term in terms)
        weights: dict[str, float] = {}
        postings = 0
        for term, count in sorted(held.items(), key=lambda item: (item[1], item[0])):
            if count <= 0 or postings + count > POSTINGS_BUDGET:
                break
            postings += count
            weights[term] = _idf(chunks, count)
        return weights, total

    def _keyword_scores(self, weights: dict[str, float], also: list[int]) -> dict[int, float]:
        """The summed weights of the chunks holding any of the terms: the `limit` best of the allowed files'
        chunks, and those of `also` (the vector half's candidates)."""
        if self.copy is not None:
            return self._keyword_scores_in_memory(weights, also)
        if not self.index.sqlite:
            # Each term's postings through the GIN index, always: a store's terms are its own (`<key>x<term>`),
            # so a term is held by few of the table's rows. Planned on stale statistics (see
            # ANALYZE_AFTER_CHUNKS), each term read every chunk's tsvector instead: 27 ms a term at 10,000 chunks.
            self.connection.execute(sa.text("SET LOCAL enable_seqscan = off"))
            try:
                if self.allowed is not None:
                    return self._keyword_scores_of_files(weights, also)
                return self._keyword_scores_in_sql(weights, also)
            finally:
                self.connection.execute(sa.text("SET LOCAL enable_seqscan = on"))
        return self._keyword_scores_in_sql(weights, also)

    def _keyword_scores_in_sql(self, weights: dict[str, float], also: list[int]) -> dict[int, float]:
        key = self.state.key
        params: dict[str, Any] = {"limit": self.limit}
        parts = []
        for i, (term, weight) in enumerate(weights.items()):
            params[f"t{i}"] = f'"{_posting(key, term)}"' if self.index.sqlite else f"'{_posting(key, term)}'"
            params[f"w{i}"] = weight
            if self.index.sqlite:
                parts.append(
                    f"SELECT rowid AS id, :w{i} AS w FROM vector_store_chunks_fts "
                    f"WHERE vector_store_chunks_fts MATCH :t{i}"
                )
            else:
                parts.append(
                    f"SELECT id, CAST(:w{i} AS double precision) AS w FROM vector_store_chunks "
                    f"WHERE terms @@ CAST(:t{i} AS tsquery)"
                )
        union = " UNION ALL ".join(parts)
        if self.allowed is None:
            best = "SELECT id, s FROM held ORDER BY s DESC, id LIMIT :limit"
        else:
            best = (
                "SELECT held.id, held.s FROM held JOIN vector_store_chunks AS c ON c.id = held.id "
                f"WHERE true{self._file_clause('c.')} ORDER BY held.s DESC, held.id LIMIT :limit"
            )
        sql = f"WITH held AS MATERIALIZED (SELECT id, sum(w) AS s FROM ({union}) AS postings GROUP BY id) "
        if also:
            params["also"] = also
            sql += f"SELECT id, s FROM ({best}) AS best UNION SELECT id, s FROM held WHERE id IN :also"
        else:
            sql += best
        statement = _text(sql, "also") if also else sa.text(sql)
        return {row.id: float(row.s) for row in self.connection.execute(statement, self._params(**params))}

    def _keyword_scores_of_files(self, weights: dict[str, float], also: list[int]) -> dict[int, float]:
        # PostgreSQL with a filter: every posting with its chunk's file (POSTINGS_BUDGET bounds them), summed and
        # tested here. Testing the file in SQL, `file_id = ANY` the allowed files, took 64 ms for a filter that
        # allows 6,900 of 8,500 files (100,000 chunks); this takes a few.
        assert self.allowed is not None
        key = self.state.key
        params: dict[str, Any] = {}
        parts = []
        for i, (term, weight) in enumerate(weights.items()):
            params[f"t{i}"], params[f"w{i}"] = f"'{_posting(key, term)}'", weight
            parts.append(
                f"SELECT id, file_id, CAST(:w{i} AS double precision) AS w FROM vector_store_chunks "
                f"WHERE terms @@ CAST(:t{i} AS tsquery)"
            )
        sums: dict[int, float] = {}
        files: dict[int, str] = {}
        for chunk_id, file_id, weight in self.connection.execute(sa.text(" UNION ALL ".join(parts)), params):
            sums[chunk_id] = sums.get(chunk_id, 0.0) + weight
            files[chunk_id] = file_id
        allowed = self.allowed
        held = [chunk_id for chunk_id in sums if files[chunk_id] in allowed]
        best = heapq.nsmallest(self.limit, held, key=lambda chunk_id: (-sums[chunk_id], chunk_id))
        scores = {chunk_id: sums[chunk_id] for chunk_id in best}
        scores.update({chunk_id: sums[chunk_id] for chunk_id in also if chunk_id in sums})
        return scores

    def _keyword_scores_in_memory(self, weights: dict[str, float], also: list[int]) -> dict[int, float]:
        # SQLite, with the store's vectors in memory: the postings are read from FTS5 and summed here, and the
        # copy knows each chunk's file, where SQL would look every posting's chunk up to filter by file.
        assert self.copy is not None
        key = self.state.key
        id_lists, weight_lists = [], []
        for term, weight in weights.items():
            postings = self.connection.exec_driver_sql(
                "SELECT rowid FROM vector_store_chunks_fts WHERE vector_store_chunks_fts MATCH ?",
                (f'"{_posting(key, term)}"',),
            ).all()
            ids = np.fromiter((row[0] for row in postings), dtype=np.int64, count=len(postings))
            id_lists.append(ids)
            weight_lists.append(np.full(len(ids), weight))
        if not id_lists:
            return {}
        chunk_ids, inverse = np.unique(np.concatenate(id_lists), return_inverse=True)
        sums = np.bincount(inverse, weights=np.concatenate(weight_lists))
        rows = self.copy.rows_of(chunk_ids)
        usable = rows >= 0
        if self.allowed_rows is not None:
            usable &= self.allowed_rows[np.maximum(rows, 0)]
        candidates = np.flatnonzero(usable)
        take = min(self.limit, len(candidates))
        best = candidates[np.argpartition(-sums[candidates], take - 1)[:take]] if take else candidates[:0]
        scores = {int(chunk_ids[i]): float(sums[i]) for i in best}
        if also:
            wanted = np.asarray(also, dtype=np.int64)
            at = np.searchsorted(chunk_ids, wanted)
            held = (at < len(chunk_ids)) & (chunk_ids[np.minimum(at, len(chunk_ids) - 1)] == wanted)
            scores.update({int(wanted[i]): float(sums[at[i]]) for i in np.flatnonzero(held)})
        return scores

    def _file_clause(self, prefix: str = "") -> str:
        """The condition that a chunk is of an allowed file; its parameter `files` is in `_params`."""
        if self.allowed is None:
            return ""
        # One parameter however many files: a JSON array on SQLite, an array on PostgreSQL.
        if self.index.sqlite:
            return f" AND {prefix}file_id IN (SELECT value FROM json_each(:files))"
        return f" AND {prefix}file_id = ANY(:files)"

    def _params(self, **values: Any) -> dict[str, Any]:
        values["store"] = self.store
        if self.allowed is not None:
            files = sorted(self.allowed)
            values["files"] = orjson.dumps(files).decode() if self.index.sqlite else files
        return values


# SQLite's in-process copies of stores' vectors.


@dataclass(slots=True)
class _StoreVectors:
    """One store's vectors as of `version`: rows in chunk id order."""

    version: int
    removals: int
    dims: int
    ids: np.ndarray[Any, np.dtype[np.int64]]
    files: np.ndarray[Any, np.dtype[np.int32]]  # each row's file, as an index into file_ids
    file_ids: list[str]
    matrix: Vectors
    file_codes: dict[str, int] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes + self.ids.nbytes + self.files.nbytes)

    def rows_of_files(self, allowed: set[str]) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which rows are chunks of the `allowed` files."""
        codes = np.zeros(len(self.file_ids), dtype=bool)
        for file_id in allowed:
            code = self.file_codes.get(file_id)
            if code is not None:
                codes[code] = True
        return codes[self.files]

    def rows_of(self, chunk_ids: np.ndarray[Any, np.dtype[np.int64]]) -> np.ndarray[Any, np.dtype[np.intp]]:
        """The row of each chunk id, or -1 for an id that is not the store's."""
        if not len(self.ids):
            return np.full(len(chunk_ids), -1, dtype=np.intp)
        rows = np.searchsorted(self.ids, chunk_ids)
        found = (rows < len(self.ids)) & (self.ids[np.minimum(rows, len(self.ids) - 1)] == chunk_ids)
        return np.where(found, rows, -1)

    def nearest(
        self, vector: Vectors, limit: int, allowed_rows: np.ndarray[Any, np.dtype[np.bool_]] | None
    ) -> list[Candidate]:
        if not len(self.ids):
            return []
        # einsum's own loop, one thread, not BLAS: the product reads the whole matrix, so it is as fast (8 ms at
        # 100,000 x 256, idle), and BLAS's threads, contending with the server's own, took it to 400 ms on a
        # loaded machine.
        scores = np.einsum("ij,j->i", self.matrix, vector.astype(np.float32))
        if allowed_rows is not None:
            scores = np.where(allowed_rows, scores, -np.inf)
        take = min(limit, len(scores))
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [
            Candidate(int(self.ids[i]), self.file_ids[self.files[i]], float(scores[i]))
            for i in top
            if scores[i] > -np.inf
        ]

    def similarities(self, vector: Vectors, chunk_ids: list[int]) -> list[Candidate]:
        rows = self.rows_of(np.asarray(chunk_ids, dtype=np.int64))
        rows = rows[rows >= 0]
        scores = self.matrix[rows] @ vector.astype(np.float32)
        return [
            Candidate(int(self.ids[r]), self.file_ids[self.files[r]], float(s))
            for r, s in zip(rows, scores, strict=True)
        ]


class _VectorCache:
    """Stores' vectors in memory, least recently searched dropped first past `budget` bytes. Thread-safe: SQLite
    reads run on several threads, and each copy, once made, is only replaced, never changed."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._copies: OrderedDict[str, _StoreVectors] = OrderedDict()
        self._lock = threading.Lock()
        # One catch-up of a store at a time: the searches that arrive meanwhile wait for it, not repeat it.
        self._catching_up: dict[str, threading.Lock] = {}

    def drop(self, store: str) -> None:
        with self._lock:
            self._copies.pop(store, None)

    def current(self, connection: sa.Connection, store: str, state: Any) -> _StoreVectors | None:
        """The store's vectors as of `state` (read in the same transaction) or later, or None if they are too
        many. A later copy serves too: what it adds or lacks is the store as it now is, which the results are
        read from."""
        dims = int(state.dimensions)
        if state.chunks * (dims * 4 + 12) > self.budget:
            return None
        copy = self._get(store, dims)
        if copy is not None and copy.version >= state.version:
            return copy
        with self._lock:
            catching_up = self._catching_up.setdefault(store, threading.Lock())
        with catching_up:
            copy = self._get(store, dims)
            if copy is not None and copy.version >= state.version:
                return copy
            copy = self._catch_up(connection, store, state, copy)
            with self._lock:
                self._copies[store] = copy
                self._copies.move_to_end(store)
                total = sum(c.nbytes for c in self._copies.values())
                while total > self.budget and len(self._copies) > 1:
                    gone, dropped = self._copies.popitem(last=False)
                    self._catching_up.pop(gone, None)
                    total -= dropped.nbytes
        return copy

    def _get(self, store: str, dims: int) -> _StoreVectors | None:
        with self._lock:
            copy = self._copies.get(store)
            if copy is not None:
                self._copies.move_to_end(store)
        return copy if copy is not None and copy.dims == dims else None

    def _catch_up(self, connection: sa.Connection, store: str, state: Any, copy: _StoreVectors | None) -> _StoreVectors:
        dims = int(state.dimensions)
        if copy is None:
            ids = np.empty(0, dtype=np.int64)
            files = np.empty(0, dtype=np.int32)
            matrix = np.empty((0, dims), dtype=np.float32)
            file_ids: list[str] = []
            file_codes: dict[str, int] = {}
        else:
            ids, files, matrix = copy.ids, copy.files, copy.matrix
            file_ids, file_codes = list(copy.file_ids), dict(copy.file_codes)
            if copy.removals != state.removals:
                live = connection.execute(
                    sa.text("SELECT id FROM vector_store_chunks WHERE vector_store_id = :store"), {"store": store}
                ).scalars()
                keep = np.isin(ids, np.fromiter(live, dtype=np.int64))
                ids, files, matrix = ids[keep], files[keep], matrix[keep]
        after = int(ids[-1]) if len(ids) else 0
        rows = connection.execute(
            sa.text(
                "SELECT id, file_id, embedding FROM vector_store_chunks "
                "WHERE vector_store_id = :store AND id > :after ORDER BY id"
            ),
            {"store": store, "after": after},
        ).all()
        if rows:
            new_ids = np.fromiter((row.id for row in rows), dtype=np.int64, count=len(rows))
            codes = np.empty(len(rows), dtype=np.int32)
            for i, row in enumerate(rows):
                code = file_codes.get(row.file_id)
                if code is None:
                    code = file_codes[row.file_id] = len(file_ids)
                    file_ids.append(row.file_id)
                codes[i] = code
            new = np.frombuffer(b"".join(row.embedding for row in rows), dtype="<f4").reshape(len(rows), dims)
            ids = np.concatenate([ids, new_ids])
            files = np.concatenate([files, codes])
            matrix = np.concatenate([matrix, new.astype(np.float32)])
        return _StoreVectors(int(state.version), int(state.removals), dims, ids, files, file_ids, matrix, file_codes)
