"""The one place that stamps `sequence_number` and keeps the stream's bookkeeping.

Every event of a response leaves through `EventEmitter.emit`, which numbers it
and serialises it at once: later changes to an item never leak into an event
already sent. The emitter also tracks the items and content parts that are
open, so that every `added` gets its `done`, even when a turn fails.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson

from parley.tools import ItemEvents, item_events

Sink = Callable[[str, bytes], None]


class EventEmitter:
    def __init__(self, sink: Sink | None = None) -> None:
        self._sink = sink
        self._sequence = 0
        # Output items in output order; open ones are still being written.
        self.output: list[dict[str, Any]] = []
        self._open_items: dict[int, dict[str, Any]] = {}
        self._open_parts: dict[tuple[int, int], dict[str, Any]] = {}
        # What open parts' text grew by since it was last read, as pieces: a string grown a
        # token at a time is copied whole at each token, which costs the square of its length.
        self._pending_text: dict[tuple[int, int], tuple[str, list[str]]] = {}
        self._streaming_arguments: set[int] = set()

    @property
    def streaming(self) -> bool:
        return self._sink is not None

    def emit(self, event_type: str, **fields: Any) -> None:
        if self._sink is None:
            return
        event = {"type": event_type, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        self._sink(event_type, orjson.dumps(event))

    # Items

    def add_item(self, item: dict[str, Any]) -> int:
        """Opens an output item (status in_progress) and announces it."""
        index = len(self.output)
        self.output.append(item)
        self._open_items[index] = item
        self.emit("response.output_item.added", output_index=index, item=item)
        return index

    def done_item(self, index: int, status: str = "completed") -> dict[str, Any]:
        """Closes an item with its kind's closing events, then `output_item.done`."""
        for key in [key for key in self._open_parts if key[0] == index]:
            self.done_part(index, key[1])
        item = self._open_items.pop(index)
        kind = item["type"]
        common = {"item_id": item["id"], "output_index": index}
        if kind == "function_call":
            self.emit("response.function_call_arguments.done", name=item["name"], arguments=item["arguments"], **common)
        elif (events := item_events(kind)) is not None:
            self.end_arguments(index, item)
            self.emit(f"{events.status}.completed" if status == "completed" else f"{events.status}.failed", **common)
        if "status" in item:
            item["status"] = status
        self.emit("response.output_item.done", output_index=index, item=item)
        return item

    def streams_arguments(self, index: int) -> bool:
        """Whether an open item's arguments have events of their own (a server-side call's)."""
        events = item_events(self._open_items[index]["type"])
        return events is not None and events.arguments is not None

    def stream_arguments(self, index: int, delta: str) -> None:
        """A piece of an open server-side call's arguments, as the model writes them."""
        item = self._open_items[index]
        item["arguments"] += delta
        self._streaming_arguments.add(index)
        self.emit(f"{_events(item).arguments}.delta", item_id=item["id"], output_index=index, delta=delta)

    def end_arguments(self, index: int, item: dict[str, Any]) -> None:
        """`{arguments}.done` for a call whose arguments streamed, once."""
        if index in self._streaming_arguments:
            self._streaming_arguments.discard(index)
            self.emit(
                f"{_events(item).arguments}.done", item_id=item["id"], output_index=index, arguments=item["arguments"]
            )

    def start_work(self, index: int) -> None:
        """Says that Parley has started running a server-side tool item (a call, a listing)."""
        item = self.output[index]
        self.emit(f"{_events(item).status}.in_progress", item_id=item["id"], output_index=index)

    def add_finished(self, item: dict[str, Any]) -> None:
        """Emits a server-side tool item that is already finished (a listing, an approved call), with every event
        it would have had."""
        events = _events(item)
        opening = {**item, **copy.deepcopy(dict(events.pending)), "status": "in_progress"}
        if events.arguments is not None:
            opening["arguments"] = ""
        index = self.add_item(opening)
        if events.arguments is not None:
            if item["arguments"]:
                self.stream_arguments(index, item["arguments"])
            self.end_arguments(index, opening)
        self.start_work(index)
        opening.update({key: value for key, value in item.items() if key != "status"})
        self.done_item(index, item["status"])

    def is_open(self, index: int) -> bool:
        return index in self._open_items

    # Content parts

    def add_part(self, index: int, content_index: int, part: dict[str, Any]) -> None:
        item = self._open_items[index]
        item["content"].append(part)
        self._open_parts[(index, content_index)] = part
        self.emit(
            "response.content_part.added",
            item_id=item["id"],
            output_index=index,
            content_index=content_index,
            part=part,
        )

    def extend_part(self, index: int, content_index: int, field: str, text: str) -> None:
        """Adds `text` to `field` of an open part (its `text`, or a refusal's `refusal`)."""
        pending = self._pending_text.get((index, content_index))
        if pending is None:
            self._pending_text[(index, content_index)] = (field, [text])
        else:
            pending[1].append(text)

    def _settle_text(self, key: tuple[int, int]) -> None:
        """Writes what an open part's text grew by into the part."""
        pending = self._pending_text.pop(key, None)
        if pending is not None:
            field, pieces = pending
            part = self._open_parts[key]
            part[field] += "".join(pieces)

    def done_part(self, index: int, content_index: int) -> None:
        self._settle_text((index, content_index))
        part = self._open_parts.pop((index, content_index))
        item = self._open_items[index]
        common = {"item_id": item["id"], "output_index": index, "content_index": content_index}
        kind = part["type"]
        if kind == "output_text":
            self.emit("response.output_text.done", text=part["text"], logprobs=part.get("logprobs", []), **common)
        elif kind == "refusal":
            self.emit("response.refusal.done", refusal=part["refusal"], **common)
        elif kind == "reasoning_text":
            self.emit("response.reasoning_text.done", text=part["text"], **common)
        self.emit("response.content_part.done", part=part, **common)

    def close_all(self, status: str) -> None:
        """Ends every open item with `status` (after a failure or a cut-off)."""
        for index in sorted(self._open_items):
            self.done_item(index, status)

    def snapshot(self) -> list[dict[str, Any]]:
        """The output so far, open parts' text included, as a copy."""
        for key in list(self._pending_text):
            self._settle_text(key)
        return copy.deepcopy(self.output)


def _events(item: dict[str, Any]) -> ItemEvents:
    events = item_events(item["type"])
    assert events is not None, f"{item['type']} items have no events of their own"
    return events
