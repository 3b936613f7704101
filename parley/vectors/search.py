"""Hybrid search of vector stores: what `POST /v1/vector_stores/{id}/search` and the `file_search` tool run.

    search(index, embedder, stores, query, filters=..., max_num_results=..., ranking_options=..., rewrite_query=...)

Each query is embedded with each store's own embedding model, and the store's chunk index
(parley.vectors.index) proposes the chunks nearest to it and those holding its rarer words, each with two
scores in [0, 1]: its similarity (the cosine of its vector and the query's, below 0 taken as 0), and its
keyword share (the part of the query's words, weighted by their rarity in the store, that it holds). They are
fused as two pieces of evidence of relevance, either of which may be enough:

    score = 1 - (1 - e * similarity) * (1 - t * keyword share)

where `e` and `t` are `ranking_options.hybrid_search`'s `embedding_weight` and `text_weight` divided by the
larger of the two (default 0.7 and 0.3: e = 1, t = 3/7). A chunk that no query word reaches scores its
similarity, as it would with ranker `none` (vectors alone, no keyword pass); one that holds the query's rare
words scores higher, however far its vector is (a part number, a name, an error code, which a sentence
embedding hardly tells from its neighbours); the score stays in [0, 1]. Weighted rank fusion, OpenAI's words
for its own hybrid search, scores a chunk by its places in the two rankings, so that the best chunk of a store
that holds nothing relevant scores as high as the best of one that does, and no `score_threshold` could tell
them apart; absolute scores can.

A list of queries is searched query by query, and a chunk that several find keeps its best score. Results are
chunks, best first: each carries its file's id, name and attributes, and its text.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from parley.errors import (
    InvalidRequestError,
    ParleyError,
    UpstreamProtocolError,
    UpstreamUnavailableError,
    missing_parameter,
)
from parley.vectors.filters import check_filter
from parley.vectors.index import Candidate, ChunkIndex, Vectors

if TYPE_CHECKING:
    from parley.inference.registry import ModelRegistry

MAX_NUM_RESULTS = 50
DEFAULT_NUM_RESULTS = 10
RANKERS = ("auto", "default-2024-11-15", "none")
DEFAULT_EMBEDDING_WEIGHT = 0.7
DEFAULT_TEXT_WEIGHT = 0.3
# How many queries one search takes, and how long each may be: each is embedded.
MAX_QUERIES = 16
MAX_QUERY_CHARS = 4096
# Chunks each half of the search proposes per query, at least: the fusion ranks the union.
_MIN_CANDIDATES = 50


class VectorStoreRef(Protocol):
    """What a search needs of a vector store: its id and the embedding model its chunks were embedded with
    ("provider/model", as the model registry names it)."""

    @property
    def id(self) -> str: ...

    @property
    def embedding_model(self) -> str: ...


# Unit vectors of `texts` (one row each) from the model named as the registry names it.
Embedder = Callable[[str, list[str]], Awaitable[Vectors]]


def registry_embedder(registry: ModelRegistry) -> Embedder:
    """The embedder that resolves a store's model in `registry` and embeds through
    parley.inference.embeddings.embed_texts, as ingestion does."""
    from parley.inference.embeddings import embed_texts

    async def embed(model: str, texts: list[str]) -> Vectors:
        try:
            resolved = registry.resolve(model)
        except ParleyError as exc:
            raise UpstreamUnavailableError(
                f"The embedding model '{model}' that the vector store was built with is not available."
            ) from exc
        return (await embed_texts(resolved.provider, resolved.name, texts)).vectors

    return embed


@dataclass(frozen=True, slots=True)
class Hit:
    """One chunk found: OpenAI's `VectorStoreSearchResponse` item (see `as_openai`)."""

    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any] | None
    content: list[dict[str, str]]
    vector_store_id: str
    chunk_id: int

    @property
    def text(self) -> str:
        return "".join(part["text"] for part in self.content)

    def as_openai(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "filename": self.filename,
            "score": self.score,
            "attributes": self.attributes,
            "content": self.content,
        }


@dataclass(frozen=True, slots=True)
class SearchResults:
    """The queries searched (rewritten, if asked) and the chunks found, best first."""

    search_query: list[str]
    hits: list[Hit]

    def page(self) -> dict[str, Any]:
        """OpenAI's `vector_store.search_results.page`: every result in one page, as OpenAI answers."""
        return {
            "object": "vector_store.search_results.page",
            "search_query": self.search_query,
            "data": [hit.as_openai() for hit in self.hits],
            "has_more": False,
            "next_page": None,
        }


@dataclass(frozen=True, slots=True)
class Ranking:
    """Checked `ranking_options`."""

    ranker: str = "auto"
    score_threshold: float = 0.0
    embedding_weight: float = DEFAULT_EMBEDDING_WEIGHT
    text_weight: float = DEFAULT_TEXT_WEIGHT

    @property
    def keywords(self) -> bool:
        return self.ranker != "none" and self.text_weight > 0


