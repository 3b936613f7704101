"""Files in a request's input: what the model reads of `input_file` and `input_image` parts.

    input_file   file_id    an upload of the caller's (`/v1/files`), read as text
                 file_data  a data URL (or bare base64), read as text
                 file_url   fetched through the outbound guard (parley.tools.outbound), read as text
    input_image  file_id    an image upload of the caller's, sent as a data URL
                 image_url  sent as it came: the upstream reads it

A file's text (`parley.vectors.parsing.extract_text`: PDF, text, Markdown, HTML, JSON, source code, .docx,
.pptx) is what the model is sent, as OpenAI sends the text of any file but a PDF, and of a PDF to a model that
cannot see its pages. Parley sends it to every model, vision or not, so that one request means the same to
each. It stands in the part's place framed by the file's name (`<file name="report.pdf">` ... `</file>`): OpenAI
sends the text alone, so that a model can tell neither where a file ends nor which one it read.

Items are stored and listed as they were sent: the reference, never the text. The text is read as a turn's
context is built (`InputFiles.read`), so a later turn of a `previous_response_id` chain or of a conversation
reads its files again, by id: a file deleted since (or one whose URL no longer answers) is not read, and the
model is told so in its place (`FileRead.note`), rather than every later turn failing for it. In the turn's own
input the same is an error naming the part: a 404 for a file the caller does not have, a 400 for the rest.

Limits: a file larger than MAX_FILE_BYTES (OpenAI's limit, 50 MB) is refused; a URL has FETCH_SECONDS to
answer, whole, within MAX_REDIRECTS redirects. Text too long for the model's context is not cut: the model's
own `context_length_exceeded` is the answer, as at OpenAI (and `truncation: auto` leaves out the oldest items).

What files have given is kept in the process (`_Kept`, at most CACHE_CHARS, the least lately used out first):
by file id, the data itself, or URL (for URL_KEPT_SECONDS). A file id is looked up for its caller at every read,
so another owner's file, or a deleted one, is never read from what is kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import html
import logging
import posixpath
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

import httpx

from parley import __version__
from parley.errors import InvalidRequestError, NotFoundError, ParleyError
from parley.ids import check_id
from parley.store.blobs import BlobNotFound
from parley.store.owners import Caller
from parley.tools.outbound import Guard, HostRefused
from parley.vectors.parsing import ParseError, extract_text

log = logging.getLogger(__name__)

# OpenAI's limit on one input file, 50 MB; Parley's uploads may be larger (files.max_bytes), for file_search.
MAX_FILE_BYTES = 50 * 1024 * 1024
# How long a file_url has to answer with the whole file, redirects included.
FETCH_SECONDS = 30.0
MAX_REDIRECTS = 3
# What the process keeps of files read (texts and images' data URLs), in characters.
CACHE_CHARS = 64 * 1024 * 1024
# How long a URL's text is kept: a turn that follows soon after reads what the one before read, without a fetch;
# later, the URL is fetched again (what it serves may have changed).
URL_KEPT_SECONDS = 600.0

# The images a model reads (OpenAI's: PNG, JPEG, WEBP, non-animated GIF), by their first bytes.
_IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


class FileSource(Protocol):
    """The uploaded files the engine reads, as their owners see them (`parley.store.FileStore` is one)."""

    async def get(self, file_id: str, caller: Caller) -> dict[str, Any] | None:
        """The file object (`filename`, `bytes`, `purpose`...), or None when the caller has no such file."""
        ...

    async def open(self, file_id: str, caller: Caller) -> tuple[dict[str, Any], AsyncIterator[bytes]] | None:
        """The file object and its bytes, read as they are iterated; None when the caller has no such file."""
        ...


PartKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class FileRead:
    """What one part's file gave: its name and its text, or its image as a data URL, or, in an earlier turn,
    the note that stands for a file that can no longer be read."""

    name: str
    text: str | None = None
    image_url: str | None = None
    note: str | None = None


class Unreadable(Exception):
    """A part's file cannot be read: `message` says why, `field` names the part's field it comes from,
    `missing` says the caller has no such file (a 404), `code` the error's code."""

    def __init__(self, message: str, field: str, *, missing: bool = False, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.missing = missing
        self.code = code

    def error(self, place: str) -> ParleyError:
        """The error for a part at `place` (`input[0].content[1]`)."""
        param = f"{place}.{self.field}"
        if self.missing:
            return NotFoundError(self.message, param=param)
        return InvalidRequestError(f"Invalid value for '{param}': {self.message}", param=param, code=self.code)


def part_key(part: Mapping[str, Any]) -> PartKey | None:
    """What identifies the file of an `input_file` or `input_image` part, as `InputFiles.read` maps it; None for
    a part that brings no file to read (text, an image by URL)."""
    kind = part.get("type")
    if kind == "input_image":
        file_id = part.get("file_id")
        return (kind, "file_id", file_id) if file_id and not part.get("image_url") else None
    if kind != "input_file":
        return None
    for field in ("file_id", "file_url", "file_data"):
        value = part.get(field)
        if isinstance(value, str) and value:
            return (kind, field, value)
    return None


def chat_part(part: Mapping[str, Any], read: FileRead) -> dict[str, Any]:
    """The chat-completions content part for an `input_file` or `input_image` part, from what its file gave."""
    if read.image_url is not None:
        return {"type": "image_url", "image_url": {"url": read.image_url, "detail": part.get("detail", "auto")}}
    name = part.get("filename") or read.name
    if read.note is not None:
        return {"type": "text", "text": f"[{read.note}]"}
    return {"type": "text", "text": framed(name, read.text or "")}


def framed(name: str, text: str) -> str:
    """A file's text as the model reads it: between tags that name the file."""
    return f'<file name="{html.escape(name, quote=True)}">\n{text}\n</file>'


def file_parts(item: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The parts of a user, system or developer message item that bring a file, with their indexes."""
    if item.get("type") != "message" or item.get("role") == "assistant" or not isinstance(item.get("content"), list):
        return []
    return [(index, part) for index, part in enumerate(item["content"]) if part_key(part) is not None]


def has_file_parts(messages: list[dict[str, Any]]) -> bool:
    """Whether chat-completions `messages` hold a `file` part (for `InputFiles.read_chat`)."""
    return any(
        isinstance(part, dict) and part.get("type") == "file"
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


class InputFiles:
    """Reads the files of input parts for the model: uploads from `files`, URLs through `guard`.

    One per server; `close` closes its HTTP client.
    """

    def __init__(self, files: FileSource | None, guard: Guard | None) -> None:
        self.files = files
        self.guard = guard
        self._client: httpx.AsyncClient | None = None
        self._kept = _Kept(CACHE_CHARS)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def read(
        self,
        caller: Caller,
        items: list[dict[str, Any]],
        history: list[dict[str, Any]],
        history_param: str | None,
    ) -> dict[PartKey, FileRead]:
        """What the files of `items` (this request's input) and of `history` (the turns before) give, by
        `part_key`. One of `items` that cannot be read is an error naming it (`input[0].content[1].file_id`);
        one of `history` is a note in its place, for the model (see the module's docstring)."""
        reads: dict[PartKey, FileRead] = {}
        # This request's input first: a file it names is an error when unreadable, even if an earlier turn names it.
        for index, item in enumerate(items):
            for part_index, part in file_parts(item):
                key = part_key(part)
                if key is not None and key not in reads:
                    try:
                        reads[key] = await self._read(part, caller)
                    except Unreadable as exc:
                        raise exc.error(f"input[{index}].content[{part_index}]") from None
        for item in history:
            for _, part in file_parts(item):
                key = part_key(part)
                if key is not None and key not in reads:
                    try:
                        reads[key] = await self._read(part, caller)
                    except Unreadable as exc:
                        log.info("a file of item %s (%s) is not read: %s", item.get("id"), history_param, exc.message)
                        reads[key] = FileRead(name=part.get("filename") or "file", note=_note(key, exc))
        return reads

    async def read_chat(self, caller: Caller, messages: list[dict[str, Any]]) -> None:
        """Replaces, in chat-completions `messages`, each `file` part (`file_id` or `file_data`, and `filename`)
        with its text; an unreadable one is an error naming it (`messages[0].content[1].file.file_id`)."""
        for index, message in enumerate(messages):
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "file":
                    continue
                place = f"messages[{index}].content[{part_index}].file"
                file = part.get("file")
                if not isinstance(file, dict) or not (file.get("file_id") or file.get("file_data")):
                    raise InvalidRequestError(
                        f"Missing required parameter: '{place}.file_id' (or 'file_data').",
                        param=f"{place}.file_id",
                        code="missing_required_parameter",
                    )
                source = {key: file[key] for key in ("file_id", "file_data", "filename") if file.get(key)}
                if not all(isinstance(value, str) for value in source.values()):
                    raise InvalidRequestError(
                        f"Invalid type for '{place}': file_id, file_data and filename are strings.",
                        param=place,
                        code="invalid_type",
                    )
                if "file_id" in source:
                    check_id(source["file_id"], "file-", f"{place}.file_id")
                    source.pop("file_data", None)
                try:
                    read = await self._read({"type": "input_file", **source}, caller)
                except Unreadable as exc:
                    raise exc.error(place) from None
                content[part_index] = {
                    "type": "text",
                    "text": framed(source.get("filename") or read.name, read.text or ""),
                }

    async def _read(self, part: Mapping[str, Any], caller: Caller) -> FileRead:
        key = part_key(part)
        assert key is not None
        kind, field, value = key
        if kind == "input_image":
            return await self._image(value, caller)
        if field == "file_id":
            return await self._uploaded_text(value, caller)
        if field == "file_url":
            return await self._fetched_text(value)
        return await self._inline_text(value, part.get("filename"))

    # Uploads

    async def _uploaded(self, file_id: str, caller: Caller) -> dict[str, Any]:
        """The caller's file `file_id`, checked for size; Unreadable when the caller has none."""
        file = await self.files.get(file_id, caller) if self.files is not None else None
        if file is None:
            raise Unreadable(f"No such File object: {file_id}", "file_id", missing=True)
        if file["bytes"] > MAX_FILE_BYTES:
            raise Unreadable(
                f"the file '{file_id}' ({file['filename']}) is {file['bytes']:,} bytes, more than an input "
                f"file may be ({MAX_FILE_BYTES:,}); put it in a vector store and search it with file_search.",
                "file_id",
            )
        return file

    async def _uploaded_bytes(self, file_id: str, caller: Caller) -> bytes:
        opened = await self.files.open(file_id, caller) if self.files is not None else None
        try:
            if opened is None:
                raise BlobNotFound(file_id)
            return await _at_most(opened[1], MAX_FILE_BYTES, "file_id")
        except BlobNotFound:  # deleted since it was looked up
            raise Unreadable(f"No such File object: {file_id}", "file_id", missing=True) from None

    async def _uploaded_text(self, file_id: str, caller: Caller) -> FileRead:
        file = await self._uploaded(file_id, caller)  # looked up every time: the caller's, and still there
        key = ("text", file_id)
        read = self._kept.get(key)
        if read is None:
            data = await self._uploaded_bytes(file_id, caller)
            text = await _text(data, file["filename"], None, "file_id", f"the file '{file_id}' ({file['filename']})")
            read = self._kept.put(key, FileRead(name=file["filename"], text=text))
        return read

    async def _image(self, file_id: str, caller: Caller) -> FileRead:
        file = await self._uploaded(file_id, caller)
        key = ("image", file_id)
        read = self._kept.get(key)
        if read is None:
            data = await self._uploaded_bytes(file_id, caller)
            media_type = image_type(data)
            if media_type is None:
                raise Unreadable(
                    f"the file '{file_id}' ({file['filename']}) is not an image in a supported format "
                    "(PNG, JPEG, WEBP, GIF).",
                    "file_id",
                )
            url = f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
            read = self._kept.put(key, FileRead(name=file["filename"], image_url=url))
        return read

    # Inline data

    async def _inline_text(self, data_url: str, filename: str | None) -> FileRead:
        media_type, data = _decode_data(data_url)
        name = filename or "file"
        key = ("data", hashlib.sha256(data).hexdigest(), name, media_type or "")
        read = self._kept.get(key)
        if read is None:
            text = await _text(data, name, media_type, "file_data", f"the file '{name}'")
            read = self._kept.put(key, FileRead(name=name, text=text))
        return read

    # URLs

    async def _fetched_text(self, url: str) -> FileRead:
        key = ("url", url)
        read = self._kept.get(key, URL_KEPT_SECONDS)
        if read is None:
            data, where, content_type = await self._fetch(url)
            name = _name_in(where)
            text = await _text(data, name, content_type, "file_url", f"the file at '{_shown(url)}'")
            read = self._kept.put(key, FileRead(name=name, text=text))
        return read

    async def _fetch(self, url: str) -> tuple[bytes, str, str | None]:
        """The body at `url` (after redirects), where it was read, and its content type."""
        if self.guard is None:
            raise Unreadable("files by URL are not read by this server.", "file_url", code="unsupported_value")
        if self._client is None:
            headers = {"User-Agent": f"Parley/{__version__} (input_file)"}
            self._client = self.guard.httpx_client(headers=headers, timeout=FETCH_SECONDS)
        shown = _shown(url)
        try:
            async with asyncio.timeout(FETCH_SECONDS):
                for _ in range(MAX_REDIRECTS + 1):
                    self.guard.check_url(url)
                    async with self._client.stream("GET", url, follow_redirects=False) as response:
                        location = response.headers.get("location")
                        if response.is_redirect and location:
                            url = urljoin(url, location)
                            continue
                        if response.status_code >= 400:
                            raise Unreadable(
                                f"the file at '{shown}' cannot be fetched: it answered HTTP {response.status_code}.",
                                "file_url",
                            )
                        declared = response.headers.get("content-length")
                        if declared is not None and declared.isdigit() and int(declared) > MAX_FILE_BYTES:
                            raise _too_large(f"the file at '{shown}'", int(declared), "file_url")
                        data = await _at_most(
                            response.aiter_bytes(), MAX_FILE_BYTES, "file_url", f"the file at '{shown}'"
                        )
                        return data, url, response.headers.get("content-type")
        except HostRefused as exc:
            raise Unreadable(f"the file at '{shown}' may not be fetched: {exc}.", "file_url") from None
        except (TimeoutError, httpx.TimeoutException):
            raise Unreadable(
                f"the file at '{shown}' cannot be fetched: it did not arrive within {FETCH_SECONDS:g} s.", "file_url"
            ) from None
        except httpx.HTTPError as exc:
            reason = str(exc) or exc.__class__.__name__
            raise Unreadable(f"the file at '{shown}' cannot be fetched: {reason[:200]}.", "file_url") from None
        raise Unreadable(f"the file at '{shown}' redirected more than {MAX_REDIRECTS} times.", "file_url")


def image_type(data: bytes) -> str | None:
    """The media type of an image a model reads (PNG, JPEG, GIF, WEBP), from its first bytes; None for any other."""
    for signature, media_type in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


async def _text(data: bytes, name: str, content_type: str | None, field: str, what: str) -> str:
    """The file's text; extraction (a PDF's can take seconds) runs in a thread, off the event loop."""
    try:
        return await asyncio.to_thread(extract_text, data, name, content_type)
    except ParseError as exc:
        raise Unreadable(f"{what} cannot be read as text: {exc.message}", field, code=exc.code) from None


async def _at_most(chunks: AsyncIterator[bytes], limit: int, field: str, what: str = "the file") -> bytes:
    """All of `chunks`, or Unreadable once they pass `limit` bytes (the rest is never read)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(what, None, field)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(what: str, size: int | None, field: str) -> Unreadable:
    told = f" ({size:,} bytes)" if size is not None else ""
    return Unreadable(f"{what}{told} is larger than an input file may be ({MAX_FILE_BYTES:,} bytes).", field)


def _decode_data(data_url: str) -> tuple[str | None, bytes]:
    """The media type and bytes of `file_data`: a data URL (`data:application/pdf;base64,...`) or bare base64."""
    media_type: str | None = None
    payload = data_url
    encoded = True
    if data_url.startswith("data:"):
        header, comma, payload = data_url[5:].partition(",")
        if not comma:
            raise Unreadable("file_data is a data URL without data (no ',').", "file_data")
        params = header.split(";")
        media_type = params[0].strip() or None
        encoded = "base64" in (param.strip().lower() for param in params[1:])
    if len(payload) > (MAX_FILE_BYTES * 4) // 3 + 4:
        raise _too_large("file_data", None, "file_data")
    if not encoded:
        return media_type, unquote_to_bytes(payload)
    try:
        return media_type, base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Unreadable(
            "file_data is neither base64 nor a base64 data URL ('data:application/pdf;base64,...').", "file_data"
        ) from None


def _name_in(url: str) -> str:
    """A file's name as its URL gives it: the path's last segment (`report.pdf`), else the host."""
    parts = urlsplit(url)
    name = posixpath.basename(unquote(parts.path))
    return name or parts.hostname or "file"


def _shown(url: str) -> str:
    return url if len(url) <= 200 else url[:200] + "..."


def _note(key: PartKey, exc: Unreadable) -> str:
    """What the model reads in the place of a file of an earlier turn that cannot be read now."""
    kind, field, value = key
    what = "image" if kind == "input_image" else "file"
    if field == "file_data":
        shown = "sent inline"
    else:
        shown = f"'{_shown(value)}'"
    reason = "it no longer exists" if exc.missing else exc.message
    return f"The {what} {shown} given here earlier can no longer be read ({reason}); its content is not shown."


class _Kept:
    """What files gave, by key, the least lately used out first once their texts and data URLs pass `max_chars`
    in all; one larger than a quarter of that is not kept."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._reads: OrderedDict[tuple[str, ...], tuple[FileRead, float]] = OrderedDict()
        self._chars = 0

    def get(self, key: tuple[str, ...], max_age: float | None = None) -> FileRead | None:
        """What is kept under `key`, if it was kept less than `max_age` seconds ago (when given)."""
        kept = self._reads.get(key)
        if kept is None:
            return None
        read, when = kept
        if max_age is not None and time.monotonic() - when > max_age:
            return None
        self._reads.move_to_end(key)
        return read

    def put(self, key: tuple[str, ...], read: FileRead) -> FileRead:
        """Keeps `read` (if it is not too large), and returns it."""
        size = _size(read)
        if size > self.max_chars // 4:
            return read
        old = self._reads.pop(key, None)
        if old is not None:
            self._chars -= _size(old[0])
        self._reads[key] = (read, time.monotonic())
        self._chars += size
        while self._chars > self.max_chars:
            _, (dropped, _) = self._reads.popitem(last=False)
            self._chars -= _size(dropped)
        return read


def _size(read: FileRead) -> int:
    return len(read.text or "") + len(read.image_url or "")
