"""`/v1/vector_stores`: vector stores, their files and file batches, as OpenAI's Vector Stores API.

Adding files returns at once, the files `in_progress`: they are ingested in the background
(parley.vectors.ingest), and a client polls them (openai-python's `create_and_poll`, `upload_and_poll`),
told by `openai-poll-after-ms` how soon to ask again. Taking a file out of a store, cancelling a batch or
deleting a store removes the chunks too. Another owner's store is, to the caller, a store that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from openai.types import vector_store_create_params, vector_store_search_params, vector_store_update_params
from openai.types.vector_stores import file_batch_create_params, file_create_params, file_update_params
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from parley.api.auth import caller_of
from parley.api.body import documented, read_body
from parley.api.http import JSONResponse
from parley.api.ids import BatchId, FileId, VectorStoreId
from parley.api.params import Limit, Order
from parley.config import VectorStoreSettings
from parley.engine.request import check_metadata
from parley.errors import InvalidRequestError, ModelNotFoundError
from parley.ids import check_id, new_id
from parley.inference.registry import ModelRegistry
from parley.package_fields import PackageFields, keys_of
from parley.store.pagination import PageRequest
from parley.store.vector_stores import UNSET, NewFile, VectorStoreExpired, VectorStoreRepository
from parley.vectors.chunking import parse_chunking_strategy
from parley.vectors.ingest import Ingestion
from parley.vectors.search import DEFAULT_NUM_RESULTS, registry_embedder, search

router = APIRouter()

# OpenAI's limits: files named at a store's creation, and in one batch.
MAX_CREATE_FILES = 500
MAX_BATCH_FILES = 2000
# How soon a client polling a file or batch in progress asks again (openai-python reads this header).
POLL_AFTER_MS = 250


StatusFilter = Annotated[Literal["in_progress", "completed", "failed", "cancelled"] | None, Query()]


# Bodies -----------------------------------------------------------------------------------------------

AttributeValue = StrictStr | StrictBool | StrictInt | StrictFloat


def _file_ids(value: list[str] | None, param: str) -> list[str] | None:
    for index, file_id in enumerate(value or ()):
        check_id(file_id, "file-", f"{param}[{index}]")
    return value


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["last_active_at"]
    days: StrictInt = Field(ge=1, le=365)


class CreateVectorStoreRequest(PackageFields):
    known = keys_of(vector_store_create_params.VectorStoreCreateParams)

    name: StrictStr | None = None
    description: StrictStr | None = Field(None, max_length=512)
    file_ids: list[StrictStr] | None = Field(None, max_length=MAX_CREATE_FILES)
    chunking_strategy: dict[str, Any] | None = None
    expires_after: ExpiresAfter | None = None
    metadata: dict[str, StrictStr] | None = None

    _metadata_limits = field_validator("metadata")(lambda cls, value: check_metadata(value))
    _file_id_forms = field_validator("file_ids")(lambda cls, value: _file_ids(value, "file_ids"))


class UpdateVectorStoreRequest(PackageFields):
    known = keys_of(vector_store_update_params.VectorStoreUpdateParams)

    name: StrictStr | None = None
    expires_after: ExpiresAfter | None = None
    metadata: dict[str, StrictStr] | None = None

    _metadata_limits = field_validator("metadata")(lambda cls, value: check_metadata(value))


class _StoreFile(PackageFields):
    """A file as a store takes it, alone (`files.create`) or one of a batch's `files`: the same three fields."""

    file_id: StrictStr
    attributes: dict[str, AttributeValue] | None = None
    chunking_strategy: dict[str, Any] | None = None

    _attribute_limits = field_validator("attributes")(lambda cls, value: check_metadata(value))


class CreateFileRequest(_StoreFile):
    known = keys_of(file_create_params.FileCreateParams)

    # A batch's files are checked by the batch, which names each one's index.
    _file_id_form = field_validator("file_id")(lambda cls, value: check_id(value, "file-", "file_id"))


class UpdateFileRequest(PackageFields):
    # `vector_store_id` is the path's.
    known = keys_of(file_update_params.FileUpdateParams) - {"vector_store_id"}

    attributes: dict[str, AttributeValue] | None

    _attribute_limits = field_validator("attributes")(lambda cls, value: check_metadata(value))


