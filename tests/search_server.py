"""A search service for the web_search tests, on a loopback port: a fixed corpus, searched two ways.

- `GET /search?q=...&format=json` answers as a SearXNG instance's JSON API does;
- `GET /res/v1/web/search?q=...&count=...` answers as the Brave Search API does,
  to the subscription token `BRAVE_KEY` only (401 otherwise);
- `/pages/...` are pages to open: `parley` (HTML), `plain` (text), `binary`
  (not text), `missing` (404), `trickle` (a line every half second for
  `SLOW_SECONDS`), and `/redirect?to=URL` redirects (302).

A document matches a query when any of the query's words (`site:` terms
aside) is in its title or snippet. `mode` breaks both search APIs on demand:
`error` answers 500, `drop` cuts the connection mid-answer, `slow` answers after
`SLOW_SECONDS`. Every search request's query parameters and headers are kept
in `searches`, the name of every page read in `pages_read`, and the `Host`
header it was asked with in `page_hosts`. It listens on 127.0.0.1, or on
every address of this machine with `listen_host="0.0.0.0"`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

BRAVE_KEY = "brave-test-key-7f3a"
SLOW_SECONDS = 5.0

PARLEY_PAGE = """<!doctype html>
<html><head><title>Parley, served here</title>
<style>body { color: red }</style><script>var hidden = "not text";</script></head>
<body><h1>Parley</h1>
<p>Parley is an OpenAI-compatible API server.</p>
<p>It runs web searches for the model &amp; cites what it found.</p>
<ul><li>MCP servers</li><li>Web search</li></ul>
</body></html>
"""


@dataclass(frozen=True)
class Document:
    title: str
    url: str
    snippet: str


class SearchServer:
    """The corpus and its two search APIs, served by uvicorn in a daemon thread."""

    def __init__(self, listen_host: str = "127.0.0.1") -> None:
        self.port = _free_port()
        self.listen_host = listen_host
        self.mode = "ok"
        self.searches: list[dict[str, Any]] = []
        self.pages_read: list[str] = []
        self.page_hosts: list[str] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, name: str) -> str:
        return f"{self.base_url}/pages/{name}"

    @property
    def corpus(self) -> list[Document]:
        return [
            Document(
                "Parley: an OpenAI-compatible API server",
                "https://parley.example.org/",
                "Parley serves OpenAI's Responses API over any chat-completions model.",
            ),
            Document(
                "Parley tools",
                "https://docs.example.org/parley/tools",
                "MCP servers and web search run as [server-side tools](https://docs.example.org/parley/tools).",
            ),
            Document("Parley, served here", self.page("parley"), "A page about Parley on the test server."),
            Document("SearXNG", "https://searxng.example.net/", "A metasearch engine that aggregates results."),
        ]

    def matches(self, query: str) -> list[Document]:
        words = [w.strip("()").lower() for w in query.split() if not w.startswith(("site:", "(site:")) and w != "OR"]
        return [
            doc for doc in self.corpus if any(w and (w in doc.title.lower() or w in doc.snippet.lower()) for w in words)
        ]

    async def _searching(self, request: Request) -> None:
        self.searches.append(
            {"path": request.url.path, "params": dict(request.query_params), "headers": dict(request.headers)}
        )
        if self.mode == "slow":
            await asyncio.sleep(SLOW_SECONDS)
        elif self.mode == "error":
            raise _Failure

    async def searxng(self, request: Request) -> Response:
        await self._searching(request)
        if request.query_params.get("format") != "json":
            return PlainTextResponse("Forbidden", status_code=403)
        query = request.query_params.get("q", "")
        results = [
            {
                "url": doc.url,
                "title": doc.title,
                "content": doc.snippet,
                "engine": "corpus",
                "engines": ["corpus"],
                "score": 1.0,
                "category": "general",
            }
            for doc in self.matches(query)
        ]
        return JSONResponse(
            {
                "query": query,
                "number_of_results": len(results),
                "results": results,
                "answers": [],
                "corrections": [],
                "infoboxes": [],
                "suggestions": [],
                "unresponsive_engines": [],
            }
        )

    async def brave(self, request: Request) -> Response:
        await self._searching(request)
        if request.headers.get("x-subscription-token") != BRAVE_KEY:
            return JSONResponse(
                {"type": "ErrorResponse", "error": {"code": "SUBSCRIPTION_TOKEN_INVALID", "status": 401}},
                status_code=401,
            )
        query = request.query_params.get("q", "")
        count = int(request.query_params.get("count", "20"))
        results = [
            {
                # Brave marks the query's words in titles and descriptions.
                "title": doc.title.replace("Parley", "<strong>Parley</strong>"),
                "url": doc.url,
                "description": doc.snippet.replace("Parley", "<strong>Parley</strong>"),
                "is_source_local": False,
                "language": "en",
            }
            for doc in self.matches(query)[:count]
        ]
        body: dict[str, Any] = {"type": "search", "query": {"original": query}}
        if results:
            body["web"] = {"type": "search", "results": results}
        return JSONResponse(body)

    async def pages(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.pages_read.append(name)
        self.page_hosts.append(request.headers.get("host", ""))
        if name == "parley":
            return Response(PARLEY_PAGE, media_type="text/html; charset=utf-8")
        if name == "plain":
            return PlainTextResponse("Plain text about Parley.\nSecond line.")
        if name == "binary":
            return Response(b"\x00\x01\x02", media_type="application/octet-stream")
        if name == "trickle":  # a line every half second, for SLOW_SECONDS: never silent for long
            return StreamingResponse(_trickle(), media_type="text/plain")
        return PlainTextResponse("Not found", status_code=404)

    async def redirect(self, request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    def _dropping(self, app: Any) -> Any:
        """The app, but in mode `drop` a search's answer is cut short: the connection closes mid-body."""

        async def dropping(scope: Any, receive: Any, send: Any) -> None:
            searching = scope["type"] == "http" and scope["path"] in ("/search", "/res/v1/web/search")
            if not (searching and self.mode == "drop"):
                return await app(scope, receive, send)
            self.searches.append({"path": scope["path"], "params": {}, "headers": {}})
            headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"results": [', "more_body": True})
            raise _Failure("dropped")  # uvicorn closes a connection whose answer was cut short

        return dropping

    def start(self) -> Self:
        app = Starlette(
            routes=[
                Route("/search", self.searxng),
                Route("/res/v1/web/search", self.brave),
                Route("/pages/{name}", self.pages),
                Route("/redirect", self.redirect),
            ],
            exception_handlers={_Failure: _server_error},
        )
        config = uvicorn.Config(
            self._dropping(app), host=self.listen_host, port=self.port, log_level="critical", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="search-server")
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the search test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # a slow search may still be asleep
        if self._thread is not None:
            self._thread.join(10)


class _Failure(Exception):
    """Raised in a handler to answer 500 (mode `error`)."""


async def _trickle() -> AsyncIterator[bytes]:
    for _ in range(int(SLOW_SECONDS * 2)):
        yield b"a line of a slow page\n"
        await asyncio.sleep(0.5)


async def _server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "the search engines are down"}, status_code=500)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
