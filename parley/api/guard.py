"""What a request must be before any route sees it: addressed to this server, from a page allowed to call it,
JSON when it has a body, within the size limit, and with no NUL character in its path or query.

One pure ASGI middleware, `RequestGuard`, wraps the whole application (the
two routes that `FastPaths` dispatches ahead of FastAPI included), so that one
place decides for every route. In order:

- **Host.** The `Host` header must name this server: a name in
  `server.allowed_hosts`, or by default one of the address it is bound to
  (127.0.0.1, localhost and ::1 for a loopback address; any name for 0.0.0.0
  or ::). A web page whose own name an attacker has re-pointed at 127.0.0.1
  (DNS rebinding) still sends that name, and gets a 400 `invalid_host`.
- **CORS.** Off unless `server.cors_origins` lists the page's origin (or
  `*`): then its preflight is answered, and every answer to it carries
  `Access-Control-Allow-Origin`. Otherwise no answer says a page may read it,
  and no page may send what needs a preflight (a JSON body, an API key).
- **NUL.** A path with a NUL character in it names nothing (404); a query
  value with one is a 400 naming the parameter. PostgreSQL's text cannot hold
  the character: none reaches the store.
- **Content-Type.** A request body must be `application/json`, else a 415
  with OpenAI's message and code (`unsupported_content_type`). A page may
  send a `text/plain`, form or multipart body anywhere without asking the
  server first; a JSON one needs the preflight that CORS refuses.
- **Size.** A body larger than `server.max_body_bytes` is a 413: at once when
  its Content-Length says so, else as soon as the bytes read pass the limit,
  so that no large body is held whole.
- **Uploads, the one exception.** A route listed in `uploads` (only
  `POST /v1/files`) takes a `multipart/form-data` body instead, up to a limit
  of its own (`files.max_bytes` and the form's other fields). A web page may
  send such a body without asking first, so one that comes from a page (an
  `Origin` that CORS does not allow) is refused with a 403: SDKs and curl
  send no `Origin`.

For a streamed request all of this is one pass over its headers.

A WebSocket's handshake (WebSocket mode of `/v1/responses`) gets the Host and
NUL checks, and one of its own: browsers let any page open a WebSocket to any
address, with the page's `Origin` and no preflight, so a handshake whose
`Origin` CORS does not allow is refused (403 `origin_not_allowed`), or a page
could use a loopback server that needs no key. SDKs send no `Origin`. Its
messages' size and shape are checked where they are read (parley.api.websocket).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.api.auth import is_loopback_host
from parley.api.errors import body_for
from parley.api.http import JSONResponse, refuse
from parley.config import ServerSettings
from parley.errors import InvalidRequestError, NotFoundError, ParleyError

# What a browser's address bar, and the SDKs, call a loopback address.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
# Addresses that mean every interface: the names a client uses for them are not known here.
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_PREFLIGHT_METHODS = b"GET, POST, DELETE"
_PREFLIGHT_MAX_AGE = b"600"


class InvalidHostError(InvalidRequestError):
    code = "invalid_host"


class UnsupportedContentTypeError(InvalidRequestError):
    status_code = 415
    code = "unsupported_content_type"


class RequestTooLargeError(InvalidRequestError):
    status_code = 413
    code = "request_too_large"


class HostNames:
    """The names a request's `Host` may give; `any` for a server bound to every interface with none configured.

    An entry `*.example.com` takes every name under example.com; `*` takes any name.
    """

    def __init__(self, names: Iterable[str] | None) -> None:
        self.any = names is None or "*" in names
        entries = set(names or ())
        self.exact = frozenset(name for name in entries if not name.startswith("*."))
        self.suffixes = tuple(name[1:] for name in entries if name.startswith("*."))

    @classmethod
    def of(cls, settings: ServerSettings) -> HostNames:
        if settings.allowed_hosts is not None:
            return cls(settings.allowed_hosts)
        bound = settings.host.strip().strip("[]").lower()
        if bound in _WILDCARDS:
            return cls(None)
        return cls({bound, *LOOPBACK_NAMES} if is_loopback_host(bound) else {bound})

    def allow(self, name: str) -> bool:
        return self.any or name in self.exact or name.endswith(self.suffixes)

    def describe(self) -> str:
        return ", ".join(sorted(self.exact) + sorted("*" + suffix for suffix in self.suffixes))


def host_name(value: bytes) -> str:
    """A `Host` header's name: lower case, without its port, an IPv6 address without its brackets."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    name, colon, port = text.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        text = name
    return text.removesuffix(".")


