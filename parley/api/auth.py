"""Who is asking: each request's API key, and the owner it acts for.

One ASGI middleware (`Authenticate`) wraps the whole application, the two
routes that `FastPaths` dispatches ahead of FastAPI included, so that one
place decides for every route. It puts the request's `Caller` in the scope's
state, where the routes read it (`caller_of`) and hand it down to the engine.

- With keys (in the database, from `parley keys create`, or in `auth.keys`),
  every request needs `Authorization: Bearer <key>`: without one it is a 401
  with OpenAI's message and `code: null`, as OpenAI answers; with a key that
  is unknown or revoked, a 401 `invalid_api_key` that shows only the key's
  first three and last four characters.
- A key that was ever made keeps authentication on, revoked or not: revoking
  the last key must not open a server that is reachable from elsewhere.
- With no keys at all, no request needs one, and each acts as `ANYONE` (an
  admin with no owner); `parley serve` then binds only to a loopback address
  (see `is_loopback_host`). `auth.disabled: true` turns keys off wherever the
  server is bound.
- `/v1/health` and the OpenAPI description and its pages stay open: a load
  balancer checks health without a key, and the description holds no data.
- A WebSocket (WebSocket mode of `/v1/responses`) is authenticated at its
  handshake, by the same header: refused, the handshake gets the same 401
  as its answer, and the socket is never opened.

The database's keys are re-read every second, so a revoked key stops working
within a second on every server; a key made since the last reading is looked
up when it is first used, so it works at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from parley.api.errors import body_for
from parley.api.http import JSONResponse, refuse
from parley.config import AuthSettings
from parley.errors import AuthenticationError
from parley.store import ANYONE, ApiKey, Caller, KeyStore
from parley.store.keys import hash_secret, redact

log = logging.getLogger(__name__)

# Paths that need no key.
OPEN_PATHS = frozenset({"/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})

# The scopes that carry a client's request: HTTP requests and WebSockets.
_CONNECTIONS = frozenset({"http", "websocket"})

# How often the database's keys are re-read: the longest a revoked key keeps working.
REFRESH_SECONDS = 1.0

_ASK = "Ask the operator of this server for a key (`parley keys create`)."
MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
    f"auth (i.e. Authorization: Bearer YOUR_KEY). {_ASK}"
)


def incorrect_key_message(secret: str) -> str:
    return f"Incorrect API key provided: {redact(secret)}. {_ASK}"


class KeyRing:
    """The keys this server takes: the configuration's, and the database's as last read.

    Only the SHA-256 of each secret is held, as in the database (see parley.store.keys);
    a request's key is hashed and looked up. The lookup's timing tells an attacker
    nothing of a key: what is compared is the hash, which they cannot steer.
    """

    def __init__(self, settings: AuthSettings, store: KeyStore, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.disabled = settings.disabled
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._configured = {
            hash_secret(entry.key.get_secret_value()): Caller(entry.owner, entry.admin) for entry in settings.keys
        }
        self._stored: dict[str, ApiKey] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def required(self) -> bool:
        """Whether requests need a key: whether any key exists (revoked ones count), and keys are not disabled."""
        return not self.disabled and bool(self._configured or self._stored)

    def describe(self) -> str:
        revoked = sum(key.revoked for key in self._stored.values())
        return f"{len(self._configured)} in the configuration, {len(self._stored) - revoked} in the database" + (
            f" ({revoked} revoked)" if revoked else ""
        )

    async def start(self) -> None:
        """Reads the database's keys, then re-reads them every `refresh_seconds`."""
        if self.disabled:
            return
        self._stored = await self.store.by_hash()
        self._task = asyncio.create_task(self._refresh(), name="api keys")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_seconds)
            was_required = self.required
            try:
                self._stored = await self.store.by_hash()
            except Exception as exc:
                if not failing:  # once per outage, not once a second
                    log.warning("cannot read the API keys (%s); using those read before", exc.__class__.__name__)
                failing = True
                continue
            failing = False
            if self.required and not was_required:
                log.warning("API keys were made (%s): every request now needs one", self.describe())

    async def caller(self, secret: str) -> Caller | None:
        """Whom the key acts for; None for a key that is unknown or revoked."""
        digest = hash_secret(secret)
        configured = self._configured.get(digest)
        if configured is not None:
            return configured
        key = self._stored.get(digest)
        if key is None:
            # Made since the last reading, perhaps (`parley keys create` on a running server).
            key = await self.store.find(digest)
            if key is not None:
                self._stored[digest] = key
        if key is None or key.revoked:
            return None
        return Caller(key.owner, key.admin)


class Authenticate:
    """Pure ASGI, so that it costs a streamed response one dictionary lookup past its start."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A WebSocket (`/v1/responses`) is authenticated at its handshake, by the same headers.
        if scope["type"] not in _CONNECTIONS or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        caller = ANYONE
        if self.keys.required:
            secret = _bearer(scope)
            if secret is None:
                await _refuse(AuthenticationError(MISSING_KEY), scope, receive, send)
                return
            found = await self.keys.caller(secret)
            if found is None:
                error = AuthenticationError(incorrect_key_message(secret), code="invalid_api_key")
                await _refuse(error, scope, receive, send)
                return
            caller = found
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, secret = value.decode("latin-1").strip().partition(" ")
            secret = secret.strip()
            return secret if scheme.lower() == "bearer" and secret else None
    return None


async def _refuse(error: AuthenticationError, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(body_for(error), status_code=401, headers={"www-authenticate": "Bearer"})
    await refuse(response, scope, receive, send)


def caller_of(request: HTTPConnection) -> Caller:
    """The caller `Authenticate` found for this request (or WebSocket)."""
    caller = request.scope.get("state", {}).get("caller")
    if not isinstance(caller, Caller):
        # A route reached without the middleware: refuse rather than serve as anyone.
        raise AuthenticationError(MISSING_KEY)
    return caller


def is_loopback_host(host: str) -> bool:
    """Whether every address `host` names is this machine's own (127.0.0.0/8, ::1): reachable from here only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)
