"""Web search, as a kind of server-side tool: `{"type": "web_search"}` and its preview and dated types.

The web_search tools of one response are one `WebSearch`. With a search
backend configured (`tools.web_search`, see `search_backends`), the model is
offered functions:

    web_search(query)            a search: titles, URLs and snippets
    open_page(url)               a page's text
    find_in_page(url, pattern)   the passages of a page that contain a text

(`open_page` and `find_in_page` read pages live, so a definition with
`external_web_access: false`, as the Codex CLI sends it, offers the search
alone.) A call becomes a `web_search_call` item whose `action` says what was
done (`search` with its `query`, and its `sources` when the request's
`include` asks for `web_search_call.action.sources`; `open_page`;
`find_in_page`), with the events `response.web_search_call.in_progress`,
`.searching` and `.completed`. A call that fails (the backend is down, a page
is refused) ends `failed`, with no event of its own, as OpenAI has none.

What the model read is kept in the item, in Parley's own fields: `results`
(`{"title", "url", "text"}` each: a result's snippet, a page's text, a
passage) or `error`; later model calls read them as the call's tool message.
An item without them (sent back by a caller that drops unknown fields)
reaches the model as a call whose results are gone.

The model cites a result by writing its URL (bare, or as a markdown link):
each such place in the answer's text becomes a `url_citation` annotation
(`annotations`).

With no backend configured, a request that names web_search still succeeds:
the model is not offered it, and the server says so in its log once.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Literal

import httpx
from openai.types.responses import web_search_preview_tool_param, web_search_tool_param
from pydantic import field_validator

from parley import __version__
from parley.config import ToolsSettings, WebSearchSettings
from parley.ids import new_id
from parley.package_fields import PackageFields, keys_of
from parley.tools.base import (
    ItemEvents,
    NameOf,
    ServerTool,
    ToolKind,
    ToolResources,
    arguments_object,
    register,
    take_name,
)
from parley.tools.outbound import Guard, HostRules
from parley.tools.search_backends import (
    Page,
    PageFetcher,
    SearchBackend,
    SearchFailed,
    SearchRequest,
    make_backend,
)

__all__ = ["WebSearch", "WebSearchPreviewTool", "WebSearchService", "WebSearchTool"]

log = logging.getLogger(__name__)

SOURCES = "web_search_call.action.sources"  # the `include` value that shows a search's sources


# Definitions


class UserLocation(PackageFields):
    known = keys_of(web_search_tool_param.UserLocation, web_search_preview_tool_param.UserLocation)
    type: Literal["approximate"] = "approximate"
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class Filters(PackageFields):
    known = keys_of(web_search_tool_param.Filters)
    allowed_domains: list[str] | None = None

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str] | None) -> list[str] | None:
        for domain in value or ():
            if not _domain(domain):
                raise ValueError(f"'{domain}' is not a domain (such as 'openai.com')")
        return value


class WebSearchTool(PackageFields):
    """`{"type": "web_search"}` (or `web_search_2025_08_26`)."""

    known = keys_of(web_search_tool_param.WebSearchToolParam)
    type: Literal["web_search", "web_search_2025_08_26"]
    search_context_size: Literal["low", "medium", "high"] | None = None
    user_location: UserLocation | None = None
    filters: Filters | None = None
    # False asks for no live fetching: the search alone is offered (the Codex CLI sends false).
    external_web_access: bool | None = None

    def public(self) -> dict[str, Any]:
        """As sent: the package's fields the caller set, no defaults added."""
        return self.model_dump(exclude_unset=True)


class WebSearchPreviewTool(PackageFields):
    """`{"type": "web_search_preview"}` (or `web_search_preview_2025_03_11`)."""

    known = keys_of(web_search_preview_tool_param.WebSearchPreviewToolParam)
    type: Literal["web_search_preview", "web_search_preview_2025_03_11"]
    search_context_size: Literal["low", "medium", "high"] | None = None
    user_location: UserLocation | None = None
    search_content_types: list[Literal["text", "image"]] | None = None  # results are text either way

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


