"""Query parameters that several routes share, as FastAPI annotations."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query

from parley.engine.request import check_include

Limit = Annotated[int, Query(ge=1, le=100)]
# A stream's event to follow after (`GET /v1/responses/{id}?stream=true`): -1 for all, at most what the stored
# sequence numbers hold (a 32-bit integer on PostgreSQL; a larger one failed to bind, a 500).
StartingAfter = Annotated[int | None, Query(ge=-1, le=2**31 - 1)]
Order = Annotated[Literal["asc", "desc"], Query()]
Include = Annotated[list[str] | None, Query()]
# openai-python sends a list query parameter as `include[]=a&include[]=b`; others send `include=a&include=b`.
IncludeBrackets = Annotated[list[str] | None, Query(alias="include[]", include_in_schema=False)]


def check_includes(include: list[str] | None, brackets: list[str] | None) -> None:
    """`include`, in either form, checked against OpenAI's list of values."""
    check_include([*(include or ()), *(brackets or ())])
