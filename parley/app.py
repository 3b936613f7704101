"""Wires configuration, providers and routes into the ASGI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from parley import __version__
from parley.api import install_error_handlers, routers
from parley.api.auth import Authenticate, KeyRing
from parley.api.body import install_body_schemas
from parley.api.chat import create_chat_completion
from parley.api.fastpath import FastPaths
from parley.api.files import upload_body_limit
from parley.api.guard import RequestGuard
from parley.api.responses import create_response
from parley.api.scoping import with_test_scoping
from parley.api.websocket import responses_socket
from parley.config import Settings
from parley.engine import encrypted_reasoning
from parley.engine.background import JobSeal
from parley.engine.conversations import ConversationService
from parley.engine.files import InputFiles
from parley.engine.service import ResponseService
from parley.inference.registry import ModelRegistry
from parley.store import ConversationStore, Database, FileStore, KeyStore, ResponseStore
from parley.store.blobs import blob_store
from parley.store.vector_stores import VectorStoreRepository
from parley.tools import ToolResources
from parley.tools.outbound import Guard, HostRules
from parley.vectors.index import ChunkIndex
from parley.vectors.ingest import Ingestion

log = logging.getLogger(__name__)


def create_app(settings: Settings, on_started: Callable[[], None] | None = None) -> ASGIApp:
    """The application; `on_started` is called once it has started (its lifespan's start-up done)."""
    server_key = encrypted_reasoning.load_key(settings.engine.reasoning_key, settings.data_dir)
    encrypted_reasoning.use_key(server_key)
    registry = ModelRegistry.from_settings(settings.inference)
    database = Database(settings.storage_url)
    conversations = ConversationStore(database, settings.storage.lease_seconds)
    keys = KeyRing(settings.auth, KeyStore(database))
    files = FileStore(
        database,
        blob_store(settings.files, settings.data_dir),
        settings.files.expiry_sweep_seconds,
        settings.files.stale_upload_seconds,
    )
    # The files that input parts name: the caller's uploads, and URLs through the outbound guard.
    input_files = InputFiles(files, Guard(HostRules.of(settings.outbound)))
    vector_stores = VectorStoreRepository(database)
    chunk_index = ChunkIndex(database)
    ingestion = Ingestion(vector_stores, files, chunk_index, registry, settings.vector_stores)
    # A File deleted, or expired, leaves every vector store that held it, as at OpenAI.
    files.on_removed = ingestion.files_deleted
    responses = ResponseService(
        registry,
        ResponseStore(database, settings.storage.lease_seconds),
        conversations,
        settings.engine,
        settings.tools,
        ToolResources(database=database, models=registry, vector_index=chunk_index),
        files=input_files,
        job_seal=JobSeal(server_key),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await database.migrate()
        await keys.start()
        _say_who_may_use_it(keys)
        await registry.start()
        await responses.start()
        await files.start()
        await ingestion.start()
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            await keys.close()
            await ingestion.close()
            await files.close()
            await responses.close()
            await registry.close()
            await database.close()

    app = FastAPI(
        title="Parley",
        version=__version__,
        description="An OpenAI-compatible agentic API server.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.responses = responses
    app.state.conversations = ConversationService(conversations)
    app.state.files = files
    app.state.vector_stores = vector_stores
    app.state.chunk_index = chunk_index
    app.state.ingestion = ingestion
    app.state.input_files = input_files
    install_error_handlers(app)
    for router in routers:
        app.include_router(router)
    install_body_schemas(app)
    hot = FastPaths(
        app,
        {("POST", "/v1/chat/completions"): create_chat_completion, ("POST", "/v1/responses"): create_response},
        sockets={"/v1/responses": responses_socket},
    )
    return with_test_scoping(
        RequestGuard(
            Authenticate(hot, keys),
            settings.server,
            uploads={"/v1/files": upload_body_limit(settings.files)},
        ),
        settings.inference.recording,
    )


def _say_who_may_use_it(keys: KeyRing) -> None:
    """Says at start whether requests need a key; with none needed, loudly (`parley serve` bound it to loopback)."""
    if keys.disabled:
        log.warning(
            "Authentication is disabled (auth.disabled): anyone who can reach this server can use it, "
            "and read, change and delete everything it stores."
        )
    elif not keys.required:
        log.warning(
            "Authentication is off: there are no API keys (make one with `parley keys create`, or list them in "
            "auth.keys), so anyone who can reach this loopback address can use the server and read everything "
            "it stores."
        )
    else:
        log.info("API keys: %s; every request needs one", keys.describe())
