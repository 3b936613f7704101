"""Counting the tokens a response's model would read: `POST /v1/responses/input_tokens`, and what
`truncation: auto` and `context_management` measure a context by.

A count is of the very chat request a turn's model call sends: the turn is
made as `ResponseService.create` makes it (the same chain or conversation
history, the same input checks and file reads, `loop.read_input`), and its
request is built by the loop's own `model_request.chat_request` (the same rendering
of items, instructions, tools and format). The provider counts it with the
model's own tokenizer (`Provider.count_tokens`): nothing is generated, no
tool runs, and MCP servers are not listed, so an MCP server's tools count
only when a listing in the history carries them (as a model call after the
listing would see them).
"""

from __future__ import annotations

from typing import Any

from openai.types.responses.input_token_count_params import InputTokenCountParams
from pydantic import model_validator

from parley.engine import loop, model_request
from parley.engine.request import CreateResponseRequest
from parley.errors import InvalidRequestError
from parley.package_fields import keys_of

# The fields of a count: those of a create that say what the model reads (OpenAI's `TokenCountsBody`).
COUNT_FIELDS = keys_of(InputTokenCountParams)


class CountTokensRequest(CreateResponseRequest):
    """The body of `POST /v1/responses/input_tokens`: a create's fields, less those that say how it runs.

    `stream`, `background`, `store` and the sampling settings are refused as
    OpenAI refuses them here, as unknown parameters; `personality`, a style
    preset of OpenAI's own models, is taken and has nothing to apply to.
    """

    @model_validator(mode="before")
    @classmethod
    def _count_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in data:
            if name not in COUNT_FIELDS:
                raise InvalidRequestError(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
        personality = data.get("personality")
        if personality is not None and (not isinstance(personality, str) or len(personality) > 64):
            raise InvalidRequestError(
                "Invalid 'personality': expected a string of at most 64 characters.",
                param="personality",
                code="invalid_value",
            )
        return {name: value for name, value in data.items() if name != "personality"}


async def count_turn(turn: loop.Turn) -> int:
    """The prompt tokens of the turn's first model call: its history, then its input, less what `truncation: auto`
    would leave out of them (when the model's context window is known).

    Raises what `loop.run` raises for the same input before it calls the
    model (a 400 naming the field, a file that cannot be read), then what the
    provider raises for a request it refuses.
    """
    await loop.read_input(turn)
    return await count_context(turn, await model_request.fit(turn, turn.history + turn.input_items))


async def count_context(turn: loop.Turn, items: list[dict[str, Any]]) -> int:
    """The prompt tokens of a model call of `turn` whose context is `items` (oldest first), now: for a measure
    of a context before it is sent (`truncation: auto`, compaction)."""
    return await turn.model.provider.count_tokens(model_request.chat_request(turn, items))
