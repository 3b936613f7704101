"""File search, as a kind of server-side tool: `{"type": "file_search", "vector_store_ids": [...]}`.

The file_search tools of one response are one `FileSearch`. Before the first
model call, the vector stores they name are looked up among the caller's: one
that does not exist, or is another owner's, is a 404 before the response
starts, as OpenAI answers it. The model is offered one function per tool:

    file_search(queries)    the chunks of the stores' files that answer the queries best

(`query`, one string, is taken too, as smaller models write it.) A call
becomes a `file_search_call` item with its `queries`, and the events
`response.file_search_call.in_progress`, `.searching` and `.completed`; the
search itself is `parley.vectors.search`'s, hybrid, with the tool's
`filters`, `max_num_results` and `ranking_options`. A call that fails (its
arguments are wrong, a store went away) ends `failed`, with no event of its
own, as OpenAI has none; the model reads why.

The item holds its `results` (`file_id`, `filename`, `score`, `text`,
`attributes`, one per chunk) only when the request's `include` asks for
`file_search_call.results`, as OpenAI's does; the model reads them either way
in this response (`messages`). In a later turn (`previous_response_id`, a
conversation, or a stateless caller that sends the item back), the model
reads the results the item holds, or, when it holds none, that they were not
kept, and what was searched for.

The model reads each result under a citation mark, `【handbook.md】`, and is
asked to write the mark where it uses the result. Each mark it writes that
names a file it read (by name or id) leaves the answer's text as a
`file_citation` annotation whose `index` is where the mark stood (`cite`;
the engine's `CitationMarks` finds them as the text streams).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Literal

from openai.types.responses import file_search_tool_param
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from parley.config import ToolsSettings
from parley.errors import InvalidRequestError, ParleyError
from parley.ids import new_id
from parley.package_fields import PackageFields, keys_of
from parley.store.owners import Caller
from parley.store.vector_stores import VectorStoreExpired, VectorStoreInfo, VectorStoreRepository
from parley.tools.base import (
    MARK_CLOSE,
    MARK_OPEN,
    ItemEvents,
    NameOf,
    ServerTool,
    ToolKind,
    ToolResources,
    arguments_object,
    register,
    take_name,
)
from parley.vectors.filters import check_filter
from parley.vectors.index import ChunkIndex
from parley.vectors.search import (
    DEFAULT_NUM_RESULTS,
    check_max_num_results,
    check_ranking_options,
    registry_embedder,
    search,
)

__all__ = ["FileSearch", "FileSearchTool"]

log = logging.getLogger(__name__)

RESULTS = "file_search_call.results"  # the `include` value that shows a call's results
# Results per search when the tool sets no `max_num_results`. OpenAI's is 20 for its own large-context
# models; Parley serves models with contexts of a few thousand tokens too, so it takes the vector store
# search's default, 10, which at the default chunk size (800 tokens) is still 8,000 tokens of results.
DEFAULT_MAX_NUM_RESULTS = DEFAULT_NUM_RESULTS
# Queries one call may make: a model that writes more is asking one question many ways. The function's schema
# says so too, which bounds what a model held to the schema by a grammar (the embedded one) can write: left
# unbounded, SmolLM2 lists "Query 1", "Query 2", ... until its tokens run out.
MAX_QUERIES = 5


# Definitions


class FileSearchTool(PackageFields):
    """`{"type": "file_search", "vector_store_ids": [...]}`.

    `filters`, `max_num_results` and `ranking_options` are checked by the search's own checks, so that the
    tool takes what `POST /v1/vector_stores/{id}/search` takes; an error names its place under the tool's
    (`tools[0].filters.filters[1].type`).
    """

    known = keys_of(file_search_tool_param.FileSearchToolParam)
    type: Literal["file_search"]
    vector_store_ids: list[str] = Field(min_length=1)
    max_num_results: int | None = None
    ranking_options: dict[str, Any] | None = None
    filters: dict[str, Any] | None = None

    @field_validator("vector_store_ids")
    @classmethod
    def _store_ids(cls, value: list[str]) -> list[str]:
        for store_id in value:
            if not re.fullmatch(r"vs_[A-Za-z0-9_-]{1,128}", store_id):
                shown = store_id if len(store_id) <= 80 else store_id[:80] + "..."
                raise ValueError(f"'{shown}' is not a vector store ID: expected an ID that begins with 'vs'.")
        return list(dict.fromkeys(value))

    @model_validator(mode="before")
    @classmethod
    def _search_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        try:
            if data.get("filters") is not None:
                data = {**data, "filters": check_filter(data["filters"], "filters")}
            if data.get("max_num_results") is not None:
                check_max_num_results(data["max_num_results"])
            if data.get("ranking_options") is not None:
                check_ranking_options(data["ranking_options"])
        except InvalidRequestError as exc:
            raise _as_validation_error(exc) from exc
        return data

    def public(self) -> dict[str, Any]:
        """As OpenAI echoes it: every field, with the defaults the search uses."""
        ranking = check_ranking_options(self.ranking_options)
        ranking_echo: dict[str, Any] = {"ranker": ranking.ranker, "score_threshold": ranking.score_threshold}
        hybrid = (self.ranking_options or {}).get("hybrid_search")
        if hybrid is not None:
            ranking_echo["hybrid_search"] = hybrid
        return {
            "type": "file_search",
            "vector_store_ids": self.vector_store_ids,
            "filters": self.filters,
            "max_num_results": self.max_num_results or DEFAULT_MAX_NUM_RESULTS,
            "ranking_options": ranking_echo,
        }


def _as_validation_error(exc: InvalidRequestError) -> ValidationError:
    """A filter's error (which names its place under `filters`) as pydantic's, at that place."""
    param = exc.param or "filters"
    loc: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", param):
        loc.append(int(index) if index else name)
    missing = exc.code == "missing_required_parameter"
    message = re.sub(r"^Invalid (value|type) for '[^']*': ", "", str(exc.message))
    error = InitErrorDetails(
        type="missing" if missing else "value_error",
        loc=tuple(loc),
        input=None,
        ctx={} if missing else {"error": message},
    )
    return ValidationError.from_exception_data("FileSearchTool", [error])


# The kind


_FUNCTION: dict[str, Any] = {
    "name": "file_search",
    "description": (
        "Search the user's files. Returns the passages that answer the queries best, each under its "
        f"source mark ({MARK_OPEN}file name{MARK_CLOSE}). Cite a passage by writing its mark right after what "
        "it supports."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "queries": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "maxItems": MAX_QUERIES,
                "description": "What to search for: one query, or a few ways to ask the same question.",
            }
        },
        "required": ["queries"],
    },
}


@register
class FileSearch(ToolKind):
    definitions = {"file_search": FileSearchTool}
    call_type = "file_search_call"
    item_types = ("file_search_call",)
    items = {"file_search_call": ItemEvents("response.file_search_call", working="searching", failure_event=False)}

    def __init__(self, definitions: list[FileSearchTool], shared: FileSearchService | None) -> None:
        self.named = definitions
        self.service = shared
        self.stores: list[list[VectorStoreInfo]] = []  # each definition's stores, once prepared
        self.offered: dict[str, int] = {}  # the name the model knows each function by -> its definition
        self.targets: dict[int, int] = {}  # a call item (by identity: its id changes as it opens) -> its definition
        self.bad_arguments: dict[str, str] = {}  # what is wrong with a call's arguments, by item id
        self.read: dict[str, list[dict[str, Any]]] = {}  # what each call of this response read, by item id
        self.errors: dict[str, str] = {}  # why each call of this response that failed did, by item id
        self.names: dict[str, str] = {}  # the files the model read, by id: their names, for citations
        self.by_name: dict[str, str] = {}  # the same, by name (casefolded): the file read last of that name

    @classmethod
    def shared(cls, settings: ToolsSettings, resources: ToolResources) -> FileSearchService | None:
        if resources.database is None or resources.models is None:
            return None
        return FileSearchService(resources)

    async def prepare(
        self, history: list[dict[str, Any]], previous_tools: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Makes no items; looks the tools' vector stores up (a 404 for one the caller does not have), and
        learns the files earlier calls read, which the answer may cite too."""
        if not self.named:
            return []
        if self.service is None:
            raise ParleyError("File search is not available on this server: it has no database of vector stores.")
        for definition in self.named:
            self.stores.append(await self.service.stores(definition.vector_store_ids, self.caller))
        for item in history:
            if item.get("type") == "file_search_call":
                self._learn(item.get("results"))
        return []

    def tools(self, taken: set[str]) -> list[ServerTool]:
        tools = []
        for index, definition in enumerate(self.named):
            name = take_name(_FUNCTION["name"], taken)
            self.offered[name] = index
            function = {**_FUNCTION, "name": name}
            if len(self.named) > 1:
                function["description"] += f" Searches the vector stores {', '.join(definition.vector_store_ids)}."
            tools.append(
                ServerTool(
                    kind=self,
                    name=name,
                    function={"type": "function", "function": function},
                    tool_name=_FUNCTION["name"],
                    tool_type=definition.type,
                )
            )
        return tools

    def call_item(self, tool: ServerTool) -> dict[str, Any]:
        # The queries are known once the model has written its arguments (`take_arguments`); until then the
        # item is as OpenAI opens it. No `arguments`, as OpenAI's item has none.
        item: dict[str, Any] = {
            "id": new_id("fs"),
            "type": "file_search_call",
            "status": "in_progress",
            "queries": [],
            "results": None,
        }
        self.targets[id(item)] = self.offered[tool.name]
        return item

    def take_arguments(self, item: dict[str, Any], arguments: str) -> None:
        """Fills the call's `queries` from the model's arguments; what is wrong with them, the call's run reports."""
        try:
            item["queries"] = _queries(arguments)
        except ValueError as exc:
            self.bad_arguments[item["id"]] = str(exc)

    async def run(self, item: dict[str, Any]) -> str:
        target = self.targets.pop(id(item), 0)
        assert self.service is not None  # prepare() refuses file_search without one
        try:
            if item["id"] in self.bad_arguments:
                raise ValueError(self.bad_arguments.pop(item["id"]))
            results = await self.service.search(self.stores[target], item["queries"], self.named[target])
        except (ValueError, ParleyError) as exc:
            self.errors[item["id"]] = exc.message if isinstance(exc, ParleyError) else str(exc)
            return "failed"
        except Exception:  # the search's surprise is the call's failure, never the response's
            log.exception("file_search: a search of %s failed", self.named[target].vector_store_ids)
            self.errors[item["id"]] = "The file search failed unexpectedly."
            return "failed"
        self.read[item["id"]] = results
        if RESULTS in self.include:
            item["results"] = [dict(result) for result in results]
        self._learn(results)
        return "completed"

    def refuse(self, item: dict[str, Any], reason: str) -> str:
        self.targets.pop(id(item), None)
        self.bad_arguments.pop(item["id"], None)
        self.errors[item["id"]] = reason
        return "failed"

    def _learn(self, results: Any) -> None:
        for result in results or ():
            if isinstance(result, dict) and isinstance(result.get("file_id"), str):
                filename = str(result.get("filename") or result["file_id"])
                self.names[result["file_id"]] = filename
                self.by_name[filename.casefold()] = result["file_id"]

    # Citations

    def cites(self) -> bool:
        return bool(self.named and self.names)

    def cite(self, mark: str, index: int) -> list[dict[str, Any]] | None:
        """A `file_citation` for each file a mark names, by its name or its id: `【handbook.md】`,
        `【handbook.md, notes.txt】`, or OpenAI's own form, `【4:0†handbook.md】`; None when a name is not
        one of a file the model read."""
        whole = self._file(mark)
        sources = (
            [mark] if whole is not None else re.split("[,;\u3001\uff0c]", mark)
        )  # and the ideographic and fullwidth commas
        cited: list[str] = []
        for source in sources:
            file_id = self._file(source)
            if file_id is None:
                return None
            if file_id not in cited:
                cited.append(file_id)
        return [
            {"type": "file_citation", "file_id": file_id, "filename": self.names[file_id], "index": index}
            for file_id in cited
        ]

    def _file(self, source: str) -> str | None:
        """The id of the file a source in a mark names, by id or name; None when it names none read."""
        name = source.rsplit("†", 1)[-1].strip().strip("\"'`*")
        if name in self.names:
            return name
        return self.by_name.get(name.casefold())

    # What the model reads

    def messages(self, item: dict[str, Any], items: list[dict[str, Any]], name_of: NameOf) -> list[dict[str, Any]]:
        """A call of this response is read with what it read, whether or not the item shows its results."""
        item_id = item.get("id")
        if item_id in self.read or item_id in self.errors:
            return _call_messages(item, name_of, self.read.get(item_id), self.errors.get(item_id))
        return self.chat_messages(item, items, name_of)

    @classmethod
    def chat_messages(cls, item: dict[str, Any], items: list[dict[str, Any]], name_of: NameOf) -> list[dict[str, Any]]:
        """The model's call and the tool message answering it, for a finished call; nothing for one in progress."""
        if item.get("status") not in ("completed", "failed", "incomplete"):
            return []
        results = item.get("results")
        error = "The search failed." if item.get("status") != "completed" else None
        return _call_messages(item, name_of, results if isinstance(results, list) else None, error)


