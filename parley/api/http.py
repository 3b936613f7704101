"""HTTP response classes: JSON bodies via orjson, and event streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def refuse(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Answers a request with `response`, which refuses it; a WebSocket handshake gets it as its denial
    response, or, from a server that cannot send one, a close with code 1008 (policy violation)."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await response(scope, receive, send)


class StreamRefused(Exception):
    """A stream's body failed before its first piece: nothing was sent, and `error` is the answer."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class EventStreamResponse(Response):
    """A `text/event-stream` body, written from the request's own task as its pieces come.

    Starlette's StreamingResponse runs the body and a disconnect listener as two
    tasks of an anyio task group for every stream; here the body is written by
    the request's task, and one plain task waits for the disconnect and cancels
    it. A client that leaves ends the stream at once, even while it waits for
    the model: the body's generator is closed, and with it the upstream call.

    The status line and headers leave with the first piece. A body that raises
    before it has one is refused (StreamRefused, which `FastPaths` answers as
    the error it carries), so a stream can be returned before it is known to start.
    """

    media_type = "text/event-stream"

    # The same for every stream: built once.
    _HEADERS = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        self.body_iterator = content
        self.status_code = 200
        self.background = None
        self.raw_headers = list(self._HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = asyncio.current_task()
        assert writer is not None
        watcher = DisconnectWatcher(receive, writer)
        try:
            try:
                first = await anext(self.body_iterator, None)
            except Exception as exc:  # not a cancellation, which is no Exception
                raise StreamRefused(exc) from exc
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if first is not None:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for piece in self.body_iterator:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watcher.client_left or writer.uncancel() > 0:
                raise  # cancelled from elsewhere: the server is stopping
            # The client left: there is no one to answer.
        finally:
            watcher.stop()
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


class DisconnectWatcher:
    """Cancels `writer`, a task answering a request, when its client disconnects; `client_left` says so."""

    def __init__(self, receive: Receive, writer: asyncio.Task[Any]) -> None:
        self.client_left = False
        self._receive = receive
        self._writer = writer
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        # The request's body has been read: what the server receives from now on is the disconnect.
        with contextlib.suppress(Exception):
            while (await self._receive())["type"] != "http.disconnect":
                pass
            self.client_left = True
            self._writer.cancel()

    def stop(self) -> None:
        self._task.cancel()


T = TypeVar("T")

# nginx's status for a request whose client went away before the answer.
CLIENT_CLOSED_REQUEST = 499


class ClientGone(Exception):
    """The client disconnected while Parley worked on its answer."""


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientGone (with `work` cancelled) if the client disconnects first.

    Starlette does not cancel a handler whose client has gone; only a streamed
    response notices, when it next writes. `work` runs in the handler's own
    task, which a watcher cancels if the client leaves.
    """
    handler = asyncio.current_task()
    assert handler is not None
    watcher = DisconnectWatcher(request.receive, handler)
    try:
        return await work  # its cancellation reaches the provider's stream before it is closed
    except asyncio.CancelledError:
        if watcher.client_left and handler.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        watcher.stop()
