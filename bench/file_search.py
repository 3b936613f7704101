"""Vector stores at scale through the real API: ingestion throughput and search latency, on SQLite and PostgreSQL.

Issue 14's targets, on this machine: ingestion of at least 200 chunks a second with local embeddings, and
`POST /v1/vector_stores/{id}/search` under 50 ms at the median at 100,000 chunks, the query's embedding
included, on each database. Everything goes through a real `parley serve` on 127.0.0.1 (its own data
directory; SQLite in it, or a throwaway PostgreSQL server with pgvector, started as tests/postgres.py does).

The corpus: varied synthetic prose (bench/_prose.py: thirty topics, names, places, part numbers and tickets,
made deterministically from a seed; nothing copied), files of 10 to 60 paragraphs (about 12 chunks each with
`auto` chunking: 800 tokens, 400 overlapping), each with attributes `category` (its topic), `year`, `team`
and `confidential`. The same files, in the same order, on both databases.

Per database:

1. Ingestion, the store's model `all-minilm-l6-v2-static` (the static model that makes ingestion fast): the
   files are uploaded (`POST /v1/files`, timed apart), added to one store in file batches of up to 2,000
   (with their attributes), and the store is polled until none is `in_progress`. Throughput is the store's
   chunks divided by the time from the first batch to the last file completed. First to about 10,000 chunks,
   then on to `--chunks` (100,000): the second figure says whether ingestion slows as the store grows.
   The API reports no chunk count, so the benchmark counts the store's rows in `vector_store_chunks` (the one
   place it reads the database), and checks a few files' counts against `GET .../files/{id}/content` and
   against parley.vectors.chunking run here.
2. Ingestion with the transformer `all-minilm-l6-v2` (Parley restarted with it as the stores' model): a store
   of `--encoder-chunks` (48) chunks, enough for its rate, which is a few chunks a second.
3. Search latency at each size, one search at a time after `--warmup` (5) unmeasured ones, `--queries` (100)
   different questions each (generated like the corpus), 10 results: without a filter; with a narrow filter
   (`category` eq the question's topic and `year` >= 2022: about 1% of the files); with a broad one
   (`confidential` eq false: about 80%); and without a filter but with `ranker` none, the vectors alone, which
   tells the two halves of the hybrid search apart. Every answer is checked: a 200, results, and every result within the
   filter. The first search after the store reached its size is reported apart (`first`: on SQLite it loads
   the store's vectors into memory).
4. The same searches over a store of the transformer's model at each size (skipped by `--no-encoder-search`).
   Embedding 100,000 chunks with the transformer at a few a second would take hours, so this store is filled
   faster, and documented as such: Parley is started with the static model distilled to 384 dimensions served
   under the transformer's name, ingests the same files into a store whose model is `all-minilm-l6-v2`, and
   is restarted with the real transformer before the searches. The stored vectors are then real text
   embeddings of the transformer's width (what the index holds and scans is as it would be), while each query
   is embedded by the real transformer: the latency is the real one, the results' relevance is not measured
   here (bench/retrieval_http.py does that).

The baseline of each search row, measured in the same run on the same server and database: the same search
(no filter) on a store of one small file of the same model. It costs what every search costs whatever the
store holds: the HTTP round trip, the request's handling, the query's embedding, and an index that answers at
once. `x base` is a row's median over it: what searching 10,000 or 100,000 chunks adds, as a multiple. The
query's embedding alone (`POST /v1/embeddings`, one question) is shown beside it, since it is most of the
baseline for the transformer.

Targets (`--check`): ingestion >= 200 chunks/s for the stores' default model (parley.config's
`vector_stores.embedding_model`), at each size, on each database; search p50 < 50 ms at the largest size,
without a filter and with each filter, for each model measured, on each database.

    .venv/bin/python bench/file_search.py                                  # both databases, 100,000 chunks
    .venv/bin/python bench/file_search.py --chunks 10000 --database sqlite  # a few minutes
    .venv/bin/python bench/file_search.py --json out.json --check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import (
    Children,
    conclude,
    cpu_seconds,
    fmt,
    percentile,
    print_footer,
    print_targets,
    report_config,
    run_benchmark,
    start_parley,
    target,
)
from _prose import Document, Prose

from parley.config import EMBEDDED_EMBEDDING_MODEL, EMBEDDED_STATIC_EMBEDDING_MODEL, VectorStoreSettings
from parley.inference.sentence_embeddings import default_model_dir
from parley.inference.static_embeddings import load_table
from parley.store.database import Database
from parley.vectors.chunking import chunk_text

STATIC, ENCODER = EMBEDDED_STATIC_EMBEDDING_MODEL, EMBEDDED_EMBEDDING_MODEL
DEFAULT_MODEL = VectorStoreSettings().embedding_model
FIRST_SIZE = 10_000
MAX_BATCH_FILES = 2000  # OpenAI's limit on one file batch
# Rows of each size: no filter, the narrow and the broad filter (hybrid ranking), and, to tell the two halves of
# the hybrid search apart, no filter with `ranker` none (vectors alone).
FILTERS = ("none", "narrow", "broad", "vectors")
TARGET_CHUNKS_PER_S = 200.0
TARGET_P50_MS = 50.0
# `auto` chunking advances 400 tokens a chunk; the corpus's estimate of a file's chunks starts from this.
_AUTO_STEP_TOKENS = 400


# The corpus ------------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """The files of the big stores, made as needed; the same ones, in the same order, on every database."""

    prose: Prose = field(default_factory=Prose)
    docs: list[Document] = field(default_factory=list)
    estimated: list[float] = field(default_factory=list)
    chars_per_chunk: float = 0.0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        # Characters per chunk, from a few files chunked as ingestion chunks them.
        sample = [self.prose.document(1_000_000 + i, 35).text for i in range(8)]
        chunks = sum(len(chunk_text(text)) for text in sample)
        self.chars_per_chunk = sum(map(len, sample)) / chunks

    def upto(self, chunks: int) -> list[Document]:
        """The first files whose chunks, by estimate, reach `chunks` (made now if not yet)."""
        started = time.perf_counter()
        rng = random.Random(11)
        while sum(self.estimated) < chunks:
            index = len(self.docs)
            rng.seed(index)
            doc = self.prose.document(index, rng.randint(10, 60))
            self.docs.append(doc)
            self.estimated.append(max(1.0, len(doc.text) / self.chars_per_chunk))
        self.seconds += time.perf_counter() - started
        total, count = 0.0, 0
        for count, estimate in enumerate(self.estimated, 1):  # noqa: B007
            total += estimate
            if total >= chunks:
                break
        return self.docs[:count]

    def small(self, label: str, chunks: int) -> list[Document]:
        """Files of about 4 chunks each, `chunks` in all, apart from the big stores' (seeded by `label`)."""
        base = 2_000_000 + sum(map(ord, label)) * 1000
        docs, total = [], 0.0
        while total < chunks:
            doc = self.prose.document(base + len(docs), 10)
            docs.append(doc)
            total += len(doc.text) / self.chars_per_chunk
        return docs