WebSearchDefinition = WebSearchTool | WebSearchPreviewTool


def _domain(text: str) -> str:
    """A domain as `filters.allowed_domains` may write it (`openai.com`, `https://openai.com/`), bare; "" if none."""
    text = text.strip().lower()
    text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", text).split("/", 1)[0].removeprefix("*.").strip(".")
    return text if re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*", text) else ""


# What the kind keeps across responses


class WebSearchService:
    """The backend, the page fetcher and their HTTP clients, made once per server (`WebSearch.shared`)."""

    def __init__(self, settings: WebSearchSettings, guard: Guard) -> None:
        self.settings = settings
        headers = {"User-Agent": f"Parley/{__version__} (web_search)"}
        # The backend is the operator's choice, reached as configured; the pages are the model's, through the guard.
        self.client = httpx.AsyncClient(headers=headers, timeout=settings.timeout)
        self.page_client = guard.httpx_client(headers=headers, timeout=settings.timeout)
        self.backend: SearchBackend | None = make_backend(settings, self.client)
        self.fetcher = PageFetcher(settings, guard, self.page_client)
        self._said_unconfigured = False

    @classmethod
    def of(cls, settings: ToolsSettings) -> WebSearchService:
        """The service of a server: `tools.web_search`, and its host rules over `outbound`'s."""
        return cls(settings.web_search, Guard(HostRules.of(settings.web_search.over(settings.outbound))))

    def unconfigured(self) -> None:
        """Notes a request that names web_search on a server with no backend: logged once, not per request."""
        if not self._said_unconfigured:
            self._said_unconfigured = True
            log.warning(
                "a request names the web_search tool, but no search backend is configured "
                "(tools.web_search.backend): the model is not offered it. Said once."
            )

    async def close(self) -> None:
        await self.client.aclose()
        await self.page_client.aclose()


# The kind


_FUNCTIONS: dict[str, dict[str, Any]] = {
    "search": {
        "name": "web_search",
        "description": (
            "Search the web. Returns numbered results, each with its title, URL and a snippet. "
            "Cite a result by writing its URL."
        ),
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to search for."}},
            "required": ["query"],
        },
    },
    "open_page": {
        "name": "open_page",
        "description": "Open a web page (a search result, or any http or https URL) and read its text.",
        "parameters": {
            "type": "object",
            "properties": {"url": {"type": "string", "description": "The page's URL."}},
            "required": ["url"],
        },
    },
    "find_in_page": {
        "name": "find_in_page",
        "description": "Find a text in a web page: returns the passages of the page that contain it (any case).",
        "parameters": {
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "The page's URL."},
                "pattern": {"type": "string", "description": "The text to find."},
            },
            "required": ["url", "pattern"],
        },
    },
}
# The action each function's calls are.
_ACTION_OF = {function["name"]: action for action, function in _FUNCTIONS.items()}
# The arguments of each action's function, which its action carries too.
_ARGUMENTS = {"search": ("query",), "open_page": ("url",), "find_in_page": ("url", "pattern")}
# How much the model reads, by `search_context_size`: a share of `max_results` and of `fetch.max_chars`.
_CONTEXT_SHARE = {"low": 0.5, "medium": 1.0, "high": 2.0}
_SIZES = ("low", "medium", "high")
# Passages find_in_page returns, and the characters around the text each shows.
MAX_PASSAGES = 10
PASSAGE_CONTEXT = 150