class BatchFile(_StoreFile):
    known = keys_of(file_batch_create_params.File)


def _batch_files(value: list[BatchFile] | None) -> list[BatchFile] | None:
    for index, file in enumerate(value or ()):
        check_id(file.file_id, "file-", f"files[{index}].file_id")
    return value


class CreateBatchRequest(PackageFields):
    known = keys_of(file_batch_create_params.FileBatchCreateParams)

    file_ids: list[StrictStr] | None = Field(None, min_length=1, max_length=MAX_BATCH_FILES)
    files: list[BatchFile] | None = Field(None, min_length=1, max_length=MAX_BATCH_FILES)
    attributes: dict[str, AttributeValue] | None = None
    chunking_strategy: dict[str, Any] | None = None

    _attribute_limits = field_validator("attributes")(lambda cls, value: check_metadata(value))
    _file_id_forms = field_validator("file_ids")(lambda cls, value: _file_ids(value, "file_ids"))
    _file_forms = field_validator("files")(lambda cls, value: _batch_files(value))


class SearchRequest(PackageFields):
    """The fields are checked by parley.vectors.search, which names the one that is wrong."""

    known = keys_of(vector_store_search_params.VectorStoreSearchParams)

    # Missing is checked in the route: a pydantic error located at `query` reads as a query parameter's.
    query: Any = None
    filters: Any = None
    max_num_results: Any = DEFAULT_NUM_RESULTS
    ranking_options: Any = None
    rewrite_query: Any = False


# Services ---------------------------------------------------------------------------------------------


def _repository(request: Request) -> VectorStoreRepository:
    return request.app.state.vector_stores


def _ingestion(request: Request) -> Ingestion:
    return request.app.state.ingestion


def _embedding_model(request: Request) -> str:
    """The embedding model of new stores, as "provider/model" (the configured alias resolved)."""
    settings: VectorStoreSettings = request.app.state.settings.vector_stores
    registry: ModelRegistry = request.app.state.registry
    model = settings.embedding_model
    try:
        registry.resolve(model)
    except ModelNotFoundError as exc:
        # The server's configuration, not the request, is at fault; but a 5xx would say the request may work
        # if tried again, and it will not until the configuration changes.
        raise InvalidRequestError(
            f"Vector stores are not available on this server: its embedding model for them, '{model}' "
            "(vector_stores.embedding_model), is not a configured model.",
            code="embedding_model_not_available",
        ) from exc
    return registry.aliases.get(model, model)


def _polled(body: dict[str, Any], in_progress: bool) -> JSONResponse:
    headers = {"openai-poll-after-ms": str(POLL_AFTER_MS)} if in_progress else None
    return JSONResponse(body, headers=headers)


# Vector stores ----------------------------------------------------------------------------------------


@router.post("/v1/vector_stores", openapi_extra=documented(CreateVectorStoreRequest))
async def create_vector_store(request: Request) -> JSONResponse:
    body = await read_body(request, CreateVectorStoreRequest, empty_ok=True)
    strategy = parse_chunking_strategy(body.chunking_strategy)
    new_files = [NewFile(file_id, None, strategy) for file_id in dict.fromkeys(body.file_ids or ())]
    values = {
        "id": new_id("vs"),
        "name": body.name,
        "description": body.description,
        "metadata": body.metadata or {},
        "expires_after_days": body.expires_after.days if body.expires_after else None,
        "embedding_model": _embedding_model(request),
    }
    created = await _repository(request).create_store(values, new_files, caller_of(request))
    if new_files:
        _ingestion(request).wake()
    return JSONResponse(created)


@router.get("/v1/vector_stores")
async def list_vector_stores(
    request: Request, limit: Limit = 20, order: Order = "desc", after: str | None = None, before: str | None = None
) -> JSONResponse:
    page = PageRequest(limit=limit, order=order, after=after, before=before)
    listed = await _repository(request).list_stores(page, caller_of(request))
    return JSONResponse(listed.as_list())


