"""The response object: its first state, and how a turn's end is written into it."""

from __future__ import annotations

import time
from typing import Any, get_args

from openai.types.responses import ResponseError
from pydantic import BaseModel

from parley.engine.request import CreateResponseRequest
from parley.errors import ParleyError
from parley.inference.types import Usage


def initial_response(
    request: CreateResponseRequest,
    response_id: str,
    tools: list[BaseModel],
    sampling: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Every field of OpenAI's `Response`, as it stands when the turn starts.

    Where Open Responses requires a value, the default that was applied is echoed.
    """
    text = request.text
    text_format: dict[str, Any] = text.format.model_dump(by_alias=True) if text is not None else {"type": "text"}
    if text_format["type"] == "json_schema" and text_format["strict"] is None:
        # As OpenAI echoes a format sent without them: `description` null, `strict` false (its default).
        text_format["strict"] = False
    tool_choice = request.tool_choice
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": request.background,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": request.max_tool_calls,
        "model": request.model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "conversation": {"id": request.conversation_id} if request.conversation_id else None,
        "prompt": None,  # prompt templates are refused (see `request`)
        "prompt_cache_key": request.prompt_cache_key,
        "prompt_cache_retention": request.prompt_cache_retention,
        "reasoning": _reasoning(request),
        "safety_identifier": request.safety_identifier,
        "service_tier": request.service_tier or "default",
        "store": request.store,
        # What the model samples with: the request's, else the model's own default (the embedded model's
        # are lower than OpenAI's 1: see `Provider.sampling_defaults`).
        "temperature": (sampling or {}).get("temperature", 1.0) if request.temperature is None else request.temperature,
        "top_p": (sampling or {}).get("top_p", 1.0) if request.top_p is None else request.top_p,
        "presence_penalty": request.presence_penalty or 0.0,
        "frequency_penalty": request.frequency_penalty or 0.0,
        "top_logprobs": request.top_logprobs or 0,
        "text": {"format": text_format, "verbosity": (text.verbosity if text else None) or "medium"},
        "tool_choice": (
            tool_choice.model_dump(exclude_none=True) if isinstance(tool_choice, BaseModel) else tool_choice or "auto"
        ),
        "tools": [public_definition(tool) for tool in tools],
        "truncation": request.truncation,
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def public_definition(tool: BaseModel) -> dict[str, Any]:
    """A tool definition as it is echoed and stored: its `public()` where it has secrets to leave out."""
    public = getattr(tool, "public", None)
    return public() if callable(public) else tool.model_dump()


def _reasoning(request: CreateResponseRequest) -> dict[str, Any]:
    """The reasoning settings as asked for; `generate_summary` is the deprecated name of `summary`.

    A chat-completions upstream is sent `effort` (as `reasoning_effort`); it has no
    summaries, so reasoning items carry the model's reasoning as `content` and an
    empty `summary` (summarising it would take another model call).
    """
    reasoning = request.reasoning
    if reasoning is None:
        return {"effort": None, "summary": None}
    return {"effort": reasoning.effort, "summary": reasoning.summary or reasoning.generate_summary}


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def add_usage(total: Usage, more: Usage) -> None:
    total.prompt_tokens += more.prompt_tokens
    total.completion_tokens += more.completion_tokens
    total.total_tokens += more.total_tokens
    total.cached_tokens += more.cached_tokens
    total.reasoning_tokens += more.reasoning_tokens


# The codes a response's `error` may have: OpenAI's fixed list, as the installed openai package's
# `ResponseError.code` has it (clients that check it refuse any other).
RESPONSE_ERROR_CODES: frozenset[str] = frozenset(get_args(ResponseError.model_fields["code"].annotation))


def error_object(exc: ParleyError) -> dict[str, Any]:
    """A failure as the response's `error`.

    Its `code` is on OpenAI's list (`RESPONSE_ERROR_CODES`): the failure's own
    code when it is there (an upstream's `rate_limit_exceeded` or
    `invalid_image_url`), else the nearest one: `rate_limit_exceeded` for a
    429, `invalid_prompt` for another fault of the request (a 4xx), and
    `server_error` for the rest (an upstream that timed out, a model that
    called a tool it was not offered). `type` and `param` are those of the
    HTTP error it would have been (the package's `ResponseError` has both),
    and the stream's `error` event says the failure's own code
    (`error_event`): `upstream_timeout`, `tool_not_offered`.
    """
    if exc.code in RESPONSE_ERROR_CODES:
        code = exc.code
    elif exc.status_code == 429:
        code = "rate_limit_exceeded"
    elif 400 <= exc.status_code < 500:
        code = "invalid_prompt"
    else:
        code = "server_error"
    return {"code": code, "message": exc.message, "param": exc.param, "type": exc.error_type}


def error_event(exc: ParleyError) -> dict[str, Any]:
    """The fields of the stream's `error` event for a failure: its own code (the event's `code` is any string),
    or the response's where it has none."""
    return {"code": exc.code or error_object(exc)["code"], "message": exc.message, "param": exc.param}