@register
class WebSearch(ToolKind):
    definitions = {
        "web_search": WebSearchTool,
        "web_search_2025_08_26": WebSearchTool,
        "web_search_preview": WebSearchPreviewTool,
        "web_search_preview_2025_03_11": WebSearchPreviewTool,
    }
    call_type = "web_search_call"
    item_types = ("web_search_call",)
    items = {"web_search_call": ItemEvents("response.web_search_call", working="searching", failure_event=False)}

    def __init__(self, definitions: list[WebSearchDefinition], shared: WebSearchService) -> None:
        self.named = definitions
        self.service = shared
        settings = shared.settings
        # One response may name several web_search tools; they are offered once, with the widest of their settings.
        size = max((d.search_context_size or "medium" for d in definitions), key=_SIZES.index, default="medium")
        share = _CONTEXT_SHARE[size]
        self.result_count = max(1, round(settings.max_results * share))
        self.page_chars = max(1, round(settings.fetch.max_chars * share))
        domains: set[str] = set()
        for definition in definitions:
            filters = getattr(definition, "filters", None)
            if filters is None or not filters.allowed_domains:
                domains = set()
                break
            domains |= {_domain(domain) for domain in filters.allowed_domains}
        self.allowed_domains = tuple(sorted(domains))
        self.live = any(getattr(d, "external_web_access", None) is not False for d in definitions)
        location = next((d.user_location for d in definitions if d.user_location is not None), None)
        self.location = location.model_dump(exclude_none=True) if location is not None else {}
        self.pages: dict[str, Page] = {}  # the pages this response read, by the URL asked for
        self.bad_arguments: dict[str, str] = {}  # what is wrong with a call's arguments, by item id
        self.cited: dict[str, str] = {}  # the URLs the model read of, with their titles, for citations

    @classmethod
    def shared(cls, settings: ToolsSettings, resources: ToolResources) -> WebSearchService:
        return WebSearchService.of(settings)

    @classmethod
    async def close_shared(cls, shared: WebSearchService) -> None:
        await shared.close()

    async def prepare(
        self, history: list[dict[str, Any]], previous_tools: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Makes no items; learns the results earlier calls read, which the answer may cite too."""
        if self.named:
            for item in history:
                if item.get("type") == "web_search_call":
                    self._learn(item)
        return []

    def tools(self, taken: set[str]) -> list[ServerTool]:
        if not self.named:
            return []
        if self.service.backend is None:
            self.service.unconfigured()
            return []
        actions = ["search", "open_page", "find_in_page"] if self.live else ["search"]
        tools = []
        for action in actions:
            function = dict(_FUNCTIONS[action])
            if self.allowed_domains:
                function["description"] += (
                    f" Only these domains are searched and opened: {', '.join(self.allowed_domains)}."
                )
            name = take_name(function["name"], taken)
            function["name"] = name
            tools.append(
                ServerTool(
                    kind=self,
                    name=name,
                    function={"type": "function", "function": function},
                    tool_name=_FUNCTIONS[action]["name"],
                    tool_type=self.named[0].type,
                )
            )
        return tools

    def call_item(self, tool: ServerTool) -> dict[str, Any]:
        # The action's fields are known once the model has written its arguments; until then they are
        # empty, in the shape OpenAI's types require (a search's `query`, a find's `url` and `pattern`).
        kind = _ACTION_OF[tool.tool_name]
        action: dict[str, Any] = {"type": kind}
        if kind == "search":
            action["query"] = ""
        elif kind == "open_page":
            action["url"] = None
        else:
            action.update(url="", pattern="")
        # No `arguments`, as OpenAI's item has none: the model's come to `take_arguments`, whole.
        return {"id": new_id("ws"), "type": "web_search_call", "status": "in_progress", "action": action}

    def take_arguments(self, item: dict[str, Any], arguments: str) -> None:
        """Fills the call's action from the model's arguments; what is wrong with them, the call's run reports."""
        try:
            _set_action(item["action"], arguments_object(arguments))
        except (ValueError, SearchFailed) as exc:
            self.bad_arguments[item["id"]] = str(exc)

    async def run(self, item: dict[str, Any]) -> str:
        action = item["action"]
        try:
            if item["id"] in self.bad_arguments:
                raise SearchFailed(self.bad_arguments.pop(item["id"]))
            if action["type"] == "search":
                results = await self._search(action)
            elif action["type"] == "open_page":
                results = await self._open_page(action)
            else:
                results = await self._find_in_page(action)
        except SearchFailed as exc:
            item["results"], item["error"] = [], str(exc)
            return "failed"
        except Exception:  # a backend's surprise is the call's failure, never the response's
            log.exception("web_search: the %s call failed", action["type"])
            item["results"], item["error"] = [], "The web search failed unexpectedly."
            return "failed"
        item["results"], item["error"] = results, None
        self._learn(item)
        return "completed"

    def refuse(self, item: dict[str, Any], reason: str) -> str:
        self.bad_arguments.pop(item["id"], None)
        item["results"], item["error"] = [], reason
        return "failed"

    async def _search(self, action: dict[str, Any]) -> list[dict[str, Any]]:
        request = SearchRequest(action["query"], self.result_count, self.allowed_domains, self.location)
        assert self.service.backend is not None  # tools() offers nothing without one
        found = await self.service.backend.search(request)
        if SOURCES in self.include:
            action["sources"] = [{"type": "url", "url": result.url} for result in found]
        return [{"title": result.title, "url": result.url, "text": result.snippet} for result in found]

    async def _open_page(self, action: dict[str, Any]) -> list[dict[str, Any]]:
        page = await self._page(action["url"])
        text = page.text
        if len(text) > self.page_chars:
            text = (
                text[: self.page_chars] + f"\n[The page is cut here: {self.page_chars} of {len(page.text)} characters.]"
            )
        return [{"title": page.title, "url": page.url, "text": text}]

    async def _find_in_page(self, action: dict[str, Any]) -> list[dict[str, Any]]:
        page = await self._page(action["url"])
        return [
            {"title": page.title, "url": page.url, "text": passage}
            for passage in _passages(page.text, action["pattern"])
        ]

    async def _page(self, url: str) -> Page:
        """A page, read once per response: find_in_page after open_page reads what open_page read."""
        page = self.pages.get(url)
        if page is None:
            page = self.pages[url] = await self.service.fetcher.fetch(url, self.allowed_domains)
        return page

    def _learn(self, item: dict[str, Any]) -> None:
        for result in item.get("results") or ():
            if isinstance(result, dict) and isinstance(result.get("url"), str):
                self.cited.setdefault(result["url"], str(result.get("title") or result["url"]))

    def annotations(self, text: str) -> list[dict[str, Any]]:
        """A `url_citation` for each place `text` names the URL of a result the model read.

        A markdown link to it (`[label](url)`) is cited whole; a bare URL by itself.
        """
        if not self.named or not self.cited:
            return []
        found: list[dict[str, Any]] = []
        taken: list[tuple[int, int]] = []
        # Longest first, so that a URL that begins another one cites only where it stands alone.
        for url in sorted(self.cited, key=len, reverse=True):
            for start, end in _places(text, url):
                if any(start < other_end and other_start < end for other_start, other_end in taken):
                    continue
                taken.append((start, end))
                found.append(
                    {
                        "type": "url_citation",
                        "start_index": start,
                        "end_index": end,
                        "url": url,
                        "title": self.cited[url],
                    }
                )
        return sorted(found, key=lambda annotation: annotation["start_index"])

    @classmethod
    def chat_messages(cls, item: dict[str, Any], items: list[dict[str, Any]], name_of: NameOf) -> list[dict[str, Any]]:
        """The model's call and the tool message answering it, for a finished call; nothing for one in progress."""
        if item.get("status") not in ("completed", "failed", "incomplete"):
            return []
        action = item.get("action") or {}
        kind = str(action["type"]) if action.get("type") in _ARGUMENTS else "search"
        arguments = {name: action.get(name) or "" for name in _ARGUMENTS[kind]}
        # Under the name the model knows it by now (`web_search_2` when the caller's own tool has the name).
        function = {
            "name": name_of(None, _FUNCTIONS[kind]["name"]),
            "arguments": json.dumps(arguments, ensure_ascii=False),
        }
        return [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": item["id"], "type": "function", "function": function}],
            },
            {"role": "tool", "tool_call_id": item["id"], "content": _what_the_model_reads(kind, item)},
        ]


