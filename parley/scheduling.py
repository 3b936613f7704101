"""Cooperating with the operating system's scheduler when a burst would keep a client waiting."""

from __future__ import annotations

import asyncio
import os


async def first_token_sent() -> None:
    """Lets the client read a stream's first token before the rest of a burst is handled.

    The event loop (uvloop) does not write at once: it queues what a step
    writes and sends it once the loop has run every step that was ready and
    polled for I/O. Handling a burst (an upstream that sends many tokens at
    once) would fill that time. So the caller, which has just made the first
    token's frame (or, in the agent loop, its events, for the writer task to
    frame), waits two steps: one for the writer to write, one for the loop to
    send. Then it gives up its core once: the write wakes the client with a
    "synchronous" wakeup, which Linux queues on the writer's core expecting
    it to sleep soon, and Parley, with the burst to handle, would not. It
    costs one system call a stream.
    """
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    if _sched_yield is not None:
        _sched_yield()


_sched_yield = getattr(os, "sched_yield", None)
