"""Recording files: one JSON file per model call, in the layout of the shared recordings.

    {
      "test_id": "tests/test_x.py::test_y" | null,
      "request": {"method", "url", "headers", "body", "endpoint", "model"},
      "response": {"body": [chunk, ...] | object, "is_streaming": bool},
      "id_normalization_mapping": {}
    }

A call that failed has `"is_exception": true` in its response, with the
exception as its recorder described it and, when it failed while streaming,
the chunks that came before (see `recording_errors`).

Each chunk or object is wrapped as `{"__type__": "<python type path>",
"__data__": <the OpenAI wire object>}`. Parley adds `request.provider`, the
name of the provider that made the call; readers that do not know it ignore
it. Files are written atomically (a temporary file, then a rename), and
without secrets: no credential headers, no keys in URLs.

Reading is strict: `read_recording` and the `*_reply` functions raise
`RecordingFileError`, which names the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from parley.errors import ParleyError
from parley.inference.base import ModelInfo
from parley.inference.recording_errors import RecordedFailure, RecordedFailureError, recorded_failure
from parley.inference.types import ChatChunk
from parley.inference.wire import choice_chunk, completion_chunks, usage_from_wire

CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
MODELS_ENDPOINT = "/v1/models"

CHUNK_TYPE = "openai.types.chat.chat_completion_chunk.ChatCompletionChunk"
COMPLETION_TYPE = "openai.types.chat.chat_completion.ChatCompletion"
EMBEDDINGS_TYPE = "openai.types.create_embedding_response.CreateEmbeddingResponse"
MODEL_TYPE = "openai.types.model.Model"

# Header names and URL query parameters that carry credentials: never written.
_SECRET_NAME = re.compile(r"auth|key|token|secret|password|cookie|signature", re.IGNORECASE)


class RecordingFileError(ParleyError):
    """A recording file that cannot be read or used; the message names the file."""

    code = "recording_unreadable"

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"Recording file {path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(slots=True)
class Recording:
    """One recorded call, as read from (or about to be written to) `path`."""

    path: Path
    test_id: str | None
    request: dict[str, Any]
    response: dict[str, Any]

    @property
    def endpoint(self) -> str:
        return str(self.request.get("endpoint") or urlsplit(str(self.request.get("url") or "")).path)

    @property
    def body(self) -> dict[str, Any]:
        return self.request.get("body") or {}

    @property
    def model(self) -> str:
        return str(self.request.get("model") or self.body.get("model") or "")

    @property
    def is_streaming(self) -> bool:
        return bool(self.response.get("is_streaming"))

    @property
    def is_exception(self) -> bool:
        """The call failed: the reply is an error, after the chunks (if any) streamed before it."""
        return self.response.get("is_exception") is True

    def as_json(self) -> dict[str, Any]:
        return {
            "test_id": self.test_id,
            "request": self.request,
            "response": self.response,
            "id_normalization_mapping": {},
        }


def read_recording(path: Path) -> Recording:
    """The recording in `path`, its layout checked and its reply readable."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecordingFileError(path, f"cannot be read: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordingFileError(path, f"is not valid JSON (truncated or corrupt?): {exc}") from exc
    if not isinstance(data, dict):
        raise RecordingFileError(path, f"holds {type(data).__name__}, not a recording object")
    request, response = data.get("request"), data.get("response")
    if not isinstance(request, dict):
        raise RecordingFileError(path, "has no 'request' object")
    if not isinstance(response, dict) or "body" not in response:
        raise RecordingFileError(path, "has no 'response.body'")
    if not isinstance(request.get("body") or {}, dict):
        raise RecordingFileError(path, "'request.body' is not an object")
    test_id = data.get("test_id")
    recording = Recording(path, test_id if isinstance(test_id, str) else None, request, response)
    mapping = data.get("id_normalization_mapping")
    if mapping and isinstance(mapping, dict):
        recording = _restore_ids(recording, mapping)
    check_reply(recording)
    return recording


def _restore_ids(recording: Recording, mapping: dict[str, Any]) -> Recording:
    # The recorder rewrote ids in the file: the mapping's keys are the ids the call
    # had, its values what the file holds instead. Only id values are put back:
    # a message text that happens to contain one is what the model saw and said.
    restore = {str(written): str(original) for original, written in mapping.items()}
    request = _restored(recording.request, restore, False)
    response = _restored(recording.response, restore, False)
    return Recording(recording.path, recording.test_id, request, response)


def _is_id_field(name: str) -> bool:
    return name == "id" or name.endswith("_id") or name.endswith("_ids")


def _restored(value: Any, restore: dict[str, str], in_id_field: bool) -> Any:
    """`value` with each string that is exactly a rewritten id, in an id field, put back."""
    if isinstance(value, dict):
        return {key: _restored(item, restore, _is_id_field(str(key))) for key, item in value.items()}
    if isinstance(value, list):
        return [_restored(item, restore, in_id_field) for item in value]
    if in_id_field and isinstance(value, str):
        return restore.get(value, value)
    return value


def check_reply(recording: Recording) -> None:
    """Raises RecordingFileError if the reply cannot be replayed; endpoints Parley does not serve pass."""
    endpoint = recording.endpoint
    if endpoint == CHAT_ENDPOINT:
        _check_chat_request(recording)
        chat_reply(recording)
    elif recording.is_exception:
        pass  # no reply but the failure, read below
    elif endpoint == EMBEDDINGS_ENDPOINT:
        embeddings_reply(recording)
    elif endpoint == MODELS_ENDPOINT:
        models_reply(recording)
    if recording.is_exception:
        failure(recording)