async def search(
    index: ChunkIndex,
    embedder: Embedder,
    stores: Sequence[VectorStoreRef],
    query: str | list[str],
    *,
    filters: dict[str, Any] | None = None,
    max_num_results: int = DEFAULT_NUM_RESULTS,
    ranking_options: dict[str, Any] | None = None,
    rewrite_query: bool = False,
) -> SearchResults:
    """Searches `stores` (already known to be the caller's) for `query`.

    Every argument is checked first: a bad one raises InvalidRequestError naming it (`filters.filters[1].type`,
    `ranking_options.score_threshold`, `query[2]`).
    """
    queries = check_query(query)
    limit = check_max_num_results(max_num_results)
    ranking = check_ranking_options(ranking_options)
    checked_filter = check_filter(filters) if filters is not None else None
    if not isinstance(rewrite_query, bool):
        raise InvalidRequestError(
            "Invalid type for 'rewrite_query': expected a boolean.", param="rewrite_query", code="invalid_type"
        )
    searched = [rewrite(q) for q in queries] if rewrite_query else queries
    if not stores:
        return SearchResults(searched, [])

    models = list(dict.fromkeys(store.embedding_model for store in stores))
    embedded = await asyncio.gather(*(embedder(model, searched) for model in models))
    vectors = dict(zip(models, embedded, strict=True))
    candidates = max(_MIN_CANDIDATES, 2 * limit)

    best: dict[tuple[str, int], tuple[float, int, Candidate]] = {}
    for order, store in enumerate(stores):
        try:
            found = await index.candidates(
                store.id,
                vectors[store.embedding_model],
                searched,
                filters=checked_filter,
                limit=candidates,
                keywords=ranking.keywords,
            )
        except ValueError as exc:  # the model's vectors are not as wide as the store's
            raise UpstreamProtocolError(f"Vector store {store.id} cannot be searched: {exc}.") from exc
        for per_query in found:
            for candidate in per_query:
                score = _fuse(candidate, ranking)
                if score < ranking.score_threshold:
                    continue
                key = (store.id, candidate.chunk_id)
                if key not in best or best[key][0] < score:
                    best[key] = (score, order, candidate)

    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1], item[0][1]))[:limit]
    by_store: dict[str, list[int]] = {}
    for (store_id, chunk_id), _ in ranked:
        by_store.setdefault(store_id, []).append(chunk_id)
    details = dict(
        zip(
            by_store,
            await asyncio.gather(*(index.results(store_id, ids) for store_id, ids in by_store.items())),
            strict=True,
        )
    )
    hits = []
    for (store_id, chunk_id), (score, _, _) in ranked:
        chunk = details[store_id].get(chunk_id)
        if chunk is None:  # removed between the two reads
            continue
        hits.append(
            Hit(
                file_id=chunk.file_id,
                filename=chunk.filename,
                score=round(score, 6),
                attributes=chunk.attributes,
                content=[{"type": "text", "text": chunk.text}],
                vector_store_id=store_id,
                chunk_id=chunk_id,
            )
        )
    return SearchResults(searched, hits)


def _fuse(candidate: Candidate, ranking: Ranking) -> float:
    similarity = min(1.0, max(0.0, candidate.similarity))
    larger = max(ranking.embedding_weight, ranking.text_weight)
    e = ranking.embedding_weight / larger
    if not ranking.keywords:
        return e * similarity
    t = ranking.text_weight / larger
    return 1.0 - (1.0 - e * similarity) * (1.0 - t * min(1.0, candidate.keywords))


# Checking the request.


def check_query(query: Any) -> list[str]:
    """`query` as a list of one or more non-empty strings."""
    if isinstance(query, str):
        items, params = [query], ["query"]
    elif isinstance(query, list):
        if not query:
            raise InvalidRequestError(
                "Invalid 'query': empty array. Expected an array with minimum length 1, but got an empty array "
                "instead.",
                param="query",
                code="empty_array",
            )
        if len(query) > MAX_QUERIES:
            raise InvalidRequestError(
                f"Invalid 'query': an array may have at most {MAX_QUERIES} queries, but it has {len(query)}.",
                param="query",
                code="array_above_max_length",
            )
        items, params = query, [f"query[{i}]" for i in range(len(query))]
    else:
        raise InvalidRequestError(
            "Invalid type for 'query': expected a string or an array of strings.", param="query", code="invalid_type"
        )
    for item, param in zip(items, params, strict=True):
        if not isinstance(item, str):
            raise InvalidRequestError(
                f"Invalid type for '{param}': expected a string.", param=param, code="invalid_type"
            )
        if not item.strip():
            raise InvalidRequestError(
                f"Invalid value for '{param}': a query cannot be empty.", param=param, code="invalid_value"
            )
        if len(item) > MAX_QUERY_CHARS:
            raise InvalidRequestError(
                f"Invalid '{param}': string too long. Expected a string with maximum length {MAX_QUERY_CHARS}, "
                f"but got a string with length {len(item)} instead.",
                param=param,
                code="string_above_max_length",
            )
    return list(items)


