"""Stored responses: their rows, their items, and the chains between them.

A response's items live in one place: `response_items`, or, for a response
in a conversation, the conversation's own items (`conversation_items`, with
the response's id). `_items` reads both as one.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from parley.store.database import Database, Together, notify_each, write_together
from parley.store.owners import Caller, visible_to
from parley.store.pagination import Page, PageRequest, read_page
from parley.store.tables import conversation_items, response_events, response_items, responses

_VISIBLE = sa.and_(responses.c.deleted.is_(False))

# The statements every response runs, built once: SQLAlchemy builds a statement
# in Python, bind parameter by bind parameter, each time `.values()` is called,
# and finds a prebuilt one's compiled form in its cache.
_INSERT_RESPONSE = responses.insert()
_INSERT_ITEMS = response_items.insert()
_FINISH_RESPONSE = (
    responses.update()
    .where(responses.c.id == sa.bindparam("response_id"))
    .values(status=sa.bindparam("status"), body=sa.bindparam("body"), lease_until=None, job=None, claim=None)
)
# The queued jobs that server `token` may take at `now`, oldest first: those no server holds, and its own.
_PICK_JOBS = (
    sa.select(responses.c.id)
    .where(
        responses.c.status == "queued",
        sa.or_(
            responses.c.claim.is_(None),
            responses.c.claim == sa.bindparam("token"),
            responses.c.lease_until < sa.bindparam("now"),
        ),
    )
    .order_by(responses.c.seq)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
# Takes up to `limit` of them for `token`, in one statement, atomic on its own: on PostgreSQL the jobs another
# server is taking are skipped (its lock on them), not waited for; SQLite lets one writer in at a time. The pick is
# a MATERIALIZED CTE, run once: as a subquery of the UPDATE, PostgreSQL may run it again for rows it rechecks, and
# with SKIP LOCKED a second run picks other rows (a server took two jobs with one slot free).
_PICKED = _PICK_JOBS.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
_CLAIM_JOBS = (
    responses.update()
    .where(responses.c.id.in_(sa.select(_PICKED.c.id)), responses.c.status == "queued")
    .values(
        status="in_progress",
        claim=sa.bindparam("token"),
        lease_until=sa.bindparam("lease_until"),
        attempts=responses.c.attempts + 1,
    )
    .returning(
        responses.c.seq, responses.c.id, responses.c.job, responses.c.body, responses.c.owner, responses.c.attempts
    )
)
_INSERT_EVENTS = response_events.insert()
# The statements of the frequent writes are built once, here: building them (the claim's, an event batch's) took
# SQLAlchemy more than running them, inside SQLite's one write lock (bench/background.py).

# The statuses a response ends with.
TERMINAL = ("completed", "incomplete", "failed", "cancelled")
# The PostgreSQL channel on which a cancel of a background response is announced (its payload: the response's id).
CANCEL_CHANNEL = "parley_cancel"
# The channels on which a client's following of a background response through another server is announced, and
# on which the server running it announces each batch of its events written from then on (payloads: its id).
FOLLOW_CHANNEL = "parley_follow"
EVENTS_CHANNEL = "parley_events"
# The channel on which a job queued for any server is announced (its server had no room for it).
JOBS_CHANNEL = "parley_jobs"
# A background job given back this many times (its server stopped or died before it produced output) fails.
MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Job:
    """A background response taken to run: its row's id, its sealed job, its stored state (less output), and how
    many times a server has taken it (this time included)."""

    id: str
    sealed: str
    body: dict[str, Any]
    owner: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Events of a background response to keep, numbered from `first`; `announce`, to tell the servers that
    follow it (`NOTIFY` on EVENTS_CHANNEL, on PostgreSQL) once they are in."""

    first: int
    events: list[tuple[str, str]]  # (type, data)
    announce: bool = False


@dataclass(frozen=True, slots=True)
class StoredEvents:
    """Events of a background response from some point on, and whether the response has ended."""

    events: list[tuple[int, str, str]]  # (sequence_number, type, data)
    status: str | None  # None: no such response the caller sees
    background: bool = True  # whether it is a background response (only those have events)


