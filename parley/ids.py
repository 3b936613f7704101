"""Ids in OpenAI's style: a type prefix and 48 random hex digits.

The items one model call produces (its reasoning, its message, its tool
calls) share their last 16 digits, the call's *turn mark*, as OpenAI's items
of one response share theirs with the response's id. The context builder
reads it back (`turn_of`) to know which calls a model made in one message,
whatever the items went through since: storage, a conversation, or a
stateless caller that sends them back as input.

An id that a request names must have the form of its kind's ids
(`check_id`): one that no response or conversation could have is a 400, as
OpenAI answers it, rather than a 404.
"""

from __future__ import annotations

import re
import secrets

from parley.errors import InvalidRequestError

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


# What follows an id's prefix: Parley's 48 hex digits, and whatever else letters, digits, `_` and `-` can spell.
_ID_TAIL = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_id(value: str, prefix: str, param: str) -> str:
    """`value`, when it has the form of an id that begins with `prefix` (`resp_`, `conv_`, `file-`).

    Otherwise a 400 in OpenAI's words (`Invalid 'conversation': 'abc'. Expected an ID that begins with
    'conv'.`), naming `param`: no such id can exist, which a 404 would leave the caller to wonder about.
    """
    if value.startswith(prefix) and _ID_TAIL.fullmatch(value[len(prefix) :]):
        return value
    shown = value if len(value) <= 80 else value[:80] + "..."
    raise InvalidRequestError(
        f"Invalid '{param}': '{shown}'. Expected an ID that begins with '{prefix[:-1]}'.",
        param=param,
        code="invalid_value",
    )