def _check_chat_request(recording: Recording) -> None:
    """The messages and tools have the shapes that matching and `recordings show` read."""

    def broken(field: str, problem: str) -> RecordingFileError:
        return RecordingFileError(recording.path, f"'request.body.{field}' {problem}")

    messages = recording.body.get("messages")
    if not isinstance(messages, list):
        raise broken("messages", "is not a list")
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if not isinstance(message, dict):
            raise broken(field, "is not a message object")
        if not isinstance(message.get("role"), str):
            raise broken(f"{field}.role", "is not a string")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise broken(f"{field}.content", "is neither a string nor a list of parts")
        if isinstance(content, list):
            for position, part in enumerate(content):
                if not isinstance(part, dict):
                    raise broken(f"{field}.content[{position}]", "is not a content part object")
        calls = message.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise broken(f"{field}.tool_calls", "is not a list")
        for position, call in enumerate(calls or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise broken(f"{field}.tool_calls[{position}]", "is not a tool call with a 'function' object")
            if not isinstance(function.get("name"), str):
                raise broken(f"{field}.tool_calls[{position}].function.name", "is not a string")
    tools = recording.body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise broken("tools", "is not a list")
    for position, tool in enumerate(tools or ()):
        if not isinstance(tool, dict) or not isinstance(tool.get("function", tool), dict):
            raise broken(f"tools[{position}]", "is not a tool object")
        parameters = tool.get("function", tool).get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise broken(f"tools[{position}].parameters", "is not an object")


def _unwrap(item: Any) -> Any:
    if isinstance(item, dict) and "__data__" in item:
        return item["__data__"]
    return item


def failure(recording: Recording) -> RecordedFailure:
    """The failure of a call recorded with `is_exception`; raises RecordingFileError if it is unreadable."""
    body = recording.response.get("body")
    try:
        return recorded_failure(recording.response, after_chunks=isinstance(body, list) and bool(body))
    except RecordedFailureError as exc:
        raise RecordingFileError(recording.path, str(exc)) from exc


def chat_reply(recording: Recording) -> list[ChatChunk]:
    """The recorded completion as the typed chunks a live stream would have given.

    A reply cut short is refused: every choice must end with a `finish_reason`,
    or replay would pass a truncated answer off as a completed one. A call that
    failed (`is_exception`) has only the chunks that came before its failure,
    none when it failed before its first (a `null` body).
    """
    body = recording.response["body"]
    if recording.is_exception and not isinstance(body, list):
        if body is not None:
            raise RecordingFileError(
                recording.path, "'response.body' of a failed call is neither null nor the chunks before the failure"
            )
        return []
    if not isinstance(body, list):
        try:
            chunks = completion_chunks(_unwrap(body))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise RecordingFileError(recording.path, "'response.body' is not a chat.completion object") from exc
        _check_finished(recording, chunks, "'response.body'")
        return chunks
    chunks = []
    for position, item in enumerate(body):
        data = _unwrap(item)
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            chunks.extend(choice_chunk(choice) for choice in data.get("choices") or ())
            if data.get("usage"):
                chunks.append(ChatChunk(usage=usage_from_wire(data["usage"])))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise RecordingFileError(
                recording.path, f"'response.body[{position}]' is not a chat.completion.chunk object"
            ) from exc
    if not recording.is_exception:
        _check_finished(recording, chunks, "'response.body'")
    return chunks


def _check_finished(recording: Recording, chunks: list[ChatChunk], where: str) -> None:
    choices = {chunk.index for chunk in chunks if chunk.usage is None}
    if not choices:
        raise RecordingFileError(recording.path, f"{where} holds no choice: the reply is empty or truncated")
    finished = {chunk.index for chunk in chunks if chunk.usage is None and chunk.finish_reason}
    unfinished = sorted(choices - finished)
    if unfinished:
        raise RecordingFileError(
            recording.path,
            f"{where} ends before a finish_reason for choice {unfinished[0]}: the reply is truncated",
        )


def embeddings_reply(recording: Recording) -> dict[str, Any]:
    data = _unwrap(recording.response["body"])
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise RecordingFileError(recording.path, "'response.body' is not an embeddings list")
    return data


def models_reply(recording: Recording) -> list[ModelInfo]:
    body = _unwrap(recording.response["body"])
    items = body.get("data") if isinstance(body, dict) else body  # a list of models, or a page of them
    if not isinstance(items, list):
        raise RecordingFileError(recording.path, "'response.body' is not a list of models")
    models = []
    for position, item in enumerate(items):
        data = _unwrap(item)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise RecordingFileError(recording.path, f"'response.body[{position}]' is not a model object")
        models.append(
            ModelInfo(id=data["id"], created=int(data.get("created") or 0), owned_by=data.get("owned_by") or "")
        )
    return models


def file_name(key: str, test_id: str | None) -> str:
    """`<sha256>.json`: the hash of the normalized request's key plus the test id."""
    return hashlib.sha256(f"{key}\n{test_id or ''}".encode()).hexdigest() + ".json"


def write_recording(recording: Recording) -> None:
    """Writes the file atomically: a crash leaves the old file or the new one, never half of one."""
    directory = recording.path.parent
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(recording.as_json(), indent=2, ensure_ascii=False) + "\n"
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".recording-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, recording.path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def public_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` without the ones that carry credentials (Authorization, api-key, x-api-key, ...)."""
    return {name: value for name, value in headers.items() if not _SECRET_NAME.search(name)}


def public_url(url: str) -> str:
    """`url` without credentials: no user or password, no `key=`, `api_key=` or similar parameters."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(name, value) for name, value in query if not _SECRET_NAME.search(name)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))
