"""Real MCP servers for the agent-loop tests: `MCPServer` from the `mcp` package, on loopback ports.

`ToolServer` serves a few tools with known behaviour (an echo, an adder, a
sleeper, one that raises) over streamable HTTP at `/mcp` and over SSE at
`/sse`, and records the HTTP headers of every request it receives, so that
tests can check what Parley sent and what it kept to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route


def build_server() -> MCPServer:
    server = MCPServer("parley-test-tools")

    @server.tool()
    def echo(text: str) -> str:
        """Returns the text it is given."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleeps, then says how long."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    def explode(reason: str) -> str:
        """Always fails."""
        raise RuntimeError(f"exploded: {reason}")

    @server.tool()
    def big(size: int) -> str:
        """Returns `size` characters."""
        return "x" * size

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def peek(key: str) -> str:
        """Reads a value without changing anything (annotated `readOnlyHint`)."""
        return f"value of {key}"

    return server


class _HeaderRecorder:
    """Keeps the headers of every request, and counts the SSE streams open at `sse_path`."""

    def __init__(self, app: Any, seen: list[dict[str, str]], sse_path: str = "") -> None:
        self.app = app
        self.seen = seen
        self.sse_path = sse_path
        self.streams = 0  # open now
        self.opened = 0  # ever

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        stream = scope["method"] == "GET" and scope["path"] == self.sse_path
        self.streams += stream
        self.opened += stream
        try:
            await self.app(scope, receive, send)
        finally:
            self.streams -= stream


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ToolServer:
    """The test tools over both transports, in a thread: `url` ends in /mcp, `sse_url` in /sse."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.headers: list[dict[str, str]] = []
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._recorder: _HeaderRecorder | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def sse_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sse"

    streamable_path = "/mcp"
    sse_path = "/sse"
    listen_host = "127.0.0.1"

    @property
    def open_sessions(self) -> int:
        """The SSE sessions open now: each is a stream (`GET /sse`) that lasts as long as its client keeps it.

        (The `mcp` package's streamable-HTTP sessions keep nothing open on the server between requests.)
        """
        return self._recorder.streams if self._recorder is not None else 0

    @property
    def sessions_opened(self) -> int:
        """The SSE sessions opened since the server started."""
        return self._recorder.opened if self._recorder is not None else 0

    def build(self) -> MCPServer:
        """The MCP server this one serves."""
        return build_server()

    def start(self) -> Self:
        mcp = self.build()
        # The host decides the DNS-rebinding protection: on for loopback, which only loopback names may reach.
        streamable = mcp.streamable_http_app(streamable_http_path=self.streamable_path, host=self.listen_host)
        sse = mcp.sse_app(sse_path=self.sse_path, host=self.listen_host)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> Any:
            async with streamable.router.lifespan_context(app):
                yield

        app = Starlette(routes=[*streamable.routes, *sse.routes, *self.extra_routes()], lifespan=lifespan)
        recorder = self._recorder = _HeaderRecorder(app, self.headers, self.sse_path)
        config = uvicorn.Config(recorder, host=self.listen_host, port=self.port, log_level="error")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.02)
        return self

    def extra_routes(self) -> list[Route]:
        return []

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


class DeepSchemaToolServer(ToolServer):
    """The test tools, and `deep`, whose input schema nests 80 levels: deeper than Parley keeps."""

    def build(self) -> MCPServer:
        server = build_server()

        @server.tool()
        def deep(value: dict[str, Any]) -> str:
            """Takes a deeply nested value."""
            return "deep"

        nested: dict[str, Any] = {"type": "object"}
        for _ in range(40):  # each level is two: `properties`, then `inner`
            nested = {"type": "object", "properties": {"inner": nested}}
        server._tool_manager._tools["deep"].parameters = nested
        return server


class SwappedToolServer(ToolServer):
    """The test tools with the paths swapped: streamable HTTP at `/sse`, SSE at `/mcp`.

    Each URL suggests the wrong transport, so a client reaches the tools only
    by falling back to the other one.
    """

    streamable_path = "/sse"
    sse_path = "/mcp"


class RedirectingToolServer(ToolServer):
    """The test tools, and paths that redirect (307, which keeps the method and body).

    `hops_url(n)` reaches the tools at `/mcp` after `n` redirects on this server
    (at `/sse`, over SSE, with `sse=True`); `away_url` redirects once, to
    `redirect_to`, wherever that is.
    """

    def __init__(self, redirect_to: str = "", listen_host: str = "127.0.0.1") -> None:
        super().__init__()
        self.redirect_to = redirect_to
        self.listen_host = listen_host  # "0.0.0.0" to be reached by this machine's other addresses too

    def hops_url(self, count: int, *, sse: bool = False) -> str:
        return f"http://127.0.0.1:{self.port}/{'sse-hops' if sse else 'hops'}/{count}"

    @property
    def away_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/away"

    def extra_routes(self) -> list[Route]:
        async def hops(request: Request) -> Response:
            left = int(request.path_params["count"]) - 1
            return RedirectResponse(f"/hops/{left}" if left > 0 else self.streamable_path, status_code=307)

        async def sse_hops(request: Request) -> Response:
            left = int(request.path_params["count"]) - 1
            return RedirectResponse(f"/sse-hops/{left}" if left > 0 else self.sse_path, status_code=307)

        async def away(request: Request) -> Response:
            return RedirectResponse(self.redirect_to, status_code=307)

        methods = ["GET", "POST", "DELETE"]
        return [
            Route("/hops/{count:int}", hops, methods=methods),
            Route("/sse-hops/{count:int}", sse_hops, methods=methods),
            Route("/away", away, methods=methods),
        ]


@contextlib.contextmanager
def running_tool_server() -> Iterator[ToolServer]:
    server = ToolServer().start()
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    """`python tests/mcp_servers.py`: serves the tools until stopped, printing the /mcp URL once ready."""
    import signal
    import sys

    server = ToolServer().start()
    print(server.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
