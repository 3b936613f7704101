"""`/v1/conversations` and their items."""

from __future__ import annotations

from fastapi import APIRouter, Request

from parley.api.auth import caller_of
from parley.api.body import documented, read_body
from parley.api.http import JSONResponse
from parley.api.ids import ConversationId, ItemId
from parley.api.params import Include, IncludeBrackets, Limit, Order, check_includes
from parley.engine.conversations import (
    AddItemsRequest,
    ConversationService,
    CreateConversationRequest,
    UpdateConversationRequest,
)
from parley.store import PageRequest

router = APIRouter()


def _service(request: Request) -> ConversationService:
    return request.app.state.conversations


@router.post("/v1/conversations", openapi_extra=documented(CreateConversationRequest))
async def create_conversation(request: Request) -> JSONResponse:
    body = await read_body(request, CreateConversationRequest, empty_ok=True)
    return JSONResponse(await _service(request).create(body, caller_of(request)))


@router.get("/v1/conversations/{conversation_id}")
async def retrieve_conversation(request: Request, conversation_id: ConversationId) -> JSONResponse:
    return JSONResponse(await _service(request).retrieve(conversation_id, caller_of(request)))


@router.post("/v1/conversations/{conversation_id}", openapi_extra=documented(UpdateConversationRequest))
async def update_conversation(request: Request, conversation_id: ConversationId) -> JSONResponse:
    body = await read_body(request, UpdateConversationRequest)
    return JSONResponse(await _service(request).update(conversation_id, body, caller_of(request)))


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(request: Request, conversation_id: ConversationId) -> JSONResponse:
    return JSONResponse(await _service(request).delete(conversation_id, caller_of(request)))


@router.post("/v1/conversations/{conversation_id}/items", openapi_extra=documented(AddItemsRequest))
async def add_items(
    request: Request, conversation_id: ConversationId, include: Include = None, include_brackets: IncludeBrackets = None
) -> JSONResponse:
    check_includes(include, include_brackets)
    body = await read_body(request, AddItemsRequest)
    return JSONResponse(await _service(request).add_items(conversation_id, body, caller_of(request)))


@router.get("/v1/conversations/{conversation_id}/items")
async def list_items(
    request: Request,
    conversation_id: ConversationId,
    after: str | None = None,
    limit: Limit = 20,
    order: Order = "desc",
    include: Include = None,
    include_brackets: IncludeBrackets = None,
) -> JSONResponse:
    check_includes(include, include_brackets)
    page = PageRequest(limit=limit, order=order, after=after)
    return JSONResponse(await _service(request).list_items(conversation_id, page, caller_of(request)))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
async def retrieve_item(
    request: Request,
    conversation_id: ConversationId,
    item_id: ItemId,
    include: Include = None,
    include_brackets: IncludeBrackets = None,
) -> JSONResponse:
    check_includes(include, include_brackets)
    return JSONResponse(await _service(request).retrieve_item(conversation_id, item_id, caller_of(request)))


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
async def delete_item(request: Request, conversation_id: ConversationId, item_id: ItemId) -> JSONResponse:
    return JSONResponse(await _service(request).delete_item(conversation_id, item_id, caller_of(request)))
