"""MCP servers as tools: connecting, listing and calling, with the official `mcp` client.

One `MCPServerConnection` serves one `{"type": "mcp"}` tool of one response:
it connects on first use, over streamable HTTP or SSE (chosen from the URL,
falling back to the other), keeps its session for the rest of the response,
and closes it at the end. Failures never raise out of here: a listing that
fails is an `mcp_list_tools` item with an `error`, a call that fails an
`mcp_call` with an `error`, so that the model can read what went wrong.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from parley.config import MCPSettings
from parley.tools.definitions import MCPTool

log = logging.getLogger(__name__)

# The `mcp` client logs every HTTP request it makes at INFO.
logging.getLogger("httpx2").setLevel(logging.WARNING)


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
    """The server could not be reached or did not speak MCP."""


class MCPServerConnection:
    def __init__(self, definition: MCPTool, settings: MCPSettings) -> None:
        self.definition = definition
        self.settings = settings
        self._owner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Any] | None = None
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def label(self) -> str:
        return self.definition.server_label

    def _headers(self) -> dict[str, str]:
        headers = dict(self.definition.headers or {})
        if self.definition.authorization:
            headers["Authorization"] = f"Bearer {self.definition.authorization}"
        return headers

    async def _connected(self) -> Any:
        async with self._lock:
            if self._owner is None:
                await self._check_host()
                ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                self._owner = asyncio.create_task(self._hold_session(ready), name=f"mcp {self.label}")
                self._ready = ready
        assert self._ready is not None
        return await asyncio.shield(self._ready)

    async def _hold_session(self, ready: asyncio.Future[Any]) -> None:
        """Opens the session, then keeps it open until `close`.

        The `mcp` client's session lives in anyio task groups, which must be
        left by the task that entered them: this task owns it, whichever
        tasks make calls through it.
        """
        url = self.definition.server_url or ""
        path = urlsplit(url).path.rstrip("/")
        order = ["sse", "streamable"] if path.endswith("/sse") else ["streamable", "sse"]
        failures = []
        for transport in order:
            try:
                async with AsyncExitStack() as stack:
                    async with asyncio.timeout(self.settings.timeout):
                        client = await stack.enter_async_context(self._client_for(transport, url))
                    ready.set_result(client)
                    await self._closing.wait()
                    return
            except BaseException as exc:  # the `mcp` client raises groups and its own errors alike
                if ready.done():
                    log.debug("MCP session with '%s' ended: %s", self.label, _describe(exc))
                    return
                if isinstance(exc, asyncio.CancelledError):
                    ready.set_exception(MCPServerError(f"connecting to MCP server '{self.label}' was cancelled"))
                    raise
                failures.append(f"{transport}: {_describe(exc)}")
        ready.set_exception(MCPServerError(f"cannot connect to MCP server '{self.label}' ({'; '.join(failures)})"))

    def _client_for(self, transport: str, url: str) -> Any:
        from mcp import Client
        from mcp.client.sse import sse_client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        timeout = self.settings.timeout
        if transport == "sse":
            stream = sse_client(url, headers=self._headers(), timeout=timeout, sse_read_timeout=timeout)
        else:
            import httpx2

            http = create_mcp_http_client(headers=self._headers(), timeout=httpx2.Timeout(timeout))
            stream = streamable_http_client(url, http_client=http)
        return Client(stream, read_timeout_seconds=timeout)

    async def _check_host(self) -> None:
        host = urlsplit(self.definition.server_url or "").hostname or ""
        allowed = self.settings.allowed_hosts
        if allowed is not None and host not in allowed:
            raise MCPServerError(f"MCP server host '{host}' is not among the allowed hosts")
        if not self.settings.allow_loopback and await _is_loopback(host):
            raise MCPServerError(f"MCP servers on this machine ('{host}') are not allowed")

    async def list_tools(self) -> list[ListedTool]:
        """Every tool the server has (all pages); raises MCPServerError."""
        client = await self._connected()
        tools: list[ListedTool] = []
        cursor = None
        try:
            async with asyncio.timeout(self.settings.timeout):
                while True:
                    page = await client.list_tools(cursor=cursor)
                    for tool in page.tools:
                        annotations = tool.annotations.model_dump(exclude_none=True) if tool.annotations else None
                        tools.append(ListedTool(tool.name, tool.description, tool.input_schema, annotations))
                    cursor = getattr(page, "next_cursor", None)
                    if not cursor:
                        return tools
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and not isinstance(exc, TimeoutError):
                raise
            raise MCPServerError(f"MCP server '{self.label}' could not list its tools: {_describe(exc)}") from exc

    async def call(self, name: str, arguments: str) -> CallResult:
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return CallResult(None, _protocol_error(-32602, f"The arguments are not valid JSON: {exc}"))
        if not isinstance(parsed, dict):
            return CallResult(None, _protocol_error(-32602, "The arguments must be a JSON object."))
        try:
            client = await self._connected()
            async with asyncio.timeout(self.settings.timeout):
                result = await client.call_tool(name, parsed)
        except TimeoutError:
            return CallResult(
                None, _protocol_error(-32001, f"The tool '{name}' did not answer within {self.settings.timeout:g} s.")
            )
        except MCPServerError as exc:
            return CallResult(None, _protocol_error(-32000, str(exc)))
        except Exception as exc:
            return CallResult(None, _protocol_error(-32000, f"The call to '{name}' failed: {_describe(exc)}"))
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


def error_text(error: dict[str, Any]) -> str:
    """What the model reads of a failed call."""
    if error.get("type") == "mcp_tool_execution_error":
        texts = [block.get("text", "") for block in error.get("content") or () if isinstance(block, dict)]
        return "Error: " + ("".join(texts) or "the tool failed")
    return f"Error: {error.get('message', 'the call failed')}"


def _protocol_error(code: int, message: str) -> dict[str, Any]:
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


async def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return any(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)
