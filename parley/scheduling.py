"""Cooperating with the operating system's scheduler when a burst would keep a client waiting."""

from __future__ import annotations

import asyncio
import os


async def first_token_sent() -> None:
    """Lets the client read a stream's first token before the rest of a burst is handled.

    Writing to the client's socket wakes the client with a "synchronous" wakeup:
    Linux queues it on the writer's core, expecting the writer to sleep soon.
    Proxying a burst (an upstream that sends many tokens at once), Parley does
    not sleep, and a client on this machine waits for the end of the scheduler's
    slice (a millisecond or more) to read its first token. Once the write has
    left (the event loop writes what a step queued when the step ends), giving
    up the core once lets the client read now. It costs one system call a stream.
    """
    await asyncio.sleep(0)
    if _sched_yield is not None:
        _sched_yield()


_sched_yield = getattr(os, "sched_yield", None)