class _ItemSource:
    """One of the two tables that hold responses' items, seen through the same columns."""

    def __init__(self, table: sa.Table, live: Any = None) -> None:
        self.table = table
        self.live = live if live is not None else sa.true()

    @property
    def c(self) -> Any:
        return self.table.c


_OWN = _ItemSource(response_items)
_IN_CONVERSATIONS = _ItemSource(conversation_items, conversation_items.c.deleted.is_(False))


def _chain_items_query() -> sa.Select[Any]:
    """The items of the chain ending at the response `:response_id`, oldest first (see `chain_items`)."""
    chain = (
        sa.select(responses.c.id, responses.c.previous_response_id, sa.literal(0).label("depth"))
        .where(responses.c.id == sa.bindparam("response_id"))
        .cte("chain", recursive=True)
    )
    parent = responses.alias("parent")
    chain = chain.union_all(
        sa.select(parent.c.id, parent.c.previous_response_id, chain.c.depth + 1).where(
            parent.c.id == chain.c.previous_response_id
        )
    )
    # Each table joined with the chain by its index, then the two in chain order.
    parts = [
        sa.select(chain.c.depth, source.c.position, source.c.data, sa.literal(in_conversation).label("in_conversation"))
        .join(chain, source.c.response_id == chain.c.id)
        .where(source.live)
        for source, in_conversation in ((_OWN, False), (_IN_CONVERSATIONS, True))
    ]
    both = sa.union_all(*parts).subquery("items")
    return sa.select(both.c.data, both.c.in_conversation).order_by(both.c.depth.desc(), both.c.position)


# Built once: building it takes SQLAlchemy about 0.7 ms, a turn's whole database read.
_CHAIN_ITEMS = _chain_items_query()


def _source(conversation_id: str | None, status: str) -> _ItemSource:
    """Where a response's items are: its conversation holds those of the turns that did not fail."""
    return _IN_CONVERSATIONS if conversation_id and status != "failed" else _OWN