class RequestGuard:
    """Pure ASGI: a request passes with one look at its headers, and a body is only counted when it is chunked."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, uploads: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.hosts = HostNames.of(settings)
        self.origins = frozenset(settings.cors_origins)
        self.max_body_bytes = settings.max_body_bytes
        # The paths that take a multipart upload (POST only), each with its body limit.
        self.uploads = dict(uploads or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._guard_websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = content_type = length = origin = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"origin":
                origin = value
        # A request without a Host is HTTP/1.0: no browser sends one, so no rebinding page either.
        if host is not None and not self.hosts.any:
            name = host_name(host)
            if not self.hosts.allow(name):
                await _refuse(_invalid_host(name, self.hosts), scope, receive, send)
                return
        allowed_origin = origin is not None and ("*" in self.origins or origin.decode("latin-1") in self.origins)
        if origin is not None and allowed_origin:
            if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
                await _answer_preflight(scope, origin, send)
                return
            send = _allowing(origin, send)
        if "\x00" in scope["path"] or scope["query_string"]:
            error = _nul_in_target(scope)
            if error is not None:
                await _refuse(error, scope, receive, send)
                return
        if scope["method"] in _BODY_METHODS and (chunked or (length is not None and length != b"0")):
            limit = self.max_body_bytes
            upload_limit = self.uploads.get(scope["path"]) if scope["method"] == "POST" else None
            if upload_limit is not None and _is_multipart(content_type):
                if origin is not None and not allowed_origin:
                    await _refuse(_from_page("Uploads", origin), scope, receive, send)
                    return
                limit = upload_limit
            elif not _is_json(content_type):
                await _refuse(_unsupported(content_type), scope, receive, send)
                return
            if chunked:
                receive = _bounded(receive, limit)
            elif int(length or 0) > limit:  # uvicorn has checked that it is a number
                await _refuse(too_large(limit, upload=limit != self.max_body_bytes), scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _guard_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = _header(scope, b"host")
        origin = _header(scope, b"origin")
        error: ParleyError | None = None
        if host is not None and not self.hosts.any and not self.hosts.allow(host_name(host)):
            error = _invalid_host(host_name(host), self.hosts)
        elif origin is not None and "*" not in self.origins and origin.decode("latin-1") not in self.origins:
            error = _from_page("WebSockets", origin)
        elif "\x00" in scope["path"] or scope["query_string"]:
            error = _nul_in_target(scope)
        if error is not None:
            await _refuse(error, scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _refuse(error: ParleyError, scope: Scope, receive: Receive, send: Send) -> None:
    await refuse(JSONResponse(body_for(error), status_code=error.status_code), scope, receive, send)


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    return next((value for name, value in scope["headers"] if name == wanted), None)


def _invalid_host(name: str, hosts: HostNames) -> InvalidHostError:
    return InvalidHostError(
        f"Invalid Host header: '{name}'. This server answers to {hosts.describe()} "
        "(server.allowed_hosts in its configuration)."
    )


def _is_json(content_type: bytes | None) -> bool:
    # `application/json`, with or without parameters (`; charset=utf-8`), in any case.
    return content_type is not None and content_type.partition(b";")[0].strip().lower() == b"application/json"


def _is_multipart(content_type: bytes | None) -> bool:
    return content_type is not None and content_type.partition(b";")[0].strip().lower() == b"multipart/form-data"


def _from_page(what: str, origin: bytes) -> ParleyError:
    """The 403 for `what` (uploads, WebSockets) from a web page whose origin `server.cors_origins` does not list."""
    error = InvalidRequestError(
        f"{what} from web pages of origin '{origin.decode('latin-1')}' are not allowed "
        "(server.cors_origins in this server's configuration).",
        code="origin_not_allowed",
    )
    error.status_code = 403
    return error


def _unsupported(content_type: bytes | None) -> UnsupportedContentTypeError:
    if content_type is None:
        return UnsupportedContentTypeError(
            "Missing Content-Type header. This API method only accepts 'application/json' requests: "
            "send the header 'Content-Type: application/json' with the body."
        )
    text = content_type.decode("latin-1")
    media_type = text.partition(";")[0].strip()
    # OpenAI's own words for this (as it answers with a 400).
    return UnsupportedContentTypeError(
        f"Unsupported content type: '{media_type}'. This API method only accepts 'application/json' requests, "
        f"but you specified the header 'Content-Type: {text}'. Please try again with a supported content type."
    )


def too_large(limit: int, upload: bool = False) -> RequestTooLargeError:
    setting = "files.max_bytes, and the form's other fields" if upload else "server.max_body_bytes"
    return RequestTooLargeError(
        f"The request body is too large: this server accepts bodies of at most {limit} bytes "
        f"({setting} in its configuration)."
    )


def _bounded(receive: Receive, limit: int) -> Receive:
    """`receive`, raising RequestTooLargeError (a 413, through the app's handlers) once the body passes `limit`."""
    read = 0

    async def bounded() -> Message:
        nonlocal read
        message = await receive()
        if message["type"] == "http.request":
            read += len(message.get("body", b""))
            if read > limit:
                raise too_large(limit)
        return message

    return bounded


def _nul_in_target(scope: Scope) -> ParleyError | None:
    """A 404 for a path with a NUL character (it names nothing), a 400 naming a query parameter with one."""
    if "\x00" in scope["path"]:
        path = scope.get("raw_path") or scope["path"].encode("utf-8", "backslashreplace")
        return NotFoundError(f"Invalid URL ({scope.get('method', 'GET')} {path.decode('latin-1')})")
    query: bytes = scope["query_string"]
    if b"%00" not in query and b"\x00" not in query:
        return None
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in key or "\x00" in value:
            param = key.replace("\x00", "\\u0000")
            return InvalidRequestError(
                f"Invalid value for '{param}': strings may not contain the NUL character (\\u0000).",
                param=param,
                code="invalid_value",
            )
    return None


async def _answer_preflight(scope: Scope, origin: bytes, send: Send) -> None:
    """The answer to an allowed origin's preflight: the methods Parley serves, and whatever headers it asked for."""
    asked = _header(scope, b"access-control-request-headers")
    headers = [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", _PREFLIGHT_METHODS),
        (b"access-control-max-age", _PREFLIGHT_MAX_AGE),
        (b"vary", b"origin"),
    ]
    if asked:
        headers.append((b"access-control-allow-headers", asked))
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _allowing(origin: bytes, send: Send) -> Send:
    """`send`, with the headers that let a page of `origin` read the answer."""

    async def allowing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                *message.get("headers", ()),
                (b"access-control-allow-origin", origin),
                (b"vary", b"origin"),
            ]
        await send(message)

    return allowing
