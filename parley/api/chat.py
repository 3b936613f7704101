"""`POST /v1/chat/completions`, streaming and not, over any provider."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from parley.api.auth import caller_of
from parley.api.body import documented, read_body
from parley.api.chat_request import ChatCompletionBody
from parley.api.errors import body_for, error_body
from parley.api.http import CLIENT_CLOSED_REQUEST, ClientGone, EventStreamResponse, JSONResponse, unless_client_leaves
from parley.api.sse import DONE, frame
from parley.engine.files import InputFiles, has_file_parts
from parley.errors import ParleyError
from parley.inference.base import ChunkStream, prepend
from parley.inference.collect import Completion, collect
from parley.inference.registry import ModelRegistry
from parley.inference.types import ChatChunk
from parley.inference.wire import choice_to_wire, usage_to_wire
from parley.scheduling import first_token_sent

log = logging.getLogger(__name__)

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=documented(ChatCompletionBody))
async def create_chat_completion(request: Request) -> Any:
    body = await read_body(request, ChatCompletionBody)
    registry: ModelRegistry = request.app.state.registry
    resolved = registry.resolve(body.model)
    chat_request = body.to_chat_request(resolved.name)
    if has_file_parts(chat_request.messages):
        # A file part's text is what the model reads, whatever the model (see parley.engine.files).
        input_files: InputFiles = request.app.state.input_files
        await input_files.read_chat(caller_of(request), chat_request.messages)
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    stream = resolved.provider.stream_chat(chat_request)
    try:
        if not body.stream:
            completion = await unless_client_leaves(request, collect(stream))
            return JSONResponse(_completion_object(completion, completion_id, created, body.model))
        # Wait for the first chunk, so that a request the provider refuses gets its
        # own status instead of a 200 whose stream says the error.
        try:
            first = await unless_client_leaves(request, anext(stream))
        except StopAsyncIteration:
            first = []
    except ClientGone:
        # Closing the stream stops the generation, so the next request does not wait behind it.
        await stream.aclose()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except BaseException:
        await stream.aclose()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    encoder = _ChunkEncoder(completion_id, created, body.model, include_usage)
    return EventStreamResponse(_event_stream(first, stream, encoder))


async def _event_stream(first: list[ChatChunk], rest: ChunkStream, encoder: _ChunkEncoder) -> AsyncIterator[bytes]:
    # Chunks before the first token (the role) wait for it, to leave in one write with it:
    # a role chunk on its own would wake the client for nothing. None once the token left.
    held: list[ChatChunk] | None = []
    error: dict[str, Any] | None = None
    try:
        if first:
            async for batch in prepend(first, rest):
                if held is None:
                    # One write per batch: a burst from the upstream leaves in one piece.
                    if data := encoder.encode_batch(batch):
                        yield data
                    continue
                held += batch
                if any(chunk.has_output() or chunk.finish_reason or chunk.usage for chunk in batch):
                    opening, held = held, None
                    if data := encoder.encode_batch(opening):
                        yield data
                    await first_token_sent()
    except ParleyError as exc:
        log.warning("chat completion stream failed: %s", exc.message)
        error = body_for(exc)
    except Exception:
        log.exception("chat completion stream failed")
        error = error_body("The server had an error while streaming.", type="server_error")
    finally:
        await rest.aclose()
    # What came before the end, or before the failure, still reaches the client.
    if held and (data := encoder.encode_batch(held)):
        yield data
    if error is not None:
        yield frame(orjson.dumps(error))
    yield DONE


class _ChunkEncoder:
    """Turns typed chunks into `chat.completion.chunk` frames.

    Every chunk of a completion shares its id, object, created, model and
    fingerprint: they are serialised once, and each chunk's frame is that
    prefix, its choice (or usage), and the end.
    """

    __slots__ = ("_include_usage", "_prefix")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self._prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":['
        self._include_usage = include_usage

    def encode_batch(self, batch: list[ChatChunk]) -> bytes:
        return b"".join(data for chunk in batch if (data := self.encode(chunk)) is not None)

    def encode(self, chunk: ChatChunk) -> bytes | None:
        if chunk.usage is None:
            return self._prefix + orjson.dumps(choice_to_wire(chunk)) + b"]}\n\n"
        if not self._include_usage:
            return None
        return self._prefix + b'],"usage":' + orjson.dumps(usage_to_wire(chunk.usage)) + b"}\n\n"


def _completion_object(completion: Completion, completion_id: str, created: int, model: str) -> dict[str, Any]:
    choices = []
    for choice in completion.choices:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": choice.content,
            "refusal": choice.refusal,
            "annotations": [],
        }
        if choice.reasoning is not None:
            message["reasoning_content"] = choice.reasoning
        if choice.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in choice.tool_calls
            ]
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": {"content": choice.logprobs, "refusal": None} if choice.logprobs is not None else None,
                "finish_reason": choice.finish_reason or "stop",
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_to_wire(completion.usage),
        "system_fingerprint": None,
    }