class FileSearchService:
    """The vector stores and their search, made once per server (`FileSearch.shared`)."""

    def __init__(self, resources: ToolResources) -> None:
        assert resources.database is not None and resources.models is not None
        self.repository = VectorStoreRepository(resources.database)
        # The server's own index when it hands one over: its in-memory copy of the vectors (SQLite) is then
        # one for the API's searches and the tool's.
        self.index = resources.vector_index or ChunkIndex(resources.database)
        self.embedder = registry_embedder(resources.models)

    async def stores(self, store_ids: list[str], caller: Caller) -> list[VectorStoreInfo]:
        """The vector stores of `store_ids`, in order; VectorStoreNotFound (a 404) names the first that the
        caller does not see, and VectorStoreExpired (a 400) the first that has expired."""
        stores = await self.repository.infos(store_ids, caller)
        for store in stores:
            if store.expired:
                raise VectorStoreExpired(store.id)
        return stores

    async def search(
        self, stores: list[VectorStoreInfo], queries: list[str], definition: FileSearchTool
    ) -> list[dict[str, Any]]:
        """The chunks that answer `queries` best, as a `file_search_call`'s `results`; raises ParleyError."""
        found = await search(
            self.index,
            self.embedder,
            stores,
            queries,
            filters=definition.filters,
            max_num_results=definition.max_num_results or DEFAULT_MAX_NUM_RESULTS,
            ranking_options=definition.ranking_options,
        )
        await self.repository.touch([store.id for store in stores])  # searched: their expiry counts from now
        return [
            {
                "file_id": hit.file_id,
                "filename": hit.filename,
                "score": hit.score,
                "text": hit.text,
                "attributes": hit.attributes,
            }
            for hit in found.hits
        ]


