"""`/v1/responses`: create (streaming and not), retrieve, delete, list, input items, compact."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from openai.types.responses.input_token_count_response import InputTokenCountResponse

from parley.api.auth import caller_of
from parley.api.body import documented, read_body
from parley.api.http import CLIENT_CLOSED_REQUEST, ClientGone, EventStreamResponse, JSONResponse, unless_client_leaves
from parley.api.ids import ResponseId
from parley.api.params import Include, IncludeBrackets, Limit, Order, StartingAfter, check_includes
from parley.api.sse import DONE
from parley.engine.compaction import CompactRequest
from parley.engine.counting import CountTokensRequest
from parley.engine.request import CreateResponseRequest
from parley.engine.service import Event, ResponseRun, ResponseService
from parley.store import PageRequest

router = APIRouter()


def _service(request: Request) -> ResponseService:
    return request.app.state.responses


@router.post("/v1/responses", openapi_extra=documented(CreateResponseRequest))
async def create_response(request: Request) -> Response:
    body = await read_body(request, CreateResponseRequest)
    run = await _service(request).create(body, caller_of(request))
    if body.stream:
        # Returned at once, to be waiting when the first event comes; a turn that fails
        # before it is an HTTP error, not a stream (see EventStreamResponse).
        return EventStreamResponse(_frames(run))
    try:
        response = await unless_client_leaves(request, run.result())
    except ClientGone:
        run.abandon()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if run.error is not None:
        raise run.error
    return JSONResponse(response)


# What the stream opens with before its first output: sent with that output, in one write.
_OPENING = frozenset(
    ("response.created", "response.in_progress", "response.output_item.added", "response.content_part.added")
)


async def _frames(run: ResponseRun) -> AsyncIterator[bytes]:
    """The events as SSE frames, a write per batch.

    The opening events wait for the first delta (or any other event), so that a
    client is woken once, for its first token, rather than first for events that
    say nothing yet; the headers leave with them.
    """
    finished = False
    try:
        await run.started()  # raises what failed the turn before its first event
        held: list[Event] | None = []  # None once the opening has left
        async for batch in run.events():
            if held is not None:
                held += batch
                if all(kind in _OPENING for kind, _ in batch):
                    continue
                batch, held = held, None
            yield _encode(batch)
        if held:
            yield _encode(held)
        yield DONE
        finished = True
    finally:
        if not finished:
            run.abandon()  # the client left (or the turn failed before its first event: then it has ended)


def _encode(batch: list[Event]) -> bytes:
    return b"".join(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n" for kind, data in batch)


@router.post("/v1/responses/compact", openapi_extra=documented(CompactRequest))
async def compact_response(request: Request) -> JSONResponse:
    """The context the body names, compacted (ResponseService.compact)."""
    body = await read_body(request, CompactRequest)
    return JSONResponse(await _service(request).compact(body, caller_of(request)))


@router.post("/v1/responses/input_tokens", openapi_extra=documented(CountTokensRequest))
async def count_input_tokens(request: Request) -> JSONResponse:
    """The tokens a create with these fields would have its model read (ResponseService.count_input_tokens)."""
    body = await read_body(request, CountTokensRequest)
    tokens = await _service(request).count_input_tokens(body, caller_of(request))
    return JSONResponse(InputTokenCountResponse(object="response.input_tokens", input_tokens=tokens).model_dump())


@router.get("/v1/responses")
async def list_responses(
    request: Request,
    after: str | None = None,
    before: str | None = None,
    limit: Limit = 20,
    order: Order = "desc",
) -> JSONResponse:
    page = PageRequest(limit=limit, order=order, after=after, before=before)
    return JSONResponse(await _service(request).list(page, caller_of(request)))


@router.get("/v1/responses/{response_id}")
async def retrieve_response(
    request: Request,
    response_id: ResponseId,
    include: Include = None,
    include_brackets: IncludeBrackets = None,
    stream: bool = False,
    starting_after: StartingAfter = None,
) -> Response:
    """The response; with `stream=true`, a background response's events after `starting_after`, then the rest as
    they come, wherever it runs (ResponseService.follow)."""
    check_includes(include, include_brackets)
    if not stream:
        return JSONResponse(await _service(request).retrieve(response_id, caller_of(request)))
    events = _service(request).follow(response_id, starting_after, caller_of(request))
    # The first batch here, so that an unknown response is a 404, not a stream.
    first = await anext(events, None)
    return EventStreamResponse(_followed(first, events))


async def _followed(first: list[Event] | None, rest: AsyncIterator[list[Event]]) -> AsyncIterator[bytes]:
    try:
        if first:
            yield _encode(first)
        async for batch in rest:
            yield _encode(batch)
        yield DONE
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: ResponseId) -> JSONResponse:
    """Cancels a background response (see ResponseService.cancel)."""
    return JSONResponse(await _service(request).cancel(response_id, caller_of(request)))


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: ResponseId) -> JSONResponse:
    return JSONResponse(await _service(request).delete(response_id, caller_of(request)))


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    request: Request,
    response_id: ResponseId,
    after: str | None = None,
    before: str | None = None,
    limit: Limit = 20,
    order: Order = "desc",
    include: Include = None,
    include_brackets: IncludeBrackets = None,
) -> JSONResponse:
    check_includes(include, include_brackets)
    page = PageRequest(limit=limit, order=order, after=after, before=before)
    return JSONResponse(await _service(request).input_items(response_id, page, caller_of(request)))