@router.get("/v1/vector_stores/{vector_store_id}")
async def retrieve_vector_store(request: Request, vector_store_id: VectorStoreId) -> JSONResponse:
    found = await _repository(request).get_store(vector_store_id, caller_of(request))
    return _polled(found, found["status"] == "in_progress")


@router.post("/v1/vector_stores/{vector_store_id}", openapi_extra=documented(UpdateVectorStoreRequest))
async def update_vector_store(request: Request, vector_store_id: VectorStoreId) -> JSONResponse:
    body = await read_body(request, UpdateVectorStoreRequest, empty_ok=True)
    given = body.model_fields_set
    changes: dict[str, Any] = {
        "name": body.name if "name" in given else UNSET,
        "metadata": body.metadata if "metadata" in given else UNSET,
        "expires_after_days": (
            (body.expires_after.days if body.expires_after else None) if "expires_after" in given else UNSET
        ),
    }
    return JSONResponse(await _repository(request).update_store(vector_store_id, caller_of(request), **changes))


@router.delete("/v1/vector_stores/{vector_store_id}")
async def delete_vector_store(request: Request, vector_store_id: VectorStoreId) -> JSONResponse:
    await _repository(request).delete_store(vector_store_id, caller_of(request))
    await _ingestion(request).store_removed(vector_store_id)
    return JSONResponse({"id": vector_store_id, "object": "vector_store.deleted", "deleted": True})


@router.post("/v1/vector_stores/{vector_store_id}/search", openapi_extra=documented(SearchRequest))
async def search_vector_store(request: Request, vector_store_id: VectorStoreId) -> JSONResponse:
    """Hybrid search of the store's completed files (parley.vectors.search); a search is the store's activity."""
    body = await read_body(request, SearchRequest)
    if "query" not in body.model_fields_set:
        raise InvalidRequestError(
            "Missing required parameter: 'query'.", param="query", code="missing_required_parameter"
        )
    repository = _repository(request)
    store = await repository.info(vector_store_id, caller_of(request))
    if store.expired:
        raise VectorStoreExpired(vector_store_id)
    results = await search(
        request.app.state.chunk_index,
        registry_embedder(request.app.state.registry),
        [store],
        body.query,
        filters=body.filters,
        max_num_results=body.max_num_results,
        ranking_options=body.ranking_options,
        rewrite_query=body.rewrite_query,
    )
    await repository.touch([store.id])
    return JSONResponse(results.page())


# A store's files --------------------------------------------------------------------------------------


@router.post("/v1/vector_stores/{vector_store_id}/files", openapi_extra=documented(CreateFileRequest))
async def create_vector_store_file(request: Request, vector_store_id: VectorStoreId) -> JSONResponse:
    body = await read_body(request, CreateFileRequest)
    new = NewFile(body.file_id, body.attributes, parse_chunking_strategy(body.chunking_strategy))
    [added] = await _repository(request).add_files(vector_store_id, [new], caller_of(request))
    _ingestion(request).wake()
    return JSONResponse(added)


@router.get("/v1/vector_stores/{vector_store_id}/files")
async def list_vector_store_files(
    request: Request,
    vector_store_id: VectorStoreId,
    limit: Limit = 20,
    order: Order = "desc",
    after: str | None = None,
    before: str | None = None,
    filter: StatusFilter = None,  # OpenAI's name for it
) -> JSONResponse:
    page = PageRequest(limit=limit, order=order, after=after, before=before)
    listed = await _repository(request).list_files(vector_store_id, page, caller_of(request), status=filter)
    return JSONResponse(listed.as_list())


@router.get("/v1/vector_stores/{vector_store_id}/files/{file_id}")
async def retrieve_vector_store_file(request: Request, vector_store_id: VectorStoreId, file_id: FileId) -> JSONResponse:
    found = await _repository(request).get_file(vector_store_id, file_id, caller_of(request))
    return _polled(found, found["status"] == "in_progress")


@router.post("/v1/vector_stores/{vector_store_id}/files/{file_id}", openapi_extra=documented(UpdateFileRequest))
async def update_vector_store_file(request: Request, vector_store_id: VectorStoreId, file_id: FileId) -> JSONResponse:
    body = await read_body(request, UpdateFileRequest)
    return JSONResponse(
        await _repository(request).update_file(vector_store_id, file_id, body.attributes, caller_of(request))
    )


