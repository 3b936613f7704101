"""What the web_search tool reaches: a search backend, and the pages the model opens.

A backend is one search service behind `SearchBackend.search`, chosen by
`tools.web_search.backend`:

- `searxng`: a SearXNG instance's JSON API (`GET {base_url}/search?q=...&format=json`;
  the instance must list `json` among its `search.formats`);
- `brave`: the Brave Search API (`GET {base_url}/web/search`, the key in
  `X-Subscription-Token`).

`PageFetcher` reads a page for `open_page` and `find_in_page`, through a
client of the outbound guard (`parley.tools.outbound`): every URL it requests,
each redirect included, is checked, and so is every address it connects to.
The backend, which the operator configured, is reached as configured: no
request chooses its URL, and it is not followed when it redirects. Every
failure is a `SearchFailed` whose message the model reads; none names the
backend's key.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

import httpx

from parley.config import WebSearchSettings
from parley.tools.outbound import Guard, HostRefused

log = logging.getLogger(__name__)

# The longest snippet the model reads of one result.
MAX_SNIPPET_CHARS = 500


class SearchFailed(Exception):
    """A search or a page that failed; the message is what the model reads."""


@dataclass(frozen=True, slots=True)
class SearchResult:
    title: str
    url: str
    snippet: str


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One search: the model's query, how many results it reads, and the caller's filters."""

    query: str
    count: int
    # Only results on these domains (or their subdomains); empty allows every domain.
    allowed_domains: tuple[str, ...] = ()
    # The caller's `user_location` (`country`, `region`, `city`, `timezone`), for backends that use it.
    location: Mapping[str, Any] = field(default_factory=dict)

    def backend_query(self) -> str:
        """The query as sent: the domains the caller allows become `site:` terms, which most engines honour."""
        if not self.allowed_domains:
            return self.query
        return f"{self.query} ({' OR '.join(f'site:{domain}' for domain in self.allowed_domains)})"


def on_allowed_domain(url: str, allowed_domains: tuple[str, ...]) -> bool:
    """Whether `url`'s host is one of `allowed_domains` or a subdomain of one (all of them when there are none)."""
    if not allowed_domains:
        return True
    host = (urlsplit(url).hostname or "").rstrip(".")
    return any(host == domain or host.endswith("." + domain) for domain in allowed_domains)


