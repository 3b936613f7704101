"""Background responses (`background: true`): a response that is a durable job, run by whichever server takes it.

create   the response is stored `queued` with its job: the request, its input and its caller, sealed with the
         server's key (`JobSeal`), since a request may carry secrets (an MCP server's authorization) that
         are never stored in the clear. Not streamed, the caller has the queued response at once; streamed,
         its events from `response.created` and `response.queued` on, and the job is this server's to run.
claim    each server's `BackgroundWorker` takes queued jobs from the database, oldest first, up to
         `engine.background_concurrency` at once, and runs each as a foreground turn would run
         (ResponseService.run_job); a job is one server's only (the claim is a single UPDATE that finds it
         still queued, under `FOR UPDATE SKIP LOCKED` on PostgreSQL).
events   a background response's events are kept in the database in batches (`EventLog`), for a stream to
         be followed again from any point (`GET /v1/responses/{id}?stream=true&starting_after=N`); a client
         following it through another server asks its server to write each batch at once, and is woken by
         each (a notification: `Database.listen`), and looks now and then anyway.
cancel   `POST /v1/responses/{id}/cancel`: a queued job is cancelled where it stands; a running one is
         stopped by the server running it, at once if that is this one, else on hearing it (a
         notification), or when it next looks (`ASK_POLL_SECONDS`).
lost     a server that stops cleanly takes no more jobs, gives back at once those it runs that have produced
         no output yet, and lets the others end (`engine.background_drain_seconds`), failing those still
         running then; one that dies stops renewing its lease (`storage.lease_seconds`), and the first server
         to notice puts its jobs that had streamed nothing back in the queue and fails the others
         (ResponseStore.fail_abandoned).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from parley.engine.request import CreateResponseRequest
from parley.store import Caller
from parley.store.responses import CANCEL_CHANNEL, FOLLOW_CHANNEL, JOBS_CHANNEL, EventBatch, Job, ResponseStore

log = logging.getLogger(__name__)

# How often a worker asks the database for jobs when nothing woke it, by database (is it SQLite?): a job queued
# on another server with no room for it wakes it (a notification), and this is the safety net. SQLite's is
# shorter: its notifications go between processes beside the database (parley.store.signals), which a process
# may not hear (a directory too deep for a socket's path), and then this is how long such a job may wait.
POLL_SECONDS = {True: 0.1, False: 0.5}
# How often a worker looks for what was asked of its jobs through another server (a cancel, a client following the
# events), by database, while it runs some: a notification brings the ask at once, and this is the safety net for
# one that was missed (a listening connection lost); SQLite's is shorter for the same reason as POLL_SECONDS'.
ASK_POLL_SECONDS = {True: 0.01, False: 0.25}
# How often a running job's new events are written, at most (and at its end). Once a client follows it through
# another server, each batch is written as soon as the one before it is in (`EventLog.follow`).
EVENTS_FLUSH_SECONDS = 0.1


class JobSeal:
    """Seals a job for its row and opens it again, with a key derived from the server's key (servers that run
    each other's jobs share it, as they share the reasoning key)."""

    def __init__(self, server_key: bytes) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"parley background job").derive(
            server_key
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, request: CreateResponseRequest, input_items: list[dict[str, Any]], caller: Caller) -> str:
        payload = {
            "request": request.model_dump(mode="json", by_alias=True, exclude_unset=True),
            "input": input_items,
            "owner": caller.owner,
            "admin": caller.admin,
        }
        return self._fernet.encrypt(orjson.dumps(payload)).decode("ascii")

    def open(self, sealed: str) -> tuple[CreateResponseRequest, list[dict[str, Any]], Caller]:
        """The job's request, its input items (resolved when it was queued) and its caller.

        Raises ValueError for a job this server cannot open (sealed with another key).
        """
        try:
            payload = orjson.loads(self._fernet.decrypt(sealed))
        except InvalidToken as exc:
            raise ValueError("the job was sealed with another key") from exc
        request = CreateResponseRequest.model_validate(payload["request"])
        return request, payload["input"], Caller(owner=payload["owner"], admin=payload["admin"])


