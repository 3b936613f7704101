"""Bounds that more than one layer applies, so that each applies the same one."""

from __future__ import annotations

from typing import Any

# How deep JSON that Parley takes in may nest (a request body, an MCP server's tool schema): orjson
# reads 1,024 levels but writes only 254, so anything deeper that got stored would fail every read
# of it back. 64 leaves room for the levels a stored object adds around what came in.
MAX_DEPTH = 64


def nested_deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` is, or holds, an object or a list inside `limit` others (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
