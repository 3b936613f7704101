"""Conversations as a service: the durable history that responses read and append to."""

from __future__ import annotations

import time
from typing import Any

from openai.types.conversations import conversation_create_params, conversation_update_params, item_create_params
from pydantic import Field, field_validator

from parley.engine.items import parse_item
from parley.engine.request import check_metadata
from parley.errors import InvalidRequestError, NotFoundError
from parley.ids import new_id
from parley.package_fields import PackageFields, keys_of
from parley.store import Caller, ConversationStore, DuplicateItem, PageRequest

MAX_ITEMS_PER_REQUEST = 20


class ConversationNotFoundError(NotFoundError):
    def __init__(self, conversation_id: str, *, param: str | None = None) -> None:
        super().__init__(f"Conversation with id '{conversation_id}' not found.", param=param)


class CreateConversationRequest(PackageFields):
    known = keys_of(conversation_create_params.ConversationCreateParams)

    metadata: dict[str, str] | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    items: list[dict[str, Any]] | None = Field(None, max_length=MAX_ITEMS_PER_REQUEST)

    _metadata_limits = field_validator("metadata")(lambda cls, value: check_metadata(value))


class UpdateConversationRequest(PackageFields):
    known = keys_of(conversation_update_params.ConversationUpdateParams)

    metadata: dict[str, str] | None

    _metadata_limits = field_validator("metadata")(lambda cls, value: check_metadata(value))


class AddItemsRequest(PackageFields):
    # `include` is a query parameter of this endpoint, though the package declares it in the body too.
    known = keys_of(item_create_params.ItemCreateParams) - {"include"}

    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


def _items(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items = [parse_item(item, f"items[{index}]") for index, item in enumerate(raw)]
    for index, item in enumerate(items):
        if item["type"] == "item_reference":
            raise InvalidRequestError(
                "A conversation holds items, not references to them.",
                param=f"items[{index}].type",
                code="invalid_value",
            )
    return items


def check_new_ids(items: list[dict[str, Any]], existing: set[str], param: str) -> None:
    """A conversation holds each item once: an id it already has, or one given twice, is a 400."""
    seen = set(existing)
    for index, item in enumerate(items):
        if item["id"] in seen:
            raise InvalidRequestError(
                f"Duplicate item: the conversation already has an item with id '{item['id']}'.",
                param=f"{param}[{index}].id",
                code="invalid_value",
            )
        seen.add(item["id"])


class ConversationService:
    """Each method acts for a `Caller`: a conversation another owner holds is, to it, not found."""

    def __init__(self, store: ConversationStore) -> None:
        self.store = store

    async def create(self, request: CreateConversationRequest, caller: Caller) -> dict[str, Any]:
        items = _items(request.items or [])
        check_new_ids(items, set(), "items")
        return await self.store.create(new_id("conv"), int(time.time()), request.metadata or {}, items, caller.owner)

    async def retrieve(self, conversation_id: str, caller: Caller, *, param: str | None = None) -> dict[str, Any]:
        conversation = await self.store.get(conversation_id, caller)
        if conversation is None:
            raise ConversationNotFoundError(conversation_id, param=param)
        return conversation

    async def update(self, conversation_id: str, request: UpdateConversationRequest, caller: Caller) -> dict[str, Any]:
        conversation = await self.store.update_metadata(conversation_id, request.metadata or {}, caller)
        if conversation is None:
            raise ConversationNotFoundError(conversation_id)
        return conversation

    async def delete(self, conversation_id: str, caller: Caller) -> dict[str, Any]:
        if not await self.store.delete(conversation_id, caller):
            raise ConversationNotFoundError(conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def add_items(self, conversation_id: str, request: AddItemsRequest, caller: Caller) -> dict[str, Any]:
        await self.retrieve(conversation_id, caller)
        items = _items(request.items)
        check_new_ids(items, await self.store.taken_ids(conversation_id, [item["id"] for item in items]), "items")
        try:
            await self.store.append(conversation_id, items)
        except DuplicateItem as exc:  # the same id, added at the same moment by another request
            raise InvalidRequestError(str(exc), param="items", code="invalid_value") from exc
        return {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"],
            "last_id": items[-1]["id"],
            "has_more": False,
        }

    async def list_items(self, conversation_id: str, page: PageRequest, caller: Caller) -> dict[str, Any]:
        await self.retrieve(conversation_id, caller)
        return (await self.store.list_items(conversation_id, page)).as_list()

    async def retrieve_item(self, conversation_id: str, item_id: str, caller: Caller) -> dict[str, Any]:
        await self.retrieve(conversation_id, caller)
        item = await self.store.get_item(conversation_id, item_id)
        if item is None:
            raise NotFoundError(f"Item with id '{item_id}' not found.")
        return item

    async def delete_item(self, conversation_id: str, item_id: str, caller: Caller) -> dict[str, Any]:
        """Deletes one item; answers with the conversation, as OpenAI does."""
        conversation = await self.retrieve(conversation_id, caller)
        if not await self.store.delete_item(conversation_id, item_id):
            raise NotFoundError(f"Item with id '{item_id}' not found.")
        return conversation
