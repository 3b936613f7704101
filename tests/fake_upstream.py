"""A fake OpenAI-compatible chat-completions server, for tests and the benchmark.

It is a raw ASGI app served by uvicorn, so that it costs the machine as little
as possible: the benchmark runs it next to Parley on the same cores, and every
microsecond it spends is one Parley does not get.

The request's `model` picks the behaviour:

    fake-echo             the last user message, one word per chunk
    fake-long             N chunks "tok0 ", "tok1 ", ... (N = max_tokens, else 1000)
    fake-script           tool calls scripted by the last user message (see `_script`)
    fake-split-script     the same, each call's name streamed over several deltas: split
                          where the script's name has a `/`, else every 2 characters
    fake-tool             a call to the chosen tool (two calls when parallel),
                          or "The tool said: ..." after a tool message
    fake-json             {"answer": 42}
    fake-error-400/429/500  that status with an OpenAI error body (the 429 with OpenAI's
                          `retry-after: 2` and `retry-after-ms: 1500`)
    fake-hang             never answers (60 s, or until the client goes away)
    fake-midstream-error  3 chunks, then an error frame, no [DONE]
    fake-malformed        2 chunks, then a frame that is not JSON
    fake-drop             2 chunks, then the connection is cut
    fake-stall            3 chunks, then nothing more (60 s, or until the client goes away)
    fake-slow-error-400   a 400, after 0.3 s

In a test:

    with FakeUpstream() as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="x")
        ...
        assert fake.requests[-1]["model"] == "fake-echo"

From a shell (prints the base URL once it is ready):

    python tests/fake_upstream.py --port 0 --delay-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import re
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CREATED = 1700000000
MODELS = (
    "fake-echo",
    "fake-long",
    "fake-tool",
    "fake-script",
    "fake-split-script",
    "fake-json",
    "fake-error-400",
    "fake-error-429",
    "fake-error-500",
    "fake-hang",
    "fake-midstream-error",
    "fake-malformed",
    "fake-drop",
    "fake-stall",
    "fake-slow-error-400",
)
LONG_DEFAULT_TOKENS = 1000
HANG_SECONDS = 60.0

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"
_WORDS = re.compile(r"\s*\S+")
_ids = itertools.count(1)


class _Dropped(Exception):
    """Raised inside the app to make uvicorn cut the connection (fake-drop)."""


class _QuietDrop(logging.Filter):
    # uvicorn logs the exception that cut the connection; for fake-drop it is the point, not news.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Dropped))


logging.getLogger("uvicorn.error").addFilter(_QuietDrop())


def _error(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


_ERRORS = {
    "fake-error-400": (400, _error("fake bad request", "invalid_request_error", "messages", "fake_code")),
    "fake-error-429": (429, _error("fake rate limit", "rate_limit_exceeded", None, "rate_limit_exceeded")),
    "fake-error-500": (500, _error("fake upstream crash", "server_error")),
}
# What the 429 says of when to try again, as OpenAI says it.
RETRY_AFTER = [(b"retry-after", b"2"), (b"retry-after-ms", b"1500")]
_MODEL_LIST = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in MODELS],
    }
)


class FakeApp:
    """The ASGI app. `delay` is the pause between two streamed chunks, in seconds; `burst`, unpaced, the chunks
    after the first in one write (see `_stream_long`)."""

    def __init__(
        self, delay: float = 0.0, requests: list[dict[str, Any]] | None = None, *, burst: bool = False
    ) -> None:
        self.delay = delay
        self.burst = burst
        self.requests: list[dict[str, Any]] = requests if requests is not None else []
        self.closing = False
        self._closed: asyncio.Event | None = None

    def close(self) -> None:
        """End hanging and paced replies now, so the server stops without waiting on them.

        Call it on the server's event loop.
        """
        self.closing = True
        if self._closed is not None:
            self._closed.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/v1/models" and method == "GET":
            await _respond(send, 200, _MODEL_LIST)
        elif path == "/v1/chat/completions" and method == "POST":
            await self._chat(scope, receive, send)
        elif path in ("/v1/models", "/v1/chat/completions"):
            await _respond(send, 405, _error(f"{method} is not allowed on {path}", "invalid_request_error"))
        else:
            await _respond(send, 404, _error(f"no route {path}", "invalid_request_error", None, "not_found"))

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            await _respond(send, 400, _error(f"invalid JSON body: {exc}", "invalid_request_error"))
            return
        self.requests.append(body)
        model = body.get("model")
        stream = bool(body.get("stream"))

        if model in _ERRORS:
            status, payload = _ERRORS[model]
            await _respond(send, status, payload, RETRY_AFTER if status == 429 else [])
        elif model == "fake-slow-error-400":
            await asyncio.sleep(0.3)
            status, payload = _ERRORS["fake-error-400"]
            await _respond(send, status, payload)
        elif model == "fake-hang" or (model == "fake-stall" and not stream):
            await self._hang(receive, send)
        elif model == "fake-long" and stream and not body.get("logprobs"):
            await self._stream_long(body, receive, send)
        elif model in MODELS:
            reply = _reply(body)
            if stream:
                await self._stream(body, reply, receive, send)
            else:
                await self._complete(body, reply, send)
        else:
            message = f"The model `{model}` does not exist or you do not have access to it."
            await _respond(send, 404, _error(message, "invalid_request_error", "model", "model_not_found"))

    async def _hang(self, receive: Receive, send: Send) -> None:
        if self._closed is None:
            self._closed = asyncio.Event()
            if self.closing:
                self._closed.set()
        disconnect = asyncio.ensure_future(_wait_for_disconnect(receive))
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((disconnect, closed), timeout=HANG_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
            closed.cancel()
        # Ignored by uvicorn if the client has gone.
        await _respond(send, 503, _error("the fake upstream stopped waiting", "server_error"))

    async def _complete(self, body: dict[str, Any], reply: _Reply, send: Send) -> None:
        model = body["model"]
        if model == "fake-midstream-error":
            await _respond(send, 500, _error("fake mid-stream failure", "server_error"))
            return
        if model == "fake-malformed":
            await _respond(send, 200, b"{not json")
            return
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.pieces), "refusal": None}
        if reply.tool_calls:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": _whole(model, name), "arguments": "".join(args)},
                }
                for call_id, name, args in reply.tool_calls
            ]
        logprobs = None
        if body.get("logprobs") and reply.pieces:
            top = _top_logprobs(body)
            logprobs = {"content": [_logprob(piece, top) for piece in reply.pieces], "refusal": None}
        completion = {
            "id": f"chatcmpl-fake-{next(_ids)}",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": reply.finish_reason}],
            "usage": _usage(body, reply.completion_tokens),
        }
        payload = orjson.dumps(completion)
        if model == "fake-drop":
            # Promise the whole body, deliver half of it.
            await send({"type": "http.response.start", "status": 200, "headers": _with_length(payload)})
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
            raise _Dropped("fake-drop")
        await _respond(send, 200, payload)

    async def _stream(self, body: dict[str, Any], reply: _Reply, receive: Receive, send: Send) -> None:
        model = body["model"]
        head = {
            "id": f"chatcmpl-fake-{next(_ids)}",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
        }
        want_logprobs = bool(body.get("logprobs"))
        top = _top_logprobs(body)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

        frames: list[bytes] = []
        if reply.tool_calls:
            frames.append(chunk({"role": "assistant", "content": None}))
            for index, (call_id, name, args) in enumerate(reply.tool_calls):
                if model == "fake-split-script":
                    # The name in pieces, the first with the call's id, then the arguments.
                    first, *rest = _name_pieces(name)
                    opening = {"index": index, "id": call_id, "type": "function", "function": {"name": first}}
                    frames.append(chunk({"tool_calls": [opening]}))
                    frames.extend(chunk({"tool_calls": [{"index": index, "function": {"name": n}}]}) for n in rest)
                else:
                    function = {"name": name, "arguments": ""}
                    opening = {"index": index, "id": call_id, "type": "function", "function": function}
                    frames.append(chunk({"tool_calls": [opening]}))
                frames.extend(chunk({"tool_calls": [{"index": index, "function": {"arguments": a}}]}) for a in args)
        else:
            frames.append(chunk({"role": "assistant", "content": ""}))
            for piece in reply.pieces:
                logprobs = {"content": [_logprob(piece, top)], "refusal": None} if want_logprobs else None
                frames.append(chunk({"content": piece}, None, logprobs))

        if model == "fake-midstream-error":
            frames.append(b'data: {"error":{"message":"fake mid-stream failure","type":"server_error"}}\n\n')
        elif model == "fake-malformed":
            frames.append(b"data: {not json\n\n")
        elif model not in ("fake-drop", "fake-stall"):  # which are cut off or stall after their pieces, below
            frames.append(chunk({}, reply.finish_reason))
            options = body.get("stream_options") or {}
            if options.get("include_usage"):
                usage = {**head, "choices": [], "usage": _usage(body, reply.completion_tokens)}
                frames.append(b"data: " + orjson.dumps(usage) + b"\n\n")
            frames.append(_DONE)

        async with _Watch(receive) as watch:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            for i, data in enumerate(frames):
                if i and self.delay:
                    await asyncio.sleep(self.delay)
                if watch.gone:
                    return
                if self.closing:
                    break
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if model == "fake-drop":
                raise _Dropped("fake-drop")
            if model == "fake-stall":
                deadline = asyncio.get_running_loop().time() + HANG_SECONDS
                while not (watch.gone or self.closing) and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream_long(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        # The benchmark's path: one byte template per request, the index spliced in.
        count = _max_tokens(body)
        count = LONG_DEFAULT_TOKENS if count is None else count
        head = b'data: {"id":"chatcmpl-fake-%d","object":"chat.completion.chunk","created":%d,"model":"fake-long",' % (
            next(_ids),
            CREATED,
        )
        pending = b',"logprobs":null,"finish_reason":null}]}\n\n'
        before = head + b'"choices":[{"index":0,"delta":{"content":"tok'
        after = b' "}' + pending
        first = head + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""}' + pending
        last = head + b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            usage = orjson.dumps(_usage(body, count))
            last += head + b'"choices":[],"usage":' + usage + b"}\n\n"
        last += _DONE
        delay = self.delay

        async with _Watch(receive) as watch:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await send({"type": "http.response.body", "body": first, "more_body": True})
            if not delay and count and self.burst:
                # Unpaced, `burst`: the first token, then the rest in one write. uvloop writes out what a loop
                # iteration queued only when the iteration ends: yield once, so that the first token leaves now.
                # One write rather than a write a chunk took the fake's CPU a job of bench/background.py from 1.3
                # to 0.3 ms, on the two cores that Parley's processes share with it. Not the default: read in one
                # write, the streaming benchmarks' direct baseline measured the client alone (bench/README.md).
                await send({"type": "http.response.body", "body": b"%b0%b" % (before, after), "more_body": True})
                await asyncio.sleep(0)
                rest = b"".join(b"%b%d%b" % (before, i, after) for i in range(1, count))
                await send({"type": "http.response.body", "body": rest, "more_body": True})
                count = 0
            for i in range(count):
                if delay:
                    await asyncio.sleep(delay)
                    if watch.gone:
                        return
                    if self.closing:
                        break
                await send({"type": "http.response.body", "body": b"%b%d%b" % (before, i, after), "more_body": True})
                if i == 0 and not delay:
                    # Yield once, so that the first token leaves now rather than with the first 64 KiB.
                    await asyncio.sleep(0)
            if delay:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": last, "more_body": False})


class _Reply:
    """What to answer: content pieces (one per chunk) or tool calls, and why it stopped."""

    __slots__ = ("finish_reason", "pieces", "tool_calls")

    def __init__(
        self,
        pieces: list[str],
        finish_reason: str = "stop",
        tool_calls: list[tuple[str, str, list[str]]] | None = None,
    ) -> None:
        self.pieces = pieces
        self.finish_reason = finish_reason
        self.tool_calls = tool_calls or []

    @property
    def completion_tokens(self) -> int:
        return len(self.tool_calls) if self.tool_calls else len(self.pieces)


# What the failing streams send before they fail.
_FAILING_PIECES = {
    "fake-midstream-error": ["one", " two", " three"],
    "fake-malformed": ["one", " two"],
    "fake-drop": ["one", " two"],
    "fake-stall": ["one", " two", " three"],
}
# The arguments `{"city": "Paris"}`, in the uneven pieces a real model streams them in.
_ARGUMENT_PIECES = ['{"ci', 'ty": "Pa', 'ris"}']


def _reply(body: dict[str, Any]) -> _Reply:
    model = body["model"]
    messages = body.get("messages") or []
    limit = _max_tokens(body)
    if model == "fake-long":
        count = LONG_DEFAULT_TOKENS if limit is None else limit
        return _Reply([f"tok{i} " for i in range(count)])
    if model == "fake-json":
        return _Reply(['{"answer": ', "42}"])
    if model in _FAILING_PIECES:
        return _Reply(_FAILING_PIECES[model])
    if model in ("fake-script", "fake-split-script"):
        return _script(messages)
    if model == "fake-tool" and messages and messages[-1].get("role") == "tool":
        return _Reply(_words("The tool said: " + _text(messages[-1].get("content"))))
    if model == "fake-tool" and body.get("tools") and body.get("tool_choice") != "none":
        names = [_tool_name(tool) for tool in body["tools"]]
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            names = [(choice.get("function") or {}).get("name") or choice.get("name") or names[0]]
        elif len(names) >= 2 and body.get("parallel_tool_calls") is not False:
            names = names[:2]
        else:
            names = names[:1]
        calls = [(f"call_fake_{i + 1}", name, _ARGUMENT_PIECES) for i, name in enumerate(names)]
        return _Reply([], "tool_calls", calls)
    # fake-echo, and fake-tool without tools.
    user = [m for m in messages if m.get("role") == "user"]
    words = _words(_text(user[-1].get("content")) if user else "")
    if limit is not None and limit < len(words):
        return _Reply(words[:limit], "length")
    return _Reply(words)


def _script(messages: list[dict[str, Any]]) -> _Reply:
    """Calls scripted by the last user message, one step per model call.

    The message is steps separated by ` | `, each step calls separated by
    ` & `, each call `NAME {json arguments}`: "add {"a": 1, "b": 2} | echo
    {"text": "hi"}" calls `add`, then `echo`. After the last step the reply is
    "Results: " and the tool results since the user message, joined by "; ".
    A script ending in ` | forever` repeats its last step for ever.
    """
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    script = _text(messages[last_user].get("content")) if last_user >= 0 else ""
    steps = [step.strip() for step in script.split(" | ") if step.strip()]
    forever = bool(steps) and steps[-1] == "forever"
    if forever:
        steps = steps[:-1]
    since = messages[last_user + 1 :]
    done = sum(1 for m in since if m.get("role") == "assistant" and m.get("tool_calls"))
    if done < len(steps) or (forever and steps):
        step = steps[min(done, len(steps) - 1)]
        calls = []
        for i, call in enumerate(step.split(" & ")):
            name, _, arguments = call.strip().partition(" ")
            arguments = arguments.strip() or "{}"
            half = max(1, len(arguments) // 2)
            calls.append((f"call_script_{done + 1}_{i + 1}", name, [arguments[:half], arguments[half:]]))
        return _Reply([], "tool_calls", calls)
    results = [_text(m.get("content")) for m in since if m.get("role") == "tool"]
    return _Reply(_words("Results: " + "; ".join(results)))


def _name_pieces(name: str) -> list[str]:
    """How fake-split-script streams a call's name: split at each `/`, else every 2 characters."""
    if "/" in name:
        return name.split("/")
    return [name[i : i + 2] for i in range(0, len(name), 2)] or [""]


