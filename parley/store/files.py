"""Uploaded files: a row of metadata each, the bytes in a blob store.

A file is the caller's to see like every stored thing (see parley.store.owners):
another owner's file, or one past its `expires_at`, is a file that does not
exist. Its bytes go in before its row (an upload that fails leaves neither),
and its row goes before its bytes (a delete that fails half way leaves bytes
no row names, never a row without bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from parley.store.blobs import BlobStore
from parley.store.database import Database
from parley.store.owners import Caller, visible_to
from parley.store.pagination import Page, PageRequest, read_page
from parley.store.tables import files

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileForm:
    """What an upload says of its file besides its bytes, known once they are all read."""

    filename: str
    purpose: str
    expires_at: int | None


def file_object(row: Any) -> dict[str, Any]:
    """The row as OpenAI's `FileObject`."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }


def _live(now: int) -> Any:
    return sa.or_(files.c.expires_at.is_(None), files.c.expires_at > now)


def _blob_key(file_id: str) -> str:
    return file_id


class FileStore:
    """Files' rows in the database and their bytes in `blobs`; `start` runs the sweep of expired files."""

    def __init__(
        self, db: Database, blobs: BlobStore, sweep_seconds: float = 60.0, stale_upload_seconds: float = 3600.0
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.sweep_seconds = sweep_seconds
        self.stale_upload_seconds = stale_upload_seconds
        self._sweeper: asyncio.Task[None] | None = None
        # Told the ids of files deleted or expired, once they are gone: vector stores let them go too
        # (parley.vectors.ingest). If it fails, the vector stores' own sweep finds them.
        self.on_removed: Callable[[Sequence[str]], Awaitable[None]] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="files-expiry-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep(self) -> None:
        while True:
            try:
                await self.remove_expired()
                stale = await self.blobs.remove_stale(self.stale_upload_seconds)
                if stale:
                    log.info("Removed %d upload(s) left unfinished", stale)
            except Exception:
                # A database or bucket that is away for a moment: the next sweep tries again.
                log.warning("Removing expired files failed", exc_info=True)
            await asyncio.sleep(self.sweep_seconds)

    async def create(
        self,
        file_id: str,
        created_at: int,
        owner: str | None,
        chunks: AsyncIterable[bytes],
        form: Callable[[], FileForm],
    ) -> dict[str, Any]:
        """Stores the chunks, then the row `form()` describes; if either raises, nothing stays."""
        key = _blob_key(file_id)
        size = await self.blobs.put(key, chunks)
        try:
            described = form()
            values = {
                "id": file_id,
                "created_at": created_at,
                "expires_at": described.expires_at,
                "filename": described.filename,
                "purpose": described.purpose,
                "bytes": size,
                "blob_key": key,
                "owner": owner,
            }
            await self.db.write(lambda connection: connection.execute(files.insert().values(**values)))
        except BaseException:
            await self.blobs.delete(key)
            raise
        return file_object(SimpleNamespace(**values))

    async def get(self, file_id: str, caller: Caller) -> dict[str, Any] | None:
        row = await self._row(file_id, caller)
        return file_object(row) if row is not None else None

    async def open(self, file_id: str, caller: Caller) -> tuple[dict[str, Any], AsyncIterator[bytes]] | None:
        """The file and its bytes (read as they are iterated), or None."""
        row = await self._row(file_id, caller)
        if row is None:
            return None
        return file_object(row), self.blobs.open(row.blob_key)

    async def list(self, page: PageRequest, purpose: str | None, caller: Caller) -> Page:
        now = int(time.time())
        query = sa.select(files).where(visible_to(files.c.owner, caller), _live(now))
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)

        def cursor_of(file_id: str) -> Any:
            return sa.select(files.c.seq).where(files.c.id == file_id, visible_to(files.c.owner, caller))

        rows, has_more = await self.db.read(
            lambda connection: read_page(connection, query, files.c.seq, cursor_of, page)
        )
        return Page([file_object(row) for row in rows], has_more)

    async def delete(self, file_id: str, caller: Caller) -> bool:
        """Deletes the row, then the bytes; False if the caller sees no such file."""
        now = int(time.time())
        statement = (
            files.delete()
            .where(files.c.id == file_id, visible_to(files.c.owner, caller), _live(now))
            .returning(files.c.blob_key)
        )
        key = await self.db.write(lambda connection: connection.execute(statement).scalar())
        if key is None:
            return False
        await self.blobs.delete(key)
        await self._removed([file_id])
        return True

    async def remove_expired(self) -> int:
        """Removes every file past its `expires_at`, rows and bytes; returns how many went."""
        now = int(time.time())
        statement = (
            files.delete()
            .where(files.c.expires_at.is_not(None), files.c.expires_at <= now)
            .returning(files.c.id, files.c.blob_key)
        )
        rows = await self.db.write(lambda connection: list(connection.execute(statement)))
        for row in rows:
            await self.blobs.delete(row.blob_key)
        if rows:
            log.info("Removed %d expired file(s)", len(rows))
            await self._removed([row.id for row in rows])
        return len(rows)

    async def _removed(self, file_ids: Sequence[str]) -> None:
        if self.on_removed is None:
            return
        try:
            await self.on_removed(file_ids)
        except Exception:
            log.warning("Taking %d deleted file(s) out of vector stores failed", len(file_ids), exc_info=True)

    async def _row(self, file_id: str, caller: Caller) -> Any:
        now = int(time.time())
        query = sa.select(files).where(files.c.id == file_id, visible_to(files.c.owner, caller), _live(now))
        return await self.db.read(lambda connection: connection.execute(query).first())
