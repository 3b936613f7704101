"""The embedded embedding model (all-MiniLM-L6-v2 in numpy): load time, and embeddings per second.

Measures, on this machine:

- loading: reading the weights and the tokenizer (`load_encoder`), in-process;
- in-process throughput for short texts (about 12 tokens) and for texts at the
  model's 256-token limit, in batches of `--batch` (32), as embeddings and
  tokens per second, and the arithmetic rate the forward pass reaches (its
  matrix products' GFLOP/s);
- the baseline, measured in the same run: the GFLOP/s of one plain numpy matrix
  product of the model's largest shape (the feed-forward layer over a batch's
  tokens). The forward pass's rate as a ratio of it says how much of what this
  machine's BLAS can do the model gets (the rest: attention's small products,
  GELU, layer norms, tokenizing);
- the same texts through `POST /v1/embeddings` of a `parley serve` on 127.0.0.1
  (openai-python's default base64), as a ratio to the in-process rate: what HTTP
  and JSON add.

Targets (`--check`): the forward pass at least 0.3 of the BLAS baseline, and
Parley's rate at least 0.8 of the in-process rate for 256-token texts. Run:

    .venv/bin/python bench/embeddings_local.py [--batch 32] [--rounds 3] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
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
    print_footer,
    print_targets,
    report_config,
    run_benchmark,
    start_parley,
    target,
)

from parley.inference.sentence_embeddings import load_encoder

SHORT = "A man is eating a piece of bread number {i}."
LONG_SENTENCE = "The quick brown fox jumps over the lazy dog near river bank {i}. "
CONFIG = """
inference:
  providers:
    local-embeddings:
      type: local-embeddings
      models:
        all-minilm-l6-v2: {}
"""


def texts(kind: str, count: int, encoder: Any) -> list[str]:
    if kind == "short":
        return [SHORT.format(i=i) for i in range(count)]
    # Each text just under the model's limit, so nothing is refused.
    out = []
    for i in range(count):
        text = ""
        while encoder.count_tokens([text + LONG_SENTENCE.format(i=i)])[0] <= encoder.max_tokens:
            text += LONG_SENTENCE.format(i=i)
        out.append(text)
    return out


def forward_flops(tokens: int, length: int, batch: int, layers: int = 6, hidden: int = 384) -> float:
    """Multiply-adds times two of the encoder's matrix products for `batch` texts of `length` tokens."""
    dense = 2 * tokens * hidden * (3 * hidden + hidden + 2 * 4 * hidden)
    attention = 2 * 2 * batch * length * length * hidden
    return float(layers * (dense + attention))


def blas_gflops(tokens: int, rounds: int) -> float:
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


def in_process(encoder: Any, batch: list[str], rounds: int) -> dict[str, Any]:
    encoder.encode(batch[:2])
    seconds = []
    tokens = 0
    for _ in range(rounds):
        start = time.perf_counter()
        _, tokens = encoder.encode(batch, batch_size=len(batch))
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    length = max(encoder.count_tokens(batch))
    return {
        "texts": len(batch),
        "tokens": tokens,
        "seconds_median": statistics.median(seconds),
        "embeddings_per_s": len(batch) / best,
        "tokens_per_s": tokens / best,
        "gflops": forward_flops(tokens, length, len(batch)) / best / 1e9,
    }


def over_http(base_url: str, batch: list[str], rounds: int) -> dict[str, Any]:
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    client.embeddings.create(model="all-minilm-l6-v2", input=batch[:2])
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        reply = client.embeddings.create(model="all-minilm-l6-v2", input=batch)
        seconds.append(time.perf_counter() - start)
        assert len(reply.data) == len(batch)
    return {"embeddings_per_s": len(batch) / min(seconds), "seconds_median": statistics.median(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="texts a request (and a forward pass)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true")
    options = parser.parse_args()

    started = time.perf_counter()
    encoder = load_encoder(None)
    load_seconds = time.perf_counter() - started

    def start(children: Children) -> Any:
        base_url, _ = start_parley(children, CONFIG)
        return scenarios(base_url)

    async def scenarios(base_url: str) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for kind in ("short", "long"):
            batch = texts(kind, options.batch, encoder)
            local = await asyncio.to_thread(in_process, encoder, batch, options.rounds)
            tokens = local["tokens"]
            local["blas_gflops"] = await asyncio.to_thread(blas_gflops, tokens, options.rounds)
            local["of_blas"] = local["gflops"] / local["blas_gflops"]
            http = await asyncio.to_thread(over_http, base_url, batch, options.rounds)
            http["of_in_process"] = http["embeddings_per_s"] / local["embeddings_per_s"]
            results[kind] = {"in_process": local, "parley": http}
        return results

    outcome = run_benchmark(start, options.max_seconds)
    if isinstance(outcome, int):
        return outcome
    long = outcome["long"]
    targets = [
        target(
            "forward pass / BLAS baseline (256 tokens)",
            long["in_process"]["of_blas"],
            long["in_process"]["of_blas"] >= 0.3,
        ),
        target(
            "Parley / in-process (256 tokens)", long["parley"]["of_in_process"], long["parley"]["of_in_process"] >= 0.8
        ),
    ]
    report = {
        "config": report_config(vars(options) | {"json": str(options.json) if options.json else None}),
        "elapsed_s": time.perf_counter() - started,
        "load_seconds": load_seconds,
        "results": outcome,
        "targets": targets,
    }
    print(f"load: {load_seconds:.2f} s (weights {sum(a.nbytes for a in _weights(encoder)) / 1e6:.0f} MB)")
    print(f"{'texts':<8}{'tokens':>8}{'emb/s':>10}{'tok/s':>8}{'GFLOP/s':>9}{'BLAS':>7}{'ratio':>7}", end="")
    print(f"{'HTTP emb/s':>12}{'ratio':>7}")
    for kind, row in outcome.items():
        local, http = row["in_process"], row["parley"]
        print(f"{kind:<8}{local['tokens']:>8}{fmt(local['embeddings_per_s'], '.1f'):>10}", end="")
        print(f"{fmt(local['tokens_per_s'], '.0f'):>8}{fmt(local['gflops'], '.1f'):>9}", end="")
        print(f"{fmt(local['blas_gflops'], '.1f'):>7}{fmt(local['of_blas']):>7}", end="")
        print(f"{fmt(http['embeddings_per_s'], '.1f'):>12}{fmt(http['of_in_process']):>7}")
    print_targets(targets)
    print_footer(report)
    return conclude(report, options.json, options.check)


def _weights(encoder: Any) -> list[Any]:
    arrays = [encoder._word, encoder._position, encoder._token_type]
    for layer in encoder._layers:
        arrays += [layer.qkv_w, layer.out_w, layer.up_w, layer.down_w]
    return arrays


if __name__ == "__main__":
    sys.exit(main())
