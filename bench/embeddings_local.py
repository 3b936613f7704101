"""The local embedding models' speed: the encoder (all-MiniLM-L6-v2 in numpy) and the static model distilled
from it (parley.inference.static_embeddings), as vector-store ingestion and search use them.

Measures, on this machine:

- loading: the encoder's weights; the static model's table from its cache; with `--distill`, distilling
  the table anew (into a temporary directory; what `make install` does once);
- the encoder's ceiling: the GFLOP/s of one plain numpy product of the encoder's largest shape (this
  machine's BLAS at its best) and the chunks a second that rate would give for 256-token chunks if the
  whole forward pass ran at it; the forward pass's own GFLOP/s;
- ingestion: chunks a second through `embed_texts` (what parley.vectors.ingest calls) for chunks of about
  200 and 800 tokens, cut from the texts of tests/data/retrieval, `--encoder-chunks` (32) for the encoder,
  which reads the first 256 tokens of each, and `--static-chunks` (2,000) for the static model, which reads
  them whole. The first round (the static model's cache of tokenized words still cold) and the best of
  `--rounds` (3) are reported, and the event loop's worst delay while it ran (the work is on a thread:
  the loop should go on serving);
- a query's embedding (one short question), p50 and p99 over `--queries` (50), alone and while an
  ingestion of 800-token chunks runs beside it: what the search latency target (p50 under 50 ms at
  100,000 chunks, the query's embedding included) has to spend on it;
- the same 200-token chunks through `POST /v1/embeddings` of a `parley serve` on 127.0.0.1 (openai-python,
  base64), as a ratio to the in-process rate.

Targets (`--check`): the static model at least 200 chunks a second of 800 and of 200 tokens (issue 14's
ingestion target, for embedding alone), its query p50 under 10 ms while an ingestion runs, the event
loop's worst delay under 50 ms while it ingests, and Parley's HTTP rate at least 0.8 of the in-process
rate for the encoder. Run:

    .venv/bin/python bench/embeddings_local.py [--distill] [--rounds 3] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Children,
    conclude,
    fmt,
    percentile,
    print_footer,
    print_targets,
    report_config,
    run_benchmark,
    start_parley,
    target,
)

from parley.config import (
    EMBEDDED_EMBEDDING_MODEL,
    EMBEDDED_STATIC_EMBEDDING_MODEL,
    LocalEmbeddingModelConfig,
    LocalEmbeddingsProviderConfig,
)
from parley.inference.embeddings import LocalEmbeddingsProvider, embed_texts
from parley.inference.sentence_embeddings import default_model_dir, load_encoder
from parley.inference.static_embeddings import load_static_encoder, load_table

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "retrieval" / "docs"
MODELS = {"encoder": EMBEDDED_EMBEDDING_MODEL, "static": EMBEDDED_STATIC_EMBEDDING_MODEL}
QUERY = "How do I stop browsers from showing an outdated version of my JavaScript after a deploy? {i}"
CONFIG = f"""
inference:
  providers:
    local-embeddings:
      type: local-embeddings
      models:
        {EMBEDDED_EMBEDDING_MODEL}: {{}}
        {EMBEDDED_STATIC_EMBEDDING_MODEL}: {{kind: static}}
"""


def chunk_texts(tokens: int, count: int, seed: int) -> list[str]:
    """`count` chunks of about `tokens` WordPiece tokens: runs of words from the retrieval set's texts."""
    words = " ".join(p.read_text() for p in sorted(CORPUS.glob("*.md"))).split()
    encoder = load_static_encoder(None)
    per_word = sum(encoder.count_tokens([" ".join(words)])) / len(words)
    length = max(1, round(tokens / per_word))
    rng = random.Random(seed)
    doubled = words + words
    return [" ".join(doubled[start : start + length]) for start in (rng.randrange(len(words)) for _ in range(count))]


def forward_flops(tokens: int, length: int, batch: int, layers: int = 6, hidden: int = 384) -> float:
    """Multiply-adds times two of the encoder's matrix products for `batch` texts of `length` tokens."""
    dense = 2 * tokens * hidden * (3 * hidden + hidden + 2 * 4 * hidden)
    attention = 2 * 2 * batch * length * length * hidden
    return float(layers * (dense + attention))


