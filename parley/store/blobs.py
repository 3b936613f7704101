"""Where uploaded files' bytes live: a blob store, behind a small interface.

    BlobStore            put (streamed in), open (streamed out), delete
    ├── DirectoryBlobStore   files in a directory (by default `data_dir/files`)
    └── S3BlobStore          objects in an S3-compatible bucket (`files.s3`)

A blob is written whole or not at all: `put` writes to a temporary name and
renames it into place only once the last chunk is in, and removes what it
wrote if the chunks fail (a client that leaves mid-upload, a size limit
passed). No blob is ever held whole in memory: one chunk at a time goes in
and comes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from parley.config import FilesSettings, S3BlobSettings

log = logging.getLogger(__name__)

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

    async def remove_stale(self, older_than: float) -> int:
        """Removes what uploads left unfinished, untouched for `older_than` seconds (a server killed mid-upload)."""
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

    async def remove_stale(self, older_than: float) -> int:
        def remove() -> int:
            # A partial file's time is that of its last write: one untouched this long has no upload behind it.
            cutoff = time.time() - older_than
            removed = 0
            for path in self.directory.glob(".*.partial"):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
            return removed

        return await asyncio.to_thread(remove)


class S3BlobStore:
    """Blobs as objects in an S3-compatible bucket, for replicas that share their files.

    An object appears whole or not at all: a blob smaller than one part is one
    `PutObject`; a larger one is a multipart upload, its parts sent as they
    fill (so memory holds at most one part, `part_bytes`) and completed after
    the last chunk, or aborted if the chunks fail. boto3 is synchronous: each
    call runs on a thread.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "", part_bytes: int = 8 * 1024 * 1024) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_bytes = part_bytes

    @classmethod
    def from_settings(cls, settings: S3BlobSettings) -> S3BlobStore:
        import boto3
        from botocore.config import Config

        def secret(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=secret(settings.access_key_id),
            aws_secret_access_key=secret(settings.secret_access_key),
            config=Config(s3={"addressing_style": settings.addressing_style}),
        )
        return cls(client, settings.bucket, settings.prefix, settings.part_bytes)

    def _key(self, key: str) -> str:
        if not key or not key.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"not a blob key: {key!r}")
        return self.prefix + key

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        name = self._key(key)
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def send_part() -> None:
            nonlocal upload_id
            if upload_id is None:
                started = await asyncio.to_thread(self.client.create_multipart_upload, Bucket=self.bucket, Key=name)
                upload_id = started["UploadId"]
            number = len(parts) + 1
            sent = await asyncio.to_thread(
                self.client.upload_part,
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                PartNumber=number,
                Body=bytes(buffer),
            )
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            buffer.clear()

        try:
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                if len(buffer) >= self.part_bytes:
                    await send_part()
            if upload_id is None:
                await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=name, Body=bytes(buffer))
            else:
                if buffer:
                    await send_part()
                await asyncio.to_thread(
                    self.client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                # Cancelled included: the parts sent are dropped, and no object was made.
                await asyncio.shield(self._abort(name, upload_id))
            raise
        return size

    async def _abort(self, name: str, upload_id: str) -> None:
        try:
            await asyncio.to_thread(
                self.client.abort_multipart_upload, Bucket=self.bucket, Key=name, UploadId=upload_id
            )
        except Exception as exc:
            # The upload's own failure is what the caller hears of; the sweep aborts this one later.
            log.warning("Could not abort the multipart upload of %s: %s", name, exc)

    async def open(self, key: str) -> AsyncIterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            got = await asyncio.to_thread(self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFound(key) from exc
            raise
        body = got["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    async def remove_stale(self, older_than: float) -> int:
        def remove() -> int:
            # An unfinished multipart upload is billed for its parts until it is aborted; one started this long
            # ago has no upload behind it (a bucket's lifecycle rule may do the same).
            cutoff = time.time() - older_than
            removed = 0
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
            return removed

        return await asyncio.to_thread(remove)


def blob_store(settings: FilesSettings, data_dir: Path) -> BlobStore:
    """The blob store the configuration names: S3 when `files.s3` is set, else `data_dir/files`."""
    if settings.s3 is not None:
        return S3BlobStore.from_settings(settings.s3)
    return DirectoryBlobStore(data_dir / "files")