def _whole(model: str, name: str) -> str:
    return "".join(_name_pieces(name)) if model == "fake-split-script" else name


def _tool_name(tool: dict[str, Any]) -> str:
    return str((tool.get("function") or {}).get("name") or tool.get("name") or "")


def _text(content: Any) -> str:
    """The text of a message's content: a string, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part)
            for part in content
            if not isinstance(part, dict) or part.get("type") in ("text", "input_text", "output_text", None)
        )
    return ""


def _words(text: str) -> list[str]:
    """Each word with the whitespace before it: "a b" -> ["a", " b"]."""
    return _WORDS.findall(text)


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) and value >= 0 else None


def _usage(body: dict[str, Any], completion_tokens: int) -> dict[str, int]:
    prompt = sum(len(_text(m.get("content")).split()) for m in body.get("messages") or [] if isinstance(m, dict))
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


def _top_logprobs(body: dict[str, Any]) -> int:
    value = body.get("top_logprobs")
    return value if isinstance(value, int) and value > 0 else 0


def _logprob(token: str, top: int) -> dict[str, Any]:
    alternatives = [token] + [f"alt{j}" for j in range(1, top)]
    return {
        "token": token,
        "logprob": -0.5,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": alt, "logprob": -0.5 - j, "bytes": list(alt.encode())} for j, alt in enumerate(alternatives[:top])
        ],
    }


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


def _with_length(payload: bytes) -> list[tuple[bytes, bytes]]:
    return [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]


async def _respond(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _with_length(payload) + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Watch:
    """Notices, in the background, that the client went away, so a paced stream stops early."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None
        self.gone = False

    async def _run(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True

    async def __aenter__(self) -> _Watch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


class _Server(uvicorn.Server):
    """uvicorn, telling when it is ready and closing the app's long replies when asked to stop."""

    def __init__(self, app: FakeApp, log_config: Any, on_ready: Callable[[], None]) -> None:
        super().__init__(_config(app, log_config))
        self._app = app
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._on_ready()

    async def on_tick(self, counter: int) -> bool:
        # Runs on the server's loop every 0.1 s; should_exit may have been set from another thread.
        should_exit = await super().on_tick(counter)
        if should_exit:
            self._app.close()
        return should_exit


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _config(app: FakeApp, log_config: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level="warning",
        log_config=log_config,
        # The app ends its long replies when the server stops; this is the backstop.
        timeout_graceful_shutdown=2,
        backlog=2048,
    )


class FakeUpstream:
    """The fake served by uvicorn in a daemon thread.

    `requests` holds every JSON body received on /v1/chat/completions, in order.
    """

    def __init__(self, *, delay: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.delay = delay
        self.host = host
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""
        self._app = FakeApp(delay, self.requests)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Serve, wait until ready, and return the base URL, e.g. "http://127.0.0.1:PORT/v1"."""
        if self._server is not None:
            return self.base_url
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        # log_config=None leaves the process's logging alone (pytest captures uvicorn's records).
        self._app = FakeApp(self.delay, self.requests)
        server = _Server(self._app, None, ready.set)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fake-upstream", daemon=True)
        thread.start()
        while not ready.wait(0.05):
            if not thread.is_alive():
                sock.close()
                raise RuntimeError("the fake upstream failed to start")
        self._server, self._thread = server, thread
        self.base_url = f"http://{self.host}:{self.port}/v1"
        return self.base_url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> FakeUpstream:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI-compatible upstream in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause between streamed chunks")
    parser.add_argument("--burst", action="store_true", help="unpaced, the chunks after the first in one write")
    args = parser.parse_args(argv)

    sock = _bind(args.host, args.port)
    url = f"http://{args.host}:{sock.getsockname()[1]}/v1"

    def ready() -> None:
        print(url, flush=True)

    server = _Server(FakeApp(args.delay_ms / 1000, burst=args.burst), uvicorn.config.LOGGING_CONFIG, ready)
    server.run(sockets=[sock])  # SIGINT and SIGTERM stop it.


if __name__ == "__main__":
    sys.exit(main())
