"""Ids in OpenAI's style: a type prefix and 48 random hex digits.

The items one model call produces (its reasoning, its message, its tool
calls) share their last 16 digits, the call's *turn mark*, as OpenAI's items
of one response share theirs with the response's id. The context builder
reads it back (`turn_of`) to know which calls a model made in one message,
whatever the items went through since: storage, a conversation, or a
stateless caller that sends them back as input.
"""

from __future__ import annotations

import re
import secrets

_MARKED = re.compile(r"[a-z]+_[0-9a-f]{32}([0-9a-f]{16})")


def new_id(prefix: str, turn: str | None = None) -> str:
    """A new id; with a `turn` mark (see `new_turn`), one that says which model call it comes from."""
    if turn is None:
        return f"{prefix}_{secrets.token_hex(24)}"
    return f"{prefix}_{secrets.token_hex(16)}{turn}"


def new_turn() -> str:
    """A new turn mark, for the items of one model call."""
    return secrets.token_hex(8)


def in_turn(item_id: str, turn: str) -> str:
    """`item_id` with the turn mark `turn`; unchanged when it is not an id of this form."""
    if _MARKED.fullmatch(item_id) is None:
        return item_id
    return item_id[:-16] + turn


def turn_of(item_id: object) -> str | None:
    """The turn mark an id carries: its last 16 digits, when it has this module's form; None otherwise.

    Ids made before marks existed carry random digits there, so each reads as a turn of its own.
    """
    if not isinstance(item_id, str):
        return None
    match = _MARKED.fullmatch(item_id)
    return match.group(1) if match else None
