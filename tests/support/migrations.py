"""A test's database taken back to an earlier schema, and what its rows hold, read directly (SQLite or PostgreSQL).

`migrate_to(database_url, "0011")` takes it down as an operator would (Parley migrates up as it starts);
`query(database_url, "SELECT ... WHERE id = :id", id=...)` reads rows outside Parley.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tests.conftest import ROOT


def migrate_to(database_url: str, revision: str) -> None:
    """Alembic down to `revision`, with the migrations Parley runs up at start."""
    from alembic import command
    from alembic.config import Config

    from parley.store import Database

    def downgrade(connection: Any) -> None:
        config = Config()
        config.set_main_option("script_location", str(ROOT / "parley" / "store" / "migrations"))
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async def run() -> None:
        database = Database(database_url)
        try:
            await database.write(downgrade)
        finally:
            await database.close()

    asyncio.run(run())


def query(database_url: str, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
    """The rows of `sql` (parameters written `:name`), read with the database's own driver, outside Parley."""
    if database_url.startswith("sqlite"):
        import sqlean  # type: ignore[import-untyped]

        connection = sqlean.connect(database_url.split("///", 1)[1])
        try:
            return [tuple(row) for row in connection.execute(sql, parameters).fetchall()]
        finally:
            connection.close()
    import asyncpg  # type: ignore[import-untyped]

    names = list(parameters)
    numbered = re.sub(r":(\w+)", lambda match: f"${names.index(match.group(1)) + 1}", sql)

    async def run() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return [tuple(row) for row in await connection.fetch(numbered, *parameters.values())]
        finally:
            await connection.close()

    return asyncio.run(run())
