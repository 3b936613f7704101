"""The two routes every token crosses, dispatched ahead of FastAPI's stack.

`POST /v1/chat/completions` and `POST /v1/responses` start every stream.
FastAPI's way to their handlers (its seven middleware layers, matching the
path against every route, solving dependencies for a handler that takes only
the request) costs about a quarter of a short stream's time in the server,
all of it before the first token. Both handlers take a `Request` and return a
`Response`, so this dispatcher calls them itself, and hands their exceptions
to the app's own exception handlers, picked by class as Starlette picks them.
Every other request, and the lifespan, goes to FastAPI; the two routes stay
registered there as well, so /openapi.json still documents them.

WebSockets on a path of `sockets` (WebSocket mode of `/v1/responses`) are
dispatched here, and only here, so that their endpoint is handed the
server's own `send` (FastAPI's exception middleware would wrap it), which
lets it write a batch of events in one write (see parley.api.websocket).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from parley.api.http import StreamRefused

Endpoint = Callable[[Request], Awaitable[Response]]


class FastPaths:
    def __init__(
        self, app: FastAPI, routes: dict[tuple[str, str], Endpoint], sockets: dict[str, ASGIApp] | None = None
    ) -> None:
        self.app = app
        self.routes = routes
        self.sockets = sockets or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] in self.sockets:
            scope["app"] = self.app  # what FastAPI sets, for `websocket.app`
            await self.sockets[scope["path"]](scope, receive, send)
            return
        endpoint = self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # what FastAPI sets, for `request.app`
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await self._handle(request, exc)
        try:
            await response(scope, receive, send)
        except StreamRefused as refused:
            response = await self._handle(request, refused.error)
            await response(scope, receive, send)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        handlers: dict[Any, Any] = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return await handlers[cls](request, exc)
        raise exc
