"""Helpers for the record/replay tests: an upstream that also embeds, and Parley configured to record.

`EmbeddingUpstream` is the fake chat upstream of `tests/fake_upstream.py` plus
`POST /v1/embeddings` (a deterministic vector per input), served by uvicorn in
a thread of its own, so that a test can stop it and show that replay no longer
needs it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from tests.fake_upstream import FakeApp, Receive, Scope, Send

ROOT = Path(__file__).resolve().parent.parent
SHARED_RECORDINGS = ROOT.parent / "shared" / "recordings"

# The secrets the recording tests configure; none may reach a recording file.
API_KEY = "sk-recording-secret-1"
HEADER_KEY = "header-secret-2"

EMBEDDING_MODEL = "fake-embed"
DIMENSIONS = 8


def embedding(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(byte / 255, 6) for byte in digest[:dimensions]]


class EmbeddingApp(FakeApp):
    """The fake upstream, with `/v1/embeddings`; `embedding_requests` holds each body received."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_requests: list[dict[str, Any]] = []
        self.model_listings = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/models":
            self.model_listings += 1
        if scope["type"] == "http" and scope["path"] == "/v1/embeddings":
            await self._embeddings(receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _embeddings(self, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = orjson.loads(raw)
        self.embedding_requests.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]  # one token array
        data = []
        for index, item in enumerate(inputs):
            vector = embedding(str(item), body.get("dimensions") or DIMENSIONS)
            value: Any = vector
            if body.get("encoding_format") == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = sum(len(str(item).split()) for item in inputs)
        payload = orjson.dumps(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})


class EmbeddingUpstream:
    """`EmbeddingApp` served on a loopback port; `with EmbeddingUpstream() as up: up.base_url`."""

    def __init__(self) -> None:
        self.app = EmbeddingApp()
        self.base_url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedding upstream did not start")
            time.sleep(0.02)
        self._server, self._thread = server, thread
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> EmbeddingUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def recording_config(base_url: str, mode: str, directory: Path, **recording: Any) -> dict[str, Any]:
    """Parley over `base_url` (a `fake` provider with secrets, and a `discovered` one), recording as `mode`."""
    return {
        "inference": {
            "providers": {
                "fake": {
                    "type": "openai",
                    "base_url": base_url,
                    "api_key": API_KEY,
                    "headers": {"X-Fake-Tenant": "parley-tests", "X-Api-Key": HEADER_KEY},
                    "models": [
                        "fake-echo",
                        "fake-tool",
                        "fake-long",
                        "fake-error-400",
                        "fake-error-429",
                        "fake-error-500",
                        "fake-midstream-error",
                        EMBEDDING_MODEL,
                    ],
                    "timeout": {"connect": 2, "read": 5},
                },
                "discovered": {"type": "openai", "base_url": base_url, "timeout": {"connect": 2, "read": 5}},
            },
            "recording": {"mode": mode, "dir": str(directory), **recording},
        }
    }


def replay_config(directory: Path, **recording: Any) -> dict[str, Any]:
    """Parley replaying `directory` for `openai/gpt-4o`, whose upstream is a closed port."""
    return {
        "inference": {
            "providers": {
                "openai": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-4o"]},
            },
            "recording": {"mode": "replay", "dir": str(directory), **recording},
        }
    }


_IDS = re.compile(rb"\b(resp|msg|fc|rs|chatcmpl)[_-][A-Za-z0-9]+")
_TIMES = re.compile(rb'"(created_at|completed_at|created)":\s?\d+')


def normalized(stream: bytes) -> bytes:
    """A stream without what differs from one run to the next: ids and timestamps."""
    return _TIMES.sub(rb'"\1":0', _IDS.sub(rb"\1_ID", stream))


CHUNK_TYPE = "openai.types.chat.chat_completion_chunk.ChatCompletionChunk"
COMPLETION_TYPE = "openai.types.chat.chat_completion.ChatCompletion"


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    """One wrapped `chat.completion.chunk` of choice 0, as the shared files hold it."""
    if content is not None:
        delta["content"] = content
    data = {
        "id": "rec-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return {"__type__": CHUNK_TYPE, "__data__": data}


def write_chat_recording(
    path: Path,
    messages: list[Any],
    reply: Any,
    *,
    test_id: str | None = None,
    streaming: bool = True,
    mapping: dict[str, str] | None = None,
    **body: Any,
) -> Path:
    """A recording file of one `gpt-4o` chat completion, written by hand in the shared layout."""
    request = {
        "method": "POST",
        "url": "https://api.openai.com/v1/chat/completions",
        "endpoint": "/v1/chat/completions",
        "headers": {},
        "model": "gpt-4o",
        "body": {"model": "gpt-4o", "messages": messages, "stream": streaming, **body},
    }
    data = {
        "test_id": test_id,
        "request": request,
        "response": {"body": reply, "is_streaming": streaming},
        "id_normalization_mapping": mapping or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


# Failed calls, as llama-stack's recorder (the one that wrote ../shared/recordings) writes them.


def serialized_exception(exc: Exception) -> dict[str, Any]:
    """`exc` as that recorder serializes it into `response.exception_data`.

    An exception with an integer `status_code` (the OpenAI SDK's status errors) is
    `provider_sdk` and keeps the SDK's `body`; anything else here is `unknown`.
    """
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return {
            "category": "provider_sdk",
            "provider": "openai",
            "type": type(exc).__name__,
            "message": str(exc),
            "status_code": status,
            "body": getattr(exc, "body", None),
        }
    return {"category": "unknown", "type": type(exc).__name__, "message": str(exc)}


def failed_response(exception_data: dict[str, Any] | None, chunks: list[Any] | None = None) -> dict[str, Any]:
    """A recording's `response` for a call that raised: before streaming (`chunks` None) or while streaming.

    Without `exception_data`, the response is in the recorder's older form: its message only.
    """
    response: dict[str, Any] = {"body": chunks, "is_streaming": chunks is not None, "is_exception": True}
    if exception_data is not None:
        response["exception_data"] = exception_data
    response["exception_message"] = (exception_data or {}).get("message", "")
    return response


def record_as_another_server(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Makes the call `body` with the OpenAI SDK, as that recorder does, and returns the `response` it records.

    The call must fail, before its stream or during it.
    """
    import openai  # the SDK the other server records through

    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
    chunks: list[Any] | None = None
    try:
        stream = client.chat.completions.create(**body)
        chunks = []
        for item in stream:
            chunks.append({"__type__": CHUNK_TYPE, "__data__": item.model_dump(mode="json")})
    except openai.APIError as exc:
        return failed_response(serialized_exception(exc), chunks)
    finally:
        client.close()
    raise AssertionError(f"the call did not fail: {body}")


def write_recording(path: Path, body: dict[str, Any], response: dict[str, Any], test_id: str | None = None) -> Path:
    """A recording file of the chat completion `body` with the given `response`, in the shared layout."""
    request = {
        "method": "POST",
        "url": "https://api.openai.com/v1/v1/chat/completions",
        "headers": {},
        "body": body,
        "endpoint": "/v1/chat/completions",
        "model": body.get("model", ""),
    }
    data = {"test_id": test_id, "request": request, "response": response, "id_normalization_mapping": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
