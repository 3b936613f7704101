"""The database engine, for SQLite and PostgreSQL alike, and migrations at start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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
    """
    text = orjson.dumps(value).decode()
    return _NUL_ESCAPE.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


class Database:
    def __init__(self, url: str) -> None:
        self.url = sa.make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # Every connection this server takes ends its transaction itself (`engine.begin()`
        # commits or rolls back, `engine.connect()` rolls back on close): the pool's own
        # rollback on return would be one more round trip per transaction, for nothing.
        options: dict[str, Any] = {
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
            "pool_reset_on_return": None,
        }
        if self.is_sqlite:
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": 30}
        else:
            options.update(pool_size=10, max_overflow=20, pool_pre_ping=True, json_serializer=_jsonb_dumps)
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that writes.

        SQLite lets one writer at a time in, and makes the others wait in its busy
        handler, which sleeps in steps of up to 100 ms: under load that is the
        whole tail. So on SQLite this server's writers queue here instead, in
        order, and each finds the database free. PostgreSQL locks rows itself.
        """
        if self._write_lock is None:
            async with self.engine.begin() as connection:
                yield connection
            return
        async with self._write_lock, self.engine.begin() as connection:
            yield connection

    async def migrate(self) -> None:
        """Brings the schema up to date (Alembic `upgrade head`)."""
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))

        def upgrade(connection: sa.Connection) -> None:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        async with self.engine.begin() as connection:
            if not self.is_sqlite:
                await connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
            await connection.run_sync(upgrade)

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