def question_set(prose: Prose, seed: int, count: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [prose.question(rng) for _ in range(count)]


def search_filter(kind: str, topic: str) -> dict[str, Any] | None:
    if kind == "narrow":
        return {
            "type": "and",
            "filters": [
                {"type": "eq", "key": "category", "value": topic},
                {"type": "gte", "key": "year", "value": 2022},
            ],
        }
    if kind == "broad":
        return {"type": "eq", "key": "confidential", "value": False}
    return None


def within(kind: str, topic: str, attributes: dict[str, Any] | None) -> bool:
    """Whether a result's attributes satisfy the filter of `kind` (checked on every result)."""
    attributes = attributes or {}
    if kind == "narrow":
        return attributes.get("category") == topic and attributes.get("year", 0) >= 2022
    if kind == "broad":
        return attributes.get("confidential") is False
    return True


# Parley ----------------------------------------------------------------------------------------------------


def parley_yaml(storage_url: str, store_model: str, models: dict[str, dict[str, Any]]) -> str:
    config = {
        "inference": {"providers": {"local-embeddings": {"type": "local-embeddings", "models": models}}},
        "storage": {"url": storage_url},
        "vector_stores": {"embedding_model": store_model, "poll_seconds": 0.5},
    }
    return yaml.safe_dump(config, sort_keys=False)


REAL_MODELS: dict[str, dict[str, Any]] = {STATIC: {"kind": "static"}, ENCODER: {}}
# The stand-in that fills a transformer store fast (see the module docstring, step 4).
POSING_MODELS: dict[str, dict[str, Any]] = {ENCODER: {"kind": "static", "dimensions": 384}}


class Server:
    """One `parley serve` at a time over the run's database, restarted with another configuration as needed."""

    def __init__(self, children: Children, storage_url: str, name: str) -> None:
        self.children = children
        self.storage_url = storage_url
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.client: openai.AsyncOpenAI | None = None
        self.http: httpx.AsyncClient | None = None
        self.restarts = 0.0

    async def start(self, store_model: str, models: dict[str, dict[str, Any]]) -> None:
        await self.stop()
        started = time.perf_counter()
        config = parley_yaml(self.storage_url, store_model, models)
        self.base, self.proc = await asyncio.to_thread(start_parley, self.children, config, name=self.name)
        self.restarts += time.perf_counter() - started
        self.client = openai.AsyncOpenAI(base_url=self.base, api_key="bench", max_retries=2, timeout=300)
        self.http = httpx.AsyncClient(
            base_url=self.base,
            headers={"Content-Type": "application/json", "Authorization": "Bearer bench"},
            timeout=httpx.Timeout(60),
        )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.http is not None:
            await self.http.aclose()
        self.client = self.http = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 30)
        self.proc = None

    @property
    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid) or 0.0

    def api(self) -> openai.AsyncOpenAI:
        assert self.client is not None
        return self.client


