"""The contexts of the responses this server stored lately, for the turns that continue them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from parley.store import Caller

# How many responses' contexts are kept: the items are shared between the
# contexts of one chain, so this bounds the lists more than the items.
_KEPT = 256


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
    may change an item of a turn's history.

    Each context is kept with its response's owner, and given only to a caller
    who sees that owner's responses: the cache answers no one the database
    would not.
    """

    def __init__(self, kept: int = _KEPT) -> None:
        self._kept = kept
        self._contexts: OrderedDict[str, tuple[str | None, list[dict[str, Any]]]] = OrderedDict()

    def get(self, response_id: str, caller: Caller) -> list[dict[str, Any]] | None:
        kept = self._contexts.get(response_id)
        if kept is None or not caller.sees(kept[0]):
            return None
        self._contexts.move_to_end(response_id)
        return kept[1]

    def keep(self, response_id: str, owner: str | None, items: list[dict[str, Any]]) -> None:
        self._contexts[response_id] = (owner, items)
        self._contexts.move_to_end(response_id)
        while len(self._contexts) > self._kept:
            self._contexts.popitem(last=False)

    def forget(self, response_id: str) -> None:
        self._contexts.pop(response_id, None)
