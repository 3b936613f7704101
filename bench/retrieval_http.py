"""Retrieval quality end to end: `POST /v1/vector_stores/{id}/search` of a real `parley serve` over the labelled set.

bench/retrieval_quality.py rates the embedding models alone, in-process. This rates what a client gets: the
52 documents of tests/data/retrieval uploaded through `POST /v1/files`, added to a vector store (ingested in the
background with the default `auto` chunking: each document is one or two chunks), and each of the 104
labelled questions sent to the store's search, as openai-python sends it, with the default ranking (hybrid:
vector similarity fused with the keyword score). A question's rank is the place of its answer's file among the
distinct files of the results, in their order (`--results`, 10, results asked; a file not among them counts
as a miss). Reported: hit@1, hit@5 and the mean reciprocal rank, for all questions and per style (`keyword`
questions share the answer's terms, `paraphrase` ones say it in other words); and, as the comparison, the same
questions with `ranking_options.ranker` `none` (vectors alone), so that what the keyword half adds shows.

Per model (the static `all-minilm-l6-v2-static` and the transformer `all-minilm-l6-v2`, each in a Parley of its
own made the stores' model by `vector_stores.embedding_model`) and per database (`--database sqlite`,
`postgresql` (a throwaway server, as tests/postgres.py starts one) or `both`). tests/test_retrieval_quality.py
holds hit@5 above a floor over HTTP, for the static model.

Target (`--check`): hybrid hit@5 of at least 0.9 for every model and database. Run:

    .venv/bin/python bench/retrieval_http.py [--database both] [--models static,transformer] [--misses]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import openai
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import Children, conclude, fmt, print_footer, print_targets, report_config, run_benchmark, start_parley
from _common import target as make_target

from parley.config import EMBEDDED_EMBEDDING_MODEL, EMBEDDED_STATIC_EMBEDDING_MODEL

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "retrieval"
MODELS = {"static": EMBEDDED_STATIC_EMBEDDING_MODEL, "transformer": EMBEDDED_EMBEDDING_MODEL}
RANKINGS: dict[str, dict[str, Any] | None] = {"hybrid": None, "vectors": {"ranker": "none"}}
TARGET_HIT_AT_5 = 0.9


def load_set() -> tuple[list[Path], list[dict[str, str]]]:
    docs = sorted((DATA / "docs").glob("*.md"))
    questions = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines() if line.strip()]
    return docs, questions


def parley_yaml(storage_url: str, model: str) -> str:
    config = {
        "inference": {
            "providers": {"local-embeddings": {"type": "local-embeddings", "models": {model: _model_config(model)}}}
        },
        "storage": {"url": storage_url},
        "vector_stores": {"embedding_model": model, "poll_seconds": 0.5},
    }
    return yaml.safe_dump(config, sort_keys=False)


def _model_config(model: str) -> dict[str, Any]:
    return {"kind": "static"} if model == EMBEDDED_STATIC_EMBEDDING_MODEL else {}


def rank_of(answer: str, filenames: list[str]) -> int | None:
    """The place (0: first) of `answer` among the distinct files of the results, in order; None if absent."""
    distinct = list(dict.fromkeys(filenames))
    return distinct.index(answer) if answer in distinct else None


def metrics(ranks: list[int | None], questions: list[dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for style in ("all", "keyword", "paraphrase"):
        chosen = [r for r, q in zip(ranks, questions, strict=True) if style == "all" or q["style"] == style]
        n = len(chosen)
        out[style] = {
            "questions": n,
            "hit_at_1": sum(r is not None and r < 1 for r in chosen) / n,
            "hit_at_5": sum(r is not None and r < 5 for r in chosen) / n,
            "mrr": sum(1 / (r + 1) for r in chosen if r is not None) / n,
        }
    return out


def evaluate(base_url: str, docs: list[Path], questions: list[dict[str, str]], results: int) -> dict[str, Any]:
    """Uploads the set, builds a store and asks every question, each ranking; the figures and the misses."""
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    started = time.perf_counter()
    file_ids = [client.files.create(file=(doc.name, doc.read_bytes()), purpose="assistants").id for doc in docs]
    store = client.vector_stores.create(name="retrieval set")
    batch = client.vector_stores.file_batches.create_and_poll(store.id, file_ids=file_ids, poll_interval_ms=200)
    ingest_s = time.perf_counter() - started
    if batch.file_counts.completed != len(docs):
        raise RuntimeError(f"ingestion: {batch.file_counts}")
    out: dict[str, Any] = {"ingest_s": round(ingest_s, 1)}
    for ranking, options in RANKINGS.items():
        ranks: list[int | None] = []
        started = time.perf_counter()
        for question in questions:
            page = client.vector_stores.search(
                store.id,
                query=question["question"],
                max_num_results=results,
                **({"ranking_options": options} if options else {}),  # type: ignore[arg-type]
            )
            ranks.append(rank_of(question["file"], [hit.filename for hit in page.data]))
        seconds = time.perf_counter() - started
        out[ranking] = metrics(ranks, questions) | {"search_ms_mean": round(seconds / len(questions) * 1000, 1)}
        out[ranking]["misses"] = [
            {"question": q["question"], "file": q["file"], "style": q["style"], "rank": r}
            for q, r in zip(questions, ranks, strict=True)
            if r is None or r >= 1
        ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--models", default="static,transformer", help="comma-separated: static, transformer")
    parser.add_argument("--results", type=int, default=10, help="max_num_results of each search")
    parser.add_argument("--misses", action="store_true", help="list the questions ranked below first (hybrid)")
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true")
    options = parser.parse_args()
    labels = [label.strip() for label in options.models.split(",") if label.strip()]
    if unknown := set(labels) - set(MODELS):
        parser.error(f"unknown model(s): {', '.join(sorted(unknown))}")
    databases = ["sqlite", "postgresql"] if options.database == "both" else [options.database]
    docs, questions = load_set()
    started = time.perf_counter()

    def start(children: Children) -> Any:
        return scenarios(children)

    async def scenarios(children: Children) -> dict[str, Any]:
        import asyncio

        out: dict[str, Any] = {}
        for database in databases:
            for label in labels:
                url = await asyncio.to_thread(children.database, database, f"retrieval_{label}")
                name = f"parley-{database}-{label}"
                base, proc = await asyncio.to_thread(start_parley, children, parley_yaml(url, MODELS[label]), name=name)
                out[f"{database}/{label}"] = await asyncio.to_thread(evaluate, base, docs, questions, options.results)
                proc.terminate()
                await asyncio.to_thread(proc.wait, 30)
        return out

    outcome = run_benchmark(start, options.max_seconds)
    if isinstance(outcome, int):
        return outcome

    print(
        f"{len(docs)} files, {len(questions)} questions; POST /v1/vector_stores/{{id}}/search, "
        f"{options.results} results"
    )
    print(
        f"   {'database/model':<24}{'ranking':<9}{'hit@1':>7}{'hit@5':>7}{'MRR':>7}"
        f"{'kw @1':>7}{'kw @5':>7}{'para @1':>9}{'para @5':>9}{'ms/q':>7}{'ingest s':>10}"
    )
    targets = []
    for key, row in outcome.items():
        for ranking in RANKINGS:
            m = row[ranking]
            print(
                f"   {key:<24}{ranking:<9}{fmt(m['all']['hit_at_1']):>7}{fmt(m['all']['hit_at_5']):>7}"
                f"{fmt(m['all']['mrr']):>7}{fmt(m['keyword']['hit_at_1']):>7}{fmt(m['keyword']['hit_at_5']):>7}"
                f"{fmt(m['paraphrase']['hit_at_1']):>9}{fmt(m['paraphrase']['hit_at_5']):>9}"
                f"{m['search_ms_mean']:>7.1f}{row['ingest_s']:>10.1f}"
            )
        hit5 = row["hybrid"]["all"]["hit_at_5"]
        targets.append(make_target(f"{key}: hybrid hit@5 >= {TARGET_HIT_AT_5}", hit5, hit5 >= TARGET_HIT_AT_5))
    if options.misses:
        for key, row in outcome.items():
            for miss in row["hybrid"]["misses"]:
                place = "not found" if miss["rank"] is None else f"rank {miss['rank'] + 1}"
                print(f"  {key}: {place} for {miss['file']} ({miss['style']}): {miss['question']}")
    report = {
        "config": report_config(vars(options) | {"json": str(options.json) if options.json else None}),
        "elapsed_s": time.perf_counter() - started,
        "results": outcome,
        "targets": targets,
    }
    print_targets(targets)
    print_footer(report)
    return conclude(report, options.json, options.check)


if __name__ == "__main__":
    sys.exit(main())