@router.delete("/v1/vector_stores/{vector_store_id}/files/{file_id}")
async def delete_vector_store_file(request: Request, vector_store_id: VectorStoreId, file_id: FileId) -> JSONResponse:
    await _repository(request).remove_file(vector_store_id, file_id, caller_of(request))
    await _ingestion(request).files_removed(vector_store_id, [file_id])
    return JSONResponse({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})


@router.get("/v1/vector_stores/{vector_store_id}/files/{file_id}/content")
async def retrieve_vector_store_file_content(
    request: Request, vector_store_id: VectorStoreId, file_id: FileId
) -> JSONResponse:
    """The file's text as the store holds it: its chunks, in order (none until it is `completed`)."""
    found = await _repository(request).get_file(vector_store_id, file_id, caller_of(request))
    texts: list[str] = []
    if found["status"] == "completed":
        texts = await request.app.state.chunk_index.file_chunks(vector_store_id, file_id)
    return JSONResponse(
        {
            "object": "vector_store.file_content.page",
            "data": [{"type": "text", "text": text} for text in texts],
            "has_more": False,
            "next_page": None,
        }
    )


# File batches -----------------------------------------------------------------------------------------


@router.post("/v1/vector_stores/{vector_store_id}/file_batches", openapi_extra=documented(CreateBatchRequest))
async def create_file_batch(request: Request, vector_store_id: VectorStoreId) -> JSONResponse:
    body = await read_body(request, CreateBatchRequest)
    if body.file_ids is not None and body.files is not None:
        raise InvalidRequestError(
            "'file_ids' and 'files' are mutually exclusive: give one of them.", param="files", code="invalid_value"
        )
    if body.files is not None:
        # Each file says its own attributes and strategy; the batch's own are not used, as at OpenAI.
        new_files = [
            NewFile(
                file.file_id,
                file.attributes,
                parse_chunking_strategy(file.chunking_strategy, f"files[{index}].chunking_strategy"),
            )
            for index, file in enumerate(body.files)
        ]
        param = "files"
    elif body.file_ids is not None:
        strategy = parse_chunking_strategy(body.chunking_strategy)
        new_files = [NewFile(file_id, body.attributes, strategy) for file_id in body.file_ids]
        param = "file_ids"
    else:
        raise InvalidRequestError(
            "Missing required parameter: 'file_ids' (or 'files').",
            param="file_ids",
            code="missing_required_parameter",
        )
    # A file named twice is added once, as its last mention says.
    unique = list({new.file_id: new for new in new_files}.values())
    batch = await _repository(request).create_batch(vector_store_id, new_id("vsfb"), unique, caller_of(request), param)
    _ingestion(request).wake()
    return JSONResponse(batch)


@router.get("/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}")
async def retrieve_file_batch(request: Request, vector_store_id: VectorStoreId, batch_id: BatchId) -> JSONResponse:
    found = await _repository(request).get_batch(vector_store_id, batch_id, caller_of(request))
    return _polled(found, found["status"] == "in_progress")


@router.post("/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel")
async def cancel_file_batch(request: Request, vector_store_id: VectorStoreId, batch_id: BatchId) -> JSONResponse:
    batch, cancelled = await _repository(request).cancel_batch(vector_store_id, batch_id, caller_of(request))
    await _ingestion(request).files_removed(vector_store_id, cancelled)
    return JSONResponse(batch)


@router.get("/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files")
async def list_file_batch_files(
    request: Request,
    vector_store_id: VectorStoreId,
    batch_id: BatchId,
    limit: Limit = 20,
    order: Order = "desc",
    after: str | None = None,
    before: str | None = None,
    filter: StatusFilter = None,  # OpenAI's name for it
) -> JSONResponse:
    page = PageRequest(limit=limit, order=order, after=after, before=before)
    listed = await _repository(request).list_files(
        vector_store_id, page, caller_of(request), status=filter, batch_id=batch_id
    )
    return JSONResponse(listed.as_list())