async def upload(server: Server, docs: list[Document], concurrency: int = 4) -> list[str]:
    """Uploads the files (`purpose` assistants), a few at a time; their ids in order."""
    ids: list[str] = [""] * len(docs)
    queue = iter(range(len(docs)))

    async def worker() -> None:
        for i in queue:
            doc = docs[i]
            created = await server.api().files.create(
                file=(f"doc-{i:06d}.md", doc.text.encode(), "text/markdown"), purpose="assistants"
            )
            ids[i] = created.id

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


async def ingest(server: Server, store_id: str, file_ids: list[str], docs: list[Document]) -> dict[str, Any]:
    """Adds the files to the store in batches and waits until none is in progress; the seconds it took."""
    client = server.api()
    cpu_before = server.cpu
    started = time.perf_counter()
    for first in range(0, len(file_ids), MAX_BATCH_FILES):
        files = [
            {"file_id": file_id, "attributes": doc.attributes}
            for file_id, doc in zip(
                file_ids[first : first + MAX_BATCH_FILES], docs[first : first + MAX_BATCH_FILES], strict=True
            )
        ]
        await client.vector_stores.file_batches.create(store_id, files=files)  # type: ignore[arg-type]
    while True:
        store = await client.vector_stores.retrieve(store_id)
        if store.file_counts.in_progress == 0:
            break
        await asyncio.sleep(0.2)
    seconds = time.perf_counter() - started
    if store.file_counts.failed or store.file_counts.cancelled:
        raise RuntimeError(f"ingestion into {store_id}: {store.file_counts.failed} file(s) failed")
    return {"seconds": seconds, "files": len(file_ids), "cpu_s": server.cpu - cpu_before}


async def count_chunks(storage_url: str, store_id: str) -> int:
    """The store's chunks, counted in its table: the API reports no chunk count."""
    database = Database(storage_url)
    try:
        query = sa.text("SELECT count(*) FROM vector_store_chunks WHERE vector_store_id = :id")
        return int(await database.read(lambda c: c.execute(query, {"id": store_id}).scalar_one()))
    finally:
        await database.close()


