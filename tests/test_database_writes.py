"""SQLite's writes: those that wait for the one writer are committed together (`Database._sqlite_write`), and
each stays its own: one that fails is undone alone, and raises to its caller only; notifications are heard for
those committed. On a real SQLite file, through `Database`, as the repositories write."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from parley.store.database import Database, notify

WRITES = 300


@pytest.fixture
async def databases(tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    """Two `Database`s on one file, as two `parley serve` processes have."""
    url = f"sqlite:///{tmp_path / 'parley.db'}"
    first, second = Database(url), Database(url)
    await first.write(lambda c: c.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, word TEXT UNIQUE)"))
    yield first, second
    await first.close()
    await second.close()


class Failed(Exception):
    pass


def _write(number: int, transactions: list[Any]) -> Any:
    """Write `number`: a row and a notification; every seventh then raises, every eleventh repeats a word."""

    def work(connection: sa.Connection) -> int:
        transactions.append(connection.get_transaction())
        word = "taken" if number % 11 == 0 else f"word {number}"
        connection.execute(sa.text("INSERT INTO notes (id, word) VALUES (:id, :word)"), {"id": number, "word": word})
        notify(connection, "notes", str(number))
        if number % 7 == 0:
            raise Failed(number)
        return number

    return work


def _expected(number: int) -> str:
    """What becomes of write `number`, run in the order written: 0 takes the word, then raises, which undoes it; 11
    takes it then, and the later elevens repeat it."""
    if number % 11 == 0 and number not in (0, 11):
        return "repeats"
    return "raises" if number % 7 == 0 else "kept"


async def test_writes_waiting_together_commit_together_and_each_fails_alone(
    databases: tuple[Database, Database],
) -> None:
    writer, listener = databases
    heard: list[str] = []
    stop = await listener.listen("notes", heard.append)
    assert stop is not None
    transactions: list[Any] = []  # the transaction each write ran in (kept, so that no two share an id)
    outcomes = await asyncio.gather(
        *(writer.write(_write(n, transactions)) for n in range(WRITES)), return_exceptions=True
    )
    for number, outcome in enumerate(outcomes):
        expected = _expected(number)
        if expected == "repeats":
            assert isinstance(outcome, sa.exc.IntegrityError), (number, outcome)
        elif expected == "raises":
            assert isinstance(outcome, Failed) and outcome.args == (number,), (number, outcome)
        else:
            assert outcome == number
    kept = [number for number in range(WRITES) if _expected(number) == "kept"]
    assert len({id(transaction) for transaction in transactions}) < WRITES, "no two writes were committed together"
    rows = await writer.read(lambda c: [row[0] for row in c.exec_driver_sql("SELECT id FROM notes ORDER BY id")])
    assert rows == kept
    # The other process hears the writes committed, and only those.
    deadline = time.monotonic() + 10
    while len(heard) < len(kept) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert sorted(int(payload) for payload in heard) == kept
    await stop()


async def test_a_write_alone_that_fails_is_rolled_back_whole(databases: tuple[Database, Database]) -> None:
    writer, _ = databases
    transactions: list[Any] = []
    with pytest.raises(Failed):
        await writer.write(_write(14, transactions))
    assert await writer.read(lambda c: c.exec_driver_sql("SELECT count(*) FROM notes").scalar()) == 0
    assert await writer.write(_write(15, transactions)) == 15


async def test_the_log_is_checkpointed_as_writes_go_on(databases: tuple[Database, Database]) -> None:
    """SQLite's own checkpoint is off (`wal_autocheckpoint=0`): a thread of the server's checkpoints the WAL, so
    that the log stays as short as a few writes rather than growing with every one (parley.store.checkpoints)."""
    writer, _ = databases
    wal = Path(str(writer.url.database) + "-wal")
    blob = "x" * 200_000
    for number in range(200):  # 40 MB written in all, 200 KB a transaction
        await writer.write(
            lambda c, n=number: c.execute(
                sa.text("INSERT INTO notes (id, word) VALUES (:id, :word)"), {"id": n, "word": f"{n}{blob}"}
            )
        )
        if number % 10 == 9:
            await asyncio.sleep(0.06)  # a checkpoint's turn comes every 50 ms at most
    assert wal.stat().st_size < 10_000_000, f"the WAL grew to {wal.stat().st_size} bytes"
