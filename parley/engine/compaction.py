"""Compaction: the part of a context that a summary replaces, and the `compaction` item that carries it.

A context is compacted by a model call that reads it and writes a summary of
it (`summarize`; the model and its prompt are `engine.compaction_model` and
`engine.compaction_prompt`). The summary travels in a `compaction` item's
`encrypted_content`, sealed with the server's key as reasoning is (see
parley.engine.encrypted_reasoning): the item goes back and forth through
callers, stateless ones included, and one this server's key did not make, or
that was changed, is a 400 naming its place.

What the model reads of a context that holds compaction items (`compacted`,
applied by the context builder to whatever items it is handed: a request's
input, a `previous_response_id` chain, a conversation): the latest compaction
item's summary (as a user message, introduced as one) in place of the last
item it replaced, and, of the items before that, only the messages the model
was told (the user's, the developer's, the system's: instructions stay
given); what came after, as it was. The rest before it (assistant messages,
tool calls and their results, reasoning, earlier compaction items) is what
the summary replaced, and is not read again.

    developer, user, assistant, tool call, tool output, user, [compaction], assistant, user
    is read as
    developer, user, summary, user, assistant, user

This is OpenAI's compacted window: `POST /v1/responses/compact` answers with
every user message and then one compaction item (`compact`), read as they
stand; a response that compacted first (`context_management`) has the
compaction item at the head of its output, after the input it covers, and the
model reads the summary before the question it answers. A caller may drop what
came before the latest compaction item, as OpenAI's guide allows: the summary
covers those user messages too.
"""

from __future__ import annotations

import time
from typing import Any

from openai.types.responses import response_compact_params
from pydantic import Field

from parley.config import EngineSettings
from parley.engine import encrypted_reasoning
from parley.engine.emitter import EventEmitter
from parley.engine.request import ConversationRef
from parley.engine.response import usage_object
from parley.errors import InvalidRequestError, UpstreamError
from parley.ids import new_id
from parley.inference.base import ChunkStream
from parley.inference.collect import CompletionBuilder
from parley.inference.registry import ResolvedModel
from parley.inference.types import ChatRequest, Usage
from parley.package_fields import PackageFields, keys_of

ITEM_TYPE = "compaction"
# How the summary is put to the model that reads it in place of what it replaced.
SUMMARY_PREFIX = (
    "The earlier part of this conversation was compacted: this summary of it, written then, stands in its place."
)
# The field of the sealed payload: a compaction's blob is refused as a reasoning item's, and the other way round.
_PAYLOAD_FIELD = "compaction_summary"


class CompactRequest(PackageFields):
    """The body of `POST /v1/responses/compact` (the package's `ResponseCompactParams`), and `conversation`, which
    Parley takes as `POST /v1/responses` does."""

    known = keys_of(response_compact_params.ResponseCompactParams) | {"conversation"}

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = Field(None, max_length=64)

    @property
    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation

    @property
    def store(self) -> bool:
        """Compacting stores nothing; the turns it names are read from storage, as a stored response's are."""
        return True

    def check(self) -> None:
        if self.previous_response_id is not None and self.conversation is not None:
            raise InvalidRequestError(
                "Mutually exclusive parameters: 'previous_response_id' and 'conversation' cannot be used together.",
                param="previous_response_id",
                code="invalid_value",
            )


def seal(summary: str) -> str:
    """A compaction item's `encrypted_content`: its summary, sealed with the server's key."""
    return encrypted_reasoning.seal_payload({_PAYLOAD_FIELD: summary})


def unseal(blob: str, param: str | None) -> str:
    """The summary sealed in `blob`; InvalidEncryptedContentError naming `param` when this server did not make it."""
    payload = encrypted_reasoning.open_payload(blob, param or "input")
    summary = payload.get(_PAYLOAD_FIELD) if isinstance(payload, dict) else None
    if not isinstance(summary, str):  # made with this key, but another item's (a reasoning item's)
        raise encrypted_reasoning.InvalidEncryptedContentError(blob, param or "input")
    return summary


def new_item(summary: str) -> dict[str, Any]:
    """A compaction item carrying `summary`."""
    return {"id": new_id("cmp"), "type": ITEM_TYPE, "encrypted_content": seal(summary)}


def opening_item() -> dict[str, Any]:
    """A compaction item as it is added to a response's output, before its summary is written."""
    return {"id": new_id("cmp"), "type": ITEM_TYPE, "encrypted_content": ""}


