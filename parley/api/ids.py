"""The ids in request paths, checked before a route runs: one that no object could have is a 400.

Each is a path parameter's type: `response_id: ResponseId` in a route whose path has `{response_id}`.
Responses, conversations, files, vector stores and their file batches have ids of their own form
(`parley.ids.check_id`); a conversation's items may have ids their callers chose, so an item id is malformed
only when no item could have it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from parley.engine.items import MAX_ID_LENGTH
from parley.errors import InvalidRequestError
from parley.ids import check_id


def _response_id(response_id: str) -> str:
    return check_id(response_id, "resp_", "response_id")


def _conversation_id(conversation_id: str) -> str:
    return check_id(conversation_id, "conv_", "conversation_id")


def _file_id(file_id: str) -> str:
    return check_id(file_id, "file-", "file_id")


def _vector_store_id(vector_store_id: str) -> str:
    return check_id(vector_store_id, "vs_", "vector_store_id")


def _batch_id(batch_id: str) -> str:
    return check_id(batch_id, "vsfb_", "batch_id")


def _item_id(item_id: str) -> str:
    if 0 < len(item_id) <= MAX_ID_LENGTH and item_id.isprintable():
        return item_id
    shown = item_id if len(item_id) <= 80 else item_id[:80] + "..."
    raise InvalidRequestError(
        f"Invalid 'item_id': '{shown}'. Expected an ID of at most {MAX_ID_LENGTH} printable characters.",
        param="item_id",
        code="invalid_value",
    )


ResponseId = Annotated[str, Depends(_response_id)]
ConversationId = Annotated[str, Depends(_conversation_id)]
FileId = Annotated[str, Depends(_file_id)]
VectorStoreId = Annotated[str, Depends(_vector_store_id)]
BatchId = Annotated[str, Depends(_batch_id)]
ItemId = Annotated[str, Depends(_item_id)]