def _set_action(action: dict[str, Any], arguments: dict[str, Any]) -> None:
    """Fills the action from the model's arguments; raises SearchFailed for one that is missing or empty."""
    for name in _ARGUMENTS[action["type"]]:
        value = arguments.get(name)
        if not isinstance(value, str) or not value.strip():
            raise SearchFailed(f"The argument '{name}' must be a string that is not empty.")
        action[name] = value.strip() if name != "pattern" else value


def _passages(text: str, pattern: str) -> list[str]:
    """The passages of `text` around each place it holds `pattern` (any case), overlapping ones joined."""
    lowered, needle = text.lower(), pattern.lower()
    spans: list[list[int]] = []
    start = lowered.find(needle)
    while start >= 0 and len(spans) <= MAX_PASSAGES:
        begin, end = max(0, start - PASSAGE_CONTEXT), min(len(text), start + len(needle) + PASSAGE_CONTEXT)
        if spans and begin <= spans[-1][1]:
            spans[-1][1] = end
        else:
            spans.append([begin, end])
        start = lowered.find(needle, start + max(1, len(needle)))
    return [
        ("..." if begin > 0 else "") + " ".join(text[begin:end].split()) + ("..." if end < len(text) else "")
        for begin, end in spans[:MAX_PASSAGES]
    ]