class ResponseStore:
    """`lease_seconds`: how long a response in progress stays vouched for without a renewal."""

    def __init__(self, db: Database, lease_seconds: float = 15.0) -> None:
        self.db = db
        self.lease_seconds = lease_seconds

    async def begin(self, response: dict[str, Any], input_items: list[dict[str, Any]], owner: str | None) -> None:
        """Writes the response as it starts, with its input, before any model call."""
        rows = [] if response.get("conversation") else _item_rows(response["id"], "input", input_items)
        # A conversation keeps its own items.
        await self._insert(response, time.time() + self.lease_seconds, rows, owner)

    async def finish(
        self,
        response: dict[str, Any],
        output_items: list[dict[str, Any]],
        input_items: list[dict[str, Any]],
        *,
        replace: bool = False,
        events: EventBatch | None = None,
    ) -> None:
        """Records the final state and the output, in one transaction; `replace`, in place of the output kept
        while it was produced (`keep_output`); with a background response's last `events`, which a follower
        that reads the final status then has.

        A failed turn of a conversation appended nothing to it, so its items are kept here.
        """
        rows = []
        if not response.get("conversation"):
            rows = _item_rows(response["id"], "output", output_items, start=len(input_items))
        elif response["status"] == "failed":
            rows = _all_rows(response["id"], input_items, output_items)
        values = {"response_id": response["id"], "status": response["status"], "body": _without_output(response)}
        writes: list[Together] = [(_FINISH_RESPONSE, values), (_INSERT_ITEMS, rows)]
        notice = None
        if events is not None:
            batch, notice = _batch_write(response["id"], events)
            writes.append(batch)
        if not replace:
            await self.db.write_together(writes, notice)
            return
        # What was kept goes first: the output in its place takes the same positions.
        kept = _kept_rows(response)

        def finish(connection: sa.Connection) -> None:
            connection.execute(kept)
            write_together(connection, writes, notice)

        await self.db.write(finish)

    async def keep_output(
        self, response: dict[str, Any], input_items: list[dict[str, Any]], output_items: list[dict[str, Any]]
    ) -> None:
        """Keeps the output produced so far, in place of what was kept before, while the response is in progress.

        So a server that dies mid-response leaves it, under the `failed` status that `fail_abandoned` gives.
        A conversation's turn keeps its input here too: a turn that fails appends nothing to its conversation.
        """
        if response.get("conversation"):
            rows = _all_rows(response["id"], input_items, output_items)
        else:
            rows = _item_rows(response["id"], "output", output_items, start=len(input_items))
        kept = _kept_rows(response)

        def keep(connection: sa.Connection) -> None:
            connection.execute(kept)
            if rows:  # executemany with no rows is an INSERT of one row of defaults
                connection.execute(_INSERT_ITEMS, rows)

        await self.db.write(keep)

    async def discard(self, response_id: str) -> None:
        """Removes a response and its own items: one whose client never had its id."""

        def discard(connection: sa.Connection) -> None:
            connection.execute(response_items.delete().where(response_items.c.response_id == response_id))
            connection.execute(responses.delete().where(responses.c.id == response_id))

        await self.db.write(discard)

    async def insert_finished(
        self,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        output_items: list[dict[str, Any]],
        owner: str | None,
    ) -> None:
        """`begin` and `finish` in one write, for a response that ended before its first row was written."""
        own = not response.get("conversation") or response["status"] == "failed"
        rows = _all_rows(response["id"], input_items, output_items) if own else []
        await self._insert(response, None, rows, owner)

    async def _insert(
        self, response: dict[str, Any], lease_until: float | None, rows: list[dict[str, Any]], owner: str | None
    ) -> None:
        # The rows are made here, on the event loop, which may change the response once it has handed them on.
        row = _response_row(response, lease_until, owner)
        writes: list[Together] = [(_INSERT_RESPONSE, [row]), (_INSERT_ITEMS, rows)]
        await self.db.write_together(writes)

    async def get(self, response_id: str, caller: Caller) -> dict[str, Any] | None:
        return await self.db.read(lambda connection: _read_response(connection, response_id, caller), autocommit=True)

    # Background responses -----------------------------------------------------------------------------

    async def enqueue(
        self,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        owner: str | None,
        sealed_job: str,
        events: list[tuple[str, str]],
        claim: str | None = None,
        announce: bool = False,
    ) -> None:
        """Stores a background response `queued`, with its input, its job and its first events; `claim`, the
        server that will run it (one that streams it to its caller), which holds it under a lease; `announce`,
        on PostgreSQL, wakes the other servers' workers (`NOTIFY` on JOBS_CHANNEL)."""
        row = _response_row(response, time.time() + self.lease_seconds if claim else None, owner)
        row.update(job=sealed_job, claim=claim)
        rows = [] if response.get("conversation") else _item_rows(response["id"], "input", input_items)

        writes: list[Together] = [(_INSERT_RESPONSE, [row]), (_INSERT_ITEMS, rows)]
        if events:
            writes.append((_INSERT_EVENTS, [_events_row(response["id"], 0, events)]))
        notice = (JOBS_CHANNEL, "") if announce else None
        await self.db.write_together(writes, notice)

    async def claim_jobs(self, token: str, limit: int, *, look_first: bool = True) -> list[Job]:
        """Takes up to `limit` queued jobs, oldest first, for the server `token`: those no server holds, and its
        own. Each is `in_progress` under this server's lease once taken; no other server can take it.

        `look_first`: with a read before, and no write when it finds none. Every server looks twice a second,
        and a write transaction each time, nearly always for nothing, would take SQLite's one writer from the
        turns that need it; a server that has just found the queue full of jobs spares the read.
        """
        if look_first:
            picked = {"token": token, "now": time.time(), "limit": limit}
            found = await self.db.read(lambda c: c.execute(_PICK_JOBS, picked).first(), autocommit=True)
            if found is None:
                return []

        def claim(connection: sa.Connection) -> list[Job]:
            now = time.time()
            values = {"token": token, "now": now, "limit": limit, "lease_until": now + self.lease_seconds}
            rows = sorted(connection.execute(_CLAIM_JOBS, values), key=lambda row: row.seq)
            return [Job(row.id, row.job, row.body, row.owner, row.attempts) for row in rows]

        return await self.db.write(claim, autocommit=True)

    async def give_back(self, response_id: str) -> None:
        """Puts a job that produced nothing back in the queue (its server stops); its events after
        `response.queued` go, since it will run again from there."""

        await self.db.write(lambda connection: _requeue(connection, response_id))

    async def cancel_queued(self, response_id: str) -> bool:
        """Cancels a background response that no server has started; whether it was still queued."""

        def cancel(connection: sa.Connection) -> bool:
            row = connection.execute(
                sa.select(responses.c.body).where(responses.c.id == response_id, responses.c.status == "queued")
            ).first()
            if row is None:
                return False
            body = {**row.body, "status": "cancelled"}
            result = connection.execute(
                responses.update()
                .where(responses.c.id == response_id, responses.c.status == "queued")
                .values(status="cancelled", body=body, job=None, claim=None, lease_until=None)
            )
            return bool(result.rowcount)

        return await self.db.write(cancel)

    async def ask_cancel(self, response_id: str) -> None:
        """Asks the server running a background response to cancel it: on PostgreSQL it hears it at once
        (`NOTIFY` on CANCEL_CHANNEL), and every server also looks for such rows (`asked`)."""
        await self._ask(response_id, responses.c.cancel_requested, CANCEL_CHANNEL)

    async def ask_events(self, response_id: str, caller: Caller) -> None:
        """Tells the server running a background response that a client follows it through another server, so
        that it writes its events at once from then on (`NOTIFY` on FOLLOW_CHANNEL, and `asked`); nothing for a
        response the caller does not see, or that does not run now."""
        await self._ask(response_id, responses.c.follow_asked, FOLLOW_CHANNEL, visible_to(responses.c.owner, caller))

    async def _ask(self, response_id: str, flag: sa.Column[bool], channel: str, *where: Any) -> None:
        statement = (
            responses.update()
            .where(
                responses.c.id == response_id,
                responses.c.status == "in_progress",
                responses.c.job.is_not(None),
                flag.is_(False),
                *where,
            )
            .values({flag: True})
        )

        # The ask and its NOTIFY, heard once the ask is in; none when nothing was asked.
        await self.db.write(
            lambda connection: notify_each(connection, channel, statement.returning(responses.c.id)), autocommit=True
        )

    async def asked(self, token: str) -> tuple[list[str], list[str]]:
        """The background responses that server `token` runs whose cancel was asked of another server, and those
        that a client follows through another server."""
        query = sa.select(responses.c.id, responses.c.cancel_requested).where(
            responses.c.claim == token,
            responses.c.status == "in_progress",
            sa.or_(responses.c.cancel_requested.is_(True), responses.c.follow_asked.is_(True)),
        )
        rows = await self.db.read(lambda connection: list(connection.execute(query)), autocommit=True)
        return [row.id for row in rows if row.cancel_requested], [row.id for row in rows if not row.cancel_requested]

    async def add_events(self, response_id: str, events: EventBatch) -> None:
        """Keeps a batch of a background response's events (and then announces them, when it is to)."""
        batch, notice = _batch_write(response_id, events)
        await self.db.write_together([batch], notice)

    async def announce_events(self, response_id: str) -> None:
        """Tells the servers following a background response that its events written so far are all in."""
        await self.db.announce(EVENTS_CHANNEL, response_id)

    async def events_after(self, response_id: str, after: int, caller: Caller) -> StoredEvents:
        """The response's kept events numbered after `after`, and its status as read with them."""

        # One statement, the response's status and its events together: on PostgreSQL, one round trip of a
        # follower's wake-ups instead of two (bench/background.py's resume through another server).
        query = (
            sa.select(
                responses.c.status,
                responses.c.body["background"].as_boolean(),
                response_events.c.first,
                response_events.c.events,
            )
            .select_from(
                responses.outerjoin(
                    response_events,
                    sa.and_(response_events.c.response_id == responses.c.id, response_events.c.last > after),
                )
            )
            .where(responses.c.id == response_id, _VISIBLE, visible_to(responses.c.owner, caller))
            .order_by(response_events.c.first)
        )

        def read(connection: sa.Connection) -> StoredEvents:
            rows = connection.execute(query).all()
            if not rows:
                return StoredEvents([], None)
            status, background = rows[0][0], rows[0][1]
            if not background:
                return StoredEvents([], status, background=False)
            events = []
            for row in rows:
                if row.first is None:
                    continue
                for offset, (event_type, data) in enumerate(_unpack(row.events)):
                    if row.first + offset > after:
                        events.append((row.first + offset, event_type, data))
            return StoredEvents(events, status)

        return await self.db.read(read, autocommit=True)

    async def renew(self, response_ids: list[str]) -> None:
        """Extends the lease of the responses this server is producing."""
        if not response_ids:
            return
        statement = (
            responses.update()
            .where(responses.c.id.in_(response_ids), responses.c.status.in_(("in_progress", "queued")))
            .values(lease_until=time.time() + self.lease_seconds)
        )
        await self.db.write(lambda connection: connection.execute(statement))

    async def fail_abandoned(self, error: dict[str, Any]) -> list[str]:
        """Marks `failed` the responses left in progress by a server that stopped renewing them."""
        now = time.time()

        def fail(connection: sa.Connection) -> list[str]:
            rows = list(
                connection.execute(
                    sa.select(responses.c.id, responses.c.body, responses.c.job, responses.c.attempts).where(
                        responses.c.status == "in_progress", responses.c.lease_until < now
                    )
                )
            )
            failed = []
            for row in rows:
                if row.job is not None and row.attempts < MAX_ATTEMPTS and not _produced(connection, row.id):
                    # A background job that its dead server had not started to answer: queued again.
                    _requeue(connection, row.id)
                    continue
                body = {**row.body, "status": "failed", "error": error}
                connection.execute(
                    responses.update()
                    .where(responses.c.id == row.id, responses.c.status == "in_progress")
                    .values(status="failed", body=body, lease_until=None, job=None, claim=None)
                )
                failed.append(row.id)
            return failed

        return await self.db.write(fail)

    async def body(self, response_id: str, caller: Caller) -> dict[str, Any] | None:
        """The stored response without its output (its settings: tools, model, ...)."""
        query = sa.select(responses.c.body).where(
            responses.c.id == response_id, _VISIBLE, visible_to(responses.c.owner, caller)
        )
        return await self.db.read(lambda connection: connection.scalar(query))

    async def exists(self, response_id: str, caller: Caller) -> bool:
        query = sa.select(sa.literal(1)).where(
            responses.c.id == response_id, _VISIBLE, visible_to(responses.c.owner, caller)
        )
        return await self.db.read(lambda connection: connection.scalar(query)) is not None

    async def delete(self, response_id: str, caller: Caller) -> bool:
        """Hides the response; its items stay while later responses of its chain need them."""
        statement = (
            responses.update()
            .where(responses.c.id == response_id, _VISIBLE, visible_to(responses.c.owner, caller))
            .values(deleted=True)
        )
        return await self.db.write(lambda connection: connection.execute(statement).rowcount > 0)

    async def chain_items(self, response_id: str) -> tuple[list[dict[str, Any]], bool]:
        """Every input and output item along the chain ending at `response_id`, oldest first, in one query.

        And whether some come from a conversation, whose items can still be deleted.
        """
        is_sqlite = self.db.is_sqlite

        def read(connection: sa.Connection) -> tuple[list[dict[str, Any]], bool]:
            if not is_sqlite:
                # Each step of the walk is one lookup by primary key. PostgreSQL, before it has
                # statistics on a young table, plans it as a hash join over the whole table at
                # every step, which makes a turn's cost grow with the table, not the chain.
                connection.execute(
                    sa.text(
                        "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true),"
                        " set_config('enable_mergejoin', 'off', true)"
                    )
                )
            rows = connection.execute(_CHAIN_ITEMS, {"response_id": response_id}).all()
            return [row.data for row in rows], any(row.in_conversation for row in rows)

        return await self.db.read(read)

    async def find_items(self, item_ids: list[str], caller: Caller) -> dict[str, dict[str, Any]]:
        """The caller's stored items by id (for `item_reference` inputs)."""
        if not item_ids:
            return {}

        def find(connection: sa.Connection) -> dict[str, dict[str, Any]]:
            own = connection.execute(
                sa.select(response_items.c.item_id, response_items.c.data)
                .join(responses, responses.c.id == response_items.c.response_id)
                .where(response_items.c.item_id.in_(item_ids), _VISIBLE, visible_to(responses.c.owner, caller))
            )
            found = {row.item_id: row.data for row in own}
            # A conversation's items, whoever added them, go when it or they are deleted.
            in_conversations = connection.execute(
                sa.select(conversation_items.c.item_id, conversation_items.c.data).where(
                    conversation_items.c.item_id.in_(item_ids),
                    _IN_CONVERSATIONS.live,
                    visible_to(conversation_items.c.owner, caller),
                )
            )
            found.update({row.item_id: row.data for row in in_conversations})
            return found

        return await self.db.read(find)

    async def list(self, page: PageRequest, caller: Caller) -> Page:
        """The caller's responses; a cursor naming another owner's response names nothing in this list."""
        mine = visible_to(responses.c.owner, caller)
        query = sa.select(responses.c.seq, responses.c.id).where(_VISIBLE, mine)
        cursor_of = lambda item_id: sa.select(responses.c.seq).where(responses.c.id == item_id, mine)  # noqa: E731

        def read(connection: sa.Connection) -> Page:
            rows, has_more = read_page(connection, query, responses.c.seq, cursor_of, page)
            bodies = [_read_response(connection, row.id, caller) for row in rows]
            return Page(data=[body for body in bodies if body is not None], has_more=has_more)

        return await self.db.read(read)

    async def input_items(self, response_id: str, page: PageRequest) -> Page:
        def read(connection: sa.Connection) -> tuple[list[Any], bool]:
            row = connection.execute(
                sa.select(responses.c.conversation_id, responses.c.status).where(responses.c.id == response_id)
            ).one()
            items = _source(row.conversation_id, row.status)
            query = sa.select(items.c.position, items.c.data).where(
                items.c.response_id == response_id, items.c.kind == "input", items.live
            )
            cursor_of = lambda item_id: sa.select(items.c.position).where(  # noqa: E731
                items.c.response_id == response_id, items.c.kind == "input", items.c.item_id == item_id
            )
            return read_page(connection, query, items.c.position, cursor_of, page)

        rows, has_more = await self.db.read(read)
        return Page(data=[row.data for row in rows], has_more=has_more)


