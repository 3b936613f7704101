"""Retrieval quality of the local embedding models on the labelled set the repo ships (tests/data/retrieval).

The set: 52 short documents written for it (tests/data/retrieval/docs, a couple of hundred words each, on
varied topics, several of them in pairs on neighbouring subjects: sourdough and sandwich bread, PostgreSQL's
VACUUM and its indexes, burns and cuts) and 104 questions (questions.jsonl), each labelled with the file
that answers it. Half are `keyword` questions, which share the answer's terms; half are `paraphrase`
questions, which say the same thing in other words ("my kitty has started peeing outside the tray" for a
text on litter boxes).

Each model embeds the questions and the documents through `embed_texts`, the interface vector stores
call (a text past the encoder's 256 tokens is read up to there, as ingestion reads it), and each question's
files are ranked by cosine similarity. Two ways of cutting the documents:

- `file`: each file one input, as one chunk of the default 800 tokens holds it;
- `passage`: each paragraph one input (about 60 words), a file ranked by its best passage, as small
  chunks are.

Reported: hit@1 (the right file first), hit@5 (among the first five: what file_search hands the model),
and the mean reciprocal rank, for all questions and per style; and, for reference, BM25 over the same
units (keywords only, no embeddings), the other half of hybrid search. `--misses` lists the questions a
model ranks wrong. Target (`--check`): hit@5 of at least 0.9 for each model, files and passages. Run:

    .venv/bin/python bench/retrieval_quality.py [--misses] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import conclude, fmt, print_footer, print_targets, report_config, target

from parley.config import (
    EMBEDDED_EMBEDDING_MODEL,
    EMBEDDED_STATIC_EMBEDDING_MODEL,
    LocalEmbeddingModelConfig,
    LocalEmbeddingsProviderConfig,
)
from parley.inference.embeddings import LocalEmbeddingsProvider, embed_texts

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "retrieval"
MODELS = {
    "encoder": (EMBEDDED_EMBEDDING_MODEL, LocalEmbeddingModelConfig()),
    "static": (EMBEDDED_STATIC_EMBEDDING_MODEL, LocalEmbeddingModelConfig(kind="static")),
}


def load_set() -> tuple[list[str], list[str], list[dict[str, str]]]:
    """The documents' names and texts, and the labelled questions."""
    paths = sorted((DATA / "docs").glob("*.md"))
    questions = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines() if line.strip()]
    names = [p.name for p in paths]
    unknown = {q["file"] for q in questions} - set(names)
    if unknown:
        raise SystemExit(f"questions.jsonl names files that are not in docs/: {sorted(unknown)}")
    return names, [p.read_text() for p in paths], questions


def units(texts: list[str], cut: str) -> tuple[list[str], np.ndarray]:
    """The inputs for `cut` and, for each, the index of its file."""
    if cut == "file":
        return texts, np.arange(len(texts))
    pieces, owners = [], []
    for i, text in enumerate(texts):
        for paragraph in text.split("\n\n"):
            if paragraph.strip() and not paragraph.startswith("#"):
                pieces.append(paragraph.strip())
                owners.append(i)
    return pieces, np.array(owners)


def ranks(scores: np.ndarray, owners: np.ndarray, files: int, answers: list[int]) -> np.ndarray:
    """For each question (a row of `scores` over units), the rank of its answer's file (0: first)."""
    best = np.full((scores.shape[0], files), -np.inf)
    for unit, owner in enumerate(owners):
        best[:, owner] = np.maximum(best[:, owner], scores[:, unit])
    # Ties are broken against the answer: a file ranks after every file that scores as well as it does.
    answer_scores = best[np.arange(len(answers)), answers]
    return np.array([(best[i] >= answer_scores[i]).sum() - 1 for i in range(len(answers))])


