"""Cursor pagination, as OpenAI's list endpoints do it: `after`, `before`, `limit`, `order`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from parley.errors import InvalidRequestError

Order = Literal["asc", "desc"]


class UnknownCursorError(InvalidRequestError):
    """An `after` or `before` that names nothing in the list: a 400 naming the cursor, never an empty page.

    An id that was in the list and has been deleted since is still a cursor: paging on
    while deleting what was read goes on where it was.
    """

    def __init__(self, param: str, item_id: str) -> None:
        super().__init__(
            f"Invalid value for '{param}': '{item_id}' is not an id in this list.", param=param, code="invalid_value"
        )


@dataclass(slots=True, frozen=True)
class PageRequest:
    limit: int = 20
    order: Order = "desc"
    after: str | None = None
    before: str | None = None


@dataclass(slots=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool

    def as_list(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": self.data,
            "first_id": self.data[0]["id"] if self.data else None,
            "last_id": self.data[-1]["id"] if self.data else None,
            "has_more": self.has_more,
        }


def read_page(
    connection: sa.Connection, query: Any, key: Any, cursor_of: Any, page: PageRequest
) -> tuple[list[Any], bool]:
    """The rows of `query` on `page`, ordered by `key`, and whether more follow.

    `cursor_of(id)` selects the key of the listed item with that id (deleted ones
    included); an `after` or `before` it finds nothing for raises UnknownCursorError.
    """
    keys: dict[str, Any] = {}
    for param, item_id in (("after", page.after), ("before", page.before)):
        if item_id is not None:
            keys[param] = connection.scalar(cursor_of(item_id))
            if keys[param] is None:
                raise UnknownCursorError(param, item_id)
    descending = page.order == "desc"
    if "after" in keys:
        query = query.where(key < keys["after"] if descending else key > keys["after"])
    if "before" in keys:
        query = query.where(key > keys["before"] if descending else key < keys["before"])
    query = query.order_by(key.desc() if descending else key.asc()).limit(page.limit + 1)
    rows = list(connection.execute(query))
    return rows[: page.limit], len(rows) > page.limit