def check_max_num_results(value: Any, param: str = "max_num_results") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"Invalid type for '{param}': expected an integer.", param=param, code="invalid_type")
    if not 1 <= value <= MAX_NUM_RESULTS:
        raise InvalidRequestError(
            f"Invalid value for '{param}': it must be between 1 and {MAX_NUM_RESULTS}, but got {value}.",
            param=param,
            code="invalid_value",
        )
    return value


def check_ranking_options(value: Any, param: str = "ranking_options") -> Ranking:
    """`ranking_options` checked: `ranker`, `score_threshold` (0 to 1), `hybrid_search` weights."""
    if value is None:
        return Ranking()
    if not isinstance(value, dict):
        raise InvalidRequestError(f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    for name in value:
        if name not in ("ranker", "score_threshold", "hybrid_search"):
            raise InvalidRequestError(
                f"Unknown parameter: '{param}.{name}'.", param=f"{param}.{name}", code="unknown_parameter"
            )
    ranker = value.get("ranker")
    if ranker is None:
        ranker = "auto"
    elif ranker not in RANKERS:
        expected = ", ".join(f"'{name}'" for name in RANKERS)
        raise InvalidRequestError(
            f"Invalid value for '{param}.ranker': expected one of {expected}.",
            param=f"{param}.ranker",
            code="invalid_value",
        )
    threshold = value.get("score_threshold")
    threshold = 0.0 if threshold is None else _number_in(threshold, f"{param}.score_threshold", 0.0, 1.0)
    embedding_weight, text_weight = DEFAULT_EMBEDDING_WEIGHT, DEFAULT_TEXT_WEIGHT
    hybrid = value.get("hybrid_search")
    if hybrid is not None:
        where = f"{param}.hybrid_search"
        if not isinstance(hybrid, dict):
            raise InvalidRequestError(
                f"Invalid type for '{where}': expected an object.", param=where, code="invalid_type"
            )
        for name in hybrid:
            if name not in ("embedding_weight", "text_weight"):
                raise InvalidRequestError(
                    f"Unknown parameter: '{where}.{name}'.", param=f"{where}.{name}", code="unknown_parameter"
                )
        for name in ("embedding_weight", "text_weight"):
            if name not in hybrid:
                raise missing_parameter(f"{where}.{name}")
        embedding_weight = _number_in(hybrid["embedding_weight"], f"{where}.embedding_weight", 0.0, math.inf)
        text_weight = _number_in(hybrid["text_weight"], f"{where}.text_weight", 0.0, math.inf)
        if embedding_weight + text_weight <= 0:
            raise InvalidRequestError(
                f"Invalid value for '{where}': embedding_weight and text_weight cannot both be 0.",
                param=where,
                code="invalid_value",
            )
    return Ranking(ranker, threshold, embedding_weight, text_weight)


def _number_in(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"Invalid type for '{param}': expected a number.", param=param, code="invalid_type")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        bound = f"between {low:g} and {high:g}" if math.isfinite(high) else f"at least {low:g}"
        raise InvalidRequestError(
            f"Invalid value for '{param}': it must be {bound}, but got {value}.", param=param, code="invalid_value"
        )
    return number


# Rewriting. With no model to rewrite a question, `rewrite_query` does what a search box does: it keeps the
# words that carry the question's meaning and drops the ones that make it a sentence ("what is the", "could
# you tell me", punctuation), as OpenAI's rewriting turns "What is the return policy?" into "return policy".
# Both halves of the search read the rewritten query, and the results' `search_query` shows it.

# A string split, not a list literal: a hundred words read better as the lines of a paragraph.
_FILLER = frozenset(
    """
    a an the and or but if then so of to in on at by for with from into onto about as than
    is are was were be been being am do does did doing done have has had having
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
    this that these those there here
    what which who whom whose when where why how
    can could would should shall will may might must
    please tell show give find explain describe know let lets get
    any some anything something all
    """.split()  # noqa: SIM905
)
_WORD = re.compile(r"\w+(?:[-.'/:]\w+)*", re.UNICODE)


def rewrite(query: str) -> str:
    """The query's meaningful words, in order (the query itself, spaces tidied, if it has none).

    >>> rewrite("What is the return policy for damaged items?")
    'return policy damaged items'
    >>> rewrite("Which pump takes part XK-4471-B?")
    'pump takes part XK-4471-B'
    """
    words = _WORD.findall(query)
    kept = [word for word in words if word.casefold() not in _FILLER]
    return " ".join(kept) if kept else " ".join(query.split())


__all__ = [
    "Embedder",
    "Hit",
    "Ranking",
    "SearchResults",
    "VectorStoreRef",
    "check_filter",
    "check_max_num_results",
    "check_query",
    "check_ranking_options",
    "registry_embedder",
    "rewrite",
    "search",
]