def metrics(rank: np.ndarray, questions: list[dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for style in ("all", "keyword", "paraphrase"):
        chosen = np.array([style == "all" or q["style"] == style for q in questions])
        r = rank[chosen]
        out[style] = {
            "questions": int(chosen.sum()),
            "hit_at_1": float((r < 1).mean()),
            "hit_at_5": float((r < 5).mean()),
            "mrr": float((1.0 / (r + 1)).mean()),
        }
    return out


_WORD = re.compile(r"[a-z0-9]+")


def bm25(queries: list[str], docs: list[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 scores of each query over `docs` (lowercased words, no stemming or stop words)."""
    tokenized = [_WORD.findall(d.lower()) for d in docs]
    lengths = np.array([len(t) for t in tokenized], dtype=np.float64)
    counts = [Counter(t) for t in tokenized]
    df = Counter(word for c in counts for word in c)
    n, average = len(docs), lengths.mean()
    scores = np.zeros((len(queries), n))
    for qi, query in enumerate(queries):
        for word in set(_WORD.findall(query.lower())):
            if word not in df:
                continue
            idf = math.log(1 + (n - df[word] + 0.5) / (df[word] + 0.5))
            for di, c in enumerate(counts):
                tf = c.get(word, 0)
                if tf:
                    scores[qi, di] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[di] / average))
    return scores


async def evaluate(options: argparse.Namespace) -> dict[str, Any]:
    names, texts, questions = load_set()
    answers = [names.index(q["file"]) for q in questions]
    asked = [q["question"] for q in questions]
    provider = LocalEmbeddingsProvider(
        "local-embeddings",
        LocalEmbeddingsProviderConfig(type="local-embeddings", models=dict(MODELS.values())),
    )
    results: dict[str, Any] = {"set": {"files": len(names), "questions": len(questions)}}
    try:
        for cut in ("file", "passage"):
            inputs, owners = units(texts, cut)
            row: dict[str, Any] = {"units": len(inputs)}
            for label, (model, _) in MODELS.items():
                started = time.perf_counter()
                docs = (await embed_texts(provider, model, inputs)).vectors
                query = (await embed_texts(provider, model, asked)).vectors
                seconds = time.perf_counter() - started
                rank = ranks(query @ docs.T, owners, len(names), answers)
                row[label] = metrics(rank, questions) | {"seconds": seconds}
                row[label]["misses"] = [
                    {"question": q["question"], "file": q["file"], "rank": int(r), "style": q["style"]}
                    for q, r in zip(questions, rank, strict=True)
                    if r >= 1
                ]
            row["bm25"] = metrics(ranks(bm25(asked, inputs), owners, len(names), answers), questions)
            results[cut] = row
    finally:
        await provider.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--misses", action="store_true", help="list the questions each model ranks wrong")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true")
    options = parser.parse_args()
    started = time.perf_counter()
    results = asyncio.run(evaluate(options))

    print(f"{results['set']['files']} files, {results['set']['questions']} questions")
    header = f"{'cut':<9}{'model':<9}{'hit@1':>7}{'hit@5':>7}{'MRR':>7}"
    print(header + f"{'para @1':>9}{'para @5':>9}{'kw @1':>7}{'kw @5':>7}")
    targets = []
    for cut in ("file", "passage"):
        for label in (*MODELS, "bm25"):
            m = results[cut][label]
            line = f"{cut:<9}{label:<9}{fmt(m['all']['hit_at_1']):>7}{fmt(m['all']['hit_at_5']):>7}"
            line += f"{fmt(m['all']['mrr']):>7}{fmt(m['paraphrase']['hit_at_1']):>9}"
            line += f"{fmt(m['paraphrase']['hit_at_5']):>9}{fmt(m['keyword']['hit_at_1']):>7}"
            print(line + f"{fmt(m['keyword']['hit_at_5']):>7}")
            if label in MODELS:
                hit5 = m["all"]["hit_at_5"]
                targets.append(target(f"{label} hit@5 ({cut}s)", hit5, hit5 >= 0.9))
    if options.misses:
        for cut in ("file", "passage"):
            for label in MODELS:
                for miss in results[cut][label]["misses"]:
                    print(f"  {cut}/{label}: rank {miss['rank'] + 1} for {miss['file']}: {miss['question']}")
    report = {
        "config": report_config(vars(options) | {"json": str(options.json) if options.json else None}),
        "elapsed_s": time.perf_counter() - started,
        "results": results,
        "targets": targets,
    }
    print_targets(targets)
    print_footer(report)
    return conclude(report, options.json, options.check)


if __name__ == "__main__":
    sys.exit(main())
