"""The database engine, for SQLite and PostgreSQL alike, and migrations at start."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
import sqlean  # type: ignore[import-untyped]
import sqlite_vec  # type: ignore[import-untyped]
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from parley.store.checkpoints import Checkpoints
from parley.store.signals import Signals

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"

# Any constant will do: replicas starting together take turns migrating.
_MIGRATION_LOCK = 0x7061726C6579


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# A `\u0000` escape that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _jsonb_dumps(value: Any) -> str:
    """JSON for PostgreSQL's jsonb, which cannot hold the NUL character.

    Requests carrying one are refused (see `api.body`); one that a model or a
    tool produced is stored as U+FFFD, so that the turn is still stored.
    Bytes (a `bytea` column's, in `write_together`'s rows) are written as
    PostgreSQL reads bytea from text, `\\x` and their hex.
    """
    text = orjson.dumps(value, default=_bytea).decode()
    return _NUL_ESCAPE.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


def _bytea(value: Any) -> str:
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


T = TypeVar("T")

# A transaction: a function of a synchronous connection, run whole (see `Database`).
Work = Callable[[sa.Connection], T]

# SQLite threads that read at once; the one writer is apart (WAL lets readers run beside it).
_SQLITE_READERS = 4
# The most writes committed together (see `Database._sqlite_write`).
_SQLITE_GROUP = 32
# How long the writes of one transaction may hold the event loop (`Database._drain`): those left go in the next,
# after the loop's other work.
_SQLITE_LOOP_BUDGET_SECONDS = 0.002
# How long a write waits for another process's write to end (the connections' `timeout`).
_SQLITE_WRITE_WAIT_SECONDS = 30


class Database:
    """The database, on SQLite or PostgreSQL: transactions written once, as plain functions of a connection.

    `read(work)` and `write(work)` run `work(connection)` in one transaction and
    return its result. The repositories write each transaction as such a function,
    the same for both databases; what differs is where it runs:

    - SQLite (sqlean, the standard library's driver with its own SQLite) runs
      each read whole on one of a few threads (WAL lets them run beside the
      writer), one thread trip per transaction: an asyncio driver (aiosqlite)
      makes one per driver call instead, and a response's row and items took
      seven, and three times the CPU of the work itself. Writes run in the order
      they come, those that wait together in one transaction, on the event loop
      once the write lock is had (`_drain`): SQLite lets one writer at a time in.
    - PostgreSQL (asyncpg) runs the function on the event loop
      (`AsyncConnection.run_sync`): each statement is awaited, and PostgreSQL
      locks rows itself.
    """

    def __init__(self, url: str) -> None:
        self.url = sa.make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # Every connection this server takes ends its transaction itself (`begin()`
        # commits or rolls back, `connect()` rolls back on close): the pool's own
        # rollback on return would be one more round trip per transaction, for nothing.
        options: dict[str, Any] = {
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
            "pool_reset_on_return": None,
        }
        self.engine: AsyncEngine | None = None
        self._sqlite: sa.Engine | None = None
        self._listening: Any = None  # PostgreSQL: the connection that `listen` hears notifications on
        self._listening_lock = asyncio.Lock()
        if self.is_sqlite:
            database = self.url.database
            if not database or database == ":memory:":
                raise ValueError("Parley stores in a SQLite file: a database in memory would be one per thread.")
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            self._signals = Signals(Path(database))
            self._checkpoints = Checkpoints(Path(database))
            # `sqlite+aiosqlite://`, the URL earlier versions documented, names the same file.
            # The driver is sqlean (SQLite 3.50 with its own copy of the library), not the standard
            # library's sqlite3: most Pythons' sqlite3 (pyenv's, macOS's) cannot load extensions, and
            # vector stores need sqlite-vec (see parley.vectors.index).
            self._sqlite = sa.create_engine(
                self.url.set(drivername="sqlite"),
                module=sqlean,
                connect_args={"timeout": _SQLITE_WRITE_WAIT_SECONDS},
                pool_size=_SQLITE_READERS + 1,
                max_overflow=0,
                **options,
            )
            event.listen(self._sqlite, "connect", _sqlite_pragmas)
            event.listen(self._sqlite, "begin", _sqlite_begin)
            # Writes handed over and not yet taken, in order: (work, its caller's future, whether it runs on the
            # thread `_offloaded`); and the task that takes them (`_drain`), while there are any.
            self._pending: collections.deque[tuple[Work[Any], asyncio.Future[Any], bool]] = collections.deque()
            self._draining: asyncio.Task[None] | None = None
            self._offloaded = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            self._readers = ThreadPoolExecutor(_SQLITE_READERS, thread_name_prefix="sqlite-reader")
        else:
            options.update(pool_size=10, max_overflow=20, json_serializer=_jsonb_dumps)
            self.engine = create_async_engine(self.url, **options)
            event.listen(self.engine.sync_engine, "checkout", _drop_closed)

    async def listen(self, channel: str, callback: Callable[[str], object]) -> Callable[[], Awaitable[None]] | None:
        """Calls `callback(payload)` on the event loop for each `notify` on `channel`; returns what stops
        listening, or None when none can be heard (the caller looks for itself).

        PostgreSQL: its `NOTIFY`, heard on a connection of its own (none of the pool's, one for every channel this
        server listens on). SQLite, which has none: the processes on the file tell each other (parley.store.signals).
        """
        if self._sqlite is not None:
            return await self._signals.listen(channel, callback)
        import asyncpg  # type: ignore[import-untyped]

        def heard(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
            callback(payload)

        async with self._listening_lock:
            if self._listening is None or self._listening.is_closed():
                dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
                self._listening = await asyncpg.connect(dsn)
            connection = self._listening
            await connection.add_listener(channel, heard)

        async def stop() -> None:
            async with self._listening_lock:
                if not connection.is_closed():
                    await connection.remove_listener(channel, heard)

        return stop

    async def read(self, work: Work[T], *, autocommit: bool = False) -> T:
        """`work(connection)`, in a transaction that is rolled back at the end.

        With `autocommit`, on PostgreSQL, outside a transaction: each statement on its own, which spares the
        BEGIN and ROLLBACK round trips (two of a single-statement read's three). For the frequent reads whose
        statements need nothing of a transaction (no `SET LOCAL`, no transaction-scoped lock): under READ
        COMMITTED each statement sees its own snapshot either way. SQLite reads the same either way.
        """
        if self._sqlite is not None:
            return await asyncio.get_running_loop().run_in_executor(self._readers, self._sqlite_read, work)
        assert self.engine is not None
        async with self.engine.connect() as connection:
            if autocommit:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
            return await connection.run_sync(work)

    async def write(self, work: Work[T], *, autocommit: bool = False, offload: bool = False) -> T:
        """`work(connection)`, in a transaction that commits, or rolls back if `work` raises.

        With `autocommit`, on PostgreSQL, each statement commits on its own, outside a transaction, without the
        BEGIN and COMMIT round trips (see `read`): for work of one statement, or whose statements need not commit
        together (a row, then a NOTIFY that it is there).

        On SQLite the writes run in the order they come, on the event loop (`_drain`); with `offload`, on a
        thread, for work that may take long (a migration, thousands of rows).
        """
        if self._sqlite is not None:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._pending.append((work, future, offload))
            if self._draining is None:
                self._draining = asyncio.create_task(self._drain(), name="sqlite writes")
            return await future
        assert self.engine is not None
        if autocommit:
            async with self.engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                return await connection.run_sync(work)
        async with self.engine.begin() as connection:
            return await connection.run_sync(work)

    async def write_together(self, writes: list[Together], notice: tuple[str, str] | None = None) -> None:
        """`write_together(connection, writes, notice)` in a transaction of its own (see `write_together`); on
        SQLite with its statements and their parameters made ready for the driver here, before the write lock
        is taken (`_DriverWrites`)."""
        if self._sqlite is None:
            await self.write(lambda connection: write_together(connection, writes, notice), autocommit=True)
        else:
            await self.write(_DriverWrites(writes, notice, self._sqlite.dialect))

    async def announce(self, channel: str, payload: str) -> None:
        """A notification alone (see `notify`), after the writes already handed over."""
        await self.write(_Notice(channel, payload), autocommit=True)

    def _sqlite_read(self, work: Work[T]) -> T:
        assert self._sqlite is not None
        with self._sqlite.connect() as connection:
            return work(connection)

    async def _drain(self) -> None:
        """The writes handed over, in order, until none is left: those waiting together committed in one
        transaction (`_sqlite_write`), on the event loop once SQLite's write lock is this server's
        (`_write_lock`), or alone on a thread when offloaded.

        On the event loop rather than on a thread of their own, as they ran first: a transaction then holds the
        lock for the time its statements take, while a writer thread, waiting for the event loop's thread to
        let go of the interpreter lock after each statement, held it for 4 to 10 times longer (bench/
        background.py: 7 ms for a group of 6 background jobs' writes of 1.3 ms of CPU, and with two `parley
        serve` workers on one file the lock was held three quarters of the time, their cores a quarter idle).
        """
        group: list[tuple[Work[Any], asyncio.Future[Any], bool]] = []
        try:
            while self._pending:
                group = self._take_group()
                if not group:
                    continue
                works = [work for work, _, _ in group]
                try:
                    if group[0][2]:
                        outcomes = await asyncio.get_running_loop().run_in_executor(
                            self._offloaded, self._sqlite_write, works, None
                        )
                    else:
                        locked = await self._write_lock(works)
                        outcomes = self._sqlite_write(works, locked, _SQLITE_LOOP_BUDGET_SECONDS)
                except Exception as exc:  # the lock not had within the wait
                    outcomes = [(False, exc)] * len(group)
                # Those the budget left for the next transaction go first again.
                self._pending.extendleft(reversed(group[len(outcomes) :]))
                for (_, future, _), (ok, value) in zip(group, outcomes, strict=False):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                group = []
                if self._pending:
                    await asyncio.sleep(0)  # the event loop's other work, between two transactions
        finally:
            self._draining = None
            for _, future, _ in [*group, *self._pending]:  # the drain was cancelled (the loop closes)
                future.cancel()
            self._pending.clear()

    def _take_group(self) -> list[tuple[Work[Any], asyncio.Future[Any], bool]]:
        """The next writes to commit together: up to `_SQLITE_GROUP` run on the event loop, or one offloaded; those
        whose callers stopped waiting are dropped."""
        group: list[tuple[Work[Any], asyncio.Future[Any], bool]] = []
        while self._pending and len(group) < _SQLITE_GROUP:
            if self._pending[0][2] and group:
                break
            write = self._pending.popleft()
            if write[1].cancelled():
                continue
            group.append(write)
            if write[2]:
                break
        return group

    async def _write_lock(self, works: list[Work[Any]]) -> sa.Connection | None:
        """A connection holding SQLite's write lock (BEGIN IMMEDIATE), tried again while another process writes
        (`_lock_pauses`); None for notifications alone, which need none."""
        assert self._sqlite is not None
        if all(isinstance(work, _Notice) for work in works):
            return None
        connection = self._sqlite.connect()
        try:
            pauses = _lock_pauses()
            while not _try_write_lock(connection):
                await asyncio.sleep(next(pauses))
        except BaseException:
            connection.close()
            raise
        return connection

    def _sqlite_write(
        self, group: list[Work[Any]], locked: sa.Connection | None, budget: float | None = None
    ) -> list[tuple[bool, Any]]:
        """Writes that waited together, committed in one transaction, each in a savepoint of its own when they
        are more than one: one that raises is undone alone (its outcome is what it raised); the others commit.
        On `locked`, which holds the write lock already, and closed then; without it (offloaded), on a
        connection that waits for the lock as it begins (`_sqlite_begin`). The outcomes of the first writes, in
        order: all of them, or, once they have taken `budget` seconds, those run by then.

        SQLite lets one writer in at a time: writes that queue while a transaction holds the lock are what a
        group commit amortises, one lock taken and one commit for all of them.
        """
        assert self._sqlite is not None
        notices = [work for work in group if isinstance(work, _Notice)]
        if len(notices) == len(group):  # notifications alone: no transaction to take
            self._signals.send([(notice.channel, notice.payload) for notice in notices])
            return [(True, None)] * len(group)
        outcomes: list[tuple[bool, Any]] = []
        notes: list[tuple[str, str]] = []
        taken = 0
        try:
            with locked if locked is not None else self._sqlite.connect() as connection:
                connection.execution_options(parley_write="begun" if locked is not None else "wait")
                with connection.begin():
                    started = time.perf_counter()
                    for work in group:
                        taken += 1
                        outcomes.append(self._one_write(connection, work, notes, alone=len(group) == 1))
                        if budget is not None and time.perf_counter() - started > budget:
                            break
        except BaseException as exc:  # the transaction failed as a whole (its BEGIN, its COMMIT): every write run
            outcomes = [(False, exc)] * (taken or len(group))
            notes = []
        self._checkpoints.wanted()
        if notes:
            self._signals.send(notes)  # committed: now the others may look
        return outcomes

    @staticmethod
    def _one_write(
        connection: sa.Connection, work: Work[Any], notes: list[tuple[str, str]], *, alone: bool
    ) -> tuple[bool, Any]:
        """One write of a group: (True, its result), or (False, what it raised), its statements then undone. A
        write alone raises: its transaction is rolled back whole."""
        if alone:
            try:
                return True, work(connection)
            finally:
                notes += connection.info.pop(_NOTES, [])
        # The savepoint's statements go to the driver itself: through SQLAlchemy (`begin_nested`) they took 90 µs
        # a write, against 7 (the works never take savepoints of their own).
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.execute("SAVEPOINT parley_write")
        try:
            result = work(connection)
        except Exception as exc:
            driver.execute("ROLLBACK TO parley_write")
            driver.execute("RELEASE parley_write")
            connection.info.pop(_NOTES, None)
            return False, exc
        driver.execute("RELEASE parley_write")
        notes += connection.info.pop(_NOTES, [])
        return True, result

    async def migrate(self) -> None:
        """Brings the schema up to date (Alembic `upgrade head`)."""
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))

        def upgrade(connection: sa.Connection) -> None:
            if not self.is_sqlite:
                # Replicas starting together take turns.
                connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        await self.write(upgrade, offload=True)

    async def close(self) -> None:
        if self._sqlite is not None:
            # Transactions already handed over finish first.
            if self._draining is not None:
                await asyncio.shield(self._draining)
            await asyncio.to_thread(self._offloaded.shutdown)
            await asyncio.to_thread(self._readers.shutdown)
            await asyncio.to_thread(self._checkpoints.close)
            self._sqlite.dispose()
            self._signals.close()
        if self._listening is not None:
            await self._listening.close()
        if self.engine is not None:
            await self.engine.dispose()


def _drop_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled PostgreSQL connection that the server closed (a restart, a killed backend, an idle timeout) is
    replaced as it is taken, so that the transaction about to run does not fail on it.

    asyncpg sees the server close the socket while the connection idles in the pool, so this costs no round trip.
    SQLAlchemy's `pool_pre_ping` asks the server instead: BEGIN, an empty query and ROLLBACK before each
    transaction, three round trips, 19 of the 41 that a background job made (bench/background.py). A connection
    cut without the server closing it (a network partition) is seen when its transaction fails; the pool then
    drops it.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise sa.exc.DisconnectionError("the server closed this pooled connection")


class _Notice:
    """A notification alone (`Database.announce`), as a write: heard after the writes handed over before it."""

    def __init__(self, channel: str, payload: str) -> None:
        self.channel = channel
        self.payload = payload

    def __call__(self, connection: sa.Connection) -> None:
        notify(connection, self.channel, self.payload)


def notify(connection: sa.Connection, channel: str, payload: str) -> None:
    """Tells `payload` to the listeners on `channel` (`Database.listen`) once the connection's transaction commits:
    PostgreSQL's `NOTIFY`; on SQLite, a notification the write sends after its commit (parley.store.signals)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_notify(channel, payload)))
    else:
        connection.info.setdefault(_NOTES, []).append((channel, payload))


def notify_each(connection: sa.Connection, channel: str, statement: sa.UpdateBase) -> None:
    """Runs `statement`, which returns one column, and tells each value it returns on `channel` (see `notify`): on
    PostgreSQL in the same statement (a data-modifying CTE), one round trip rather than two."""
    if connection.dialect.name == "postgresql":
        written = statement.cte("written")
        connection.execute(sa.select(sa.func.pg_notify(channel, next(iter(written.c)))))
        return
    for (payload,) in connection.execute(statement):
        notify(connection, channel, payload)


# A statement of `write_together`, and what it writes: an INSERT's rows (none: nothing to write), or the values of
# the bound parameters of another statement.
Together = tuple[sa.Insert | sa.Update, list[dict[str, Any]] | dict[str, Any]]


def write_together(connection: sa.Connection, writes: list[Together], notice: tuple[str, str] | None = None) -> None:
    """Runs writes none of which needs to see the others' rows (nor touches theirs), then `notify(*notice)`.

    On PostgreSQL as one statement, each write a data-modifying CTE (foreign keys are checked at its end), which
    is atomic alone: run with `Database.write(autocommit=True)`, one round trip instead of one a write and the
    BEGIN and COMMIT about them. A background job's creation took six, its final state five: as one each, a
    job's writes took Parley 1.42-1.49 ms of CPU rather than 2.36-2.42, and PostgreSQL 0.73-0.75 rather than
    1.00-1.05 (a microbenchmark of a job's creation, claim and final state). On SQLite, one after another, in
    the caller's transaction, by the driver (`_DriverWrites`).
    """
    if connection.dialect.name != "postgresql":
        _DriverWrites(writes, notice, connection.dialect)(connection)
        return
    writes = [(statement, values) for statement, values in writes if values]
    shape = (notice is not None, *((statement, _columns(values)) for statement, values in writes))
    together = _TOGETHER.get(shape)
    if together is None:
        together = _TOGETHER[shape] = _together(shape)
    parameters: dict[str, Any] = {}
    for i, (_, values) in enumerate(writes):
        if isinstance(values, list):
            parameters[f"rows_{i}"] = values
        else:
            parameters.update(values)
    if notice is not None:
        parameters.update(notice_channel=notice[0], notice_payload=notice[1])
    connection.execute(together, parameters)


class _DriverWrites:
    """Writes of `write_together` on SQLite, their statements compiled and their parameters processed (JSON
    serialised, and so on) when made, and run by the driver itself when called, inside the write lock.

    Through SQLAlchemy (`connection.execute`), three quarters of the time a background job's writes held
    SQLite's one write lock went to SQLAlchemy's execution of the statements, not to SQLite (profiled, in a
    microbenchmark of jobs' creation, claim and final state with their events, eight to a transaction: the
    driver's `execute` 0.05 of 0.23 s). So made, the lock was held 0.146 ms a job rather than 0.285, for 0.43 ms
    of CPU rather than 0.49; the lock is what two `parley serve` workers on one file wait for
    (bench/background.py).
    """

    def __init__(self, writes: list[Together], notice: tuple[str, str] | None, dialect: sa.Dialect) -> None:
        self.statements = [_driver_form(statement, values, dialect) for statement, values in writes if values]
        self.notice = notice

    def __call__(self, connection: sa.Connection) -> None:
        driver = connection.connection.driver_connection
        assert driver is not None
        for sql, rows in self.statements:
            if len(rows) == 1:
                driver.execute(sql, rows[0])
            else:
                driver.executemany(sql, rows)
        if self.notice is not None:
            notify(connection, *self.notice)


# A statement's SQL for SQLite's driver and how to make its parameters, by statement and the columns of its rows:
# (SQL, compiled form, each positional parameter's name and processor).
_DRIVER_FORMS: dict[tuple[Any, ...], tuple[str, Any, list[tuple[str, Any]]]] = {}


def _driver_form(
    statement: sa.Insert | sa.Update, values: list[dict[str, Any]] | dict[str, Any], dialect: sa.Dialect
) -> tuple[str, list[tuple[Any, ...]]]:
    """`statement` with `values` (an INSERT's rows, or another statement's parameters) as SQLite's driver runs
    it: its SQL, and a tuple of parameters a row, as SQLAlchemy would have made them (`construct_params`, and
    each type's bind processor)."""
    rows = values if isinstance(values, list) else [values]
    columns = tuple(sorted(rows[0])) if isinstance(values, list) else None
    form = _DRIVER_FORMS.get((statement, columns))
    if form is None:
        compiled = statement.compile(dialect=dialect, column_keys=list(columns) if columns is not None else None)
        assert compiled.positiontup is not None  # SQLite's driver takes positional parameters
        processors = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup
        ]
        form = _DRIVER_FORMS[(statement, columns)] = (compiled.string, compiled, processors)
    sql, compiled, processors = form
    made = []
    for row in rows:
        parameters = compiled.construct_params(row)
        made.append(
            tuple(parameters[name] if process is None else process(parameters[name]) for name, process in processors)
        )
    return sql, made


# `write_together`'s statements on PostgreSQL, by shape (whether it notifies; each write's statement and the columns
# of its rows), built once: SQLAlchemy caches the compiled form of a statement whose values are parameters, not of
# a multi-row INSERT's, and compiling that anew each time cost Parley more than the round trips saved (3.9 against
# 2.35 ms of CPU a background job's writes).
_TOGETHER: dict[tuple[Any, ...], sa.Select[Any]] = {}


def _columns(values: list[dict[str, Any]] | dict[str, Any]) -> tuple[str, ...] | None:
    return tuple(values[0]) if isinstance(values, list) else None


def _together(shape: tuple[Any, ...]) -> sa.Select[Any]:
    """One statement of a shape of `write_together`: each INSERT's rows from one parameter (`rows_<i>`, a JSON
    array of its rows, through `jsonb_to_recordset`), each other statement with its own parameters."""
    notifies, *writes = shape
    ctes = []
    for i, (statement, columns) in enumerate(writes):
        if columns is not None:
            table = statement.table
            rows = (
                sa.func.jsonb_to_recordset(sa.bindparam(f"rows_{i}", type_=JSONB))
                .table_valued(*(sa.column(name, table.c[name].type) for name in columns))
                .render_derived(name=f"rows_{i}", with_types=True)
            )
            statement = table.insert().from_select(list(columns), sa.select(*(rows.c[name] for name in columns)))
        ctes.append(statement.cte(f"write_{i}"))
    head = sa.func.pg_notify(sa.bindparam("notice_channel"), sa.bindparam("notice_payload")) if notifies else None
    return sa.select(head if head is not None else sa.literal(1)).add_cte(*ctes)


# Where a SQLite write keeps its notifications until it commits (the connection's `info`).
_NOTES = "parley_notifications"


class Wakeups:
    """This server's tasks that wait for news of a row, by its id: each is woken by a `notify` on `channel` whose
    payload is that id (heard through `Database.listen` from the first wait on), or by `wake` here, and looks
    again every `poll` seconds anyway (a notification may be missed, or none heard).

        async with wakeups.watching(row_id) as news:
            while not done():
                await news.next()
    """

    def __init__(self, db: Database, channel: str, poll: float) -> None:
        self.db = db
        self.channel = channel
        self.poll = poll
        self._waiting: dict[str, list[asyncio.Event]] = {}
        self._lock = asyncio.Lock()
        self._listening = False
        self._stop: Callable[[], Awaitable[None]] | None = None

    @contextlib.asynccontextmanager
    async def watching(self, key: str) -> AsyncIterator[News]:
        """News of `key` from now until the block ends."""
        woken = asyncio.Event()
        waiting = self._waiting.setdefault(key, [])
        waiting.append(woken)
        try:
            await self._listen()
            yield News(woken, self.poll)
        finally:
            waiting.remove(woken)
            if not waiting:
                self._waiting.pop(key, None)

    def wake(self, key: str) -> None:
        for woken in self._waiting.get(key, ()):
            woken.set()

    async def _listen(self) -> None:
        async with self._lock:
            if self._listening:
                return
            self._listening = True
            try:
                self._stop = await self.db.listen(self.channel, self.wake)
            except Exception:
                log.exception("cannot listen on %s: its waiters look every %g s", self.channel, self.poll)

    async def close(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            with contextlib.suppress(Exception):
                await stop()


class News:
    """One waiter's news of its row (see `Wakeups`)."""

    def __init__(self, woken: asyncio.Event, poll: float) -> None:
        self._woken = woken
        self._poll = poll

    async def next(self) -> None:
        """Returns once woken since the last return (at once if already), or after the poll interval."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), self._poll)
        self._woken.clear()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # sqlite-vec's vec0 tables hold vector stores' embeddings; loading it is the only extension loaded.
    dbapi_connection.enable_load_extension(True)
    sqlite_vec.load(dbapi_connection)
    dbapi_connection.enable_load_extension(False)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA wal_autocheckpoint=0")  # a thread of their own checkpoints (parley.store.checkpoints)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # Transactions begin where SQLAlchemy begins them (`_sqlite_begin`), not where the driver would guess: it
    # begins one only before a write, leaving a transaction's reads before it outside.
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: sa.Connection) -> None:
    """A write transaction takes the write lock as it begins (BEGIN IMMEDIATE), waiting its turn behind another
    process's writer: one that read first and then wrote would be refused at once (SQLITE_BUSY) when another
    process had written since its read, as two `parley serve` workers on one file do. A read begins deferred;
    a write on the event loop took the lock before (`Database._write_lock`)."""
    how = connection.get_execution_options().get("parley_write")
    if how == "begun":
        return
    if how != "wait":
        connection.exec_driver_sql("BEGIN")
        return
    pauses = _lock_pauses()
    while not _try_write_lock(connection):
        time.sleep(next(pauses))


def _lock_pauses() -> Iterator[float]:
    """The pauses between two tries of SQLite's write lock while another connection holds it: 0.1 ms, doubling
    up to 1 ms, until the 30 s the connections' own timeout would wait; then "database is locked".

    Waiting so, not in SQLite's busy handler: it sleeps 1, 2, 5, 10, 15 ms and on, while another process's
    write takes well under one; two `parley serve` workers on one file lost a fifth of their time so (bench/
    background.py: 23% of both cores idle)."""
    deadline = time.monotonic() + _SQLITE_WRITE_WAIT_SECONDS
    pause = 0.0001
    while time.monotonic() <= deadline:
        yield pause
        pause = min(pause * 2, 0.001)
    raise sqlean.OperationalError("database is locked")


def _try_write_lock(connection: sa.Connection) -> bool:
    """BEGIN IMMEDIATE, once, without waiting: whether the connection now holds SQLite's write lock (False when
    another connection, of this process or another, holds it)."""
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute("PRAGMA busy_timeout = 0")
    try:
        cursor.execute("BEGIN IMMEDIATE")
        return True
    except sqlean.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        return False
    finally:
        cursor.execute(f"PRAGMA busy_timeout = {int(_SQLITE_WRITE_WAIT_SECONDS * 1000)}")
        cursor.close()