def compacted(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items the model reads of `items`: the latest compaction item stands in place of the last item it
    replaced, and of those before it only the messages the model was told (see the module's docstring)."""
    # Every context the model reads comes through here, most with no compaction item: one pass over the types.
    kinds = [item["type"] for item in items]
    if ITEM_TYPE not in kinds:
        return items
    compactions = [i for i, kind in enumerate(kinds) if kind == ITEM_TYPE]
    written = [i for i in compactions if items[i].get("encrypted_content")]
    if len(written) < len(compactions):
        # One added to a response whose summary was never written (its call failed) replaced nothing.
        unwritten = set(compactions) - set(written)
        return compacted([item for i, item in enumerate(items) if i not in unwritten])
    latest = written[-1]
    last_replaced = latest - 1
    while last_replaced >= 0 and _is_told(items[last_replaced]):
        last_replaced -= 1
    if last_replaced < 0:  # only messages it was told before it (a compacted window, as `compact` answers)
        return items
    kept = [item for item in items[:last_replaced] if item["type"] == "message" and item.get("role") != "assistant"]
    return [*kept, items[latest], *items[last_replaced + 1 : latest], *items[latest + 1 :]]


def summary_message(item: dict[str, Any]) -> dict[str, Any]:
    """The chat message a compaction item is read as: its summary, introduced."""
    summary = unseal(item["encrypted_content"], None)
    return {"role": "user", "content": f"{SUMMARY_PREFIX}\n\n{summary}"}


def replaceable(messages: list[dict[str, Any]]) -> bool:
    """Whether compacting a context would replace anything the model reads of it: whether its chat `messages`
    hold one the model was not told, an assistant's or a tool's (an MCP listing, which the model reads nothing
    of, is no reason to compact)."""
    return any(message["role"] in ("assistant", "tool") for message in messages)


def _is_told(item: dict[str, Any]) -> bool:
    """Whether an item is a message the model was told (the user's, the developer's, the system's): compaction
    keeps these."""
    return item["type"] == "message" and item.get("role") != "assistant"


def _is_user_message(item: dict[str, Any]) -> bool:
    return item["type"] == "message" and item.get("role") == "user"


async def summarize(
    model: ResolvedModel, messages: list[dict[str, Any]], settings: EngineSettings, call: ChatRequest
) -> tuple[str, Usage]:
    """The summary `model` writes of the chat `messages` (a context, as the model reads it), asked by
    `engine.compaction_prompt` after them, and the usage of that call.

    `call` carries what the call is sent besides its model and messages (a user, a cache key).
    """
    call.model = model.name
    call.messages = [*messages, {"role": "user", "content": settings.compaction_prompt}]
    stream: ChunkStream = model.provider.stream_chat(call)
    builder = CompletionBuilder()
    try:
        async for batch in stream:
            for chunk in batch:
                builder.add(chunk)
    finally:
        await stream.aclose()
    completion = builder.build()
    summary = (completion.choices[0].content or "").strip()
    if not summary:
        raise UpstreamError("The model that compacts the context wrote no summary.", code="compaction_failed")
    return summary, completion.usage


async def compact_into(
    emitter: EventEmitter,
    writer: ResolvedModel,
    messages: list[dict[str, Any]],
    settings: EngineSettings,
    call: ChatRequest,
) -> Usage:
    """Adds to a response's output a compaction item of the context `messages` (as the model reads it), written
    by `writer`: `output_item.added`, `response.compaction.compacting`, the summary, `output_item.done`. The usage
    of the call that wrote it."""
    index = emitter.add_item(opening_item())
    emitter.compacting(index)
    summary, usage = await summarize(writer, messages, settings, call)
    emitter.output[index]["encrypted_content"] = seal(summary)
    emitter.done_item(index)
    return usage


async def compact(
    request: CompactRequest,
    model: ResolvedModel,
    window: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    settings: EngineSettings,
) -> dict[str, Any]:
    """`POST /v1/responses/compact` of a context: `window` is what the model reads of it (`compacted`), and
    `messages` that, as chat messages. OpenAI's `CompactedResponse`: every user message of the window, then one
    compaction item."""
    extra = {"prompt_cache_key": request.prompt_cache_key} if request.prompt_cache_key else {}
    call = ChatRequest(model=model.name, messages=[], user=request.safety_identifier, extra=extra)
    summary, usage = await summarize(model, messages, settings, call)
    kept = [item for item in window if _is_user_message(item)]
    return {
        "id": new_id("resp"),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [*kept, new_item(summary)],
        "usage": usage_object(usage),
    }
