"""The MCP client: connecting, listing and calling, with the official `mcp` package.

One `MCPServerConnection` serves one `{"type": "mcp"}` tool of one response:
it connects on first use, over streamable HTTP or SSE (chosen from the URL,
falling back to the other), through a session that the `MCPSessionPool`
keeps open across responses. Every connection goes through the outbound
guard (`parley.tools.outbound`), redirects included. A call's failure never
raises out of here: it is a `CallResult` with an `error`, so that the model
can read what went wrong. What the items look like is `parley.tools.mcp`'s
business.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AsyncExitStack
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from parley.config import MCPSettings, ToolsSettings
from parley.limits import MAX_DEPTH, nested_deeper_than
from parley.tools.base import arguments_object
from parley.tools.definitions import MCPTool
from parley.tools.outbound import Guard, HostRefused, HostRules

log = logging.getLogger(__name__)

# The `mcp` client logs every HTTP request it makes at INFO.
logging.getLogger("httpx2").setLevel(logging.WARNING)

# The server a session's task and the `mcp` client's tasks under it talk to, for their log lines.
_SERVER: ContextVar[str] = ContextVar("mcp_server", default="")


class _OneLine(logging.Filter):
    """The `mcp` client logs a connection that ends (an MCP server that goes away, or cannot be reached) at
    ERROR with its whole traceback, once for each session. It is an event to expect, not a bug: one warning
    line, naming the server and the cause, instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not _is_connection_error(error):
            return True
        what = record.getMessage()
        record.msg, record.args = (
            "MCP server %s: the connection ended: %s (%s)",
            (
                _SERVER.get() or "(unknown)",
                _describe(error),
                what,
            ),
        )
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = record.stack_info = None
        return True


for _name in ("mcp.client.sse", "mcp.client.streamable_http"):
    logging.getLogger(_name).addFilter(_OneLine())


@dataclass(slots=True, frozen=True)
class ListedTool:
    name: str
    description: str | None
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None

    @property
    def read_only(self) -> bool:
        return bool((self.annotations or {}).get("readOnlyHint"))

    def as_item_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "annotations": self.annotations,
        }

    @classmethod
    def from_item_entry(cls, entry: dict[str, Any]) -> ListedTool:
        return cls(entry["name"], entry.get("description"), entry.get("input_schema") or {}, entry.get("annotations"))


@dataclass(slots=True)
class CallResult:
    output: str | None
    error: dict[str, Any] | None


