"""Batches a stream by what is ready: the consumer takes everything produced since it last asked.

A model's tokens often arrive in bursts (a fast upstream, or a network read
holding many events). Reading the source in a task of its own lets a burst
pile up while the consumer is busy, so that it is passed on in one write
instead of one write per token; a paced source still passes each token on
as soon as it comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")

# A burst is handed over in pieces of at most this many items, so that a source
# faster than its consumer cannot hold everything back until it ends. The first
# pieces are smaller: the first token should leave at once.
MAX_BATCH = 64
# Reading stops while this many items wait for the consumer: a consumer that is
# busy elsewhere (writing the response's first row, say) is not buried under a
# burst it has not asked for, and the reading does not hog the interpreter meanwhile.
MAX_PENDING = 64


async def batched(source: AsyncIterator[list[T]]) -> AsyncIterator[list[T]]:
    pending: list[T] = []
    ready = asyncio.Event()
    taken = asyncio.Event()
    finished = False
    error: BaseException | None = None

    async def pump() -> None:
        nonlocal finished, error
        limit = 1
        try:
            async for items in source:
                pending.extend(items)
                ready.set()
                if len(pending) >= limit:
                    limit = min(limit * 2, MAX_BATCH)
                    await asyncio.sleep(0)  # let the consumer take what is there
                while len(pending) >= MAX_PENDING:
                    taken.clear()
                    await taken.wait()
        except BaseException as exc:  # handed to the consumer, after what came before it
            error = exc
        finally:
            finished = True
            ready.set()

    task = asyncio.create_task(pump())
    try:
        while True:
            if not pending and not finished:
                ready.clear()
                await ready.wait()
            if pending:
                batch = pending[:]
                pending.clear()
                taken.set()
                yield batch
            elif finished:
                break
        if error is not None:
            raise error
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
