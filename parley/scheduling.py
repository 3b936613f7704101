"""Cooperating with the operating system's scheduler when a burst would keep a client waiting."""

from __future__ import annotations

import asyncio
import os


async def first_token_sent() -> None:
    """Lets the client read a stream's first token before the rest of a burst is handled.

    Handling a burst (an upstream that sends many tokens at once) would keep
    the first token's frame from leaving. So the caller, which has just made
    that frame (or, in the agent loop, its events, for the writer task to
    frame), waits two steps of the event loop, the first of which lets the
    writer task write (uvloop sends at once what is written while nothing is
    queued). Then it gives up its core once: the write wakes the client, and
    when Linux queues the client on this core, Parley, with the burst to
    handle, would otherwise keep it waiting. It costs one system call a stream.
    (On this machine the client was mostly queued on the other core, behind
    the upstream; see bench/README.md.)
    """
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    if _sched_yield is not None:
        _sched_yield()


_sched_yield = getattr(os, "sched_yield", None)
