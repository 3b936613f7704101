"""Test scoping: the header that names the test a request belongs to, for record/replay.

The header's value is put in `parley.inference.recording.current_test_id` for
the whole of the request, including the tasks it starts (asyncio copies the
context into them), so that the response a request starts in the background
is recorded and replayed under the same test.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from parley.config import RecordingSettings
from parley.inference.recording import current_test_id


class TestScopeMiddleware:
    """Pure ASGI, so that it costs a streamed response nothing past its start."""

    def __init__(self, app: ASGIApp, header: str) -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        value = next((v for k, v in scope["headers"] if k == self.header), None)
        if value is None:
            await self.app(scope, receive, send)
            return
        token = current_test_id.set(value.decode("latin-1"))
        try:
            await self.app(scope, receive, send)
        finally:
            current_test_id.reset(token)


def with_test_scoping(app: ASGIApp, settings: RecordingSettings) -> ASGIApp:
    """`app`, reading the test header into each request's context when calls are recorded or replayed."""
    if settings.mode == "live":
        return app
    return TestScopeMiddleware(app, header=settings.test_header)
