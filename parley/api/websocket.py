"""WebSocket mode of `/v1/responses`: responses made one after another over one connection.

The client opens a WebSocket on `/v1/responses`, authenticated at its
handshake like any request (parley.api.auth, parley.api.guard), and sends
`{"type": "response.create", ...}` messages with the fields of
`POST /v1/responses`. Each is checked as that body is (`parse_body`,
`validate_body`), with `stream` implicit, and answered with the events its
SSE stream would carry, one JSON text message each, numbered the same.

- **One at a time.** Messages are answered in the order they came, each
  response to its terminal event before the next starts: a `response.create`
  sent while one runs waits its turn, as OpenAI processes a connection's
  messages first in, first out. At most `QUEUED` wait; the socket is not read
  further until one is taken (TCP holds the rest back).
- **Errors** that refuse a message (not JSON, too large, too deep, an unknown
  `type`, a bad field, `background`, an unknown `previous_response_id`)
  are one `{"type": "error", "status": ..., "error": {...}}` message, in
  OpenAI's error shape, and the connection stays open. A response that fails
  once started ends as its stream does (`error`, then `response.failed`).
- **Continuations.** The connection holds the contexts of its last
  `store: false` responses (`HeldContexts`: the last 8, within
  `engine.kept_context_bytes`), so that `previous_response_id` continues them
  although nothing of them was stored; a stored response continues through
  the store as over HTTP. Another connection (a reconnect too) gets
  `previous_response_not_found` for a `store: false` one, and starts again
  with the whole input, as OpenAI documents. A continuation that fails drops
  the context it started from, as OpenAI's does.
- **Closing** the socket mid-response is a client leaving an HTTP stream:
  a stored response is still produced and stored; an unstored one is stopped.

- **Warm-ups.** `generate: false` makes a response that calls no model: its
  context is made ready (MCP listings, approved calls) and it ends
  `completed` with no model output, so that a later `previous_response_id`
  continues from it, as OpenAI's warm-ups do.

Not supported: `background` (as at OpenAI) and `stream_id` lanes (each
response here runs alone, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import InvalidState
from websockets.protocol import Protocol, Side, State

from parley.api.auth import caller_of
from parley.api.body import parse_body, validate_body
from parley.api.errors import body_for
from parley.api.guard import too_large
from parley.engine.chains import HeldContexts
from parley.engine.request import CreateResponseRequest
from parley.engine.service import Event, ResponseRun, ResponseService
from parley.errors import InvalidRequestError, ParleyError
from parley.store import Caller

log = logging.getLogger(__name__)

# How many messages may wait while a response runs, before the socket is no longer read.
QUEUED = 16
_FAILED = "response.failed"
# The envelope of a `response.create` message, around the fields of `POST /v1/responses`.
_ENVELOPE = ("type", "stream", "generate", "stream_id")


# What a send failing means: the client has gone (uvicorn raises ClientDisconnected, an OSError, which Starlette
# turns into WebSocketDisconnect; a frame queued on a closing connection is InvalidState).
_GONE = (WebSocketDisconnect, RuntimeError, OSError, InvalidState)


async def responses_socket(scope: Scope, receive: Receive, send: Send) -> None:
    """WebSocket mode: `response.create` messages in, each response's stream events out (see the module).

    An ASGI app of its own, which `FastPaths` dispatches: it is handed the server's own `send`.
    """
    websocket = WebSocket(scope, receive, send)
    settings = websocket.app.state.settings
    connection = ResponsesConnection(
        websocket,
        websocket.app.state.responses,
        caller_of(websocket),
        max_bytes=settings.server.max_body_bytes,
        held=HeldContexts(settings.engine.kept_context_bytes),
        queue_frame=frame_queue(send),
    )
    await websocket.accept()
    await connection.serve()


def frame_queue(send: Send) -> Callable[[bytes], None] | None:
    """Where a text message can be queued to leave with the next one sent, in the same write; None for a server
    that offers none.

    ASGI sends one message a call, and uvicorn writes each to the socket at once: a write, and a wake-up of
    the client, per event, where an SSE stream has one a batch. Sent so, an event cost Parley about 1.7 times
    its CPU over SSE, and a socket carried 0.6 of SSE's events per second (bench/websocket.py; its figures
    in bench/README.md). Under uvicorn's websockets-sansio protocol (its default with `websockets`
    installed), `send` is that protocol's method, and its `conn` the `websockets` sans-I/O connection whose
    pending output (`writes`) each send writes: a frame queued there leaves, in order, with the next message
    sent through `send`, which also keeps uvicorn's flow control and close handling.

    The frames queued are built here (`text_frame`), not by `conn.send_text`: that took 1.4 to 2.1 us an
    event (a `Frame`, its checks, its serialisation through the extensions), against 0.3 us for an SSE
    event's frame, and the socket carried 0.89 to 0.91 of SSE's events per second; built here, 0.2 us an
    event, and 0.96 to 0.98 of SSE's. They are never
    compressed: under permessage-deflate a message may go uncompressed (RSV1 clear, RFC 7692 section 6),
    and SSE's events are not compressed either. Any other server (wsproto, an ASGI middleware wrapping
    `send`), or a `websockets` whose connection keeps no `writes`, gets its own sends.
    """
    connection = getattr(getattr(send, "__self__", None), "conn", None)
    if not isinstance(connection, Protocol) or connection.side is not Side.SERVER:
        return None
    if not isinstance(getattr(connection, "writes", None), list):
        return connection.send_text

    def queue(payload: bytes) -> None:
        # A closing connection takes no data frame: the message sent next through `send` finds it gone.
        if connection.state is State.OPEN:
            connection.writes.append(text_frame(payload))

    return queue


def text_frame(payload: bytes) -> bytes:
    """One text message as a server sends it (RFC 6455 section 5.2): final, unmasked, unfragmented."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 1 << 16:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload


