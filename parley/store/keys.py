"""API keys in the database: made, listed and revoked by `parley keys`, read by the server.

A key's secret is 32 random bytes, shown once when the key is made, and never
stored: the table keeps its SHA-256 and its first few characters. A slow,
salted hash (bcrypt, scrypt, argon2) is for passwords, which people choose
and which a dictionary can guess; a secret of 256 random bits cannot be
guessed, so whoever reads the table can do nothing with a plain SHA-256 of it
either, and the server can look a request's key up by its hash, the same
value every time, in one indexed query rather than trying each key in turn.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from parley.store.database import Database
from parley.store.tables import api_keys

# What every secret starts with: it says whose key it is, and lets secret scanners find one.
SECRET_PREFIX = "sk-parley-"
# How much of a secret is kept to tell keys apart: the marker and four random characters.
_SHOWN = len(SECRET_PREFIX) + 4


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What is stored of a secret, and what a request's key is looked up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def redact(secret: str) -> str:
    """A key as it may be shown back: enough to recognise it, never the whole of it."""
    if len(secret) < 12:
        return "***"  # too short to show any of it and keep the rest secret
    return f"{secret[:3]}...{secret[-4:]}"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored: everything but its secret."""

    id: str
    owner: str
    name: str | None
    prefix: str
    admin: bool
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _key(row: Any) -> ApiKey:
    return ApiKey(row.id, row.owner, row.name, row.prefix, row.admin, row.created_at, row.revoked_at)


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.owner,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.admin,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, owner: str, name: str | None = None, admin: bool = False) -> tuple[ApiKey, str]:
        """A new key for `owner`, and its secret (which is not kept: show it now or never)."""
        secret = new_secret()
        key = ApiKey(
            id=f"key_{secrets.token_hex(8)}",
            owner=owner,
            name=name,
            prefix=secret[:_SHOWN],
            admin=admin,
            created_at=time.time(),
            revoked_at=None,
        )
        statement = api_keys.insert().values(
            id=key.id,
            secret_hash=hash_secret(secret),
            prefix=key.prefix,
            owner=owner,
            name=name,
            admin=admin,
            created_at=key.created_at,
        )
        await self.db.write(lambda connection: connection.execute(statement))
        return key, secret

    async def list(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""
        query = sa.select(*_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.id)
        return await self.db.read(lambda connection: [_key(row) for row in connection.execute(query)])

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revokes the key (a key revoked before keeps its time); None when there is no such key."""
        statement = (
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
        query = sa.select(*_COLUMNS).where(api_keys.c.id == key_id)

        def revoke(connection: sa.Connection) -> ApiKey | None:
            connection.execute(statement)
            row = connection.execute(query).first()
            return _key(row) if row is not None else None

        return await self.db.write(revoke)

    async def find(self, secret_hash: str) -> ApiKey | None:
        """The key whose secret has this hash, revoked or not."""
        query = sa.select(*_COLUMNS).where(api_keys.c.secret_hash == secret_hash)
        row = await self.db.read(lambda connection: connection.execute(query).first())
        return _key(row) if row is not None else None

    async def by_hash(self) -> dict[str, ApiKey]:
        """Every key by the hash of its secret, revoked ones too (for the server's key ring)."""
        query = sa.select(api_keys.c.secret_hash, *_COLUMNS)
        return await self.db.read(lambda connection: {row.secret_hash: _key(row) for row in connection.execute(query)})