def _read_response(connection: sa.Connection, response_id: str, caller: Caller) -> dict[str, Any] | None:
    row = connection.execute(
        sa.select(responses.c.body, responses.c.conversation_id, responses.c.status).where(
            responses.c.id == response_id, _VISIBLE, visible_to(responses.c.owner, caller)
        )
    ).first()
    if row is None:
        return None
    items = _source(row.conversation_id, row.status)
    output = connection.execute(
        sa.select(items.c.data)
        .where(items.c.response_id == response_id, items.c.kind == "output", items.live)
        .order_by(items.c.position)
    ).scalars()
    # The row's status is the truth: a background response's body says `queued` until its job ends.
    return {**row.body, "status": row.status, "output": list(output)}


def _events_row(response_id: str, first: int, events: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "response_id": response_id,
        "first": first,
        "last": first + len(events) - 1,
        "events": _pack(events),
    }


def _pack(events: list[tuple[str, str]]) -> bytes:
    """A batch of events as it is kept: its [type, data] pairs as JSON, compressed with zlib (level 1).

    A job's stream is mostly deltas of the same keys: bench/background.py's jobs of 200 tokens kept 60 KB of
    events each, 4 KB compressed, in 0.04 ms of CPU. As text, SQLite wrote the 60 KB into its log under its one
    write lock, 15 pages, and copied them again at each checkpoint, which holds the lock too: two `parley serve`
    workers on one file waited for it a quarter of their time (2 workers over 1: 1.57 uncompressed, 1.75
    compressed, in the same session). PostgreSQL parsed the 60 KB as JSON (`write_together`) and compressed
    them itself.
    """
    return zlib.compress(orjson.dumps([list(event) for event in events]), 1)


