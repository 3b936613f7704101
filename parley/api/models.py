"""`GET /v1/models` and `GET /v1/models/{id}`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from parley.api.http import JSONResponse
from parley.errors import ModelNotFoundError
from parley.inference.registry import ModelEntry, ModelRegistry

router = APIRouter()


def _model_object(entry: ModelEntry) -> dict[str, Any]:
    return {"id": entry.id, "object": "model", "created": entry.created, "owned_by": entry.owned_by}


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    entries = await registry.list_models()
    return JSONResponse({"object": "list", "data": [_model_object(e) for e in entries]})


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    for entry in await registry.list_models():
        if entry.id == model_id:
            return JSONResponse(_model_object(entry))
    raise ModelNotFoundError(model_id)
