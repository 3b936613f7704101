"""Ingestion: the files of vector stores read, parsed, chunked, embedded and indexed in the background.

A file is added to a store `in_progress` (parley.store.vector_stores) and the request that added it returns.
Then, on some server:

    claim   one server claims the file (a lease it renews every third of `lease_seconds`); a server that
            dies lets the lease lapse and any server takes the file over, a server that stops in order gives
            its claims back at once; a file claimed `max_attempts` times fails
    read    the File's bytes from the blob store
    parse   parley.vectors.parsing.extract_text: a ParseError fails the file (unsupported_file, invalid_file)
    chunk   parley.vectors.chunking.chunk_text, with the file's chunking strategy
    embed   the store's own embedding model, `embed_batch_size` chunks a call
    index   the chunk index's `replace_file`
    end     `completed`, with the bytes its chunks and vectors take; or `failed` with `last_error`

A file's end is written only while its claim holds. One cancelled or removed meanwhile (the API says so
here, `drop`, and a renewal finds it too) stops at its next step; chunks it wrote go, unless another claim
has the file now.

Each server ingests `ingest_workers` files at once, taken fairly across stores: each store's oldest waiting
file first; a store this server is already busy with after the others, and of the rest the one it served
longest ago first, so that a store of a thousand files does not hold up the next store's one. Embedding calls
are `embed_batch_size` chunks, so that the files in progress take turns at the model.

Beside the workers, a sweep expires stores past their `expires_at` (their chunks go; the store stays,
`expired`) and takes out of their stores the files whose File went while no server heard of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from parley.config import VectorStoreSettings
from parley.errors import ModelNotFoundError, ParleyError
from parley.inference.embeddings import embed_texts
from parley.inference.registry import ModelRegistry
from parley.store.blobs import BlobNotFound
from parley.store.files import FileStore
from parley.store.owners import ANYONE
from parley.store.vector_stores import Claim, VectorStoreRepository
from parley.vectors.chunking import Chunk, chunk_text, strategy_sizes
from parley.vectors.parsing import ParseError, extract_text

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# How many stores' last service `_served` remembers before it starts over.
_SERVED_KEPT = 10_000


class ChunkStore(Protocol):
    """What ingestion needs of the chunk index (parley.vectors.index.ChunkIndex)."""

    async def replace_file(self, vector_store_id: str, file_id: str, chunks: list[Chunk], vectors: Any) -> None: ...

    async def remove_file(self, vector_store_id: str, file_id: str) -> None: ...

    async def remove_store(self, vector_store_id: str) -> None: ...


class _Failed(Exception):
    """The file cannot be ingested: it ends `failed` with this `last_error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message}


class _Lost(Exception):
    """The claim no longer holds the file: cancelled, removed from its store, or taken over."""


@dataclass(slots=True)
class _Job:
    claim: Claim
    task: asyncio.Task[None] | None = None
    lost: bool = False
    wrote: bool = False
    started: float = field(default_factory=time.monotonic)


class Ingestion:
    """The background ingestion of one server: its workers, the renewal of their leases, the expiry sweep."""

    def __init__(
        self,
        repository: VectorStoreRepository,
        files: FileStore,
        index: ChunkStore,
        registry: ModelRegistry,
        settings: VectorStoreSettings,
    ) -> None:
        self.repository = repository
        self.files = files
        self.index = index
        self.registry = registry
        self.settings = settings
        # This server's run: its claims' tokens start with it.
        self._token = secrets.token_hex(12)
        self._jobs: dict[str, _Job] = {}
        # When this server last claimed a file of each store: of stores equally in want, the one served longest
        # ago goes first.
        self._served: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        model = self.settings.embedding_model
        try:
            self.registry.resolve(model)
        except ModelNotFoundError:
            # A warning when the operator named the model; the default missing (a server configured for chat
            # alone) is no misconfiguration, so it is only noted. Either way a store's creation is a 400 naming it.
            explicit = "embedding_model" in self.settings.model_fields_set
            log.log(
                logging.WARNING if explicit else logging.INFO,
                "vector_stores.embedding_model '%s' is not a configured model: vector stores cannot be created "
                "(stores made before keep their own model)",
                model,
            )
        self._loops = [
            asyncio.create_task(self._dispatch(), name="vector-store-ingestion"),
            asyncio.create_task(self._keep_leases(), name="vector-store-ingestion-leases"),
            asyncio.create_task(self._sweep(), name="vector-store-expiry-sweep"),
        ]

    async def close(self) -> None:
        """Stops the loops and the files in progress, and gives their claims back for the next server."""
        for loop in self._loops:
            loop.cancel()
        jobs = list(self._jobs.values())
        for job in jobs:
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*self._loops, *(job.task for job in jobs if job.task is not None), return_exceptions=True)
        self._loops = []
        tokens = [job.claim.token for job in jobs]
        try:
            await self.repository.release(tokens)
        except Exception:
            # Their leases lapse instead, and the next server takes them over then.
            log.warning("Giving back %d file(s) in ingestion failed", len(tokens), exc_info=True)
        if tokens:
            log.info("Stopped ingesting %d file(s); the next server to start resumes them", len(tokens))
        self._jobs.clear()

    def wake(self) -> None:
        """Files were added: look for them now rather than at the next poll."""
        self._wake.set()

    def drop(self, vector_store_id: str, file_ids: list[str] | None = None) -> None:
        """The files (all of the store's, with None) were cancelled or removed: their ingestion here stops at
        its next step."""
        for job in self._jobs.values():
            claim = job.claim
            if claim.vector_store_id == vector_store_id and (file_ids is None or claim.file_id in file_ids):
                job.lost = True

    async def files_removed(self, vector_store_id: str, file_ids: list[str]) -> None:
        """The files were taken out of the store (or cancelled): their ingestion stops and their chunks go."""
        self.drop(vector_store_id, file_ids)
        for file_id in file_ids:
            await self.index.remove_file(vector_store_id, file_id)

    async def store_removed(self, vector_store_id: str) -> None:
        """The store was deleted: its ingestion stops and its chunks go."""
        self.drop(vector_store_id)
        await self.index.remove_store(vector_store_id)

    async def files_deleted(self, file_ids: Sequence[str]) -> None:
        """Files were deleted (`DELETE /v1/files/{id}`, or expired): as at OpenAI, they leave every store."""
        for vector_store_id, file_id in await self.repository.forget_files(file_ids):
            await self.files_removed(vector_store_id, [file_id])

    # The loops -----------------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Claims files while workers are free: when woken (a file added here, a file ended), else every
        `poll_seconds` (files added on other servers, or left by a server that died)."""
        settings = self.settings
        while True:
            self._wake.clear()
            free = settings.ingest_workers - len(self._jobs)
            if free > 0:
                busy = Counter(job.claim.vector_store_id for job in self._jobs.values())
                try:
                    taken, given_up = await self.repository.claim(
                        free,
                        self._token,
                        settings.lease_seconds,
                        settings.max_attempts,
                        busy,
                        self._served,
                        [job.claim.seq for job in self._jobs.values()],
                    )
                except Exception:
                    log.warning("Looking for files to ingest failed", exc_info=True)
                    taken, given_up = [], []
                for claim in given_up:
                    log.warning(
                        "Vector store %s: file %s failed: its ingestion was interrupted %d times",
                        claim.vector_store_id,
                        claim.file_id,
                        settings.max_attempts,
                    )
                if len(self._served) > _SERVED_KEPT:
                    self._served.clear()
                for claim in taken:
                    self._served[claim.vector_store_id] = time.monotonic()
                    job = _Job(claim)
                    self._jobs[claim.token] = job
                    job.task = asyncio.create_task(self._run(job), name=f"ingest-{claim.file_id}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), settings.poll_seconds)

    async def _keep_leases(self) -> None:
        lease = self.settings.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            tokens = list(self._jobs)
            try:
                held = await self.repository.renew(tokens, lease)
            except Exception:
                log.warning("Renewing the leases of %d file(s) in ingestion failed", len(tokens), exc_info=True)
                continue
            for token in tokens:
                job = self._jobs.get(token)
                if job is not None and token not in held:
                    job.lost = True

    async def _sweep(self) -> None:
        while True:
            try:
                for vector_store_id in await self.repository.due_to_expire():
                    self.drop(vector_store_id)
                    await self.index.remove_store(vector_store_id)
                    await self.repository.mark_expired(vector_store_id)
                    log.info("Vector store %s expired: its chunks are removed", vector_store_id)
                for vector_store_id, file_id in await self.repository.forget_missing_files():
                    await self.files_removed(vector_store_id, [file_id])
                    log.info("Vector store %s: file %s left it, its File being gone", vector_store_id, file_id)
            except Exception:
                # A database that is away for a moment: the next sweep tries again.
                log.warning("The vector stores' expiry sweep failed", exc_info=True)
            await asyncio.sleep(self.settings.expiry_sweep_seconds)

    # One file ------------------------------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        claim = job.claim
        where = f"Vector store {claim.vector_store_id}: file {claim.file_id}"
        log.info("%s: ingesting (attempt %d)", where, claim.attempts)
        try:
            chunks, usage_bytes = await self._ingest(job)
            if await self.repository.complete(claim, usage_bytes):
                seconds = time.monotonic() - job.started
                log.info("%s: completed, %d chunk(s) in %.1f s", where, chunks, seconds)
            else:
                await self._undo(job)
        except _Failed as failure:
            if await self.repository.fail(claim, failure.error):
                log.warning("%s: failed (%s): %s", where, failure.error["code"], failure.error["message"])
            else:
                await self._undo(job)
        except _Lost:
            log.info("%s: stopped (cancelled, removed, or taken over)", where)
            await self._undo(job)
        except asyncio.CancelledError:
            raise  # the server stops: `close` gives the claim back
        except Exception:
            log.exception("%s: ingestion failed", where)
            error = {"code": "server_error", "message": "The server had an error while processing this file."}
            with contextlib.suppress(Exception):
                if not await self.repository.fail(claim, error):
                    await self._undo(job)
        finally:
            self._jobs.pop(claim.token, None)
            self._wake.set()

    async def _ingest(self, job: _Job) -> tuple[int, int]:
        """Reads, parses, chunks, embeds and indexes the claimed file; its chunk count and usage in bytes."""
        claim = job.claim
        store = await self.repository.store_for_ingestion(claim.vector_store_id)
        if store is None:
            raise _Lost
        if store.expired:
            raise _Failed("server_error", "The vector store has expired.")
        try:
            model = self.registry.resolve(store.embedding_model)
        except ModelNotFoundError as exc:
            raise _Failed(
                "server_error",
                f"The vector store's embedding model '{store.embedding_model}' is not served by this server.",
            ) from exc
        filename, data = await self._read(claim.file_id)
        self._check(job)
        try:
            text = await asyncio.to_thread(extract_text, data, filename)
        except ParseError as exc:
            raise _Failed(exc.code, exc.message) from exc
        del data
        self._check(job)
        max_tokens, overlap_tokens = strategy_sizes(claim.chunking_strategy)
        chunks = await asyncio.to_thread(chunk_text, text, max_tokens, overlap_tokens)
        if not chunks:
            raise _Failed("invalid_file", "The file has no text to index.")
        vectors = await self._embed(job, model.provider, model.name, [chunk.text for chunk in chunks])
        dimensions = int(vectors.shape[1])
        kept = store.embedding_dimensions
        if kept is None:
            kept = await self.repository.set_dimensions(store.id, dimensions)
        if kept is None:
            raise _Lost
        if kept != dimensions:
            # The store's vectors are all of one model and one size: a query is compared with every one of them.
            raise _Failed(
                "server_error",
                f"The embedding model '{store.embedding_model}' returned vectors of {dimensions} dimensions; this "
                f"vector store's have {kept}.",
            )
        self._check(job)
        job.wrote = True
        await self.index.replace_file(claim.vector_store_id, claim.file_id, chunks, vectors)
        usage_bytes = sum(len(chunk.text.encode("utf-8")) for chunk in chunks) + int(vectors.nbytes)
        return len(chunks), usage_bytes

    async def _read(self, file_id: str) -> tuple[str, bytes]:
        opened = await self.files.open(file_id, ANYONE)
        if opened is None:
            raise _Failed("invalid_file", f"The file '{file_id}' no longer exists.")
        found, chunks = opened
        try:
            data = b"".join([chunk async for chunk in chunks])
        except BlobNotFound as exc:
            raise _Failed("server_error", "The file's bytes are missing from the file store.") from exc
        return str(found["filename"]), data

    async def _embed(self, job: _Job, provider: Any, model: str, texts: list[str]) -> np.ndarray[Any, Any]:
        import numpy as np

        size = self.settings.embed_batch_size
        parts = []
        for start in range(0, len(texts), size):
            self._check(job)
            try:
                embedded = await embed_texts(provider, model, texts[start : start + size])
            except ParleyError as exc:
                raise _Failed("server_error", f"The embedding model failed: {exc.message}") from exc
            parts.append(embedded.vectors)
        return np.vstack(parts)

    @staticmethod
    def _check(job: _Job) -> None:
        if job.lost:
            raise _Lost

    async def _undo(self, job: _Job) -> None:
        """The claim lost its file: the chunks it wrote go, unless another claim has the file now (its own
        chunks replace these, or have)."""
        claim = job.claim
        if not job.wrote:
            return
        try:
            if not await self.repository.owned_by_another(claim):
                await self.index.remove_file(claim.vector_store_id, claim.file_id)
        except Exception:
            log.warning(
                "Vector store %s: removing the chunks of file %s, which left it, failed",
                claim.vector_store_id,
                claim.file_id,
                exc_info=True,
            )
