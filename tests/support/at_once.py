"""Many calls started at the same moment, each on a thread of its own: concurrent turns, as clients make them."""

from __future__ import annotations

import threading
from collections.abc import Callable


def at_once(count: int, call: Callable[[int], object], timeout: float = 60.0) -> None:
    """Runs `call(n)` for each n below `count`, all released together (a barrier); raises the first failure."""
    failures: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(n: int) -> None:
        try:
            barrier.wait(10)
            call(n)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), f"a call still ran after {timeout:g} s"
    if failures:
        raise failures[0]