class EventLog:
    """A background response's events on their way to the database: batched, written at most every
    `EVENTS_FLUSH_SECONDS`, and all of them by `close`; once followed through another server (`follow`), each
    batch as soon as the one before is in, announced to the followers."""

    def __init__(self, store: ResponseStore, response_id: str, first: int = 0) -> None:
        self.store = store
        self.response_id = response_id
        self._next = first
        self._pending: list[tuple[str, str]] = []
        self._first_pending = first
        # The batch being written: until it is in the database, a follower reads it here.
        self._writing: list[tuple[str, str]] = []
        self._first_writing = first
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._followed = False
        self._napping = False  # whether the flusher waits between writes (and may be cancelled)
        self._catching_up: asyncio.Task[None] | None = None  # the first write once followed (see `follow`)
        self._closing = False

    def add(self, event_type: str, data: bytes) -> int:
        """Adds the next event; its sequence number."""
        if not self._pending:
            self._first_pending = self._next
        self._pending.append((event_type, data.decode()))
        self._next += 1
        self._flush_soon()
        return self._next - 1

    def follow(self) -> None:
        """A client follows the response through another server: what is pending is written now, and each
        batch from now on as soon as the one before is in, announced to the followers."""
        if self._followed:
            return
        self._followed = True
        if self._flusher is not None and self._napping:
            self._flusher.cancel()  # it waits between writes: nothing is being written
            self._flusher = None
        self._catching_up = asyncio.ensure_future(self._catch_up())

    async def _catch_up(self) -> None:
        """Writes what is pending, after the batch being written if one is; announced either way, since a batch
        written before the response was followed was not."""
        if not await self.flush():
            try:
                await self.store.announce_events(self.response_id)
            except Exception:
                log.exception("cannot announce the events of response %s", self.response_id)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._pending and not self._closing and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.ensure_future(self._flush_while_pending())

    async def _flush_while_pending(self) -> None:
        """Writes the pending events until none is left: a batch every `EVENTS_FLUSH_SECONDS`, or, followed, each
        as soon as the one before it is in (the events of one step of the event loop together)."""
        while self._pending and not self._closing:
            self._napping = True
            try:
                await asyncio.sleep(0 if self._followed else EVENTS_FLUSH_SECONDS)
            finally:
                self._napping = False
            await self.flush()

    async def flush(self) -> bool:
        """Writes the pending events, as one batch; whether there were any."""
        async with self._lock:
            if not self._pending:
                return False
            batch = self._take()
            try:
                await self.store.add_events(self.response_id, batch)
            except Exception:
                log.exception("cannot keep the events of response %s", self.response_id)
            finally:
                self._writing = []
            return True

    def _take(self) -> EventBatch:
        """The pending events, now being written: until they are in, a follower reads them here."""
        batch = EventBatch(self._first_pending, self._pending, announce=self._followed)
        self._pending = []
        self._writing, self._first_writing = batch.events, batch.first
        return batch

    def unwritten(self) -> list[tuple[int, str, str]]:
        """The events not yet in the database (sequence number, type, data), in order."""
        return [(self._first_writing + i, *event) for i, event in enumerate(self._writing)] + [
            (self._first_pending + i, *event) for i, event in enumerate(self._pending)
        ]

    async def _stop_flusher(self) -> None:
        """Stops writing batches: a write under way ends first (cancelled, its batch could be lost)."""
        self._closing = True
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            if self._napping:
                flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        if self._catching_up is not None:
            await self._catching_up

    async def discard(self) -> None:
        """Drops the events not yet written (a job given back runs again from its opening events)."""
        await self._stop_flusher()
        async with self._lock:
            self._pending = []

    async def close(self, last_write: Callable[[EventBatch], Awaitable[None]] | None = None) -> None:
        """Writes what is left; nothing is written later. With `last_write`, what is left goes in that write (the
        response's final one: its last events and final state in one transaction rather than two), or, should
        it fail, in a write of its own."""
        await self._stop_flusher()
        if last_write is None:
            await self.flush()
            return
        async with self._lock:
            batch = self._take()
            try:
                await last_write(batch)
            except BaseException:
                if batch.events:
                    try:
                        await self.store.add_events(self.response_id, batch)
                    except Exception:
                        log.exception("cannot keep the events of response %s", self.response_id)
                raise
            finally:
                self._writing = []


