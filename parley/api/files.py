"""`/v1/files`: upload, list, retrieve, read and delete files, as OpenAI's Files API.

An upload is a `multipart/form-data` body (`file`, `purpose`, and
`expires_after[anchor]`, `expires_after[seconds]` as openai-python sends them)
read as it arrives: the `file` part's bytes go to the blob store chunk by
chunk as the network delivers them, and the small fields are kept. Nothing
holds the file whole, in memory or in a temporary copy; what is in memory is
one network chunk and the fields (at most `_MAX_FIELD_BYTES` each). A file
larger than `files.max_bytes` is a 413 as soon as its bytes pass the limit;
that, a client that leaves, or a bad field leaves no row and no bytes.

The request guard (parley.api.guard) lets `multipart/form-data` through to
this one route, with a limit of its own (`upload_body_limit`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from parley.api.auth import caller_of
from parley.api.guard import RequestTooLargeError, UnsupportedContentTypeError
from parley.api.http import JSONResponse
from parley.api.ids import FileId
from parley.api.params import Order
from parley.config import FilesSettings
from parley.errors import InvalidRequestError, NotFoundError
from parley.ids import new_id
from parley.store.blobs import BlobNotFound
from parley.store.files import FileForm, FileStore
from parley.store.pagination import PageRequest

router = APIRouter()

# The purposes an upload may give (OpenAI's FileCreateParams).
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# OpenAI's bounds on `expires_after.seconds`: an hour to 30 days.
MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 30 * 24 * 3600
# Files with purpose `batch` expire after 30 days unless the upload says otherwise, as at OpenAI.
BATCH_EXPIRY_SECONDS = MAX_EXPIRY_SECONDS
_MAX_FIELD_BYTES = 64 * 1024
_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")
# What a multipart body may hold besides its file: the fields, part headers and boundaries.
UPLOAD_OVERHEAD_BYTES = len(_FIELDS) * (_MAX_FIELD_BYTES + 1024) + 64 * 1024


def upload_body_limit(settings: FilesSettings) -> int:
    """The largest upload body the request guard lets through: the largest file and the rest of the form."""
    return settings.max_bytes + UPLOAD_OVERHEAD_BYTES


def _files(request: Request) -> FileStore:
    return request.app.state.files


def _not_found(file_id: str) -> NotFoundError:
    # OpenAI's words for a file it does not have (or that another owner has).
    return NotFoundError(f"No such File object: {file_id}", param="id")


class _Upload:
    """One multipart body, parsed as it arrives: the fields kept, the `file` part's bytes handed on."""

    def __init__(self, boundary: bytes, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self.ended = False
        self._pending: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._field: bytes = b""
        self._value: bytes = b""
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        self.error: Exception | None = None
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    async def file_chunks(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The `file` part's bytes as they come; raises (and so stores nothing) on a body that is not an upload."""
        async for data in body:
            self.parser.write(data)
            if self.error is not None:
                raise self.error
            if self._pending:
                chunk = b"".join(self._pending)
                self._pending.clear()
                yield chunk
        self.parser.finalize()
        if self.error is not None:
            raise self.error
        if not self.ended:
            raise InvalidRequestError("The multipart body ended before its closing boundary.")
        self.check()

    def check(self) -> None:
        """The form as a whole: a file and a purpose, and an expiry that is OpenAI's."""
        if self.filename is None:
            raise InvalidRequestError(
                "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
            )
        if "purpose" not in self.fields:
            raise InvalidRequestError(
                "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        self.expires_after()

    def form(self, created_at: int) -> FileForm:
        """The row's fields that the form gives."""
        seconds = self.expires_after()
        return FileForm(
            filename=self.filename or "upload",
            purpose=self.fields["purpose"],
            expires_at=None if seconds is None else created_at + seconds,
        )

    def expires_after(self) -> int | None:
        anchor = self.fields.get("expires_after[anchor]")
        seconds = self.fields.get("expires_after[seconds]")
        if anchor is None and seconds is None:
            return BATCH_EXPIRY_SECONDS if self.fields.get("purpose") == "batch" else None
        if anchor != "created_at":
            raise InvalidRequestError(
                f"Invalid value for 'expires_after.anchor': expected 'created_at', got {anchor!r}.",
                param="expires_after.anchor",
                code="invalid_value",
            )
        if seconds is None or not seconds.strip().isdigit():
            raise InvalidRequestError(
                "Invalid value for 'expires_after.seconds': expected an integer.",
                param="expires_after.seconds",
                code="invalid_value",
            )
        value = int(seconds)
        if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
            raise InvalidRequestError(
                f"Invalid value for 'expires_after.seconds': must be between {MIN_EXPIRY_SECONDS} and "
                f"{MAX_EXPIRY_SECONDS}, got {value}.",
                param="expires_after.seconds",
                code="invalid_value",
            )
        return value

    # The parser's callbacks. An error is kept, not raised, and raised after the parser's `write` returns.

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._is_file = False
        self._buffer = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if name == "file":
            if self.filename is not None:
                self._fail(InvalidRequestError("An upload carries one 'file'.", param="file"))
                return
            filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self._is_file = True
            self.filename = filename.replace("\\", "/").rsplit("/", 1)[-1] or "upload"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self._is_file:
            self.file_bytes += end - start
            if self.file_bytes > self.max_bytes:
                self._fail(
                    RequestTooLargeError(
                        f"File is too large: this server accepts files of at most {self.max_bytes} bytes "
                        "(files.max_bytes in its configuration).",
                        param="file",
                    )
                )
                return
            self._pending.append(data[start:end])
        elif self._name in _FIELDS:
            self._buffer += data[start:end]
            if len(self._buffer) > _MAX_FIELD_BYTES:
                self._fail(InvalidRequestError(f"Invalid value for '{self._name}': too long.", param=self._name))
        # Parts Parley does not know are read past, as OpenAI ignores them.

    def _part_end(self) -> None:
        if self.error is not None or self._is_file or self._name not in _FIELDS:
            return
        name = self._name
        assert name is not None
        value = self._buffer.decode("utf-8", "replace")
        if name == "purpose" and value not in PURPOSES:
            self._fail(
                InvalidRequestError(
                    f"Invalid value for 'purpose': expected one of {', '.join(PURPOSES)}, got {value!r}.",
                    param="purpose",
                    code="invalid_value",
                )
            )
            return
        self.fields[name] = value

    def _end(self) -> None:
        self.ended = True

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error


def _boundary(request: Request) -> bytes:
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise UnsupportedContentTypeError(
            f"Unsupported content type: '{media_type.decode('latin-1')}'. This API method only accepts "
            "'multipart/form-data' requests with a boundary."
        )
    return boundary


_UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(PURPOSES)},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {
                            "type": "integer",
                            "minimum": MIN_EXPIRY_SECONDS,
                            "maximum": MAX_EXPIRY_SECONDS,
                        },
                    },
                    "required": ["file", "purpose"],
                }
            }
        },
    }
}


