"""`POST /v1/embeddings`, over any provider that serves embeddings."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from parley.api.body import documented, read_body
from parley.api.http import JSONResponse
from parley.errors import InvalidRequestError
from parley.inference.registry import ModelRegistry

router = APIRouter()


class EmbeddingsBody(BaseModel):
    """OpenAI's embeddings request; fields Parley does not read go to the provider unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def options(self) -> dict[str, Any]:
        options = {"encoding_format": self.encoding_format, "dimensions": self.dimensions, "user": self.user}
        return {**(self.model_extra or {}), **options}


@router.post("/v1/embeddings", openapi_extra=documented(EmbeddingsBody))
async def create_embeddings(request: Request) -> JSONResponse:
    body = await read_body(request, EmbeddingsBody)
    if _empty(body.input) or (isinstance(body.input, list) and any(_empty(item) for item in body.input)):
        raise InvalidRequestError(
            "Invalid value for 'input': it must not be empty.", param="input", code="invalid_value"
        )
    registry: ModelRegistry = request.app.state.registry
    resolved = registry.resolve(body.model)
    result = await resolved.provider.embed(resolved.name, body.input, **body.options())
    # As for chat completions, the reply names the model as the caller did.
    return JSONResponse({**result, "model": body.model})


def _empty(value: Any) -> bool:
    return value == "" or value == []