async def check_counts(server: Server, store_id: str, file_ids: list[str], docs: list[Document]) -> None:
    """A few files' chunks through `GET .../files/{id}/content` against chunking run here."""
    for i in sorted({0, len(docs) // 2, len(docs) - 1}):
        assert server.http is not None
        reply = await server.http.get(f"/vector_stores/{store_id}/files/{file_ids[i]}/content")
        served = len(reply.json()["data"])
        expected = len(chunk_text(docs[i].text))
        if served != expected:
            raise RuntimeError(f"file {file_ids[i]}: the store has {served} chunks, chunking makes {expected}")


async def new_store(server: Server, name: str) -> str:
    return (await server.api().vector_stores.create(name=name)).id


# Searching -------------------------------------------------------------------------------------------------


async def search_once(
    server: Server, store_id: str, query: str, kind: str, topic: str
) -> tuple[float, str | None, int]:
    """One search: its seconds, an error (or None), and how many results it gave."""
    assert server.http is not None
    body: dict[str, Any] = {"query": query}
    chosen = search_filter(kind, topic)
    if chosen is not None:
        body["filters"] = chosen
    if kind == "vectors":
        body["ranking_options"] = {"ranker": "none"}
    payload = orjson.dumps(body)
    started = time.perf_counter()
    reply = await server.http.post(f"/vector_stores/{store_id}/search", content=payload)
    seconds = time.perf_counter() - started
    if reply.status_code != 200:
        return seconds, f"HTTP {reply.status_code}: {reply.text[:200]}", 0
    data = orjson.loads(reply.content)["data"]
    if any(not within(kind, topic, hit.get("attributes")) for hit in data):
        return seconds, f"a result outside the {kind} filter", len(data)
    return seconds, None, len(data)


async def search_row(
    server: Server, store_id: str, questions: list[tuple[str, str]], kind: str, warmup: int, expect_results: bool
) -> dict[str, Any]:
    for query, topic in questions[:warmup]:
        await search_once(server, store_id, query, kind, topic)
    seconds, errors, results = [], [], []
    for query, topic in questions[warmup:]:
        elapsed, error, found = await search_once(server, store_id, query, kind, topic)
        if error is None and expect_results and found == 0 and kind != "narrow":
            error = "no results"
        if error is not None:
            errors.append(error)
        else:
            seconds.append(elapsed)
            results.append(found)
    return {
        "queries": len(questions) - warmup,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "p50_ms": ms(percentile(seconds, 50)),
        "p99_ms": ms(percentile(seconds, 99)),
        "results_mean": round(sum(results) / len(results), 2) if results else None,
        # The machine's load while the row ran: other work on a shared machine moves these figures.
        "load_1min": round(os.getloadavg()[0], 1),
    }


async def embed_latency(server: Server, model: str, questions: list[tuple[str, str]]) -> dict[str, Any]:
    """One question's embedding through `POST /v1/embeddings`, p50 and p99."""
    assert server.http is not None
    seconds = []
    for i, (query, _) in enumerate(questions):
        payload = orjson.dumps({"model": model, "input": query, "encoding_format": "base64"})
        started = time.perf_counter()
        reply = await server.http.post("/embeddings", content=payload)
        if i >= 3:
            seconds.append(time.perf_counter() - started)
        reply.raise_for_status()
    return {"p50_ms": ms(percentile(seconds, 50)), "p99_ms": ms(percentile(seconds, 99))}


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# One database ----------------------------------------------------------------------------------------------


class Timer:
    """How long each part of the run took, in the order they ran."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds


async def run_database(
    database: str, storage_url: str, corpus: Corpus, options: argparse.Namespace, children: Children, timer: Timer
) -> dict[str, Any]:
    sizes = sorted({min(FIRST_SIZE, options.chunks), options.chunks})
    server = Server(children, storage_url, f"parley-{database}")
    prose = corpus.prose
    result: dict[str, Any] = {"ingestion": [], "search": [], "embedding": {}}

    def questions(seed: int) -> list[tuple[str, str]]:
        return question_set(prose, seed, options.queries + options.warmup)

    async def timed(part: str, coro: Any) -> Any:
        started = time.perf_counter()
        try:
            return await coro
        finally:
            timer.add(f"{database}: {part}", time.perf_counter() - started)

    async def baseline(model: str) -> dict[str, Any]:
        """A store of one small file of `model`, its search (the rows' baseline), and the query's embedding."""
        [doc] = corpus.small(f"tiny-{model}", 1)[:1]
        store_id = await new_store(server, f"tiny {model}")
        [file_id] = await upload(server, [doc])
        await ingest(server, store_id, [file_id], [doc])
        row = await search_row(server, store_id, questions(1), "none", options.warmup, expect_results=True)
        result["embedding"][model] = await embed_latency(server, model, questions(2)[:50])
        chunks = await count_chunks(storage_url, store_id)
        return {"model": model, "chunks": chunks, "size": "base", "filter": "none", **row}

    async def searches(model: str, store_id: str, size: int, base: dict[str, Any]) -> None:
        chunks = await count_chunks(storage_url, store_id)
        started = time.perf_counter()
        query, topic = questions(99)[0]
        _, error, _ = await search_once(server, store_id, query, "none", topic)
        first = ms(time.perf_counter() - started)
        if error:
            raise RuntimeError(f"{database}: the first search of {store_id} failed: {error}")
        for i, kind in enumerate(FILTERS):
            row = await search_row(server, store_id, questions(size + i), kind, options.warmup, expect_results=True)
            row.update(model=model, chunks=chunks, size=size, filter=kind, first_ms=first if i == 0 else None)
            row["x_base"] = round(row["p50_ms"] / base["p50_ms"], 2) if row["p50_ms"] and base["p50_ms"] else None
            result["search"].append(row)

    # 1. The static model: the tiny store, then the big one, at each size.
    await timed("start Parley", server.start(STATIC, REAL_MODELS))
    base_static = await timed("baseline (static)", baseline(STATIC))
    result["search"].append(base_static)
    big = await new_store(server, "bench static")
    uploaded: list[str] = []
    done_docs = 0
    for size in sizes:
        docs = await timed("generate corpus", asyncio.to_thread(corpus.upto, size))
        more = docs[done_docs:]
        uploaded += await timed("upload files", upload(server, more))
        before = await count_chunks(storage_url, big)
        step = await timed("ingest (static)", ingest(server, big, uploaded[done_docs:], more))
        chunks = await count_chunks(storage_url, big) - before
        step.update(model=STATIC, size=size, chunks=chunks, chunks_per_s=round(chunks / step["seconds"], 1))
        step["cpu_ms_per_chunk"] = round(step.pop("cpu_s") * 1000 / chunks, 2)
        result["ingestion"].append(step)
        done_docs = len(docs)
        await timed("search (static)", searches(STATIC, big, size, base_static))
    await check_counts(server, big, uploaded, corpus.docs[:done_docs])

    # 2. The transformer's ingestion rate, on a small store.
    await timed("restart Parley", server.start(ENCODER, REAL_MODELS))
    base_encoder = await timed("baseline (transformer)", baseline(ENCODER))
    result["search"].append(base_encoder)
    sample = corpus.small("encoder", options.encoder_chunks)
    store_id = await new_store(server, "bench transformer sample")
    ids = await timed("upload files", upload(server, sample))
    step = await timed("ingest (transformer sample)", ingest(server, store_id, ids, sample))
    chunks = await count_chunks(storage_url, store_id)
    step.update(
        model=ENCODER, size=options.encoder_chunks, chunks=chunks, chunks_per_s=round(chunks / step["seconds"], 2)
    )
    step["cpu_ms_per_chunk"] = round(step.pop("cpu_s") * 1000 / chunks, 2)
    result["ingestion"].append(step)

    # 3. Searches over a transformer store at each size, filled by the stand-in (module docstring, step 4).
    if not options.no_encoder_search:
        # Distilled once and cached: done here, as Parley would do it while starting (past start_parley's wait).
        await timed("distil the stand-in (once, cached)", asyncio.to_thread(load_table, default_model_dir(), 384))
        posed = ""
        done = 0
        for size in sizes:
            await timed("restart Parley", server.start(ENCODER, POSING_MODELS))
            if not posed:
                posed = await new_store(server, "bench transformer (filled by the stand-in)")
            count = len(corpus.upto(size))
            fill = await timed(
                "fill transformer store (stand-in)",
                ingest(server, posed, uploaded[done:count], corpus.docs[done:count]),
            )
            result.setdefault("stand_in_fill", []).append({"size": size, "seconds": round(fill["seconds"], 1)})
            done = count
            await timed("restart Parley", server.start(ENCODER, REAL_MODELS))
            await timed("search (transformer)", searches(ENCODER, posed, size, base_encoder))
    await server.stop()
    timer.add(f"{database}: (Parley restarts, within the above)", server.restarts)
    return result


# Report ----------------------------------------------------------------------------------------------------


def print_report(results: dict[str, Any], targets: list[dict[str, Any]], timer: Timer) -> None:
    print_tables(results)
    print_targets(targets, width=56)
    print("\nTime spent")
    for part, seconds in timer.parts.items():
        print(f"   {part:<56}{seconds:>8.1f} s")


def print_tables(results: dict[str, Any]) -> None:
    print("Ingestion through the API: files added in batches, until none is in progress (auto chunking)")
    print(f"   {'database':<11}{'model':<26}{'to size':>9}{'files':>7}{'chunks':>8}{'seconds':>9}{'chunks/s':>10}")
    for database, res in results.items():
        for row in res["ingestion"]:
            default = " (default)" if row["model"] == DEFAULT_MODEL else ""
            print(
                f"   {database:<11}{row['model'] + default:<26}{row['size']:>9}{row['files']:>7}{row['chunks']:>8}"
                f"{row['seconds']:>9.1f}{row['chunks_per_s']:>10.1f}   Parley CPU "
                f"{row['cpu_ms_per_chunk']:.2f} ms/chunk"
            )
    print()
    print("Search latency: POST /v1/vector_stores/{id}/search, 10 results, one at a time, query embedding included")
    print("   (base: the same search over a store of one file; x base: p50 over base's p50)")
    header = f"   {'database':<11}{'model':<26}{'chunks':>8}  {'search':<8}{'p50 ms':>8}{'p99 ms':>8}"
    print(header + f"{'first':>8}{'x base':>8}{'results':>8}{'errors':>9}{'load':>6}")
    for database, res in results.items():
        for row in res["search"]:
            chunks = f"{row['chunks']} base" if row["size"] == "base" else str(row["chunks"])
            print(
                f"   {database:<11}{row['model']:<26}{chunks:>8}  {row['filter']:<8}{fmt(row['p50_ms']):>8}"
                f"{fmt(row['p99_ms']):>8}{fmt(row.get('first_ms')):>8}{fmt(row.get('x_base')):>8}"
                f"{fmt(row['results_mean'], '.1f'):>8}{row['errors']:>5}/{row['queries']:<3}{row['load_1min']:>6.1f}"
            )
        for model, emb in res["embedding"].items():
            print(
                f"   {database:<11}{model:<26}  query embedding alone (POST /v1/embeddings): "
                f"p50 {fmt(emb['p50_ms'])} ms, p99 {fmt(emb['p99_ms'])} ms"
            )
    print(flush=True)


def make_targets(results: dict[str, Any], largest: int) -> list[dict[str, Any]]:
    targets = []
    for database, res in results.items():
        for row in res["ingestion"]:
            if row["model"] == DEFAULT_MODEL:
                name = f"{database}: ingestion to {row['size']}, {row['model']} (default), chunks/s"
                targets.append(target(name, row["chunks_per_s"], row["chunks_per_s"] >= TARGET_CHUNKS_PER_S))
        for row in res["search"]:
            if row["size"] == largest and row["filter"] != "vectors":
                name = f"{database}: {row['model']} {row['chunks']} chunks, {row['filter']}: p50 < 50 ms"
                ok = row["p50_ms"] is not None and row["p50_ms"] < TARGET_P50_MS and not row["errors"]
                targets.append(target(name, row["p50_ms"], ok, "ms"))
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000, help="the largest store's chunks (about)")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--queries", type=int, default=100, help="measured searches per row")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--encoder-chunks", type=int, default=48, help="chunks of the transformer's sample store")
    parser.add_argument("--no-encoder-search", action="store_true", help="skip step 4 (transformer stores)")
    parser.add_argument("--max-seconds", type=float, default=7200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true")
    options = parser.parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()
    databases = ["sqlite", "postgresql"] if options.database == "both" else [options.database]
    timer = Timer()

    def start(children: Children) -> Any:
        return scenarios(children, {database: children.database(database, "bench") for database in databases})

    async def scenarios(children: Children, urls: dict[str, str]) -> dict[str, Any]:
        t = time.perf_counter()
        corpus = await asyncio.to_thread(Corpus)
        timer.add("corpus: tokenizer and estimate", time.perf_counter() - t)
        results = {}
        for database, url in urls.items():
            results[database] = await run_database(database, url, corpus, options, children, timer)
            if len(urls) > 1:
                # Each database's figures as soon as it is done: a run of both takes an hour or more.
                print_tables({database: results[database]})
                if options.json:
                    options.json.with_suffix(f".{database}.json").write_bytes(orjson.dumps(results[database]))
        timer.add("corpus: generating files (within the above)", corpus.seconds)
        return results

    outcome = run_benchmark(start, options.max_seconds)
    if isinstance(outcome, int):
        return outcome
    targets = make_targets(outcome, options.chunks)
    report = {
        "config": report_config(
            vars(options) | {"json": str(options.json) if options.json else None, "default_model": DEFAULT_MODEL}
        ),
        "elapsed_s": time.perf_counter() - started,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "results": outcome,
        "targets": targets,
        "time_spent_s": timer.parts,
    }
    print_report(outcome, targets, timer)
    print(
        f"\nload average (1 min) {report['load_average']['before'][0]:.1f} before, "
        f"{report['load_average']['after'][0]:.1f} after: other work on the machine moves these figures"
    )
    print_footer(report)
    return conclude(report, options.json, options.check)


if __name__ == "__main__":
    sys.exit(main())
