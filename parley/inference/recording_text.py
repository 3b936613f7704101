"""Recordings as text, for `parley recordings list`, `show` and `check`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parley.inference.collect import CompletionBuilder
from parley.inference.recording_files import (
    CHAT_ENDPOINT,
    EMBEDDINGS_ENDPOINT,
    MODELS_ENDPOINT,
    Recording,
    RecordingFileError,
    chat_reply,
    embeddings_reply,
    failure,
    models_reply,
    read_recording,
)


def recording_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


def read_all(directory: Path) -> Iterator[Recording | RecordingFileError]:
    """Every recording of `directory` by file name, or the error that keeps it from being read."""
    for path in recording_files(directory):
        try:
            yield read_recording(path)
        except RecordingFileError as exc:
            yield exc


def summary(recording: Recording) -> str:
    """One line: file, test id, model, size of the request, streaming or not."""
    endpoint = recording.endpoint
    if endpoint == CHAT_ENDPOINT:
        n = len(recording.body.get("messages") or ())
        size = f"{n} message{'' if n == 1 else 's'}"
    elif endpoint == EMBEDDINGS_ENDPOINT:
        inputs = recording.body.get("input")
        n = len(inputs) if isinstance(inputs, list) and not _is_tokens(inputs) else 1
        size = f"{n} input{'' if n == 1 else 's'}"
    elif endpoint == MODELS_ENDPOINT:
        size = "model listing"
    else:
        size = endpoint
    streaming = "streaming" if recording.is_streaming else "not streaming"
    fields = [recording.path.name, recording.test_id or "-", recording.model or "-", size, streaming]
    if recording.is_exception:
        status = failure(recording).status_code
        fields.append("failed" + (f" with status {status}" if status is not None else ""))
    return "\t".join(fields)


def _is_tokens(inputs: list[Any]) -> bool:
    return bool(inputs) and all(isinstance(item, int) for item in inputs)


def show(recording: Recording) -> str:
    """The conversation and the recorded reply, as a person reads them."""
    request = recording.request
    lines = [
        f"file: {recording.path}",
        f"test: {recording.test_id or '-'}",
        f"request: {request.get('method', 'POST')} {recording.endpoint}, model {recording.model or '-'}, "
        + ("streaming" if recording.is_streaming else "not streaming"),
    ]
    endpoint = recording.endpoint
    if endpoint == CHAT_ENDPOINT:
        lines += _show_chat(recording)
    elif recording.is_exception:
        lines += ["", "-- reply"]
    elif endpoint == EMBEDDINGS_ENDPOINT:
        reply = embeddings_reply(recording)
        lines.append(f"input: {json.dumps(recording.body.get('input'), ensure_ascii=False)}")
        lines.append("")
        for item in reply["data"]:
            vector = item.get("embedding") if isinstance(item, dict) else None
            size = f"{len(vector)} dimensions" if isinstance(vector, list) else "base64"
            lines.append(f"[embedding {item.get('index') if isinstance(item, dict) else '?'}] {size}")
    elif endpoint == MODELS_ENDPOINT:
        lines.append("")
        lines += [f"[model] {model.id}" for model in models_reply(recording)]
    if recording.is_exception:
        lines.append(f"failed: {failure(recording).describe()}")
    return "\n".join(lines)


def _show_chat(recording: Recording) -> list[str]:
    body = recording.body
    lines: list[str] = []
    tools = [tool.get("function") or tool for tool in body.get("tools") or () if isinstance(tool, dict)]
    if tools:
        names = [f"{f.get('name')}({', '.join(_parameters(f))})" for f in tools]
        lines.append(f"tools: {', '.join(names)}")
    lines += ["", "-- conversation"]
    for message in body.get("messages") or ():
        role = message.get("role", "?")
        text = _text(message.get("content"))
        if text or not message.get("tool_calls"):
            lines.append(f"[{role}] {text}")
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            lines.append(f"[{role}] calls {function.get('name')}({function.get('arguments')})")
    lines += ["", "-- reply"]
    chunks = chat_reply(recording)
    if not chunks:
        return lines  # a call that failed before its first chunk
    builder = CompletionBuilder()
    for chunk in chunks:
        builder.add(chunk)
    completion = builder.build()
    for choice in completion.choices:
        if choice.reasoning:
            lines.append(f"[reasoning] {choice.reasoning}")
        if choice.content or not choice.tool_calls:
            lines.append(f"[assistant] {choice.content or ''}")
        for call in choice.tool_calls:
            lines.append(f"[assistant] calls {call.name}({call.arguments})")
        lines.append(f"finish: {choice.finish_reason or '-'}")
    usage = completion.usage
    if usage.total_tokens:
        lines.append(f"usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens")
    return lines


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "") if isinstance(part, dict) and "text" in part else f"<{_kind(part)}>"
            for part in content
        )
    return json.dumps(content, ensure_ascii=False)


def _kind(part: Any) -> str:
    return str(part.get("type")) if isinstance(part, dict) else type(part).__name__


def _parameters(function: dict[str, Any]) -> list[str]:
    properties = (function.get("parameters") or {}).get("properties")
    return [str(name) for name in properties] if isinstance(properties, dict) else []
