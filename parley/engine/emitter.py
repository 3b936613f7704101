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
    def __init__(self, sink: Sink | None = None, first_sequence: int = 0, *, read_live: bool | None = None) -> None:
        self._sink = sink
        # Whether a client reads the events as they are made (by default, whenever they are sent somewhere): a
        # background response's are kept for whoever follows later, and only its creator may read them live.
        self.read_live = sink is not None if read_live is None else read_live
        # A background response's run numbers its events after those sent when it was queued.
        self._sequence = first_sequence
        # Every event counts, sent or not (a response that is not streamed has none sent): whoever keeps
        # the output so far knows by it whether the output changed since.
        self.changes = 0
        # Output items in output order; open ones are still being written.
        self.output: list[dict[str, Any]] = []
        self._open_items: dict[int, dict[str, Any]] = {}
        self._open_parts: dict[tuple[int, int], dict[str, Any]] = {}
        # What open parts' text and open calls' arguments grew by since they were last read, as
        # pieces, by the part or item: a string grown a token at a time is copied whole at each
        # token, which costs the square of its length.
        self._pending: dict[int, tuple[dict[str, Any], str, list[str]]] = {}
        self._streaming_arguments: set[int] = set()

    @classmethod
    def resumed(cls, events: list[tuple[int, str, str]], sink: Sink) -> EventEmitter:
        """An emitter that continues a stream from its events so far ((sequence number, type, data), in order):
        its items and parts as they stand, open or closed, and its numbering after the last. For a server that
        ends a response that another server was producing (and died), so that its stream closes what it opened."""
        emitter = cls(sink, first_sequence=events[-1][0] + 1 if events else 0)
        for _, event_type, data in events:
            emitter._replay(event_type, orjson.loads(data))
        return emitter

    def _replay(self, event_type: str, event: dict[str, Any]) -> None:
        index: int = event.get("output_index", -1)
        key: tuple[int, int] = (index, event.get("content_index", -1))
        if event_type == "response.output_item.added":
            self.output.append(event["item"])
            self._open_items[len(self.output) - 1] = event["item"]
        elif event_type == "response.output_item.done" and 0 <= index < len(self.output):
            self.output[index] = event["item"]
            self._open_items.pop(index, None)
            self._streaming_arguments.discard(index)
        elif index not in self._open_items:
            return
        elif event_type == "response.content_part.added":
            self._open_items[index]["content"].append(event["part"])
            self._open_parts[key] = event["part"]
        elif event_type == "response.content_part.done":
            self._open_parts.pop(key, None)
            self._open_items[index]["content"][event["content_index"]] = event["part"]
        elif event_type in ("response.output_text.delta", "response.reasoning_text.delta", "response.refusal.delta"):
            part = self._open_parts.get(key)
            if part is not None:
                part["refusal" if part["type"] == "refusal" else "text"] += event["delta"]
        elif event_type == "response.output_text.annotation.added":
            part = self._open_parts.get(key)
            if part is not None:
                part["annotations"].append(event["annotation"])
        elif event_type.endswith("arguments.delta"):
            self._open_items[index]["arguments"] += event["delta"]
            if event_type != "response.function_call_arguments.delta":
                self._streaming_arguments.add(index)
        elif event_type.endswith("arguments.done"):
            self._open_items[index]["arguments"] = event["arguments"]
            self._streaming_arguments.discard(index)

    def emit(self, event_type: str, **fields: Any) -> None:
        self.changes += 1
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
        self._settle(item)
        kind = item["type"]
        common = {"item_id": item["id"], "output_index": index}
        if kind == "function_call":
            self.emit("response.function_call_arguments.done", name=item["name"], arguments=item["arguments"], **common)
        elif (events := item_events(kind)) is not None:
            self.end_arguments(index, item)
            if status == "completed":
                self.emit(f"{events.status}.completed", **common)
            elif events.failure_event:
                self.emit(f"{events.status}.failed", **common)
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
        self.extend(item, "arguments", delta)
        self._streaming_arguments.add(index)
        self.emit(f"{_events(item).arguments}.delta", item_id=item["id"], output_index=index, delta=delta)

    def end_arguments(self, index: int, item: dict[str, Any]) -> None:
        """`{arguments}.done` for a call whose arguments streamed, once."""
        self._settle(item)
        if index in self._streaming_arguments:
            self._streaming_arguments.discard(index)
            self.emit(
                f"{_events(item).arguments}.done", item_id=item["id"], output_index=index, arguments=item["arguments"]
            )

    def start_work(self, index: int) -> None:
        """Says that Parley has started running a server-side tool item (a call, a listing): `.in_progress`,
        and the kind's working event (`.searching`) when it has one."""
        item = self.output[index]
        events = _events(item)
        self.emit(f"{events.status}.in_progress", item_id=item["id"], output_index=index)
        if events.working is not None:
            self.emit(f"{events.status}.{events.working}", item_id=item["id"], output_index=index)

    def compacting(self, index: int) -> None:
        """Says that the summary of an open compaction item is being written: `response.compaction.compacting`."""
        self.emit("response.compaction.compacting", item_id=self._open_items[index]["id"], output_index=index)

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

    def extend(self, target: dict[str, Any], field: str, text: str) -> None:
        """Adds `text` to `target[field]`: an open part's text, or an open call's arguments.

        It lands there when the part or item is next read: when it is done, or in a snapshot.
        """
        pending = self._pending.get(id(target))
        if pending is None:
            self._pending[id(target)] = (target, field, [text])
        else:
            pending[2].append(text)

    def _settle(self, target: dict[str, Any]) -> None:
        pending = self._pending.pop(id(target), None)
        if pending is not None:
            _, field, pieces = pending
            target[field] += "".join(pieces)

    def annotate(self, index: int, content_index: int, find: Callable[[str], list[dict[str, Any]]]) -> None:
        """Adds to an open `output_text` part the annotations `find` gives for its whole text, each with its
        `response.output_text.annotation.added`, before the part's text is done."""
        part = self._open_parts[(index, content_index)]
        self._settle(part)
        for annotation in find(part["text"]):
            self.add_annotation(index, content_index, annotation)

    def add_annotation(self, index: int, content_index: int, annotation: dict[str, Any]) -> None:
        """Adds one annotation to an open `output_text` part, with its `response.output_text.annotation.added`."""
        part = self._open_parts[(index, content_index)]
        part["annotations"].append(annotation)
        self.emit(
            "response.output_text.annotation.added",
            item_id=self._open_items[index]["id"],
            output_index=index,
            content_index=content_index,
            annotation_index=len(part["annotations"]) - 1,
            annotation=annotation,
        )

    def done_part(self, index: int, content_index: int) -> None:
        part = self._open_parts.pop((index, content_index))
        self._settle(part)
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
        for target, _, _ in list(self._pending.values()):
            self._settle(target)
        return copy.deepcopy(self.output)


def _events(item: dict[str, Any]) -> ItemEvents:
    events = item_events(item["type"])
    assert events is not None, f"{item['type']} items have no events of their own"
    return events
