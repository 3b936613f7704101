"""The stored row of one response while this server produces it: the one owner of its writes.

    start    the row and the input are written shortly after the turn starts (`FIRST_WRITE_AFTER`), or at
             once when a request needs them (`written`): a retrieval, a `previous_response_id`, a delete
    keep     at each renewal of the server's lease, the output so far replaces what was kept before, so a
             server killed mid-response leaves what it had streamed (its open items `incomplete`), and the
             server that finds the lease run out marks the row `failed`
    end      once: the final state and output; or, for a response that ended before its first write, all of
             it in one write; or, when the client never had the response's id (it was refused before its
             first event), nothing stays

The agent loop knows none of this: the service (`parley.engine.service`) makes a record for each stored
response and ends it as the turn ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from parley.store import ResponseStore
from parley.store.responses import EventBatch

# How long after its start a stored response's first row is written. Not at once: the
# write would compete for the CPU with the first token, or, written before the model
# call, delay it; a model that answers this fast has its response written once, whole,
# when it ends. Whatever needs the row before (a retrieval, a `previous_response_id`)
# has it written then. The benchmark `bench/responses_stream.py` measures the first token.
FIRST_WRITE_AFTER = 0.05  # seconds


class ResponseRecord:
    """The row of one stored response, from its first write to its end."""

    def __init__(
        self, store: ResponseStore, response: dict[str, Any], input_items: list[dict[str, Any]], owner: str | None
    ) -> None:
        self.store = store
        self.response = response
        self.input_items = input_items
        self.owner = owner
        self._written: asyncio.Future[None] | None = None
        self._ended = False
        self._kept = 0  # how many output events the last kept output had seen (see `keep`)
        self._keeping = False  # whether some output is kept in place of the final one
        # `keep` runs beside the turn, from the lease keeper: the end must not be overwritten by it.
        self._lock = asyncio.Lock()

    @property
    def id(self) -> str:
        return str(self.response["id"])

    def start_soon(self) -> None:
        """Writes the row shortly (see `FIRST_WRITE_AFTER`), unless the response ends before."""
        asyncio.get_running_loop().call_later(FIRST_WRITE_AFTER, self.written)

    def adopt(self) -> None:
        """Takes over a row that is already written: a background response's, stored when it was queued."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        written.set_result(None)
        self._written = written

    def written(self) -> asyncio.Future[None] | None:
        """Starts writing the row, once; the write, which a request that needs the row waits for.

        None once the response ended without a row of its own (refused before its first event).
        """
        if self._written is None and not self._ended:
            self._written = asyncio.ensure_future(self.store.begin(self.response, self.input_items, self.owner))
        return self._written

    async def keep(self, snapshot: Callable[[], list[dict[str, Any]]], changes: int) -> None:
        """Keeps the output so far (a copy, from `snapshot`) in place of the one kept before, when it changed
        (`changes`, the count of the response's events, grew); what is still open is kept `incomplete`, as a
        crash would leave it."""
        written = self._written
        if written is None or not written.done() or written.exception() is not None or changes == self._kept:
            return
        kept = snapshot()
        for item in kept:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        async with self._lock:
            if self._ended:
                return
            self._kept = changes
            self._keeping = True
            await self.store.keep_output(self.response, self.input_items, kept)

    async def end(self, output: list[dict[str, Any]], events: EventBatch | None = None) -> None:
        """Writes the response's final state and output, once; with a background response's last `events`."""
        async with self._lock:
            await self._end(output, events)

    async def _end(self, output: list[dict[str, Any]], events: EventBatch | None = None) -> None:
        self._ended = True
        if self._written is None:
            # (A background response's row was written when it was queued: `adopt`.)
            assert events is None
            # It ended before its first row was written (a fast model, a short answer): one
            # write of the whole response, which whoever waits for its row waits for.
            self._written = asyncio.ensure_future(
                self.store.insert_finished(self.response, self.input_items, output, self.owner)
            )
            await self._written
            return
        await self._written
        await self.store.finish(self.response, output, self.input_items, replace=self._keeping, events=events)

    async def discard(self) -> None:
        """Leaves nothing of a response refused before its first event: its client never had its id."""
        async with self._lock:
            self._ended = True
            if self._written is not None:
                await asyncio.gather(self._written, return_exceptions=True)
                await self.store.discard(self.id)