def _unpack(packed: bytes) -> list[list[str]]:
    """A batch of events kept by `_pack`: its [type, data] pairs."""
    return orjson.loads(zlib.decompress(packed))


def _batch_write(response_id: str, batch: EventBatch) -> tuple[Together, tuple[str, str] | None]:
    """A batch of events as `write_together` writes it (none: nothing to write), and the notification that
    announces it, when it is to be announced (on PostgreSQL in the same statement)."""
    rows = [_events_row(response_id, batch.first, batch.events)] if batch.events else []
    return (_INSERT_EVENTS, rows), (EVENTS_CHANNEL, response_id) if batch.announce else None


def _requeue(connection: sa.Connection, response_id: str) -> None:
    """A background job in progress back in the queue, its events after `response.queued` gone: it runs again
    from there."""
    connection.execute(
        responses.update()
        .where(responses.c.id == response_id, responses.c.status == "in_progress")
        .values(status="queued", claim=None, lease_until=None)
    )
    connection.execute(
        response_events.delete().where(response_events.c.response_id == response_id, response_events.c.first > 1)
    )


def _produced(connection: sa.Connection, response_id: str) -> bool:
    """Whether a background response has kept output, or events past its opening three (created, queued,
    in_progress): whether running it again could contradict what a follower saw."""
    output = connection.execute(
        sa.select(sa.literal(1)).where(response_items.c.response_id == response_id, response_items.c.kind == "output")
    ).first()
    events = connection.execute(
        sa.select(sa.literal(1)).where(response_events.c.response_id == response_id, response_events.c.last > 2)
    ).first()
    return output is not None or events is not None