class MCPServerError(Exception):
    """The server could not be reached or did not speak MCP; `status` is the HTTP status it refused with, if
    it answered one (401 for a missing or wrong token)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MCPSession:
    """One open session with an MCP server (a URL and the headers it is reached with).

    The `mcp` client's session lives in anyio task groups, which must be left by
    the task that entered them: a task of the session's own holds it open, for
    whichever tasks make calls through it, until `close`.
    """

    def __init__(self, url: str, headers: dict[str, str], settings: MCPSettings, guard: Guard, label: str) -> None:
        self.url = url
        self.headers = headers
        self.settings = settings
        self.guard = guard
        self.label = label
        self.key = (url, tuple(sorted(headers.items())))
        self.broken = False
        self.last_used = time.monotonic()
        self.holders = 0  # the responses using it now (see MCPSessionPool)
        self._owner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Any] | None = None
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()
        # The first HTTP status >= 400 the server answered since this was last cleared (see `_http`).
        self.refused_with: int | None = None

    async def client(self) -> Any:
        """The connected `mcp` client, connecting on first use; raises MCPServerError."""
        self.last_used = time.monotonic()
        async with self._lock:
            if self._owner is None:
                ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                self._owner = asyncio.create_task(self._hold(ready), name=f"mcp {self.label}")
                self._ready = ready
        assert self._ready is not None
        try:
            return await asyncio.shield(self._ready)
        except MCPServerError:
            self.broken = True
            raise

    async def _hold(self, ready: asyncio.Future[Any]) -> None:
        _SERVER.set(f"'{self.label}' ({urlsplit(self.url).netloc})")
        path = urlsplit(self.url).path.rstrip("/")
        order = ["sse", "streamable"] if path.endswith("/sse") else ["streamable", "sse"]
        failures = []
        status = None  # of the first transport the server refused with one: the one its URL suggests
        for transport in order:
            self.refused_with = None
            try:
                async with AsyncExitStack() as stack:
                    async with asyncio.timeout(self.settings.timeout):
                        client = await stack.enter_async_context(self._client_for(transport, stack))
                    ready.set_result(client)
                    await self._closing.wait()
                    return
            except BaseException as exc:  # the `mcp` client raises groups and its own errors alike
                if ready.done():
                    self.broken = True
                    log.debug("MCP session with '%s' ended: %s", self.label, _describe(exc))
                    return
                if isinstance(exc, asyncio.CancelledError):
                    ready.set_exception(MCPServerError(f"connecting to MCP server '{self.label}' was cancelled"))
                    raise
                refused = _refusal(exc)
                if refused is not None:  # the other transport would be refused the same way
                    ready.set_exception(MCPServerError(f"MCP server '{self.label}' may not be reached: {refused}"))
                    return
                failures.append(f"{transport}: {_describe(exc)}")
                if not isinstance(exc, TimeoutError):  # what it refused after the time ran out is no cause
                    status = status or self.refused_with
        ready.set_exception(
            MCPServerError(f"cannot connect to MCP server '{self.label}' ({'; '.join(failures)})", status)
        )

    def _client_for(self, transport: str, stack: AsyncExitStack) -> Any:
        from mcp import Client
        from mcp.client.sse import sse_client
        from mcp.client.streamable_http import streamable_http_client

        timeout = self.settings.timeout
        if transport == "sse":
            stream = sse_client(
                self.url,
                headers=self.headers,
                timeout=timeout,
                sse_read_timeout=timeout,
                httpx_client_factory=self._http,
            )
        else:
            import httpx2

            http = self._http(self.headers, httpx2.Timeout(timeout))
            stack.push_async_callback(http.aclose)  # a client handed to the transport is the caller's to close
            stream = streamable_http_client(self.url, http_client=http)
        return Client(stream, read_timeout_seconds=timeout)

    def _http(self, headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None) -> Any:
        """The session's HTTP client, as the `mcp` package's `create_mcp_http_client` makes it, through the
        guard, following at most MAX_REDIRECTS redirects."""
        import httpx2
        from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

        if timeout is None:
            timeout = httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT)
        client = self.guard.httpx2_client(headers=headers, timeout=timeout, auth=auth)
        client.max_redirects = MAX_REDIRECTS

        async def note_refusal(response: Any) -> None:
            # The `mcp` client makes a refused request a JSON-RPC error that no longer says its status. A GET
            # answered 405 is a server that offers no stream of its own on streamable HTTP, which is allowed.
            if response.status_code >= 400 and not (response.status_code == 405 and response.request.method == "GET"):
                self.refused_with = self.refused_with or response.status_code

        client.event_hooks["response"].append(note_refusal)
        return client

    async def close(self) -> None:
        if self._owner is None:
            return
        self._closing.set()
        try:
            async with asyncio.timeout(5):
                await asyncio.gather(self._owner, return_exceptions=True)
        except TimeoutError:
            self._owner.cancel()
            await asyncio.gather(self._owner, return_exceptions=True)
        if self._ready is not None and self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # retrieved, so asyncio does not warn about it


class MCPSessionPool:
    """Sessions kept open across responses, one per server URL and headers, at most `max_sessions` of them.

    A response reaches a server through the pooled session for its URL and its
    exact headers (credentials included), so sessions are shared only by
    requests that present themselves the same way. A response holds its
    session from its first use to its end (`acquire`, `release`); a session no
    response holds is closed once it stays unused for `session_idle_seconds`,
    on a timer of the pool's own, and when room is needed for another (the
    least lately used first). When every pooled session is held, a new one is
    its response's alone, closed as the response ends. A session that broke
    is closed as soon as no response holds it, and replaced.
    """

    def __init__(self, settings: MCPSettings, guard: Guard) -> None:
        self.settings = settings
        self.guard = guard
        self._sessions: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], MCPSession] = OrderedDict()
        self._retiring: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.Task[None] | None = None
        self._released = asyncio.Event()

    @classmethod
    def of(cls, settings: ToolsSettings) -> MCPSessionPool:
        """The pool of a server: `tools.mcp`'s limits, and its host rules over `outbound`'s."""
        return cls(settings.mcp, Guard(HostRules.of(settings.mcp.over(settings.outbound))))

    def acquire(self, url: str, headers: dict[str, str], label: str) -> MCPSession:
        """The session a response reaches `url` with `headers` through, held by it until `release`."""
        key = (url, tuple(sorted(headers.items())))
        session = self._sessions.get(key)
        if session is not None and session.broken:
            del self._sessions[key]
            if session.holders == 0:
                self._retire(session)
            session = None
        if session is None:
            session = MCPSession(url, headers, self.settings, self.guard, label)
            if self._make_room():
                self._sessions[key] = session
        else:
            self._sessions.move_to_end(key)
        session.holders += 1
        if self._expiry is None or self._expiry.done():
            self._expiry = asyncio.create_task(self._expire(), name="mcp session expiry")
        return session

    def release(self, session: MCPSession) -> None:
        """A response is done with `session`: it stays open for the next, unless it is not (or no longer) kept."""
        session.holders -= 1
        session.last_used = time.monotonic()
        if self._sessions.get(session.key) is session:
            if session.broken and session.holders == 0:
                del self._sessions[session.key]
                self._retire(session)
            else:
                self._sessions.move_to_end(session.key)
        elif session.holders == 0:
            self._retire(session)
        self._released.set()

    def _make_room(self) -> bool:
        """Closes the least lately used idle sessions until one more fits; False when every kept one is held."""
        while len(self._sessions) >= self.settings.max_sessions:
            idle = next((key for key, session in self._sessions.items() if session.holders == 0), None)
            if idle is None:
                return False
            self._retire(self._sessions.pop(idle))
        return True

    async def _expire(self) -> None:
        """Closes each session that no response has used for `session_idle_seconds`, as it reaches that age;
        ends when no session is kept, to be started again by the next."""
        idle_seconds = self.settings.session_idle_seconds
        while self._sessions:
            self._released.clear()
            now = time.monotonic()
            due = None
            for key, session in list(self._sessions.items()):
                if session.holders > 0:
                    continue
                if now - session.last_used >= idle_seconds:
                    del self._sessions[key]
                    self._retire(session)
                else:
                    due = min(due or now + idle_seconds, session.last_used + idle_seconds)
            if not self._sessions:
                return
            try:
                # Until the next session is due, or a session is released (which may make one due sooner).
                async with asyncio.timeout(None if due is None else max(0.0, due - now)):
                    await self._released.wait()
            except TimeoutError:
                pass

    def _retire(self, session: MCPSession) -> None:
        task = asyncio.ensure_future(session.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        sessions, self._sessions = list(self._sessions.values()), OrderedDict()
        await asyncio.gather(*(session.close() for session in sessions), *self._retiring, return_exceptions=True)


class MCPServerConnection:
    """One `{"type": "mcp"}` tool of one response, over a session of the pool that may outlive it."""

    def __init__(self, definition: MCPTool, settings: MCPSettings, pool: MCPSessionPool) -> None:
        self.definition = definition
        self.settings = settings
        self._pool = pool
        self._session: MCPSession | None = None

    @property
    def label(self) -> str:
        return self.definition.server_label

    def _headers(self) -> dict[str, str]:
        headers = dict(self.definition.headers or {})
        if self.definition.authorization:
            headers["Authorization"] = f"Bearer {self.definition.authorization}"
        return headers

    async def _connected(self) -> Any:
        if self._session is None:
            url = self.definition.server_url or ""
            try:
                # The URL alone, for a refusal worded before any request; the connection checks its addresses.
                self._pool.guard.check_url(url)
            except HostRefused as exc:
                raise MCPServerError(f"MCP server '{self.label}' may not be reached: {exc}") from None
            self._session = self._pool.acquire(url, self._headers(), self.label)
        return await self._session.client()

    async def list_tools(self) -> list[ListedTool]:
        """Every tool the server has (all pages); raises MCPServerError."""
        client = await self._connected()
        assert self._session is not None
        self._session.refused_with = None
        tools: list[ListedTool] = []
        cursor = None
        try:
            async with asyncio.timeout(self.settings.timeout):
                while True:
                    page = await client.list_tools(cursor=cursor)
                    for tool in page.tools:
                        if nested_deeper_than(tool.input_schema):
                            # Stored in the listing, it could not be read back (see parley.limits).
                            log.warning(
                                "MCP server '%s': tool '%s' is left out, its input schema nested deeper than %d levels",
                                self.label,
                                tool.name,
                                MAX_DEPTH,
                            )
                            continue
                        # By alias: the listing shows MCP's own keys (`readOnlyHint`), which `read_only` reads.
                        annotations = (
                            tool.annotations.model_dump(exclude_none=True, by_alias=True) if tool.annotations else None
                        )
                        tools.append(ListedTool(tool.name, tool.description, tool.input_schema, annotations))
                    cursor = getattr(page, "next_cursor", None)
                    if not cursor:
                        return tools
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and not isinstance(exc, TimeoutError):
                raise
            status = None if isinstance(exc, TimeoutError) else self._session.refused_with
            self._broke()
            raise MCPServerError(
                f"MCP server '{self.label}' could not list its tools: {_describe(exc)}", status
            ) from exc

    async def call(self, name: str, arguments: str) -> CallResult:
        try:
            parsed = arguments_object(arguments)
        except ValueError as exc:
            return CallResult(None, protocol_error(-32602, str(exc)))
        try:
            client = await self._connected()
            async with asyncio.timeout(self.settings.timeout):
                result = await client.call_tool(name, parsed)
        except TimeoutError:
            return CallResult(
                None, protocol_error(-32001, f"The tool '{name}' did not answer within {self.settings.timeout:g} s.")
            )
        except MCPServerError as exc:
            return CallResult(None, protocol_error(-32000, str(exc)))
        except Exception as exc:
            self._broke()  # the session may be gone: the next response opens a new one
            return CallResult(None, protocol_error(-32000, f"The call to '{name}' failed: {_describe(exc)}"))
        text = self._cap(_result_text(result))
        if result.is_error:
            content = [block.model_dump(exclude_none=True, by_alias=True) for block in result.content]
            return CallResult(
                None, {"type": "mcp_tool_execution_error", "content": content or [{"type": "text", "text": text}]}
            )
        return CallResult(text, None)

    def _cap(self, text: str) -> str:
        limit = self.settings.max_output_chars
        if len(text) <= limit:
            return text
        return text[:limit] + f"\n[output truncated: {limit} of {len(text)} characters]"

    async def close(self) -> None:
        """Lets go of the session: the pool keeps it open for the next response, or closes it."""
        if self._session is not None:
            session, self._session = self._session, None
            self._pool.release(session)

    def _broke(self) -> None:
        if self._session is not None:
            self._session.broken = True


def error_text(error: dict[str, Any]) -> str:
    """What the model reads of a failed call."""
    if error.get("type") == "mcp_tool_execution_error":
        texts = [block.get("text", "") for block in error.get("content") or () if isinstance(block, dict)]
        return "Error: " + ("".join(texts) or "the tool failed")
    return f"Error: {error.get('message', 'the call failed')}"


# The most redirects one request to an MCP server follows. The `mcp` client follows a
# redirect only within the server's origin (same scheme, host and port, or http to https
# on the same host), and the guard checks every connection anyway; this bounds how many
# it follows there (httpx's default is 20).
MAX_REDIRECTS = 3


def protocol_error(code: int, message: str) -> dict[str, Any]:
    return {"type": "mcp_protocol_error", "code": code, "message": message}


def _result_text(result: Any) -> str:
    texts = []
    for block in result.content:
        if getattr(block, "type", None) == "text":
            texts.append(block.text)
        else:
            texts.append(json.dumps(block.model_dump(exclude_none=True, by_alias=True, mode="json")))
    if not texts and result.structured_content is not None:
        return json.dumps(result.structured_content)
    return "".join(texts)


def _describe(exc: BaseException) -> str:
    """The innermost message of an exception (the `mcp` client raises exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or exc.__class__.__name__
    return text if len(text) < 300 else text[:300] + "..."


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception inside it: the `mcp` client's exception groups, causes and contexts, once each."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is a connection that failed or ended, rather than a bug."""
    import anyio
    import httpx2

    kinds = (httpx2.TransportError, OSError, anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)
    return any(isinstance(current, kinds) for current in _chain(exc))


def _refusal(exc: BaseException) -> HostRefused | None:
    """The guard's refusal inside what the `mcp` client raised (its exception groups, its causes), if any."""
    return next((current for current in _chain(exc) if isinstance(current, HostRefused)), None)
