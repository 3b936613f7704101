"""The one interface the rest of Parley uses to run a model."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from parley.errors import InvalidRequestError
from parley.inference.types import ChatChunk, ChatRequest

# What a streamed model call yields: the chunks that have arrived, a batch at a time; closed with `aclose`.
ChunkStream = AsyncGenerator[list[ChatChunk], None]


@dataclass(slots=True, frozen=True)
class ModelInfo:
    id: str  # the provider's own name for the model
    created: int = 0
    owned_by: str = "parley"


class Provider(abc.ABC):
    """A source of chat completions: an upstream server, or a model run in-process."""

    name: str

    @abc.abstractmethod
    def stream_chat(self, request: ChatRequest) -> ChunkStream:
        """Stream the completion as typed chunks, ending with one carrying `usage`.

        Chunks come in batches: each batch is what the model produced by the
        time it was read (one token, or a burst of them), so that consumers
        can pass a burst on in one write. A batch is never empty.

        Raises `parley.errors.UpstreamError` (or an InvalidRequestError the
        model itself refuses) before or during the stream.
        """

    @abc.abstractmethod
    async def list_models(self) -> list[ModelInfo]:
        """The models this provider serves."""

    async def count_tokens(self, request: ChatRequest) -> int:
        """The prompt tokens the model would read for `request`, as its own tokenizer counts them.

        Everything of the request the model reads counts: its messages, its
        tools and its response format, rendered as a generation of the same
        request renders them; the count equals the `prompt_tokens` of that
        generation's usage where the provider can know it exactly (llama.cpp),
        and is the configured offline tokenizer's count for an upstream (see
        the README's "Counting tokens"). Nothing is generated, and nothing is
        sent upstream.

        Raises `InvalidRequestError` for a request the model would refuse (a
        content part it cannot read), naming the field as `stream_chat` would.

        Example::

            tokens = await provider.count_tokens(ChatRequest(model="smollm2-135m", messages=[...]))
        """
        raise InvalidRequestError(f"Provider '{self.name}' cannot count tokens.", param="model")

    def context_window(self, model: str) -> int | None:
        """The most tokens `model` reads and writes in one call (prompt and completion), if known; else None."""
        return None

    async def embed(self, model: str, inputs: Any, **options: Any) -> dict[str, Any]:
        """Embeddings of `inputs` (a string, strings, or token arrays) as OpenAI's `list` object.

        `options` are the other fields of an embeddings request (`encoding_format`,
        `dimensions`, `user`); a provider passes on those it does not interpret.
        """
        raise InvalidRequestError(f"Provider '{self.name}' does not serve embeddings.", param="model")

    def serves(self, model: str) -> bool:
        """Whether a request for `model` can be sent here without listing first."""
        return True

    def sampling_defaults(self, model: str) -> dict[str, float]:
        """The `temperature` and `top_p` that `model` samples with when a request sets none, for the response to
        echo; none for an upstream, whose defaults are its own (OpenAI's are 1)."""
        return {}

    def text_only(self, model: str) -> bool:
        """Whether `model` reads text alone: images and files in its messages are refused as a request arrives,
        by the provider (naming `messages[i].content[j]`) and, for the Responses API, by the engine (naming the
        input's own place)."""
        return False

    async def start(self) -> None:
        """Acquire what the provider needs (clients, loaded weights); idempotent."""

    async def close(self) -> None:
        """Release the provider's connections and memory."""


async def prepend(first: list[ChatChunk], rest: ChunkStream) -> ChunkStream:
    """A provider's stream again, after its first batch was taken from it (to see that it started)."""
    try:
        yield first
        async for batch in rest:
            yield batch
    finally:
        await rest.aclose()
