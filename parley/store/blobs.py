"""Where uploaded files' bytes live: a blob store, behind a small interface.

    BlobStore            put (streamed in), open (streamed out), delete
    └── DirectoryBlobStore   files in a directory (by default `data_dir/files`)

A blob is written whole or not at all: `put` writes to a temporary name and
renames it into place only once the last chunk is in, and removes what it
wrote if the chunks fail (a client that leaves mid-upload, a size limit
passed). No blob is ever held whole in memory: one chunk at a time goes in
and comes out.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Protocol

# What `open` reads at a time.
CHUNK_BYTES = 256 * 1024


class BlobNotFound(Exception):
    pass


class BlobStore(Protocol):
    """Bytes by key: the keys are the store's callers' (plain names: letters, digits, '-' and '_')."""

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Writes the chunks under `key` and returns their size; nothing stays under it if they raise."""
        ...

    def open(self, key: str) -> AsyncIterator[bytes]:
        """The bytes under `key`, a chunk at a time; BlobNotFound (on the first read) if there are none."""
        ...

    async def delete(self, key: str) -> None:
        """Removes the bytes under `key`, if any."""
        ...


class DirectoryBlobStore:
    """Blobs as files in one directory, written through a temporary name in the same directory (one rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, key: str) -> Path:
        if not key or not key.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"not a blob key: {key!r}")
        return self.directory / key

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        path = self._path(key)
        partial = path.with_name(f".{key}.partial")
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        size = 0
        handle = await asyncio.to_thread(open, partial, "wb")
        try:
            try:
                async for chunk in chunks:
                    if chunk:
                        await asyncio.to_thread(handle.write, chunk)
                        size += len(chunk)
            finally:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException:
            # Cancelled included: a client that leaves mid-upload leaves no partial file behind.
            partial.unlink(missing_ok=True)
            raise
        return size

    async def open(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