class SearchBackend(ABC):
    """One search service; `search` raises SearchFailed."""

    name: ClassVar[str]

    def __init__(self, settings: WebSearchSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client

    async def search(self, request: SearchRequest) -> list[SearchResult]:
        """The results the model reads: on the allowed domains, each URL once, at most `request.count`."""
        raw = await self._get_json(*self.request(request))
        results, seen = [], set()
        for result in self.results(raw):
            if not result.url or result.url in seen or not on_allowed_domain(result.url, request.allowed_domains):
                continue
            seen.add(result.url)
            results.append(result)
            if len(results) == request.count:
                break
        return results

    @abstractmethod
    def request(self, request: SearchRequest) -> tuple[str, dict[str, Any], dict[str, str]]:
        """The URL, query parameters and headers of the backend's request."""

    @abstractmethod
    def results(self, body: Any) -> list[SearchResult]:
        """The results of the backend's answer, best first; raises SearchFailed for an answer of another shape."""

    async def _get_json(self, url: str, params: dict[str, Any], headers: dict[str, str]) -> Any:
        try:
            async with asyncio.timeout(self.settings.timeout):  # the whole answer, not each read
                response = await self.client.get(url, params=params, headers=headers, follow_redirects=False)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise SearchFailed(f"The search service did not answer within {self.settings.timeout:g} s.") from exc
        except httpx.HTTPError as exc:
            log.warning("web_search: the %s backend failed: %s", self.name, exc.__class__.__name__)
            raise SearchFailed(f"The search service failed to answer ({_describe(exc)}).") from exc
        if response.status_code >= 400:
            log.warning("web_search: the %s backend answered HTTP %d", self.name, response.status_code)
            raise SearchFailed(f"The search service answered HTTP {response.status_code}{self.hint(response)}.")
        try:
            return response.json()
        except ValueError as exc:
            raise SearchFailed("The search service's answer is not JSON.") from exc

    def hint(self, response: httpx.Response) -> str:
        """What an error status from this backend usually means, for the operator reading the model's answer."""
        return ""


class SearxngBackend(SearchBackend):
    """A SearXNG instance, through its JSON API."""

    name = "searxng"

    def request(self, request: SearchRequest) -> tuple[str, dict[str, Any], dict[str, str]]:
        headers = {"Accept": "application/json"}
        if self.settings.api_key is not None:  # an instance behind a proxy that asks for a token
            headers["Authorization"] = f"Bearer {self.settings.api_key.get_secret_value()}"
        return f"{self.settings.base_url}/search", {"q": request.backend_query(), "format": "json"}, headers

    def results(self, body: Any) -> list[SearchResult]:
        entries = body.get("results") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise SearchFailed("The search service's answer has no list of results.")
        return [
            SearchResult(_plain(entry.get("title")) or entry["url"], entry["url"], _snippet(entry.get("content")))
            for entry in entries
            if isinstance(entry, dict) and isinstance(entry.get("url"), str)
        ]

    def hint(self, response: httpx.Response) -> str:
        if response.status_code == 403:
            return " (a SearXNG instance answers 403 when `json` is not among its `search.formats`)"
        return ""


class BraveBackend(SearchBackend):
    """The Brave Search API's web search."""

    name = "brave"
    DEFAULT_URL = "https://api.search.brave.com/res/v1"
    MAX_COUNT = 20  # the most results the API gives in one answer

    def request(self, request: SearchRequest) -> tuple[str, dict[str, Any], dict[str, str]]:
        assert self.settings.api_key is not None  # the configuration requires it
        params: dict[str, Any] = {"q": request.backend_query(), "count": min(self.MAX_COUNT, request.count * 2)}
        country = request.location.get("country")
        if isinstance(country, str) and re.fullmatch(r"[A-Za-z]{2}", country):
            params["country"] = country.upper()
        headers = {"Accept": "application/json", "X-Subscription-Token": self.settings.api_key.get_secret_value()}
        # Brave's location headers, which it uses to rank local results.
        for key, header in (("city", "X-Loc-City"), ("region", "X-Loc-State-Name"), ("timezone", "X-Loc-Timezone")):
            value = request.location.get(key)
            if isinstance(value, str) and value.isascii() and value.isprintable():
                headers[header] = value
        return f"{self.settings.base_url or self.DEFAULT_URL}/web/search", params, headers

    def results(self, body: Any) -> list[SearchResult]:
        if not isinstance(body, dict):
            raise SearchFailed("The search service's answer is not an object.")
        web = body.get("web") or {}  # no `web` at all when nothing was found
        entries = web.get("results") if isinstance(web, dict) else None
        if not isinstance(entries, list):
            return []
        return [
            SearchResult(_plain(entry.get("title")) or entry["url"], entry["url"], _snippet(entry.get("description")))
            for entry in entries
            if isinstance(entry, dict) and isinstance(entry.get("url"), str)
        ]

    def hint(self, response: httpx.Response) -> str:
        if response.status_code in (401, 403):
            return " (the subscription token was refused)"
        if response.status_code == 429:
            return " (the subscription's rate limit was reached)"
        return ""


BACKENDS: dict[str, type[SearchBackend]] = {"searxng": SearxngBackend, "brave": BraveBackend}


def make_backend(settings: WebSearchSettings, client: httpx.AsyncClient) -> SearchBackend | None:
    """The configured backend; None when there is none."""
    return None if settings.backend is None else BACKENDS[settings.backend](settings, client)


# Pages


@dataclass(frozen=True, slots=True)
class Page:
    url: str  # where it was read, after redirects
    title: str
    text: str


class PageFetcher:
    """Reads web pages as text, within the host rules and the configured limits.

    `client` is one of `guard`'s (`Guard.httpx_client`), which checks each connection; the fetcher checks each
    URL before it asks for it too, for the refusal the model reads.
    """

    def __init__(self, settings: WebSearchSettings, guard: Guard, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.guard = guard
        self.client = client

    async def fetch(self, url: str, allowed_domains: tuple[str, ...] = ()) -> Page:
        """The page at `url` as text (HTML's visible text), whole; raises SearchFailed.

        All of it, redirects included, within `timeout`: a page that trickles in is cut off as one that is silent.
        """
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await self._fetch(url, allowed_domains)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise SearchFailed(f"The page did not answer within {self.settings.timeout:g} s.") from exc
        except HostRefused as exc:  # as the client connected: an address the host resolved to is refused
            raise SearchFailed(f"The page may not be opened: {exc}.") from exc
        except httpx.HTTPError as exc:
            raise SearchFailed(f"The page cannot be read ({_describe(exc)}).") from exc

    async def _fetch(self, url: str, allowed_domains: tuple[str, ...]) -> Page:
        limits = self.settings.fetch
        for _ in range(limits.max_redirects + 1):
            self._check(url, allowed_domains)
            async with self.client.stream("GET", url, follow_redirects=False) as response:
                location = response.headers.get("location")
                if response.is_redirect and location:
                    url = urljoin(url, location)
                    continue
                if response.status_code >= 400:
                    raise SearchFailed(f"The page answered HTTP {response.status_code}.")
                body = await _read_at_most(response, limits.max_bytes)
                return _page(url, response.headers.get("content-type", ""), body)
        raise SearchFailed(f"The page redirected more than {limits.max_redirects} times.")

    def _check(self, url: str, allowed_domains: tuple[str, ...]) -> None:
        try:
            self.guard.check_url(url)
        except HostRefused as exc:
            raise SearchFailed(f"The page may not be opened: {exc}.") from exc
        if not on_allowed_domain(url, allowed_domains):
            raise SearchFailed(
                f"The page may not be opened: it is not on the allowed domains ({', '.join(allowed_domains)})."
            )


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The body's first `limit` bytes; the rest is never downloaded."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


_TEXT_TYPES = ("application/json", "application/xml", "application/xhtml+xml", "application/javascript")


def _page(url: str, content_type: str, body: bytes) -> Page:
    media_type, _, params = content_type.partition(";")
    media_type = media_type.strip().lower()
    charset = _charset(params)
    is_html = media_type in ("text/html", "application/xhtml+xml") or (
        not media_type and body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html"))
    )
    if is_html:
        charset = charset or _meta_charset(body)
        title, text = html_text(_decode(body, charset))
        return Page(url, title or url, text)
    if media_type.startswith("text/") or media_type in _TEXT_TYPES or media_type.endswith(("+json", "+xml")):
        return Page(url, url, _decode(body, charset).strip())
    raise SearchFailed(f"The page is not text ({media_type or 'no content type'}).")


def _charset(params: str) -> str | None:
    match = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", params, re.IGNORECASE)
    return match.group(1) if match else None


def _meta_charset(body: bytes) -> str | None:
    match = re.search(rb"<meta[^>]+charset\s*=\s*[\"']?([\w.:-]+)", body[:4096], re.IGNORECASE)
    return match.group(1).decode("ascii") if match else None


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


def _describe(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if len(text) < 200 else text[:200] + "..."


# Text


class _TextExtractor(HTMLParser):
    """The visible text of an HTML document, a line per block, and its title."""

    SKIPPED = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object"}
    BLOCKS = {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
        "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
        "pre", "section", "table", "td", "th", "tr", "ul",
    }  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[list[str]] = [[]]
        self.title: list[str] = []
        self._skipping: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIPPED:
            self._skipping.append(tag)
        elif tag in self.BLOCKS:
            self.lines.append([])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:
            self.lines.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif self._skipping and tag == self._skipping[-1]:
            self._skipping.pop()
        elif tag in self.BLOCKS:
            self.lines.append([])

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skipping:
            self.lines[-1].append(data)


def html_text(document: str) -> tuple[str, str]:
    """An HTML document's title and visible text: one line per block, blank runs and spaces squeezed."""
    parser = _TextExtractor()
    try:
        parser.feed(document)
        parser.close()
    except AssertionError:  # html.parser gives up on some malformed markup; keep what it read
        pass
    lines = (" ".join("".join(pieces).split()) for pieces in parser.lines)
    text = "\n".join(line for line in lines if line)
    return " ".join("".join(parser.title).split()), text


_TAG = re.compile(r"<[^>]{0,200}>")


def _plain(text: Any) -> str:
    """A backend's title or snippet as plain text: Brave marks the query's words with `<strong>`."""
    if not isinstance(text, str):
        return ""
    return " ".join(html.unescape(_TAG.sub("", text)).split())


def _snippet(text: Any) -> str:
    plain = _plain(text)
    return plain if len(plain) <= MAX_SNIPPET_CHARS else plain[: MAX_SNIPPET_CHARS - 3].rstrip() + "..."
