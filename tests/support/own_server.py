"""What a test module that runs a Parley of its own needs: its own database, its owners' keys, their clients.

A module gets a database of its own where a server on the session's database would interfere (another module's
expiry sweep would reach its rows, or keys made in it would lock other servers out):

    database_url = own_database("files")
    alice = owner_client("alice", ALICE)

and its server's config takes `config["auth"] = owners_auth(alice=ALICE, bob=BOB)`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    import openai

    from tests.conftest import ParleyProcess

_databases = itertools.count()


def own_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    """A new database named for `name` on the backend of `request.param` ("sqlite" or "postgresql")."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp(f'{name}-sqlite') / 'parley.db'}"
    server = request.getfixturevalue("postgres")
    return str(server.create_database(f"parley_{name.replace('-', '_')}_{os.getpid()}_{next(_databases)}"))


def own_database(name: str) -> Any:
    """A module-scoped `database_url` fixture over SQLite and PostgreSQL: one new database per backend."""

    @pytest.fixture(scope="module", params=["sqlite", "postgresql"], name="database_url")
    def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
        return own_database_url(request, tmp_path_factory, name)

    return database_url


def owners_auth(**keys: str) -> dict[str, Any]:
    """The `auth` config of one key an owner, by owner: `owners_auth(alice=ALICE, bob=BOB)`."""
    return {"keys": [{"key": key, "owner": owner} for owner, key in keys.items()]}


def owner_client(owner: str, key: str, scope: Literal["function", "module"] = "function") -> Any:
    """A fixture named `owner`: an openai client of the module's `server` fixture with the owner's key."""

    @pytest.fixture(scope=scope, name=owner)
    def client(server: ParleyProcess) -> openai.OpenAI:
        return server.client(api_key=key)

    return client


def run_sql(database_url: str, statement: Any) -> list[Any]:
    """Runs `statement` on the module's database behind its server's back (to age a row, say); the rows it returns."""
    from parley.store import Database

    async def run() -> list[Any]:
        database = Database(database_url)
        try:
            result = await database.write(lambda connection: connection.execute(statement))
            return list(result) if result.returns_rows else []
        finally:
            await database.close()

    return asyncio.run(run())
