"""A lean HTTP/1.1 client for streamed completions: asyncio transports and llhttp.

Every token Parley streams crosses this module. httpcore, under httpx, parses
HTTP in Python, one chunk of the chunked encoding at a time, each behind a
stack of async generators and cancel scopes; a model streams one chunk per
token, so that cost is paid per token. Here the socket's bytes go to llhttp,
the C parser uvicorn uses (through `httptools`), from the protocol's
`data_received`, and the reader takes everything that arrived since it last
asked, in one piece.

It does one thing: POST a body to one origin and stream the answer back, over
kept-alive connections. Model listings and embeddings still use httpx.

Exceptions (translated into Parley's own by the provider that uses them):

    HTTPError
    ├── ConnectError        the origin could not be reached
    ├── ProtocolError       a reply that is not HTTP, or one cut off before its end
    └── Timeout
        ├── ConnectTimeout
        ├── WriteTimeout
        ├── ReadTimeout     no byte of the reply for `read` seconds
        └── PoolTimeout     every connection stayed busy for `pool` seconds
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import httptools
import httpx

# A reader that falls this far behind stops the socket being read until it catches up.
_HIGH_WATER = 1 << 20


class HTTPError(Exception):
    """The exchange with the origin failed."""


class ConnectError(HTTPError):
    pass


class ProtocolError(HTTPError):
    pass


class Timeout(HTTPError):
    pass


class ConnectTimeout(Timeout):
    pass


class WriteTimeout(Timeout):
    pass


class ReadTimeout(Timeout):
    pass


class PoolTimeout(Timeout):
    pass


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    read: float
    write: float
    pool: float


class ConnectionPool:
    """Kept-alive connections to one origin (`scheme://host:port`), at most `max_connections` at once."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        timeouts: Timeouts,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = (ssl_context or httpx.create_ssl_context()) if parts.scheme == "https" else None
        self.timeouts = timeouts
        default_port = 443 if self.ssl is not None else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = (host if self.port == default_port else f"{host}:{self.port}").encode()
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    def stream(self, target: bytes, head: bytes, body: bytes) -> _Exchange:
        """`async with pool.stream(b"/v1/chat/completions", head, body) as response: ...`

        `head` is the request's header lines (`Name: value\\r\\n` each), without
        the request line, `Host` or `Content-Length`.
        """
        return _Exchange(self, target, head, body)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def _acquire(self) -> tuple[_Connection, bool]:
        """A connection to send on, and whether it was kept alive from an earlier exchange."""
        if self._slots.locked():
            try:
                async with asyncio.timeout(self.timeouts.pool):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolTimeout(f"no connection to {self.host}:{self.port} came free in time") from None
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            while self._idle:
                connection = self._idle.pop()
                if connection.reusable():
                    return connection, True
                connection.close()
            return await self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, connection = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.reusable():
            self._idle.append(connection)
        else:
            connection.close()
        self._slots.release()


class _Exchange:
    """One request and its streamed response, as an async context manager."""

    def __init__(self, pool: ConnectionPool, target: bytes, head: bytes, body: bytes) -> None:
        self._pool = pool
        self._request = b"POST %b HTTP/1.1\r\nHost: %b\r\n%bContent-Length: %d\r\n\r\n%b" % (
            target,
            pool.authority,
            head,
            len(body),
            body,
        )
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        pool = self._pool
        connection, reused = await pool._acquire()
        try:
            try:
                await connection.exchange(self._request, pool.timeouts)
            except ProtocolError:
                if not (reused and connection.received == 0):
                    raise
                # The origin closed the kept-alive connection as it was reused: nothing of this
                # request was answered, so it is sent again, once, on a new connection.
                connection.close()
                connection = await pool._connect()
                await connection.exchange(self._request, pool.timeouts)
        except BaseException:
            pool._release(connection)
            raise
        self._response = Response(connection, pool)
        return self._response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            self._response.close()


class Response:
    """A response whose head has arrived; its body is read with `aiter_bytes` or `aread`."""

    def __init__(self, connection: _Connection, pool: ConnectionPool) -> None:
        self._connection = connection
        self._pool: ConnectionPool | None = pool
        self.status: int = connection.status
        self.headers: list[tuple[bytes, bytes]] = connection.headers

    def header(self, name: bytes) -> bytes:
        """The value of header `name` (lower case), lower-cased; empty when absent."""
        return next((value.lower() for key, value in self.headers if key == name), b"")

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, as it arrives: each piece is everything received since the last one."""
        connection, read_timeout = self._connection, self._timeout
        while True:
            piece = connection.take_body()
            if piece:
                yield piece
            elif connection.complete:
                return
            else:
                await connection.wait_for_body(read_timeout)

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self.aiter_bytes()])

    @property
    def _timeout(self) -> float:
        assert self._pool is not None, "the response is closed"
        return self._pool.timeouts.read

    def close(self) -> None:
        """Gives the connection back to the pool: kept alive when the body was read to its end."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool._release(self._connection)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, and the state of the exchange it carries."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._error: HTTPError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.received = 0  # bytes of this exchange's reply
        self._sent = False
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused_reading = False
        self._until_close = False
        self._keep_alive = False

    # -- used by the pool and the response --------------------------------------------

    def reusable(self) -> bool:
        """Open, and either unused or done with a reply that lets it be kept alive."""
        if self._closed or self._error is not None:
            return False
        return not self._sent or (self.complete and self._keep_alive)

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    async def exchange(self, request: bytes, timeouts: Timeouts) -> None:
        """Sends the request and waits for the head of its reply."""
        if self._sent:
            self._parser = httptools.HttpResponseParser(self)
            self._reset()
        if self._closed or self._transport is None:
            raise ProtocolError("the connection was closed")
        self._sent = True
        self._transport.write(request)
        if self._paused_writing:
            await self._wait(timeouts.write, WriteTimeout("sending the request timed out"))
        while not self.head_done:
            self._raise_if_failed()
            await self._wait(timeouts.read, ReadTimeout("no reply in time"))

    async def wait_for_body(self, timeout: float) -> None:
        self._raise_if_failed()
        await self._wait(timeout, ReadTimeout("the reply stalled"))

    def take_body(self) -> bytes:
        if not self._body:
            return b""
        piece = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused_reading and self._transport is not None:
            self._paused_reading = False
            self._transport.resume_reading()
        return piece

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed and not self.complete:
            raise ProtocolError("the server closed the connection before the end of its reply")

    async def _wait(self, timeout: float, on_timeout: HTTPError) -> None:
        """Until the protocol has news (bytes, the end, a drained buffer), or `on_timeout` after `timeout`."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter, on_timeout)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if not self._sent:
            self._error = ProtocolError("the server sent bytes that answer no request")
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._error = ProtocolError(f"the server's reply is not valid HTTP: {exc}")
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        self._end_at_close()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._end_at_close()
        self._wake()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake()

    def _end_at_close(self) -> None:
        # A reply with neither Content-Length nor chunked encoding ends when the connection does.
        if self.head_done and self._until_close and not self.complete:
            self.complete = True

    # -- llhttp's callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200:
            self.headers = []  # an interim reply (100 Continue): the real one follows
            return
        names = {name for name, _ in self.headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names
        # Asked now: llhttp answers from the message's flags, which are gone once it completes.
        self._keep_alive = self._parser.should_keep_alive() and not self._until_close
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused_reading and self._transport is not None:
            self._paused_reading = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.complete = True


def _expire(waiter: asyncio.Future[None], error: HTTPError) -> None:
    if not waiter.done():
        waiter.set_exception(error)
