"""Server-sent-event framing; the payloads are made elsewhere."""

from __future__ import annotations

DONE = b"data: [DONE]\n\n"


def frame(data: bytes, event: str | None = None) -> bytes:
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
