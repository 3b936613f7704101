"""Responses as a service: create, retrieve, delete, list.

A response is produced by a task of its own, not by the HTTP request that
asked for it: a client that disconnects mid-stream does not stop it, and it
is stored when it ends. Its events reach the caller through a queue.

Each method acts for a `Caller` (see parley.store.owners): a response is its
caller's owner's, and another owner's response, conversation or item is, to
a caller who does not see that owner, not found, here as in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from parley.config import EngineSettings, ToolsSettings
from parley.engine import compaction, loop
from parley.engine.background import BackgroundWorker, EventLog, JobSeal
from parley.engine.chains import ChainContexts, HeldContexts
from parley.engine.compaction import CompactRequest
from parley.engine.context import chat_messages, check_input, reasoning_field_of
from parley.engine.conversations import ConversationNotFoundError, check_new_ids
from parley.engine.counting import count_turn
from parley.engine.emitter import EventEmitter
from parley.engine.files import InputFiles
from parley.engine.items import parse_input
from parley.engine.record import ResponseRecord
from parley.engine.request import CreateResponseRequest
from parley.engine.response import error_event, error_object, initial_response, usage_object
from parley.errors import InvalidRequestError, NotFoundError, ParleyError
from parley.ids import check_id, new_id
from parley.inference.registry import ModelRegistry, ResolvedModel
from parley.store import (
    ANYONE,
    Caller,
    ConversationNotFound,
    ConversationStore,
    DuplicateItem,
    PageRequest,
    ResponseStore,
    TurnLost,
)
from parley.store.database import News, Wakeups
from parley.store.responses import EVENTS_CHANNEL, TERMINAL, EventBatch, Job, StoredEvents
from parley.tools import ToolResources, ToolServices

log = logging.getLogger(__name__)

Event = tuple[str, bytes]
# How long a cancel of a background response that another server runs waits for it to stop.
CANCEL_WAIT_SECONDS = 10.0
# How often a follower of a background response that another server runs reads its new events, by database (is it
# SQLite?): each batch's notification wakes it, and this is the safety net for one that was missed, shorter on
# SQLite, whose notifications a process may not hear (see parley.engine.background.POLL_SECONDS).
FOLLOW_POLL_SECONDS = {True: 0.005, False: 0.25}
# How long a follower waits for the terminal event of a response whose status has ended.
TERMINAL_EVENT_WAIT_SECONDS = 2.0
_TERMINAL_EVENTS = frozenset(("response.completed", "response.failed", "response.incomplete"))
# The statuses of a response that its client's connection holds for a continuation when it is not stored.
_CONTINUABLE = frozenset(("completed", "incomplete"))


def _newer(events: list[tuple[int, str, str]], after: int) -> tuple[list[Event], int]:
    """The events numbered after `after`, as (type, data) to send, and the number of the last one."""
    batch = []
    for number, event_type, data in events:
        if number > after:
            batch.append((event_type, data.encode()))
            after = number
    return batch, after


def _continued_from(turn: loop.Turn) -> list[dict[str, Any]]:
    """What the turn that continues this one starts from: what `store.chain_items` would read back for it, kept
    in memory for it (`ChainContexts`, and a connection's `HeldContexts`)."""
    return turn.history + turn.input_items + turn.emitter.output


def _check_followable(response_id: str, stored: StoredEvents) -> None:
    """Refuses to stream again a response the caller does not see, or one that is not a background one."""
    if stored.status is None:
        raise ResponseNotFoundError(response_id)
    if not stored.background:
        raise InvalidRequestError(
            "Only background responses can be streamed again: this response was not created with background=true.",
            param="stream",
        )


class ResponseNotFoundError(NotFoundError):
    def __init__(self, response_id: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(f"Response with id '{response_id}' not found.", param=param, code=code)


class ResponseRun:
    """A response being produced: its events as they come, and its end."""

    def __init__(self, streaming: bool) -> None:
        self._queue: asyncio.Queue[Event | None] | None = asyncio.Queue() if streaming else None
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.error: ParleyError | None = None
        # Ends the turn, when nobody could ever read it once its client has left (see `abandon`).
        self.on_abandon: Callable[[], object] | None = None
        self.left = False  # whether its client left before the end

    def sink(self, event_type: str, data: bytes) -> None:
        assert self._queue is not None
        self._queue.put_nowait((event_type, data))
        if not self._started.done():
            self._started.set_result(None)

    def end(self, response: dict[str, Any] | None, error: ParleyError | None) -> None:
        self.error = error
        if error is not None and not self._started.done():
            self._started.set_exception(error)
        elif not self._started.done():
            self._started.set_result(None)
        if error is not None and response is None:
            self._result.set_exception(error)
        else:
            self._result.set_result(response or {})
        if self._queue is not None:
            self._queue.put_nowait(None)
        # Nobody may be waiting on these; retrieve them so asyncio does not warn.
        for future in (self._started, self._result):
            if future.done() and not future.cancelled():
                future.exception()

    async def started(self) -> None:
        """Returns at the first event; raises the error of a turn that failed before it."""
        await self._started

    async def result(self) -> dict[str, Any]:
        # Shielded: a caller that stops waiting (its client left) must not cancel the result the turn will give.
        return await asyncio.shield(self._result)

    def abandon(self) -> None:
        """Says that the client left before the end: a response that nobody could read then (not stored, in no
        conversation) is not produced further, and a request still queued for its model is dropped."""
        self.left = True
        if self.on_abandon is not None and not self._result.done():
            self.on_abandon()

    async def events(self) -> AsyncIterator[list[Event]]:
        """The events in order, in batches of what has arrived since the last one."""
        assert self._queue is not None
        queue = self._queue
        while True:
            first = await queue.get()
            if first is None:
                return
            batch = [first]
            while not queue.empty():
                event = queue.get_nowait()
                if event is None:
                    yield batch
                    return
                batch.append(event)
            yield batch


@dataclass(slots=True, frozen=True)
class _Setup:
    """A checked request and what its turn continues from: what a turn is made of."""

    request: CreateResponseRequest
    model: ResolvedModel
    tools: list[BaseModel]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]
    previous_tools: list[dict[str, Any]]
    # Whether the turn's context may be kept for the next (see ChainContexts).
    keep_context: bool
    caller: Caller
    # The contexts its client's connection holds, to continue from and to add an unstored response to.
    held: HeldContexts | None = None


@dataclass(slots=True)
class _Producing:
    """A response this server produces: its turn, and, when it is stored, its record and owner."""

    turn: loop.Turn
    record: ResponseRecord | None
    owner: str | None
    # Whether its context, once stored, may be kept for the turn that continues it (see
    # engine.chains): not when a conversation's items, which can be deleted, are in it.
    keep_context: bool
    # The contexts its client's connection holds, where it goes once it ends, when it is not stored.
    held: HeldContexts | None = None
    # A background response's: its events on their way to the database, whether a cancel stopped it, and the
    # task that produces it.
    events: EventLog | None = None
    cancelled: bool = False
    in_loop: bool = False  # whether the agent loop still runs (a cancel stops it; the ending is not stopped)
    loop_started: bool = False  # whether the agent loop was started (a cancel before keeps it from starting)
    task: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # Where its events go as they come, besides `events` (a background response's).
    live: _LiveEvents | None = None


class _LiveEvents:
    """Where a background response's events go as they come, besides its EventLog: the stream of the client that
    created it, and its followers on this server (`follow`), each of which gets (sequence number, type, data),
    then None. Held back (`hold`) while its terminal event is written with its final state: a client hears the
    end once it is stored, as with any response."""

    def __init__(self, stream: ResponseRun | None) -> None:
        self.stream = stream
        self.followers: list[asyncio.Queue[tuple[int, str, bytes] | None]] = []
        self._held: list[tuple[int, str, bytes]] | None = None

    def send(self, number: int, event_type: str, data: bytes) -> None:
        if self._held is not None:
            self._held.append((number, event_type, data))
            return
        if self.stream is not None and not self.stream.left:
            self.stream.sink(event_type, data)
        for follower in self.followers:
            follower.put_nowait((number, event_type, data))

    def hold(self) -> None:
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for event in held:
            self.send(*event)

    def end(self) -> None:
        self.release()
        for follower in self.followers:
            follower.put_nowait(None)


class _ConversationLock(asyncio.Lock):
    """A conversation's lock on this server, and how many turns hold or wait for it (at none, it is dropped).

    Across servers, the database's hold on the conversation (ConversationStore.hold) under `holder`, a token of
    this lock's own: taken by its first turn, handed from turn to turn while more wait here, given back by the last.
    """

    def __init__(self) -> None:
        super().__init__()
        self.users = 0
        self.holder = new_id("turn")
        self.held = False


class ResponseService:
    def __init__(
        self,
        registry: ModelRegistry,
        store: ResponseStore,
        conversations: ConversationStore,
        engine: EngineSettings | None = None,
        tools: ToolsSettings | None = None,
        resources: ToolResources | None = None,
        files: InputFiles | None = None,
        job_seal: JobSeal | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.conversations = conversations
        self.engine = engine or EngineSettings()
        # What the tool kinds keep across responses (MCP sessions, search clients), from the server's resources.
        self.tool_services = ToolServices(tools or ToolsSettings(), resources)
        # Reads the files that input parts name (uploads, URLs), for the model.
        self.files = files or InputFiles(None, None)
        self._tasks: set[asyncio.Task[None]] = set()
        # The stored responses this server is producing.
        self._producing: dict[str, _Producing] = {}
        self._chains = ChainContexts(self.engine.kept_context_bytes)  # the contexts of the responses it stored lately
        self._keeper: asyncio.Task[None] | None = None
        # Turns on one conversation take turns here, and across servers in the database
        # (ConversationStore.hold).
        self._conversation_locks: dict[str, _ConversationLock] = {}
        # Background responses: sealed for their rows with the server's key, taken from the queue by the worker.
        self.job_seal = job_seal or JobSeal(os.urandom(32))
        self.worker = BackgroundWorker(
            store, self.run_job, self._cancel_here, self._followed_elsewhere, self.engine.background_concurrency
        )
        # Followers here of background responses that other servers run, woken by each batch of their events.
        self._batches = Wakeups(store.db, EVENTS_CHANNEL, FOLLOW_POLL_SECONDS[store.db.is_sqlite])
        # Streamed background responses queued here, whose clients wait for their run: their events go there.
        self._waiting_streams: dict[str, ResponseRun] = {}
        self._closing = False

    async def create(
        self, request: CreateResponseRequest, caller: Caller, held: HeldContexts | None = None
    ) -> ResponseRun:
        """Checks the request, stores the response as started, and starts producing it (a background one: stores
        it queued, for a worker to run).

        `held` is the contexts that the client's connection holds (a WebSocket's): a `store: false` request
        continues from them first, and a `store: false` response that ends completed or incomplete is added.
        """
        if request.background and not request.store:
            raise InvalidRequestError(
                "Background responses must be stored: `background: true` requires `store: true`.",
                param="background",
                code="invalid_value",
            )
        model, tools, input_items = await self._checked(request, caller)
        if request.background:
            return await self._enqueue(request, model, tools, input_items, caller)
        lock = await self._enter_conversation(request.conversation_id, caller)
        try:
            history, previous_tools, keep_context = await self._history(request, caller, held)
            if not history and not input_items:
                raise InvalidRequestError(
                    "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
                )
            if request.conversation_id is not None:
                ids = [item["id"] for item in input_items]
                check_new_ids(input_items, await self.conversations.taken_ids(request.conversation_id, ids), "input")
            setup = _Setup(request, model, tools, input_items, history, previous_tools, keep_context, caller, held)
            return await self._start(setup, lock)
        except BaseException:
            if lock is not None:
                await self._leave_conversation(request.conversation_id or "", lock)
            raise

    async def _checked(
        self, request: CreateResponseRequest, caller: Caller
    ) -> tuple[ResolvedModel, list[BaseModel], list[dict[str, Any]]]:
        """The request's model, its tools and its input items (references to stored items resolved), checked."""
        if request.previous_response_id is not None:
            check_id(request.previous_response_id, "resp_", "previous_response_id")
        if request.conversation_id is not None:
            check_id(request.conversation_id, "conv_", "conversation")
        model = self.registry.resolve(request.model)
        tools = request.validated_tools()
        input_items = await self._resolve_references(parse_input(request.input), caller)
        return model, tools, input_items

    async def count_input_tokens(self, request: CreateResponseRequest, caller: Caller) -> int:
        """`POST /v1/responses/input_tokens`: the tokens the model of a create with these fields would read (see
        parley.engine.counting); it waits for no conversation's turn, and nothing is stored or run."""
        model, tools, input_items = await self._checked(request, caller)
        if (
            request.conversation_id is not None
            and await self.conversations.get(request.conversation_id, caller) is None
        ):
            raise ConversationNotFoundError(request.conversation_id, param="conversation")
        history, previous_tools, _ = await self._history(request, caller)
        if not history and not input_items:
            raise InvalidRequestError(
                "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        setup = _Setup(request, model, tools, input_items, history, previous_tools, False, caller)
        response = initial_response(request, new_id("resp"), tools, model.provider.sampling_defaults(model.name))
        turn = self._turn(setup, response, None, EventEmitter(None)).turn
        try:
            return await count_turn(turn)
        finally:
            await turn.toolbox.close()

    async def _enter_conversation(self, conversation_id: str | None, caller: Caller) -> _ConversationLock | None:
        """Waits for the conversation's previous turn to end, here or on another server; the lock is released when
        this turn ends."""
        if conversation_id is None:
            return None
        lock = self._conversation_locks.setdefault(conversation_id, _ConversationLock())
        lock.users += 1
        await lock.acquire()
        try:
            if not lock.held:
                # Then the database's: turns on other servers take turns with this one too. Taking it finds a
                # conversation that is gone, or that the caller does not see.
                await self.conversations.hold(conversation_id, lock.holder, caller)
                lock.held = True
            elif await self.conversations.get(conversation_id, caller) is None:  # gone while this turn waited
                raise ConversationNotFound(conversation_id)
        except ConversationNotFound:
            await self._leave_conversation(conversation_id, lock)
            raise ConversationNotFoundError(conversation_id, param="conversation") from None
        except BaseException:
            await self._leave_conversation(conversation_id, lock)
            raise
        return lock

    async def _leave_conversation(self, conversation_id: str, lock: _ConversationLock) -> None:
        lock.release()
        lock.users -= 1
        if lock.users > 0:
            return  # the next turn here has the conversation, and keeps the database's hold
        self._conversation_locks.pop(conversation_id, None)
        if lock.held:
            try:
                await self.conversations.release(conversation_id, lock.holder)
            except Exception:
                log.exception("cannot release conversation %s: it is free once its hold runs out", conversation_id)

    async def compact(self, request: CompactRequest, caller: Caller) -> dict[str, Any]:
        """`POST /v1/responses/compact`: the context the request names (the turns of its `previous_response_id` or
        `conversation`, then its input) compacted by a model call (see parley.engine.compaction); nothing is stored
        or appended."""
        request.check()
        if request.previous_response_id is not None:
            check_id(request.previous_response_id, "resp_", "previous_response_id")
        if request.conversation_id is not None:
            check_id(request.conversation_id, "conv_", "conversation")
            if await self.conversations.get(request.conversation_id, caller) is None:
                raise ConversationNotFoundError(request.conversation_id, param="conversation")
        model = self.registry.resolve(request.model)
        writer = self.registry.resolve(self.engine.compaction_model) if self.engine.compaction_model else model
        input_items = await self._resolve_references(parse_input(request.input), caller)
        check_input(input_items)
        history, _, _ = await self._history(request, caller)
        if not history and not input_items:
            raise InvalidRequestError(
                "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        source = "conversation" if request.conversation_id else "previous_response_id"
        reads = await self.files.read(caller, input_items, history, source)
        window = compaction.compacted(history + input_items)
        messages = chat_messages(
            request.instructions, window, reasoning_field=reasoning_field_of(writer.provider), files=reads
        )
        return await compaction.compact(request, writer, window, messages, self.engine)

    async def _history(
        self, request: CreateResponseRequest | CompactRequest, caller: Caller, held: HeldContexts | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        """The items the turn continues from, the tools of the turn before (to reuse MCP listings), and
        whether the turn's context may be kept for the next (see ChainContexts).

        An unstored turn continues from its connection's `held` contexts when they have the response before;
        a stored one only from the store, whose chains cannot pass through a response it does not have.
        """
        if request.conversation_id is not None:
            items = await self.conversations.items(request.conversation_id)
            return items, await self.conversations.latest_tools(request.conversation_id), False
        if request.previous_response_id is not None and held is not None and not request.store:
            context = held.get(request.previous_response_id, caller)
            if context is not None:
                return context[0], context[1], True
        if request.previous_response_id is not None:
            await self._written(request.previous_response_id, caller)
            previous = await self.store.body(request.previous_response_id, caller)
            if previous is None:
                raise ResponseNotFoundError(
                    request.previous_response_id, param="previous_response_id", code="previous_response_not_found"
                )
            history = self._chains.get(request.previous_response_id, caller)
            through_conversation = False
            if history is None:
                history, through_conversation = await self.store.chain_items(request.previous_response_id)
            return history, previous.get("tools") or [], not through_conversation
        return [], [], True

    async def _start(self, setup: _Setup, lock: _ConversationLock | None) -> ResponseRun:
        request = setup.request
        run = ResponseRun(streaming=request.stream)
        sampling = setup.model.provider.sampling_defaults(setup.model.name)
        response = initial_response(request, new_id("resp"), setup.tools, sampling)
        record = ResponseRecord(self.store, response, setup.input_items, setup.caller.owner) if request.store else None
        if record is not None:
            # A server that dies after this still leaves a row that says so (see `_keep_leases`).
            record.start_soon()
        producing = self._turn(setup, response, record, EventEmitter(run.sink if request.stream else None))
        self._launch(producing, run, lock)
        if not request.store and request.conversation_id is None:
            run.on_abandon = producing.task.cancel if producing.task is not None else None
        return run

    def _turn(
        self, setup: _Setup, response: dict[str, Any], record: ResponseRecord | None, emitter: EventEmitter
    ) -> _Producing:
        request, caller = setup.request, setup.caller
        turn = loop.Turn(
            request=request,
            model=setup.model,
            response=response,
            history=setup.history,
            input_items=setup.input_items,
            toolbox=self.tool_services.toolbox(setup.tools, request.include or (), caller),
            emitter=emitter,
            settings=self.engine,
            previous_tools=setup.previous_tools,
            compaction_model=self._compaction_model(request),
            caller=caller,
            files=self.files,
        )
        return _Producing(turn, record, caller.owner, setup.keep_context, setup.held)

    def _compaction_model(self, request: CreateResponseRequest) -> ResolvedModel | None:
        """The model that writes a turn's compaction summaries: `engine.compaction_model`, else (None) the turn's."""
        if not request.compacts or self.engine.compaction_model is None:
            return None
        return self.registry.resolve(self.engine.compaction_model)

    def _launch(self, producing: _Producing, run: ResponseRun, lock: _ConversationLock | None) -> None:
        """Starts the task that produces the response, to its one ending (`_produce`)."""
        response_id = producing.turn.response["id"]
        if producing.record is not None:
            self._producing[response_id] = producing
        task = asyncio.create_task(self._produce(producing, run, lock), name=f"response {response_id}")
        producing.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _produce(self, producing: _Producing, run: ResponseRun, lock: _ConversationLock | None) -> None:
        """A turn's whole life, and its one ending: produced, appended to its conversation, stored, told.

        A background response may also end `cancelled` (`cancel`), or, when this server stops before it produced
        any output, be given back to the queue for another server to run.
        """
        turn, record = producing.turn, producing.record
        background = producing.events is not None
        producing.loop_started = True
        if producing.cancelled:
            # Cancelled between being taken and its task's first step.
            await turn.toolbox.close()
            error = None
        else:
            producing.in_loop = True
            error = await self._produce_output(turn)
            producing.in_loop = False
        given_back = False
        if producing.cancelled:
            error = None
            self._cut_short(turn, "cancelled")
            if producing.events is not None:
                # Before the status says so: a follower on another server that reads `cancelled` has every event.
                await producing.events.flush()
        elif error is not None and background and self._closing and not turn.emitter.output:
            given_back = True
        elif error is None and lock is not None:
            error = await self._append_to_conversation(turn, lock)
        if background and not turn.announced and not given_back:
            # Its caller has had its id since it was queued: it ends in the stream and in storage like any other.
            loop.announce(turn)
        if error is not None and not given_back:
            self._fail(turn, error)
        ended = False  # whether the terminal event was sent
        try:
            if given_back:
                if producing.events is not None:
                    await producing.events.discard()
                await self.store.give_back(turn.response["id"])
            elif record is not None and not turn.announced:
                # Refused before its first event: the client never had its id, so nothing of it stays.
                await record.discard()
            elif (
                record is not None
                and producing.events is not None
                and producing.live is not None
                and turn.response["status"] != "cancelled"
            ):
                # A background response's last events and final state go in one write; its live streams hear
                # the terminal event once that is in.
                producing.live.hold()
                loop.end(turn)
                ended = True
                output = turn.emitter.output
                await producing.events.close(lambda batch: record.end(output, batch))
            elif record is not None:
                await record.end(turn.emitter.output)
                if producing.keep_context:
                    self._chains.keep(turn.response["id"], producing.owner, _continued_from(turn))
            elif producing.held is not None and producing.keep_context and turn.response["status"] in _CONTINUABLE:
                # Not stored: the connection holds what the store would have given its continuation.
                producing.held.keep(turn.response["id"], producing.owner, _continued_from(turn), turn.response["tools"])
        except Exception:
            log.exception("cannot store response %s", turn.response["id"])
        finally:
            self._producing.pop(turn.response["id"], None)
            # The terminal event leaves once the turn is appended and stored (or could not be). A cancelled
            # response has none (OpenAI's stream events have no `response.cancelled`): its stream ends there.
            if turn.announced and not given_back and turn.response["status"] != "cancelled" and not ended:
                loop.end(turn)
            if producing.events is not None and not given_back:
                await producing.events.close()
            if producing.live is not None:
                producing.live.end()
            # Whatever happened above, the caller hears how the turn ended: never a hang.
            run.end(turn.response if turn.announced else None, error)
            producing.ended.set()
            if lock is not None:
                await self._leave_conversation(turn.request.conversation_id or "", lock)

    @staticmethod
    async def _produce_output(turn: loop.Turn) -> ParleyError | None:
        """Runs the agent loop; the error the turn failed with, if it did."""
        try:
            await loop.run(turn)
        except ParleyError as exc:
            return exc
        except asyncio.CancelledError:
            return ParleyError("The server stopped while the response was being produced.")
        except Exception as exc:
            log.exception("response %s failed", turn.response["id"])
            return ParleyError(f"The server had an error while producing the response: {exc.__class__.__name__}")
        finally:
            await turn.toolbox.close()
        return None

    async def _append_to_conversation(self, turn: loop.Turn, lock: _ConversationLock) -> ParleyError | None:
        """A turn that ended (not failed) appends its input, then its output, to the conversation.

        This happens with `store: false` too: the conversation is the store. The
        append is one transaction: when it fails, the turn fails, and the
        conversation stays as it was.
        """
        items = turn.input_items + turn.emitter.output
        kinds = ["input"] * len(turn.input_items) + ["output"] * len(turn.emitter.output)
        # The last turn here gives the conversation back with its append (one write less); with more waiting
        # here, the next one keeps the hold.
        release = lock.users == 1 and bool(items)
        try:
            await self.conversations.append(
                turn.request.conversation_id or "",
                items,
                turn.response["id"],
                kinds,
                tools=turn.response["tools"],
                holder=lock.holder,
                release=release,
            )
            lock.held = not release
        except ConversationNotFound:
            log.warning(
                "conversation %s was deleted during response %s", turn.request.conversation_id, turn.response["id"]
            )
        except TurnLost:
            log.error(
                "response %s lost its hold on conversation %s (not renewed for longer than the lease)",
                turn.response["id"],
                turn.request.conversation_id,
            )
            return ParleyError("The server lost its hold on the conversation; the turn was not added to it.")
        except DuplicateItem:
            # Another request added an item with one of this turn's ids while the turn ran.
            return InvalidRequestError(
                "Duplicate item: the conversation already has an item with one of this turn's ids.",
                param="input",
                code="invalid_value",
            )
        except Exception as exc:
            log.exception("cannot append response %s to its conversation", turn.response["id"])
            return ParleyError(f"The server could not add the response to its conversation: {exc.__class__.__name__}")
        return None

    @staticmethod
    def _fail(turn: loop.Turn, error: ParleyError) -> None:
        """Marks the turn failed; a started stream hears why in an `error` event, after its open items close.

        `response.failed` follows it once the turn is stored (see `_produce_and_store`).
        """
        ResponseService._cut_short(turn, "failed")
        turn.response["error"] = error_object(error)
        if turn.announced:
            turn.emitter.emit("error", **error_event(error))

    @staticmethod
    def _cut_short(turn: loop.Turn, status: str) -> None:
        """Ends the turn `status` (failed, cancelled) where it stands: its open items close `incomplete`, and it
        keeps what it produced."""
        turn.emitter.close_all("incomplete")
        response = turn.response
        response["status"] = status
        # A turn whose append failed had ended completed or incomplete.
        response["completed_at"] = response["incomplete_details"] = None
        response["usage"] = usage_object(turn.usage)
        response["output"] = turn.emitter.output

    # Background responses ---------------------------------------------------------------------------------

    async def _enqueue(
        self,
        request: CreateResponseRequest,
        model: ResolvedModel,
        tools: list[BaseModel],
        input_items: list[dict[str, Any]],
        caller: Caller,
    ) -> ResponseRun:
        """Stores a background response `queued`, with its job, for a worker to run (see parley.engine.background).

        Streamed, its caller hears `response.created` and `response.queued` now and the rest as it runs; this
        server holds the job, so that the run is where its stream is. Not streamed, the caller has it queued.
        """
        if (
            request.conversation_id is not None
            and await self.conversations.get(request.conversation_id, caller) is None
        ):
            raise ConversationNotFoundError(request.conversation_id, param="conversation")
        if request.previous_response_id is not None:
            await self._written(request.previous_response_id, caller)
            if not await self.store.exists(request.previous_response_id, caller):
                raise ResponseNotFoundError(
                    request.previous_response_id, param="previous_response_id", code="previous_response_not_found"
                )
        sampling = model.provider.sampling_defaults(model.name)
        response = initial_response(request, new_id("resp"), tools, sampling)
        response["status"] = "queued"
        run = ResponseRun(streaming=request.stream)
        opening: list[tuple[str, str]] = []
        emitter = EventEmitter(lambda event_type, data: opening.append((event_type, data.decode())))
        emitter.emit("response.created", response=response)
        emitter.emit("response.queued", response=response)
        sealed = self.job_seal.seal(request, input_items, caller)
        claim = self.worker.token if request.stream else None
        if request.stream:
            self._waiting_streams[response["id"]] = run
        try:
            await self.store.enqueue(
                response,
                input_items,
                caller.owner,
                sealed,
                opening,
                claim=claim,
                announce=claim is None and self.worker.full,
            )
        except BaseException:
            self._waiting_streams.pop(response["id"], None)
            raise
        if request.stream:
            for event_type, data in opening:
                run.sink(event_type, data.encode())
            run.on_abandon = lambda: self._waiting_streams.pop(response["id"], None)
        else:
            run.end({**response, "output": []}, None)
        self.worker.wake()
        return run

    async def run_job(self, job: Job) -> None:
        """Runs a background response that this server's worker took, to its end (`_produce`)."""
        response = {**job.body, "status": "in_progress", "output": []}
        stream = self._waiting_streams.pop(job.id, None)
        run = stream or ResponseRun(streaming=False)
        events = EventLog(self.store, job.id, first=2)
        live = _LiveEvents(stream)

        def sink(event_type: str, data: bytes) -> None:
            live.send(events.add(event_type, data), event_type, data)

        # Read live only by a creator that streams it (`first_token_sent` is for such a reader: with none, its
        # yield of the core cost two workers a tenth of their event loops' time, bench/background.py).
        emitter = EventEmitter(sink, first_sequence=2, read_live=stream is not None)
        lock: _ConversationLock | None = None
        try:
            request, input_items, caller = self.job_seal.open(job.sealed)
            model = self.registry.resolve(request.model)
            tools = request.validated_tools()
            lock = await self._enter_conversation(request.conversation_id, caller)
            history, previous_tools, keep_context = await self._history(request, caller)
        except (ParleyError, ValueError) as exc:
            if lock is not None:
                await self._leave_conversation(request.conversation_id or "", lock)
            error = exc if isinstance(exc, ParleyError) else ParleyError(f"The background job cannot be run: {exc}.")
            await self._end_unstarted(job, response, emitter, events, error)
            run.end(response, error)
            return
        record = ResponseRecord(self.store, response, input_items, job.owner)
        record.adopt()
        setup = _Setup(request, model, tools, input_items, history, previous_tools, keep_context, caller)
        producing = self._turn(setup, response, record, emitter)
        producing.turn.opening = ("response.in_progress",)
        producing.events = events
        producing.live = live
        self._launch(producing, run, lock)
        await producing.ended.wait()

    async def _end_unstarted(
        self, job: Job, response: dict[str, Any], emitter: EventEmitter, events: EventLog, error: ParleyError
    ) -> None:
        """Fails a background response that could not start (its model gone, its conversation deleted)."""
        response.update(status="failed", error=error_object(error))
        emitter.emit("response.in_progress", response=response)
        emitter.emit("error", **error_event(error))
        emitter.emit("response.failed", response=response)
        try:
            await self.store.finish(response, [], [])
        finally:
            await events.close()

    async def follow(self, response_id: str, starting_after: int | None, caller: Caller) -> AsyncIterator[list[Event]]:
        """A background response's events numbered after `starting_after` (from the first without it), in batches:
        those kept, then the rest as they come, until it ends; wherever it runs (see parley.engine.background).

        Raises ResponseNotFoundError, or InvalidRequestError for a response that is not a background one, before
        the first batch.
        """
        after = -1 if starting_after is None else starting_after
        await self._written(response_id, caller)
        producing = self._produced_for(response_id, caller)
        live: asyncio.Queue[tuple[int, str, bytes] | None] | None = None
        unwritten: list[tuple[int, str, str]] = []
        if producing is not None and producing.events is not None and producing.live is not None:
            # Followed here from now on, and what is not yet in the database taken now, before the kept events
            # are read: no event falls between the three.
            live = asyncio.Queue()
            producing.live.followers.append(live)
            unwritten = producing.events.unwritten()
        try:
            if live is None:
                # Run elsewhere, or ended: its server is asked to write its events at once while they are read, and
                # each batch it writes from then on wakes this follower.
                async with self._batches.watching(response_id) as batches:
                    stored, _ = await asyncio.gather(
                        self.store.events_after(response_id, after, caller),
                        self.store.ask_events(response_id, caller),
                    )
                    _check_followable(response_id, stored)
                    async for batch in self._poll_events(response_id, stored, after, caller, batches):
                        yield batch
                return
            stored = await self.store.events_after(response_id, after, caller)
            _check_followable(response_id, stored)
            events = sorted({e[0]: e for e in [*stored.events, *unwritten]}.values())
            batch, after = _newer(events, after)
            if batch:
                yield batch
            # Ends with the None that `_produce` sends every follower it had.
            while (event := await live.get()) is not None:
                batch, after = _newer([(event[0], event[1], event[2].decode())], after)
                if batch:
                    yield batch
        finally:
            if live is not None and producing is not None and producing.live is not None:
                with contextlib.suppress(ValueError):
                    producing.live.followers.remove(live)

    async def _poll_events(
        self, response_id: str, stored: StoredEvents, after: int, caller: Caller, batches: News
    ) -> AsyncIterator[list[Event]]:
        """Follows a response that another server runs (or that has ended) by reading its kept events: that server
        was asked to write them at once (`ResponseStore.ask_events`), and each batch it writes brings `batches`
        news, and it looks every `FOLLOW_POLL_SECONDS` anyway."""
        ended_at: float | None = None
        clock = asyncio.get_running_loop().time
        asked = stored.status == "in_progress"  # by `follow`, as it read these
        while True:
            batch, after = _newer(stored.events, after)
            if batch:
                yield batch
            if any(event_type in _TERMINAL_EVENTS for event_type, _ in batch):
                return
            if stored.status in TERMINAL:
                # Its terminal event is written just after its status (a cancelled one has none): a while more.
                if stored.status == "cancelled":
                    return
                ended_at = ended_at if ended_at is not None else clock()
                if clock() - ended_at > TERMINAL_EVENT_WAIT_SECONDS:
                    return
            elif stored.status == "in_progress" and not asked:
                # It started since: its server is asked now.
                asked = True
                await self.store.ask_events(response_id, caller)
            await batches.next()
            stored = await self.store.events_after(response_id, after, caller)

    def _followed_elsewhere(self, response_id: str) -> None:
        """A client follows a background response that this server runs through another server."""
        producing = self._producing.get(response_id)
        if producing is not None and producing.events is not None:
            producing.events.follow()

    def _cancel_here(self, response_id: str) -> bool:
        """Stops a background response this server produces; whether it was producing it."""
        producing = self._producing.get(response_id)
        if producing is None or producing.events is None or producing.task is None:
            return False
        if not producing.cancelled and (producing.in_loop or not producing.loop_started):
            producing.cancelled = True
            if producing.in_loop:
                producing.task.cancel()
        return True

    async def _stopped_here(self, response_id: str, caller: Caller) -> bool:
        """Cancels a background response this server produces, and waits for its end; whether it was here."""
        producing = self._produced_for(response_id, caller)
        if producing is None or not self._cancel_here(response_id):
            return False
        await producing.ended.wait()
        return True

    async def cancel(self, response_id: str, caller: Caller) -> dict[str, Any]:
        """Cancels a background response: queued, it is cancelled where it stands; running, the server that runs
        it stops it. A cancelled one is returned as it is; one that ended otherwise, or a foreground one, is a 400."""
        if await self._stopped_here(response_id, caller):
            return await self.retrieve(response_id, caller)
        response = await self.store.get(response_id, caller)
        if response is None:
            raise ResponseNotFoundError(response_id)
        if not response.get("background"):
            raise InvalidRequestError("Only responses created with background=true can be cancelled.")
        status = response["status"]
        if status == "cancelled":
            return response
        if status in TERMINAL:
            article = "an" if status[0] in "aeiou" else "a"
            raise InvalidRequestError(f"Cannot cancel {article} {status} response.")
        if status == "queued" and await self.store.cancel_queued(response_id):
            waiting = self._waiting_streams.pop(response_id, None)
            if waiting is not None:
                waiting.end(None, None)
            return await self.retrieve(response_id, caller)
        # Running on another server (or taken just now): it stops it when it next looks.
        await self.store.ask_cancel(response_id)
        deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_SECONDS
        while asyncio.get_running_loop().time() < deadline:
            current = await self.store.get(response_id, ANYONE)
            if current is None or current["status"] in TERMINAL:
                break
            if current["status"] == "queued" and await self.store.cancel_queued(response_id):
                break  # given back to the queue by a server that stopped: cancelled there
            if await self._stopped_here(response_id, caller):
                break
            await asyncio.sleep(0.02)
        return await self.retrieve(response_id, caller)

    async def _resolve_references(self, items: list[dict[str, Any]], caller: Caller) -> list[dict[str, Any]]:
        wanted = [item["id"] for item in items if item["type"] == "item_reference"]
        if not wanted:
            return items
        found = await self.store.find_items(wanted, caller)
        resolved = []
        for index, item in enumerate(items):
            if item["type"] != "item_reference":
                resolved.append(item)
            elif item["id"] in found:
                resolved.append(found[item["id"]])
            else:
                raise NotFoundError(f"Item with id '{item['id']}' not found.", param=f"input[{index}].id")
        return resolved

    def _produced_for(self, response_id: str, caller: Caller) -> _Producing | None:
        """The response this server is producing, if the caller sees its owner's responses."""
        producing = self._producing.get(response_id)
        if producing is None or not caller.sees(producing.owner):
            return None
        return producing

    async def _written(self, response_id: str, caller: Caller) -> None:
        """Waits until the row of a response this server has just started is in the database."""
        producing = self._produced_for(response_id, caller)
        written = producing.record.written() if producing is not None and producing.record is not None else None
        if written is not None:
            await asyncio.gather(written, return_exceptions=True)

    async def retrieve(self, response_id: str, caller: Caller) -> dict[str, Any]:
        producing = self._produced_for(response_id, caller)
        if producing is not None:
            # Until it is stored, its row may still be on its way to the database (a burst can
            # finish a response before its first row is written): this server knows it as it is now.
            turn = producing.turn
            now = {**copy.deepcopy(turn.response), "output": turn.emitter.snapshot()}
            if now["status"] in TERMINAL:
                # Its loop ended, and it is being appended to its conversation and stored: not ended until then
                # (the append can still fail it), as its terminal event waits for the same.
                now.update(status="in_progress", completed_at=None)
            return now
        response = await self.store.get(response_id, caller)
        if response is None:
            raise ResponseNotFoundError(response_id)
        return response

    async def delete(self, response_id: str, caller: Caller) -> dict[str, Any]:
        await self._written(response_id, caller)
        if not await self.store.delete(response_id, caller):
            raise ResponseNotFoundError(response_id)
        self._chains.forget(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def list(self, page: PageRequest, caller: Caller) -> dict[str, Any]:
        return (await self.store.list(page, caller)).as_list()

    async def input_items(self, response_id: str, page: PageRequest, caller: Caller) -> dict[str, Any]:
        await self._written(response_id, caller)
        if not await self.store.exists(response_id, caller):
            raise ResponseNotFoundError(response_id)
        return (await self.store.input_items(response_id, page)).as_list()

    async def start(self) -> None:
        """Starts keeping the leases of the responses this server produces, and running background responses."""
        self._keeper = asyncio.create_task(self._keep_leases(), name="response leases")
        await self.worker.start()

    async def _keep_leases(self) -> None:
        """The heartbeat: renews this server's leases and keeps the output of its responses so far, and fails
        the responses whose server stopped renewing theirs (keeping what it had kept of them)."""
        error = {"code": "server_error", "message": "The server producing this response stopped."}
        interval = self.store.lease_seconds / 3
        while True:
            try:
                await self.store.renew(sorted([*self._producing, *self._waiting_streams]))
                await self.conversations.renew([lock.holder for lock in self._conversation_locks.values() if lock.held])
                for producing in list(self._producing.values()):
                    if producing.record is not None:
                        emitter = producing.turn.emitter
                        await producing.record.keep(emitter.snapshot, emitter.changes)
                for response_id in await self.store.fail_abandoned(error):
                    log.warning("response %s was left in progress by a server that stopped; now failed", response_id)
                    await self._close_abandoned_stream(response_id)
            except Exception:
                log.exception("cannot keep the responses' leases")
            await asyncio.sleep(interval)

    async def _close_abandoned_stream(self, response_id: str) -> None:
        """Ends the kept stream of a background response whose server died, failed just now: its open items and
        parts closed `incomplete`, an `error` event and `response.failed`, numbered after the last event kept, so
        that its followers' streams end as any failed stream does."""
        stored = await self.store.events_after(response_id, -1, ANYONE)
        if not stored.background or not stored.events or any(e[1] in _TERMINAL_EVENTS for e in stored.events):
            return
        response = await self.store.get(response_id, ANYONE)
        if response is None:
            return
        closing: list[tuple[str, str]] = []
        emitter = EventEmitter.resumed(
            stored.events, lambda event_type, data: closing.append((event_type, data.decode()))
        )
        emitter.close_all("incomplete")
        # The stream's own account of the output (what it kept may be a little older).
        response["output"] = emitter.output
        emitter.emit("error", **error_event(ParleyError(response["error"]["message"])))
        emitter.emit("response.failed", response=response)
        await self.store.add_events(response_id, EventBatch(stored.events[-1][0] + 1, closing, announce=True))

    async def close(self) -> None:
        """Ends the responses still running: background ones that had produced no output yet go back to the queue
        for another server at once, and the others have `engine.background_drain_seconds` to end; whatever
        still runs then is stored failed."""
        await self.worker.stop_taking()
        self._closing = True
        for response_id in self.worker.running:
            producing = self._producing.get(response_id)
            if producing is not None and producing.in_loop and not producing.turn.emitter.output:
                assert producing.task is not None
                producing.task.cancel()  # given back (see `_produce`)
        await self.worker.drain(self.engine.background_drain_seconds)
        await self.worker.close()
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._batches.close()
        await self.tool_services.close()
        await self.files.close()
        await self.conversations.close()