@dataclass(slots=True)
class _Running:
    task: asyncio.Task[None]
    job: Job


class BackgroundWorker:
    """Takes queued background responses from the database and runs them, `concurrency` at once at most."""

    def __init__(
        self,
        store: ResponseStore,
        run_job: Callable[[Job], Awaitable[None]],
        cancel_local: Callable[[str], bool],
        follow_local: Callable[[str], object],
        concurrency: int,
    ) -> None:
        self.store = store
        self.token = f"w{secrets.token_hex(8)}"
        self._run_job = run_job
        self._cancel_local = cancel_local
        self._follow_local = follow_local
        self.concurrency = concurrency
        self._running: dict[str, _Running] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._stop_listening: list[Callable[[], Awaitable[None]]] = []

    def wake(self) -> None:
        """A job was queued here, or a slot freed: look for jobs now."""
        self._wake.set()

    @property
    def running(self) -> list[str]:
        return list(self._running)

    @property
    def full(self) -> bool:
        """Whether it runs as many jobs as it may: a job queued here now waits for another server, or a slot."""
        return len(self._running) >= self.concurrency

    async def start(self) -> None:
        try:
            for channel, heard in (
                (CANCEL_CHANNEL, self._cancel_local),
                (FOLLOW_CHANNEL, self._follow_local),
                (JOBS_CHANNEL, lambda _payload: self.wake()),
            ):
                stop = await self.store.db.listen(channel, heard)
                if stop is not None:
                    self._stop_listening.append(stop)
        except Exception:
            log.exception("cannot listen for cancels of background responses; looking for them instead")
        self._tasks = [
            asyncio.create_task(self._take_jobs(), name="background jobs"),
            asyncio.create_task(self._watch_asks(), name="background asks"),
        ]

    async def _take_jobs(self) -> None:
        # Whether the last claim took as many jobs as it asked for: the queue was not empty then, and the next
        # claim goes straight to its write, without the read that spares a server with nothing to do one.
        busy = False
        while True:
            try:
                free = self.concurrency - len(self._running)
                if free > 0:
                    jobs = await self.store.claim_jobs(self.token, free, look_first=not busy)
                    busy = len(jobs) == free
                    for job in jobs:
                        task = asyncio.create_task(self._run(job), name=f"background {job.id}")
                        self._running[job.id] = _Running(task, job)
            except Exception:
                busy = False
                log.exception("cannot take background jobs")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS[self.store.db.is_sqlite])
            self._wake.clear()

    async def _run(self, job: Job) -> None:
        started = time.monotonic()
        try:
            await self._run_job(job)
        except Exception:
            log.exception("background response %s failed to run", job.id)
        finally:
            self._running.pop(job.id, None)
            log.debug("background response %s ran for %.2f s", job.id, time.monotonic() - started)
            if not self._closing:
                self.wake()

    async def _watch_asks(self) -> None:
        interval = ASK_POLL_SECONDS[self.store.db.is_sqlite]
        while True:
            await asyncio.sleep(interval)
            if not self._running:
                continue
            try:
                cancels, follows = await self.store.asked(self.token)
                for response_id in cancels:
                    self._cancel_local(response_id)
                for response_id in follows:
                    self._follow_local(response_id)
            except Exception:
                log.exception("cannot read what was asked of background jobs")

    async def stop_taking(self) -> None:
        """Takes no more jobs (the server stops); the running ones go on."""
        self._closing = True
        if self._tasks:
            self._tasks[0].cancel()
            await asyncio.gather(self._tasks[0], return_exceptions=True)

    async def drain(self, seconds: float) -> None:
        """Waits up to `seconds` for the running jobs to end."""
        running = [running.task for running in self._running.values()]
        if running and seconds > 0:
            await asyncio.wait(running, timeout=seconds)

    async def close(self) -> None:
        """Stops taking jobs; the running ones are ended by the service (given back, or failed)."""
        await self.stop_taking()
        for stop in self._stop_listening:
            with contextlib.suppress(Exception):
                await stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [running.task for running in self._running.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
