"""Stored conversations: the rows, their items in order, and appends that never interleave.

A conversation is seen only by its owner's callers (and admins): `get`,
`update_metadata` and `delete` take the caller; the methods on its items take
a conversation the caller was shown to see (ConversationService checks first).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from parley.store.database import Database, Wakeups, notify
from parley.store.owners import Caller, visible_to
from parley.store.pagination import Page, PageRequest, read_page
from parley.store.tables import conversation_items, conversations, responses


class ConversationNotFound(Exception):
    pass


class DuplicateItem(Exception):
    """An appended item has the id of one the conversation has, or had."""


class TurnLost(Exception):
    """A turn's hold on its conversation ran out before its append (its server stopped renewing it for longer
    than the lease): another turn may have taken the conversation since."""


# How often a turn waiting for its conversation looks again (see `ConversationStore.hold`), by database (is it
# SQLite?). The release's notification wakes it at once, and this is a safety net (a hold that ran out, a missed
# notification), shorter on SQLite, whose notifications a process may not hear (parley.store.signals).
TURN_POLL_SECONDS = {True: 0.02, False: 0.5}
TURN_CHANNEL = "parley_turns"


def _object(row: Any) -> dict[str, Any]:
    return {"id": row.id, "object": "conversation", "created_at": row.created_at, "metadata": row.metadata}


_LIVE_ITEM = conversation_items.c.deleted.is_(False)


class ConversationStore:
    """`lease_seconds`: how long a turn's hold on its conversation lasts without a renewal (see `hold`)."""

    def __init__(self, db: Database, lease_seconds: float = 15.0) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        # The turns of this server waiting for a conversation (see `hold`), woken when it is released.
        self._released = Wakeups(db, TURN_CHANNEL, TURN_POLL_SECONDS[db.is_sqlite])

    async def create(
        self,
        conversation_id: str,
        created_at: int,
        metadata: dict[str, str],
        items: list[dict[str, Any]],
        owner: str | None,
    ) -> dict[str, Any]:
        rows = [_row(conversation_id, position, item, None, None, owner) for position, item in enumerate(items)]
        statement = conversations.insert().values(
            id=conversation_id, created_at=created_at, metadata=metadata, next_position=len(items), owner=owner
        )

        def create(connection: sa.Connection) -> None:
            connection.execute(statement)
            if rows:
                connection.execute(conversation_items.insert(), rows)

        await self.db.write(create)
        return {"id": conversation_id, "object": "conversation", "created_at": created_at, "metadata": metadata}

    async def get(self, conversation_id: str, caller: Caller) -> dict[str, Any] | None:
        query = sa.select(conversations).where(
            conversations.c.id == conversation_id, visible_to(conversations.c.owner, caller)
        )
        row = await self.db.read(lambda connection: connection.execute(query).first())
        return _object(row) if row is not None else None

    async def update_metadata(
        self, conversation_id: str, metadata: dict[str, str], caller: Caller
    ) -> dict[str, Any] | None:
        statement = (
            conversations.update()
            .where(conversations.c.id == conversation_id, visible_to(conversations.c.owner, caller))
            .values(metadata=metadata)
            .returning(conversations)
        )
        row = await self.db.write(lambda connection: connection.execute(statement).first())
        return _object(row) if row is not None else None

    async def delete(self, conversation_id: str, caller: Caller) -> bool:
        """Deletes the conversation with its items; the responses it held go from the API too."""
        mine = sa.select(conversations.c.id).where(
            conversations.c.id == conversation_id, visible_to(conversations.c.owner, caller)
        )

        def delete(connection: sa.Connection) -> bool:
            if connection.execute(mine).first() is None:
                return False
            connection.execute(
                conversation_items.delete().where(conversation_items.c.conversation_id == conversation_id)
            )
            connection.execute(
                responses.update().where(responses.c.conversation_id == conversation_id).values(deleted=True)
            )
            return connection.execute(conversations.delete().where(conversations.c.id == conversation_id)).rowcount > 0

        return await self.db.write(delete)

    async def append(
        self,
        conversation_id: str,
        items: list[dict[str, Any]],
        response_id: str | None = None,
        kinds: list[str] | None = None,
        tools: list[dict[str, Any]] | None = None,
        holder: str | None = None,
        release: bool = False,
    ) -> None:
        """Appends `items` after everything already there, in one transaction; for a turn, only while its
        `holder` holds the conversation (see `hold`), else TurnLost; with `release`, the hold ends with it.

        Bumping `next_position` locks the conversation's row (on PostgreSQL; on
        SQLite the transaction holds the database's write lock), so two appends
        at once never interleave: each gets a block of positions of its own.
        """
        if not items:
            return
        values: dict[str, Any] = {"next_position": conversations.c.next_position + len(items)}
        if release:
            values.update(turn=None, turn_until=None)
        if tools is not None:
            values["last_tools"] = tools
        held = [conversations.c.turn == holder] if holder is not None else []
        bump = (
            conversations.update()
            .where(conversations.c.id == conversation_id, *held)
            .values(**values)
            .returning(conversations.c.next_position, conversations.c.owner)
        )
        # Made here, on the event loop; the transaction gives them their positions and owner.
        rows = [
            _row(conversation_id, offset, item, response_id, kinds[offset] if kinds else None, None)
            for offset, item in enumerate(items)
        ]

        def append(connection: sa.Connection) -> None:
            bumped = connection.execute(bump).first()
            if bumped is None:
                exists = sa.select(conversations.c.seq).where(conversations.c.id == conversation_id)
                if holder is not None and connection.scalar(exists) is not None:
                    raise TurnLost(conversation_id)
                raise ConversationNotFound(conversation_id)
            start = bumped.next_position - len(rows)
            for row in rows:
                row["position"] += start
                row["owner"] = bumped.owner  # the conversation's, whoever adds (see tables.conversation_items)
            try:
                connection.execute(conversation_items.insert(), rows)
            except sa.exc.IntegrityError as exc:
                raise DuplicateItem("The conversation already has an item with one of these ids.") from exc
            if release:
                notify(connection, TURN_CHANNEL, conversation_id)

        await self.db.write(append)
        if release:
            self._released.wake(conversation_id)

    async def hold(self, conversation_id: str, holder: str, caller: Caller) -> None:
        """Takes the conversation's turn for `holder` (a token of its own), once no other holder has it, on this
        server or another: from reading its items until its append, turns on one conversation take turns.

        The hold is a lease on the conversation's row, which costs no connection while the turn runs: the server
        renews it (`renew`) and gives it back (`release`); a server that dies leaves a hold that runs out after
        `lease_seconds`. A waiting turn is woken by the NOTIFY of a release on PostgreSQL, and looks again every
        `TURN_POLL_SECONDS`. Raises ConversationNotFound when the conversation is, or comes to be, deleted, or is
        one the caller does not see.
        """
        async with self._released.watching(conversation_id) as released:
            first = True
            while not await self._take(conversation_id, holder, caller, look_first=not first):
                first = False
                await released.next()

    async def _take(self, conversation_id: str, holder: str, caller: Caller, look_first: bool) -> bool:
        """One try at the conversation's turn. A turn that waits reads first (`look_first`), so that waiting
        writes nothing while another holds it; the first try writes at once, as most find it free."""
        row = conversations.c
        mine = (row.id == conversation_id, visible_to(row.owner, caller))
        if look_first:
            state = await self.db.read(
                lambda connection: connection.execute(sa.select(row.turn, row.turn_until).where(*mine)).first()
            )
            if state is None:
                raise ConversationNotFound(conversation_id)
            if state.turn is not None and state.turn_until is not None and state.turn_until >= time.time():
                return False
        now = time.time()
        take = (
            conversations.update()
            .where(*mine, sa.or_(row.turn.is_(None), row.turn_until < now))
            .values(turn=holder, turn_until=now + self.lease_seconds)
        )
        exists = sa.select(row.seq).where(*mine)

        def try_it(connection: sa.Connection) -> bool:
            if connection.execute(take).rowcount:
                return True
            if connection.scalar(exists) is None:
                raise ConversationNotFound(conversation_id)
            return False

        return await self.db.write(try_it)

    async def renew(self, holders: list[str]) -> None:
        """Extends the holds of the given holders (the turns this server runs)."""
        if not holders:
            return
        statement = (
            conversations.update()
            .where(conversations.c.turn.in_(holders))
            .values(turn_until=time.time() + self.lease_seconds)
        )
        await self.db.write(lambda connection: connection.execute(statement))

    async def release(self, conversation_id: str, holder: str) -> None:
        """Gives the conversation's turn back, if `holder` still has it, and wakes the turns waiting for it."""
        statement = (
            conversations.update()
            .where(conversations.c.id == conversation_id, conversations.c.turn == holder)
            .values(turn=None, turn_until=None)
        )

        def release(connection: sa.Connection) -> None:
            if connection.execute(statement).rowcount:
                notify(connection, TURN_CHANNEL, conversation_id)

        await self.db.write(release)
        self._released.wake(conversation_id)

    async def close(self) -> None:
        await self._released.close()

    async def items(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every live item, in order: the context of the conversation's next turn (one indexed query)."""
        query = (
            sa.select(conversation_items.c.data)
            .where(conversation_items.c.conversation_id == conversation_id, _LIVE_ITEM)
            .order_by(conversation_items.c.position)
        )
        return await self.db.read(lambda connection: list(connection.execute(query).scalars()))

    async def list_items(self, conversation_id: str, page: PageRequest) -> Page:
        key = conversation_items.c.position
        query = sa.select(conversation_items.c.data).where(
            conversation_items.c.conversation_id == conversation_id, _LIVE_ITEM
        )
        # Deleted items keep their row, so a cursor naming one still has a place.
        cursor_of = lambda item_id: sa.select(key).where(  # noqa: E731
            conversation_items.c.conversation_id == conversation_id, conversation_items.c.item_id == item_id
        )
        rows, has_more = await self.db.read(lambda connection: read_page(connection, query, key, cursor_of, page))
        return Page(data=[row.data for row in rows], has_more=has_more)

    async def get_item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None:
        query = sa.select(conversation_items.c.data).where(
            conversation_items.c.conversation_id == conversation_id,
            conversation_items.c.item_id == item_id,
            _LIVE_ITEM,
        )
        return await self.db.read(lambda connection: connection.scalar(query))

    async def item_exists(self, conversation_id: str, item_id: str) -> bool:
        """Whether the id names an item of the conversation, live or deleted (cursors may name either)."""
        query = sa.select(sa.literal(1)).where(
            conversation_items.c.conversation_id == conversation_id, conversation_items.c.item_id == item_id
        )
        return await self.db.read(lambda connection: connection.scalar(query)) is not None

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        statement = (
            conversation_items.update()
            .where(
                conversation_items.c.conversation_id == conversation_id,
                conversation_items.c.item_id == item_id,
                _LIVE_ITEM,
            )
            .values(deleted=True)
        )
        return await self.db.write(lambda connection: connection.execute(statement).rowcount > 0)

    async def response_items(self, response_id: str, kind: str) -> list[dict[str, Any]]:
        """The live input or output items a response appended."""
        query = (
            sa.select(conversation_items.c.data)
            .where(conversation_items.c.response_id == response_id, conversation_items.c.kind == kind, _LIVE_ITEM)
            .order_by(conversation_items.c.position)
        )
        return await self.db.read(lambda connection: list(connection.execute(query).scalars()))

    async def latest_tools(self, conversation_id: str) -> list[dict[str, Any]]:
        """The `tools` of the conversation's last turn, stored or not (for reusing MCP listings)."""
        query = sa.select(conversations.c.last_tools).where(conversations.c.id == conversation_id)
        return await self.db.read(lambda connection: connection.scalar(query)) or []

    async def taken_ids(self, conversation_id: str, item_ids: list[str]) -> set[str]:
        """Which of `item_ids` the conversation has, or had: an id is never given twice."""
        if not item_ids:
            return set()
        query = sa.select(conversation_items.c.item_id).where(
            conversation_items.c.conversation_id == conversation_id, conversation_items.c.item_id.in_(item_ids)
        )
        return await self.db.read(lambda connection: set(connection.execute(query).scalars()))


def _row(
    conversation_id: str,
    position: int,
    item: dict[str, Any],
    response_id: str | None,
    kind: str | None,
    owner: str | None,
) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "position": position,
        "item_id": item["id"],
        "type": item["type"],
        "response_id": response_id,
        "kind": kind,
        "data": item,
        "owner": owner,
    }
