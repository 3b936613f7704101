"""The contexts of the responses this server stored lately, for the turns that continue them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson

from parley.store import Caller

# How many responses' contexts are kept at most, whatever their size: each is a list of its own.
_KEPT = 256
# The bytes they may hold by default (`engine.kept_context_bytes`).
DEFAULT_BYTES = 32 * 1024 * 1024


class ChainContexts:
    """The items of a stored response's chain (what came before it, its input, its output), kept after it ends.

    A turn with `previous_response_id` continues from every item of the chain
    that ends there. Read from the database, that is a query whose cost grows
    with the chain, at every turn; an agent's next turn usually comes to the
    server that produced the turn before, which still has them here. They do
    not change once the response has ended: deleting a response hides it, and
    its items stay for the chains that go through it. A response in a
    conversation is not kept, since the conversation's items can be deleted.

    The items are shared with the turns that use them, not copied: nothing
    may change an item of a turn's history. The contexts of one chain share
    most of their items too, so what they hold is counted by item: each item
    kept is counted once, by its size as stored (its JSON), measured once,
    when a context first holds it; a context holds the rest of its items by
    reference, and counting them is a look-up each. At most `max_bytes` are
    held, and `kept` contexts: the least lately used go first, and a context
    larger than `max_bytes` on its own is not kept (its next turn reads the
    database).

    Each context is kept with its response's owner, and given only to a caller
    who sees that owner's responses: the cache answers no one the database
    would not.
    """

    def __init__(self, max_bytes: int = DEFAULT_BYTES, kept: int = _KEPT) -> None:
        self.max_bytes = max_bytes
        self._kept = kept
        self._contexts: OrderedDict[str, tuple[str | None, list[dict[str, Any]]]] = OrderedDict()
        # Every item some context holds, by identity: [its size as stored, how many contexts hold it].
        self._items: dict[int, list[int]] = {}
        self.bytes = 0  # what the items held measure, together

    def get(self, response_id: str, caller: Caller) -> list[dict[str, Any]] | None:
        kept = self._contexts.get(response_id)
        if kept is None or not caller.sees(kept[0]):
            return None
        self._contexts.move_to_end(response_id)
        return kept[1]

    def keep(self, response_id: str, owner: str | None, items: list[dict[str, Any]]) -> None:
        self.forget(response_id)
        measured: dict[int, int] = {}  # the sizes of the items no context holds yet
        own, seen = 0, set()
        for item in items:
            key = id(item)
            if key not in seen:
                seen.add(key)
                held = self._items.get(key)
                own += held[0] if held is not None else measured.setdefault(key, len(orjson.dumps(item)))
        if own > self.max_bytes:
            return  # larger than all the cache may hold: its next turn reads the database
        for item in items:
            held = self._items.get(id(item))
            if held is None:
                self._items[id(item)] = [measured[id(item)], 1]
                self.bytes += measured[id(item)]
            else:
                held[1] += 1
        self._contexts[response_id] = (owner, items)
        # The least lately used go first; this one, the latest, fits on its own.
        while self.bytes > self.max_bytes or len(self._contexts) > self._kept:
            self._drop(next(iter(self._contexts)))

    def forget(self, response_id: str) -> None:
        if response_id in self._contexts:
            self._drop(response_id)

    def __contains__(self, response_id: str) -> bool:
        return response_id in self._contexts

    def _drop(self, response_id: str) -> None:
        _, items = self._contexts.pop(response_id)
        for item in items:
            held = self._items[id(item)]
            held[1] -= 1
            if held[1] == 0:
                del self._items[id(item)]
                self.bytes -= held[0]


# How many responses' contexts one connection holds (see HeldContexts): an agent continues its latest response,
# and now and then forks from one a few turns back.
HELD_RESPONSES = 8


class HeldContexts:
    """The contexts of the last responses one client connection made without storing them (`store: false`).

    A WebSocket connection (parley.api.websocket) keeps one of these for its
    life, so that a `store: false` response made on it can be continued by
    `previous_response_id` although nothing of it is in the database; another
    connection, or the same client after a reconnect, cannot. Each context is
    what the store would give back for that response's continuation (the chain
    before it, its input, its output: see `service._continued_from`), with
    the tools it ran with. At most `kept` responses are held, and `max_bytes`
    of items, as a `ChainContexts` counts them: the least lately used go first.
    """

    def __init__(self, max_bytes: int = DEFAULT_BYTES, kept: int = HELD_RESPONSES) -> None:
        self._contexts = ChainContexts(max_bytes, kept)
        self._tools: dict[str, list[dict[str, Any]]] = {}

    def get(self, response_id: str, caller: Caller) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """The items the response's continuation starts from, and the tools it ran with; None if not held."""
        items = self._contexts.get(response_id, caller)
        if items is None:
            return None
        return items, self._tools.get(response_id, [])

    def keep(
        self, response_id: str, owner: str | None, items: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> None:
        self._contexts.keep(response_id, owner, items)
        self._tools[response_id] = tools
        for dropped in [held for held in self._tools if held not in self._contexts]:
            del self._tools[dropped]

    def forget(self, response_id: str) -> None:
        """Drops a response's context: a continuation of it failed, and must not be tried again from it."""
        self._contexts.forget(response_id)
        self._tools.pop(response_id, None)
