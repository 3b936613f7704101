"""Cursor pagination, as OpenAI's list endpoints do it: `after`, `before`, `limit`, `order`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Order = Literal["asc", "desc"]


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