@router.post("/v1/files", openapi_extra=_UPLOAD_SCHEMA)
async def create_file(request: Request) -> JSONResponse:
    caller = caller_of(request)
    settings: FilesSettings = request.app.state.settings.files
    upload = _Upload(_boundary(request), settings.max_bytes)
    created_at = int(time.time())
    file_id = new_id("file").replace("_", "-", 1)
    try:
        stored = await _files(request).create(
            file_id, created_at, caller.owner, upload.file_chunks(request.stream()), lambda: upload.form(created_at)
        )
    except ClientDisconnect:
        # Nobody is left to answer; the store has removed what it wrote.
        return JSONResponse({}, status_code=400)
    return JSONResponse(stored)


@router.get("/v1/files")
async def list_files(
    request: Request,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Order = "desc",
) -> JSONResponse:
    page = PageRequest(limit=limit, order=order, after=after)
    listed = await _files(request).list(page, purpose, caller_of(request))
    return JSONResponse(listed.as_list())


@router.get("/v1/files/{file_id}")
async def retrieve_file(request: Request, file_id: FileId) -> JSONResponse:
    found = await _files(request).get(file_id, caller_of(request))
    if found is None:
        raise _not_found(file_id)
    return JSONResponse(found)


@router.get(
    "/v1/files/{file_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def retrieve_file_content(request: Request, file_id: FileId) -> Response:
    opened = await _files(request).open(file_id, caller_of(request))
    if opened is None:
        raise _not_found(file_id)
    _, chunks = opened
    # The first read finds out whether the bytes are there, before the status line goes.
    try:
        first = await anext(chunks, b"")
    except BlobNotFound as exc:
        raise _not_found(file_id) from exc

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: FileId) -> JSONResponse:
    if not await _files(request).delete(file_id, caller_of(request)):
        raise _not_found(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
