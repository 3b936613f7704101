"""`GET /v1/health`: the server is up and answering."""

from __future__ import annotations

from fastapi import APIRouter

from parley import __version__
from parley.api.http import JSONResponse

router = APIRouter()


@router.get("/v1/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok", "version": __version__})
