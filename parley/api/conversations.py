"""`/v1/conversations` and their items."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from parley.api.body import documented, read_body
from parley.api.http import JSONResponse
from parley.engine.conversations import (
    AddItemsRequest,
    ConversationService,
    CreateConversationRequest,
    UpdateConversationRequest,
)
from parley.engine.request import check_include
from parley.store import PageRequest

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=100)]
Order = Annotated[Literal["asc", "desc"], Query()]
Include = Annotated[list[str] | None, Query()]
# openai-python sends a list query parameter as `include[]=a&include[]=b`; others send `include=a&include=b`.
IncludeBrackets = Annotated[list[str] | None, Query(alias="include[]", include_in_schema=False)]


def _check_include(include: list[str] | None, brackets: list[str] | None) -> None:
    """`include`, in either form, checked as on `/v1/responses/{id}/input_items`."""
    check_include([*(include or ()), *(brackets or ())])


def _service(request: Request) -> ConversationService:
    return request.app.state.conversations  # type: ignore[no-any-return]


@router.post("/v1/conversations", openapi_extra=documented(CreateConversationRequest))
async def create_conversation(request: Request) -> JSONResponse:
    body = await read_body(request, CreateConversationRequest, empty_ok=True)
    return JSONResponse(await _service(request).create(body))


@router.get("/v1/conversations/{conversation_id}")
async def retrieve_conversation(request: Request, conversation_id: str) -> JSONResponse:
    return JSONResponse(await _service(request).retrieve(conversation_id))


@router.post("/v1/conversations/{conversation_id}", openapi_extra=documented(UpdateConversationRequest))
async def update_conversation(request: Request, conversation_id: str) -> JSONResponse:
    body = await read_body(request, UpdateConversationRequest)
    return JSONResponse(await _service(request).update(conversation_id, body))


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(request: Request, conversation_id: str) -> JSONResponse:
    return JSONResponse(await _service(request).delete(conversation_id))


@router.post("/v1/conversations/{conversation_id}/items", openapi_extra=documented(AddItemsRequest))
async def add_items(
    request: Request, conversation_id: str, include: Include = None, include_brackets: IncludeBrackets = None
) -> JSONResponse:
    _check_include(include, include_brackets)
    body = await read_body(request, AddItemsRequest)
    return JSONResponse(await _service(request).add_items(conversation_id, body))


@router.get("/v1/conversations/{conversation_id}/items")
async def list_items(
    request: Request,
    conversation_id: str,
    after: str | None = None,
    limit: Limit = 20,
    order: Order = "desc",
    include: Include = None,
    include_brackets: IncludeBrackets = None,
) -> JSONResponse:
    _check_include(include, include_brackets)
    page = PageRequest(limit=limit, order=order, after=after)
    return JSONResponse(await _service(request).list_items(conversation_id, page))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
async def retrieve_item(
    request: Request,
    conversation_id: str,
    item_id: str,
    include: Include = None,
    include_brackets: IncludeBrackets = None,
) -> JSONResponse:
    _check_include(include, include_brackets)
    return JSONResponse(await _service(request).retrieve_item(conversation_id, item_id))


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
async def delete_item(request: Request, conversation_id: str, item_id: str) -> JSONResponse:
    return JSONResponse(await _service(request).delete_item(conversation_id, item_id))