def blas_gflops(tokens: int = 8192, rounds: int = 3) -> float:
    """One numpy product of the encoder's largest shape (tokens x 384 by 384 x 1536), at its best."""
    a = np.random.default_rng(0).random((tokens, 384), dtype=np.float32)
    b = np.random.default_rng(1).random((384, 1536), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(max(rounds, 3)):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * tokens * 384 * 1536 / best / 1e9


class LoopLag:
    """The event loop's delays while it runs: how late a 1 ms sleep wakes up."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            self.delays.append(time.perf_counter() - start - 0.001)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def worst_ms(self) -> float:
        return max(self.delays, default=0.0) * 1000


def new_provider() -> LocalEmbeddingsProvider:
    models = {
        EMBEDDED_EMBEDDING_MODEL: LocalEmbeddingModelConfig(),
        EMBEDDED_STATIC_EMBEDDING_MODEL: LocalEmbeddingModelConfig(kind="static"),
    }
    return LocalEmbeddingsProvider(
        "local-embeddings", LocalEmbeddingsProviderConfig(type="local-embeddings", models=models)
    )


async def ingestion(model: str, texts: list[str], rounds: int) -> dict[str, Any]:
    """Chunks a second through embed_texts, on a provider of its own (cold caches in the first round)."""
    provider = new_provider()
    try:
        await provider.models[model].load()
        seconds, lags = [], []
        tokens = 0
        for _ in range(rounds):
            with LoopLag() as lag:
                start = time.perf_counter()
                tokens = (await embed_texts(provider, model, texts)).tokens
                seconds.append(time.perf_counter() - start)
            lags.append(lag.worst_ms)
    finally:
        await provider.close()
    return {
        "chunks": len(texts),
        "tokens_read_per_chunk": tokens / len(texts),
        "first_chunks_per_s": len(texts) / seconds[0],
        "chunks_per_s": len(texts) / min(seconds),
        "loop_lag_worst_ms": max(lags),
    }


async def query_latency(model: str, queries: int, beside: list[str] | None) -> dict[str, Any]:
    """One short question's embedding, `queries` times; with `beside`, while those chunks are being embedded."""
    provider = new_provider()
    try:
        await provider.models[model].load()
        await embed_texts(provider, model, [QUERY.format(i=-1)])
        background = asyncio.create_task(embed_texts(provider, model, beside)) if beside else None
        seconds = []
        for i in range(queries):
            if background is not None and background.done():
                break
            start = time.perf_counter()
            await embed_texts(provider, model, [QUERY.format(i=i)])
            seconds.append(time.perf_counter() - start)
        if background is not None:
            await background
    finally:
        await provider.close()
    return {
        "queries": len(seconds),
        "p50_ms": (percentile(seconds, 50) or 0) * 1000,
        "p99_ms": (percentile(seconds, 99) or 0) * 1000,
    }


def over_http(base_url: str, model: str, texts: list[str], batch: int, rounds: int) -> dict[str, Any]:
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    client.embeddings.create(model=model, input=texts[:2])
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        for first in range(0, len(texts), batch):
            reply = client.embeddings.create(model=model, input=texts[first : first + batch])
            assert len(reply.data) == len(texts[first : first + batch])
        seconds.append(time.perf_counter() - start)
    return {"chunks_per_s": len(texts) / min(seconds), "seconds_median": statistics.median(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder-chunks", type=int, default=32)
    parser.add_argument("--static-chunks", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distill", action="store_true", help="also time distilling the static model anew")
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true")
    options = parser.parse_args()
    started = time.perf_counter()

    load: dict[str, float | None] = {}
    t = time.perf_counter()
    encoder = load_encoder(None)
    load["encoder_s"] = time.perf_counter() - t
    t = time.perf_counter()
    load_static_encoder(None)
    load["static_from_cache_s"] = time.perf_counter() - t
    load["distill_s"] = None
    if options.distill:
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            load_table(default_model_dir(), 256, Path(cache))
            load["distill_s"] = time.perf_counter() - t

    chunks = {
        size: chunk_texts(size, max(options.encoder_chunks, options.static_chunks), seed=size) for size in (200, 800)
    }

    def start(children: Children) -> Any:
        base_url, _ = start_parley(children, CONFIG)
        return scenarios(base_url)

    async def scenarios(base_url: str) -> dict[str, Any]:
        results: dict[str, Any] = {"load": load}
        peak = await asyncio.to_thread(blas_gflops, 8192, options.rounds)
        batch = chunks[200][:32]
        t = time.perf_counter()
        _, tokens = await asyncio.to_thread(encoder.encode, batch, 32)
        forward = forward_flops(tokens, max(encoder.count_tokens(batch)), len(batch)) / (time.perf_counter() - t) / 1e9
        per_chunk_256 = forward_flops(256, 256, 1)
        results["ceiling"] = {
            "blas_gflops": peak,
            "forward_gflops": forward,
            "encoder_chunks_per_s_at_blas_peak_256_tokens": peak * 1e9 / per_chunk_256,
        }
        for label, model in MODELS.items():
            count = options.encoder_chunks if label == "encoder" else options.static_chunks
            results[label] = {}
            for size in (200, 800):
                results[label][f"ingest_{size}"] = await ingestion(model, chunks[size][:count], options.rounds)
            results[label]["query_alone"] = await query_latency(model, options.queries, None)
            results[label]["query_beside_ingestion"] = await query_latency(model, options.queries, chunks[800][:count])
            http = await asyncio.to_thread(
                over_http, base_url, model, chunks[200][:count], 32 if label == "encoder" else 256, options.rounds
            )
            http["of_in_process"] = http["chunks_per_s"] / results[label]["ingest_200"]["chunks_per_s"]
            results[label]["http_200"] = http
        return results

    outcome = run_benchmark(start, options.max_seconds)
    if isinstance(outcome, int):
        return outcome
    static, enc = outcome["static"], outcome["encoder"]
    targets = [
        target(
            "static: 800-token chunks a second",
            static["ingest_800"]["chunks_per_s"],
            static["ingest_800"]["chunks_per_s"] >= 200,
        ),
        target(
            "static: 200-token chunks a second",
            static["ingest_200"]["chunks_per_s"],
            static["ingest_200"]["chunks_per_s"] >= 200,
        ),
        target(
            "static: query p50 beside ingestion",
            static["query_beside_ingestion"]["p50_ms"],
            static["query_beside_ingestion"]["p50_ms"] < 10,
            "ms",
        ),
        target(
            "event loop's worst delay (static ingestion)",
            max(static[f"ingest_{size}"]["loop_lag_worst_ms"] for size in (200, 800)),
            max(static[f"ingest_{size}"]["loop_lag_worst_ms"] for size in (200, 800)) < 50,
            "ms",
        ),
        target(
            "encoder: Parley / in-process (200 tokens)",
            enc["http_200"]["of_in_process"],
            enc["http_200"]["of_in_process"] >= 0.8,
            "x",
        ),
    ]
    report = {
        "config": report_config(vars(options) | {"json": str(options.json) if options.json else None}),
        "elapsed_s": time.perf_counter() - started,
        "results": outcome,
        "targets": targets,
    }
    print(
        f"load: encoder {load['encoder_s']:.2f} s, static from cache {load['static_from_cache_s']:.2f} s, "
        f"distilling {fmt(load['distill_s'], '.1f')} s"
    )
    ceiling = outcome["ceiling"]
    print(
        f"encoder ceiling: BLAS {ceiling['blas_gflops']:.0f} GFLOP/s, forward pass {ceiling['forward_gflops']:.0f} "
        f"GFLOP/s; 256-token chunks at BLAS peak: {ceiling['encoder_chunks_per_s_at_blas_peak_256_tokens']:.0f}/s"
    )
    print(f"{'model':<9}{'chunk':>6}{'read':>6}{'first/s':>9}{'best/s':>9}{'lag ms':>8}")
    for label in MODELS:
        for size in (200, 800):
            row = outcome[label][f"ingest_{size}"]
            print(
                f"{label:<9}{size:>6}{row['tokens_read_per_chunk']:>6.0f}{row['first_chunks_per_s']:>9.1f}"
                f"{row['chunks_per_s']:>9.1f}{row['loop_lag_worst_ms']:>8.1f}"
            )
    print(f"{'model':<9}{'query p50':>10}{'p99':>8}{'beside ingestion p50':>22}{'p99':>8}{'HTTP/s':>9}{'ratio':>7}")
    for label in MODELS:
        alone, beside, http = (outcome[label][k] for k in ("query_alone", "query_beside_ingestion", "http_200"))
        print(
            f"{label:<9}{alone['p50_ms']:>10.1f}{alone['p99_ms']:>8.1f}{beside['p50_ms']:>22.1f}"
            f"{beside['p99_ms']:>8.1f}{http['chunks_per_s']:>9.1f}{fmt(http['of_in_process']):>7}"
        )
    print_targets(targets)
    print_footer(report)
    return conclude(report, options.json, options.check)


if __name__ == "__main__":
    sys.exit(main())