def _kept_rows(response: dict[str, Any]) -> sa.Delete:
    """Deletes what `keep_output` kept of a response: its output, and a conversation's turn's input too."""
    statement = response_items.delete().where(response_items.c.response_id == response["id"])
    if not response.get("conversation"):
        statement = statement.where(response_items.c.kind == "output")
    return statement


def _without_output(response: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in response.items() if key != "output"}


def _response_row(response: dict[str, Any], lease_until: float | None, owner: str | None) -> dict[str, Any]:
    return {
        "id": response["id"],
        "created_at": response["created_at"],
        "status": response["status"],
        "model": response["model"],
        "previous_response_id": response.get("previous_response_id"),
        "conversation_id": (response.get("conversation") or {}).get("id"),
        "body": _without_output(response),
        "lease_until": lease_until,
        "owner": owner,
    }


def _all_rows(response_id: str, input_items: list[dict[str, Any]], output_items: list[dict[str, Any]]) -> list[Any]:
    """A response's input and output items, as rows of its own."""
    inputs = _item_rows(response_id, "input", input_items)
    return inputs + _item_rows(response_id, "output", output_items, start=len(inputs))


def _item_rows(response_id: str, kind: str, items: list[dict[str, Any]], start: int = 0) -> list[dict[str, Any]]:
    return [_item_row(response_id, start + i, kind, item) for i, item in enumerate(items)]


def _item_row(response_id: str, position: int, kind: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "response_id": response_id,
        "position": position,
        "kind": kind,
        "item_id": item["id"],
        "type": item["type"],
        "data": item,
    }