def _what_the_model_reads(kind: str, item: dict[str, Any]) -> str:
    """The tool message of a finished call: its results, or its error."""
    action = item.get("action") or {}
    if item.get("error"):
        return f"Error: {item['error']}"
    results = item.get("results")
    if not isinstance(results, list):
        sources = [source.get("url") for source in action.get("sources") or () if isinstance(source, dict)]
        gone = "The results of this call were not kept."
        return gone if not sources else gone + " Its sources were:\n" + "\n".join(str(url) for url in sources)
    entries = [result for result in results if isinstance(result, dict)]
    if kind == "open_page":
        opened = entries[0] if entries else {}
        return f"{opened.get('title', '')}\nURL: {opened.get('url', action.get('url'))}\n\n{opened.get('text', '')}"
    if kind == "find_in_page":
        if not entries:
            return f'The page {action.get("url")} does not contain "{action.get("pattern")}".'
        passages = "\n\n".join(f"[{n}] {entry.get('text', '')}" for n, entry in enumerate(entries, 1))
        page = f"{entries[0].get('title', '')} ({entries[0].get('url', '')})"
        return f'Passages of {page} that contain "{action.get("pattern")}":\n\n{passages}'
    if not entries:
        return f'No results for "{action.get("query")}".'
    listed = "\n\n".join(
        f"[{n}] {entry.get('title', '')}\nURL: {entry.get('url', '')}\n{entry.get('text', '')}".rstrip()
        for n, entry in enumerate(entries, 1)
    )
    return f'Results for "{action.get("query")}":\n\n{listed}\n\nCite a result by writing its URL.'


def _places(text: str, url: str) -> list[tuple[int, int]]:
    """Where `text` names `url`: markdown links to it whole, else the URL itself (with or without a final `/`)."""
    variants = {url, url.rstrip("/")} - {""}
    pattern = "|".join(re.escape(variant) for variant in sorted(variants, key=len, reverse=True))
    places = []
    for match in re.finditer(rf"\[[^\[\]\n]*\]\((?:{pattern})\)|(?:{pattern})(?![\w/%~#?=&+-])", text):
        places.append((match.start(), match.end()))
    return places