def _queries(arguments: str) -> list[str]:
    """The queries a model's arguments ask for: `{"queries": [...]}`, or `{"query": "..."}`; raises ValueError."""
    parsed = arguments_object(arguments)
    value = parsed.get("queries", parsed.get("query"))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(query, str) for query in value):
        raise ValueError("The argument 'queries' must be a list of strings.")
    queries = list(dict.fromkeys(query.strip() for query in value if query.strip()))
    if not queries:
        raise ValueError("The argument 'queries' must hold a query that is not empty.")
    if len(queries) > MAX_QUERIES:
        raise ValueError(f"At most {MAX_QUERIES} queries can be searched at once.")
    return queries


def _call_messages(
    item: dict[str, Any], name_of: NameOf, results: list[dict[str, Any]] | None, error: str | None
) -> list[dict[str, Any]]:
    """The model's call, under the name it knows the tool by now, and the tool message that answers it."""
    queries = [query for query in item.get("queries") or () if isinstance(query, str)]
    function = {
        "name": name_of(None, _FUNCTION["name"]),
        "arguments": json.dumps({"queries": queries}, ensure_ascii=False),
    }
    return [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": item["id"], "type": "function", "function": function}],
        },
        {"role": "tool", "tool_call_id": item["id"], "content": _what_the_model_reads(queries, results, error)},
    ]


def _what_the_model_reads(queries: list[str], results: list[dict[str, Any]] | None, error: str | None) -> str:
    """The tool message of a finished call: its results, each under its mark, or its error."""
    asked = " and ".join(f'"{query}"' for query in queries) or "the queries"
    if error is not None:
        return f"Error: {error}"
    if results is None:
        return f"The results of this search for {asked} were not kept; search again to read them."
    entries = [result for result in results if isinstance(result, dict)]
    if not entries:
        return f"No results for {asked}."
    listed = "\n\n".join(
        f"{MARK_OPEN}{entry.get('filename') or entry.get('file_id')}{MARK_CLOSE} "
        f"(file {entry.get('file_id')}, score {float(entry.get('score') or 0):.2f})\n{entry.get('text') or ''}".rstrip()
        for entry in entries
    )
    example = f"{MARK_OPEN}{entries[0].get('filename') or entries[0].get('file_id')}{MARK_CLOSE}"
    return (
        f"Results for {asked}:\n\n{listed}\n\n"
        f"Cite a result by writing its mark, such as {example}, right after the sentence it supports."
    )
