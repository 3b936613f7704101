"""SQLite's WAL checkpoints, on a thread of their own rather than in the commit that crosses the threshold.

In WAL mode a commit appends pages to the `-wal` file, and SQLite's automatic
checkpoint copies them back into the database (and syncs both files) in the
commit that takes the log past 1,000 pages, on the connection that made it. For
Parley that connection is the one writer thread, so every few dozen background
jobs one write waited for a checkpoint, and every write queued behind it: in
a microbenchmark of a job's writes (its row, its claim, its final state and
events, about 60 KB), commits took 0.31 ms with the automatic checkpoint and
0.125 ms without it.

So Parley's connections turn the automatic checkpoint off
(`PRAGMA wal_autocheckpoint=0`), and the writer asks this thread for one after
each commit; it runs one on a connection of its own, at most every
`INTERVAL_SECONDS`, without waiting for any lock. It is a RESTART checkpoint:
when no write is under way it takes the write lock for the copy, so that the
next write starts the log again from its beginning; when one is, it copies
what it can as a PASSIVE one would. PASSIVE alone never let the log restart
while writes went on (a write that begins during a checkpoint reads the log,
and keeps the next from restarting it): the log of 200 writes of 200 KB grew
to 84 MB (tests/test_database_writes.py). Several processes on one file each
have theirs; one that finds another checkpointing skips its turn.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import sqlean  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

# The least time between two checkpoints of one process: the writes of this long make the log's length.
INTERVAL_SECONDS = 0.05


class Checkpoints:
    """A thread that checkpoints the WAL of the SQLite file `path` when asked (`wanted`), until `close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wanted = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def wanted(self) -> None:
        """Pages were committed: a checkpoint is due, within `INTERVAL_SECONDS`."""
        self._wanted.set()

    def close(self) -> None:
        self._closing.set()
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        connection = None
        try:
            while True:
                self._wanted.wait()
                if self._closing.is_set():
                    return
                self._wanted.clear()
                try:
                    if connection is None:
                        # No busy wait: a checkpoint that finds a write or another one under way does what it can.
                        connection = sqlean.connect(str(self.path), timeout=0, isolation_level=None)
                    connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                except sqlean.Error as exc:
                    log.debug("no checkpoint of %s this time: %s", self.path, exc)
                # What the writer commits meanwhile waits for the next turn.
                if self._closing.wait(INTERVAL_SECONDS):
                    return
        finally:
            if connection is not None:
                connection.close()