class ResponsesConnection:
    """One WebSocket's life: its messages read as they come, answered one at a time."""

    def __init__(
        self,
        websocket: WebSocket,
        service: ResponseService,
        caller: Caller,
        *,
        max_bytes: int,
        held: HeldContexts,
        queue_frame: Callable[[bytes], None] | None = None,
    ) -> None:
        self.websocket = websocket
        self._queue_frame = queue_frame
        self.service = service
        self.caller = caller
        self.max_bytes = max_bytes
        self.held = held
        # The messages read and not yet answered; None once the client has gone.
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue(QUEUED)
        self._running: ResponseRun | None = None
        self._gone = False

    async def serve(self) -> None:
        reader = asyncio.create_task(self._read())
        try:
            while not self._gone and (message := await self._inbox.get()) is not None:
                await self._answer(message)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if not self._gone:
                with contextlib.suppress(Exception):
                    await self.websocket.close()

    async def _read(self) -> None:
        """Reads the client's messages into the inbox until it closes the socket; then the response running,
        if any, is abandoned as an HTTP stream's is when its client leaves."""
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                await self._inbox.put(text if text is not None else message.get("bytes") or b"")
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self._gone = True
            if self._running is not None:
                self._running.abandon()
            # What waits here will never be answered: room for the None that ends `serve`.
            while self._inbox.full():
                self._inbox.get_nowait()
            self._inbox.put_nowait(None)

    async def _answer(self, message: str | bytes) -> None:
        """One message: a response created and streamed to its end, or one `error` message."""
        continues: str | None = None
        try:
            data, generate = self._fields(message)
            previous = data.get("previous_response_id")
            continues = previous if isinstance(previous, str) else None
            request = validate_body(data, CreateResponseRequest)
            request.generate = generate
            run = await self.service.create(request, self.caller, self.held)
        except ParleyError as exc:
            await self._refuse(exc, continues)
            return
        except Exception:
            log.exception("a WebSocket response.create failed")
            await self._refuse(ParleyError("The server had an error while processing your request."), continues)
            return
        self._running = run  # from now on, abandoned if the client leaves (see `_read`)
        try:
            if self._gone:
                run.abandon()
            await run.started()  # raises what failed the turn before its first event
            last = ""
            async for batch in run.events():
                await self._send_events(batch)
                last = batch[-1][0]
            if last == _FAILED and continues is not None:
                self.held.forget(continues)
        except ParleyError as exc:
            await self._refuse(exc, continues)
        except _GONE:
            run.abandon()  # the client left mid-response: the reader ends `serve`
        finally:
            self._running = None

    async def _refuse(self, error: ParleyError, continues: str | None) -> None:
        """Answers a message with an error; a continuation refused drops the context it would have continued."""
        if continues is not None:
            self.held.forget(continues)
        await self._send_error(error)

    async def _send_events(self, batch: list[Event]) -> None:
        """A batch of events, a message each: in one write where the server lets them (see `frame_queue`)."""
        if self._queue_frame is not None:
            for _, event in batch[:-1]:
                self._queue_frame(event)
            batch = batch[-1:]
        for _, event in batch:
            await self.websocket.send_text(event.decode())

    def _fields(self, message: str | bytes) -> tuple[dict[str, Any], bool]:
        """The fields of `POST /v1/responses` that a message carries, `stream` set, and whether it generates
        (`generate: false` is a warm-up); a 400 (413) for any other message."""
        raw = message.encode() if isinstance(message, str) else message
        if len(raw) > self.max_bytes:
            raise too_large(self.max_bytes)
        data = parse_body(raw)
        kind = data.get("type")
        if kind != "response.create":
            raise InvalidRequestError(
                f"Invalid value for 'type': {kind!r}. This server takes only 'response.create' messages.",
                param="type",
                code="invalid_value",
            )
        if data.get("background") is True:
            raise InvalidRequestError(
                "Background responses are not supported in WebSocket mode: create them with POST /v1/responses.",
                param="background",
                code="unsupported_parameter",
            )
        if data.get("stream_id") is not None:
            raise InvalidRequestError(
                "Unsupported parameter: 'stream_id'. This server runs a connection's responses one at a time, in "
                "the order sent; open another connection to run another in parallel.",
                param="stream_id",
                code="unsupported_parameter",
            )
        if data.get("generate") not in (None, True, False):
            raise InvalidRequestError(
                f"Invalid type for 'generate': expected a boolean, but got {type(data['generate']).__name__}.",
                param="generate",
                code="invalid_type",
            )
        fields = {name: value for name, value in data.items() if name not in _ENVELOPE}
        fields["stream"] = True
        return fields, data.get("generate") is not False

    async def _send_error(self, error: ParleyError) -> None:
        """An error that refuses a message, as OpenAI sends it on the socket: its HTTP status, and the error body."""
        event = {"type": "error", "status": error.status_code, **body_for(error)}
        with contextlib.suppress(*_GONE):
            await self.websocket.send_json(event)
