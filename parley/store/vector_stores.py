"""Vector stores, the files they hold and their file batches: the rows, and the claims of files' ingestion.

A store belongs to its owner like every stored thing (parley.store.owners): another owner's store is a
store that does not exist, and so are its files and batches, whose rows carry the store's owner. A store's
`file_counts` and `usage_bytes`, and a batch's, are counted from the files' rows as they are read, so they
never drift from the files. A File (`/v1/files`) the caller cannot see cannot be added.

Ingestion (parley.vectors.ingest) works through claims. A file is added `in_progress` with no claim; a
server claims it (`claim`: a token of its own, `claimed_until`: its lease, renewed while it works), and
ends it `completed` or `failed` only while its claim still holds: a file deleted, cancelled or taken over
meanwhile is not ended by the server that lost it. A claim whose lease lapsed (its server died) is taken
over by whichever server claims next; a file claimed `max_attempts` times without ending fails.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from parley.errors import InvalidRequestError, NotFoundError
from parley.store.database import Database
from parley.store.owners import Caller, visible_to
from parley.store.pagination import Page, PageRequest, read_page
from parley.store.tables import files, vector_store_file_batches, vector_store_files, vector_stores

STATUSES = ("in_progress", "completed", "failed", "cancelled")
DAY = 24 * 3600

_stores = vector_stores.c
_files = vector_store_files.c
_batches = vector_store_file_batches.c


class VectorStoreNotFound(NotFoundError):
    def __init__(self, vector_store_id: str) -> None:
        # OpenAI's words.
        super().__init__(f"No vector store found with id '{vector_store_id}'.")


class VectorStoreFileNotFound(NotFoundError):
    def __init__(self, file_id: str, vector_store_id: str) -> None:
        super().__init__(f"No file found with id '{file_id}' in vector store '{vector_store_id}'.")


class FileBatchNotFound(NotFoundError):
    def __init__(self, batch_id: str, vector_store_id: str) -> None:
        super().__init__(f"No file batch found with id '{batch_id}' in vector store '{vector_store_id}'.")


class FilesNotFound(NotFoundError):
    """Files named to be added that the caller has no such File for (`/v1/files`)."""

    def __init__(self, file_ids: list[str], param: str) -> None:
        super().__init__(f"Files [{', '.join(file_ids)}] were not found.", param=param)


class VectorStoreExpired(InvalidRequestError):
    def __init__(self, vector_store_id: str) -> None:
        super().__init__(
            f"Vector store '{vector_store_id}' has expired: its files can no longer be added or searched. "
            "Create a new vector store with the same files.",
            code="vector_store_expired",
        )


@dataclass(frozen=True, slots=True)
class NewFile:
    """A file to add to a store, with what the request said of it (the strategy already normalized)."""

    file_id: str
    attributes: dict[str, Any] | None
    chunking_strategy: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VectorStoreInfo:
    """What search and ingestion need of a store: whose it is and which model its vectors come from."""

    id: str
    owner: str | None
    # "provider/model", as the model registry resolves it; queries and files are embedded by it alike.
    embedding_model: str
    # None until the first file's vectors are stored.
    embedding_dimensions: int | None
    expired: bool


@dataclass(frozen=True, slots=True)
class Claim:
    """One file that this server has claimed to ingest."""

    seq: int
    token: str
    vector_store_id: str
    file_id: str
    chunking_strategy: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class Unset:
    """An update's field that the request left out (None may be a value)."""


UNSET: Any = Unset()


# Objects, as openai-python's types name them ------------------------------------------------------------


def _counts(by_status: Mapping[str, int]) -> dict[str, int]:
    counts = {status: int(by_status.get(status, 0)) for status in STATUSES}
    counts["total"] = sum(counts.values())
    return counts


def _expired(row: Any, now: float) -> bool:
    return bool(row.expired) or (row.expires_at is not None and row.expires_at <= now)


def store_object(row: Any, by_status: Mapping[str, int], usage_bytes: int, now: float) -> dict[str, Any]:
    """The row as OpenAI's `VectorStore`, with its files' counts."""
    counts = _counts(by_status)
    if _expired(row, now):
        status = "expired"
    elif counts["in_progress"]:
        status = "in_progress"
    else:
        status = "completed"
    days = row.expires_after_days
    return {
        "id": row.id,
        "object": "vector_store",
        "created_at": row.created_at,
        "name": row.name or "",
        "usage_bytes": int(usage_bytes),
        "file_counts": counts,
        "status": status,
        "expires_after": None if days is None else {"anchor": "last_active_at", "days": days},
        "expires_at": row.expires_at,
        "last_active_at": row.last_active_at,
        "metadata": row.metadata,
    }


def file_object(row: Any) -> dict[str, Any]:
    """The row as OpenAI's `VectorStoreFile`."""
    return {
        "id": row.file_id,
        "object": "vector_store.file",
        "usage_bytes": int(row.usage_bytes),
        "created_at": row.created_at,
        "vector_store_id": row.vector_store_id,
        "status": row.status,
        "last_error": row.last_error,
        "chunking_strategy": row.chunking_strategy,
        "attributes": row.attributes,
    }


def batch_object(row: Any, by_status: Mapping[str, int]) -> dict[str, Any]:
    """The row as OpenAI's `VectorStoreFileBatch`: its status follows its files' until it is cancelled."""
    counts = _counts(by_status)
    if row.cancelled:
        status = "cancelled"
    elif counts["in_progress"]:
        status = "in_progress"
    elif counts["total"] and counts["failed"] == counts["total"]:
        status = "failed"
    else:
        status = "completed"
    return {
        "id": row.id,
        "object": "vector_store.files_batch",
        "created_at": row.created_at,
        "vector_store_id": row.vector_store_id,
        "status": status,
        "file_counts": counts,
    }


# Reads shared by the transactions below --------------------------------------------------------------


def _count_by(connection: sa.Connection, column: Any, keys: Collection[str]) -> dict[str, tuple[dict[str, int], int]]:
    """For each key of `column` (a store's id, a batch's id): its files' count by status, and their bytes."""
    found: dict[str, tuple[dict[str, int], int]] = {key: ({}, 0) for key in keys}
    if not keys:
        return found
    rows = connection.execute(
        sa.select(column, _files.status, sa.func.count(), sa.func.coalesce(sa.func.sum(_files.usage_bytes), 0))
        .where(column.in_(list(keys)))
        .group_by(column, _files.status)
    )
    for key, status, count, usage in rows:
        by_status, total = found[key]
        by_status[status] = int(count)
        found[key] = (by_status, total + int(usage))
    return found


def _store_objects(connection: sa.Connection, rows: list[Any]) -> list[dict[str, Any]]:
    counted = _count_by(connection, _files.vector_store_id, [row.id for row in rows])
    now = time.time()
    return [store_object(row, *counted[row.id], now) for row in rows]


def _visible_store(connection: sa.Connection, vector_store_id: str, caller: Caller) -> Any:
    row = connection.execute(
        sa.select(vector_stores).where(_stores.id == vector_store_id, visible_to(_stores.owner, caller))
    ).first()
    if row is None:
        raise VectorStoreNotFound(vector_store_id)
    return row


def _live_store(connection: sa.Connection, vector_store_id: str, caller: Caller) -> Any:
    row = _visible_store(connection, vector_store_id, caller)
    if _expired(row, time.time()):
        raise VectorStoreExpired(vector_store_id)
    return row


def _file_row(connection: sa.Connection, vector_store_id: str, file_id: str) -> Any:
    row = connection.execute(
        sa.select(vector_store_files).where(_files.vector_store_id == vector_store_id, _files.file_id == file_id)
    ).first()
    if row is None:
        raise VectorStoreFileNotFound(file_id, vector_store_id)
    return row


def _batch_row(connection: sa.Connection, vector_store_id: str, batch_id: str) -> Any:
    row = connection.execute(
        sa.select(vector_store_file_batches).where(_batches.id == batch_id, _batches.vector_store_id == vector_store_id)
    ).first()
    if row is None:
        raise FileBatchNotFound(batch_id, vector_store_id)
    return row


def _batch_as_object(connection: sa.Connection, row: Any) -> dict[str, Any]:
    by_status, _ = _count_by(connection, _files.batch_id, [row.id])[row.id]
    return batch_object(row, by_status)


def _check_files(connection: sa.Connection, file_ids: list[str], caller: Caller, param: str) -> None:
    """Every id names a File the caller sees, or FilesNotFound."""
    now = int(time.time())
    found: set[str] = set()
    # In slices: a batch names up to 2,000 files, past what some drivers bind in one statement.
    for start in range(0, len(file_ids), 500):
        part = file_ids[start : start + 500]
        found.update(
            connection.execute(
                sa.select(files.c.id).where(
                    files.c.id.in_(part),
                    visible_to(files.c.owner, caller),
                    sa.or_(files.c.expires_at.is_(None), files.c.expires_at > now),
                )
            ).scalars()
        )
    missing = [file_id for file_id in file_ids if file_id not in found]
    if missing:
        raise FilesNotFound(missing, param)


def _add_files(
    connection: sa.Connection,
    store: Any,
    new_files: list[NewFile],
    batch_id: str | None,
    now: int,
) -> None:
    """Adds the files to the store, `in_progress`, in one transaction.

    A file the store already holds is ingested again with what this request says of it, unless it is
    still in progress (its ingestion goes on; a batch takes it into its count).
    """
    wanted = {new.file_id: new for new in new_files}
    existing: dict[str, Any] = {}
    for start in range(0, len(wanted), 500):
        part = list(wanted)[start : start + 500]
        existing.update(
            (row.file_id, row)
            for row in connection.execute(
                sa.select(_files.seq, _files.file_id, _files.status).where(
                    _files.vector_store_id == store.id, _files.file_id.in_(part)
                )
            )
        )
    fresh = [
        {
            "vector_store_id": store.id,
            "file_id": new.file_id,
            "owner": store.owner,
            "created_at": now,
            "status": "in_progress",
            "attributes": new.attributes,
            "chunking_strategy": new.chunking_strategy,
            "batch_id": batch_id,
        }
        for file_id, new in wanted.items()
        if file_id not in existing
    ]
    if fresh:
        connection.execute(vector_store_files.insert(), fresh)
    for file_id, row in existing.items():
        new = wanted[file_id]
        if row.status == "in_progress":
            if batch_id is not None:
                connection.execute(vector_store_files.update().where(_files.seq == row.seq).values(batch_id=batch_id))
            continue
        connection.execute(
            vector_store_files.update()
            .where(_files.seq == row.seq)
            .values(
                status="in_progress",
                last_error=None,
                attributes=new.attributes,
                chunking_strategy=new.chunking_strategy,
                usage_bytes=0,
                batch_id=batch_id,
                claim=None,
                claimed_until=None,
                attempts=0,
            )
        )
    _touch(connection, [store.id], now)


def _touch(connection: sa.Connection, store_ids: list[str], now: int) -> None:
    """The stores were active now: `last_active_at`, and the `expires_at` that follows it."""
    connection.execute(
        vector_stores.update()
        .where(_stores.id.in_(store_ids), _stores.last_active_at < now, _stores.expired.is_(False))
        .values(
            last_active_at=now,
            expires_at=sa.case(
                (_stores.expires_after_days.is_(None), None), else_=now + _stores.expires_after_days * DAY
            ),
        )
    )


def _pending(now: float) -> Any:
    """Files waiting for a server: in progress, and claimed by none, or by one whose lease lapsed."""
    return sa.and_(_files.status == "in_progress", sa.or_(_files.claimed_until.is_(None), _files.claimed_until < now))


class VectorStoreRepository:
    """Vector stores' rows; each method that takes a `Caller` acts for it (another owner's is not found)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # Stores -------------------------------------------------------------------------------------------

    async def create_store(
        self,
        values: dict[str, Any],
        new_files: list[NewFile],
        caller: Caller,
    ) -> dict[str, Any]:
        """Creates the store (`values`: id, name, description, metadata, expires_after_days, embedding_model)
        with its files, in one transaction."""
        now = int(time.time())
        days = values.get("expires_after_days")
        row = {
            **values,
            "owner": caller.owner,
            "created_at": now,
            "last_active_at": now,
            "expires_at": None if days is None else now + days * DAY,
        }

        def create(connection: sa.Connection) -> dict[str, Any]:
            _check_files(connection, [new.file_id for new in new_files], caller, "file_ids")
            connection.execute(vector_stores.insert().values(**row))
            store = _visible_store(connection, row["id"], caller)
            if new_files:
                _add_files(connection, store, new_files, None, now)
            return _store_objects(connection, [_visible_store(connection, row["id"], caller)])[0]

        return await self.db.write(create)

    async def get_store(self, vector_store_id: str, caller: Caller) -> dict[str, Any]:
        def read(connection: sa.Connection) -> dict[str, Any]:
            return _store_objects(connection, [_visible_store(connection, vector_store_id, caller)])[0]

        return await self.db.read(read)

    async def info(self, vector_store_id: str, caller: Caller) -> VectorStoreInfo:
        """What search needs of a store the caller sees (VectorStoreNotFound otherwise)."""

        def read(connection: sa.Connection) -> VectorStoreInfo:
            row = _visible_store(connection, vector_store_id, caller)
            return _info(row)

        return await self.db.read(read)

    async def infos(self, vector_store_ids: list[str], caller: Caller) -> list[VectorStoreInfo]:
        """`info` of each store, in the order given; VectorStoreNotFound names the first the caller cannot see."""

        def read(connection: sa.Connection) -> list[VectorStoreInfo]:
            rows = {
                row.id: row
                for row in connection.execute(
                    sa.select(vector_stores).where(_stores.id.in_(vector_store_ids), visible_to(_stores.owner, caller))
                )
            }
            for vector_store_id in vector_store_ids:
                if vector_store_id not in rows:
                    raise VectorStoreNotFound(vector_store_id)
            return [_info(rows[vector_store_id]) for vector_store_id in vector_store_ids]

        return await self.db.read(read)

    async def list_stores(self, page: PageRequest, caller: Caller) -> Page:
        mine = visible_to(_stores.owner, caller)
        query = sa.select(vector_stores).where(mine)

        def cursor_of(vector_store_id: str) -> Any:
            return sa.select(_stores.seq).where(_stores.id == vector_store_id, mine)

        def read(connection: sa.Connection) -> Page:
            rows, has_more = read_page(connection, query, _stores.seq, cursor_of, page)
            return Page(_store_objects(connection, rows), has_more)

        return await self.db.read(read)

    async def update_store(
        self,
        vector_store_id: str,
        caller: Caller,
        *,
        name: Any = UNSET,
        metadata: Any = UNSET,
        expires_after_days: Any = UNSET,
    ) -> dict[str, Any]:
        """Changes the fields given; a new expiry counts from `last_active_at`, as OpenAI's anchor says."""

        def update(connection: sa.Connection) -> dict[str, Any]:
            row = _visible_store(connection, vector_store_id, caller)
            values: dict[str, Any] = {}
            if name is not UNSET:
                values["name"] = name
            if metadata is not UNSET:
                values["metadata"] = metadata if metadata is not None else {}
            # An expired store stays expired: its chunks are gone, or going.
            if expires_after_days is not UNSET and not _expired(row, time.time()):
                values["expires_after_days"] = expires_after_days
                values["expires_at"] = (
                    None if expires_after_days is None else row.last_active_at + expires_after_days * DAY
                )
            if values:
                connection.execute(vector_stores.update().where(_stores.id == row.id).values(**values))
            return _store_objects(connection, [_visible_store(connection, vector_store_id, caller)])[0]

        return await self.db.write(update)

    async def delete_store(self, vector_store_id: str, caller: Caller) -> None:
        """Deletes the store with its files' and batches' rows (their chunks are the index's to remove)."""

        def delete(connection: sa.Connection) -> None:
            row = _visible_store(connection, vector_store_id, caller)
            # The rows that name it go with it (the foreign keys cascade; said here too, for clarity and for
            # a SQLite connection made without `foreign_keys`).
            connection.execute(vector_store_files.delete().where(_files.vector_store_id == row.id))
            connection.execute(vector_store_file_batches.delete().where(_batches.vector_store_id == row.id))
            connection.execute(vector_stores.delete().where(_stores.id == row.id))

        await self.db.write(delete)

    async def touch(self, vector_store_ids: list[str]) -> None:
        """The stores were used (searched): their `last_active_at` is now, and their expiry counts from it."""
        if vector_store_ids:
            now = int(time.time())
            await self.db.write(lambda connection: _touch(connection, vector_store_ids, now))

    async def due_to_expire(self) -> list[str]:
        """Stores past their `expires_at` whose chunks are not yet removed."""
        now = int(time.time())
        query = sa.select(_stores.id).where(
            _stores.expires_at.is_not(None), _stores.expires_at <= now, _stores.expired.is_(False)
        )
        return await self.db.read(lambda connection: list(connection.execute(query).scalars()))

    async def mark_expired(self, vector_store_id: str) -> None:
        """The store's chunks are gone: it stays `expired`, its files listed (to make a new store of them)."""
        statement = vector_stores.update().where(_stores.id == vector_store_id).values(expired=True)
        await self.db.write(lambda connection: connection.execute(statement))

    # A store's files ----------------------------------------------------------------------------------

    async def add_files(
        self, vector_store_id: str, new_files: list[NewFile], caller: Caller, param: str = "file_id"
    ) -> list[dict[str, Any]]:
        """Adds the files, `in_progress`; FilesNotFound names the Files the caller has none of."""
        now = int(time.time())

        def add(connection: sa.Connection) -> list[dict[str, Any]]:
            store = _live_store(connection, vector_store_id, caller)
            _check_files(connection, [new.file_id for new in new_files], caller, param)
            _add_files(connection, store, new_files, None, now)
            return [file_object(_file_row(connection, store.id, new.file_id)) for new in new_files]

        return await self._write_retrying(add)

    async def get_file(self, vector_store_id: str, file_id: str, caller: Caller) -> dict[str, Any]:
        def read(connection: sa.Connection) -> dict[str, Any]:
            _visible_store(connection, vector_store_id, caller)
            return file_object(_file_row(connection, vector_store_id, file_id))

        return await self.db.read(read)

    async def list_files(
        self,
        vector_store_id: str,
        page: PageRequest,
        caller: Caller,
        status: str | None = None,
        batch_id: str | None = None,
    ) -> Page:
        """The store's files (a batch's, with `batch_id`), those with `status` only if given."""
        query = sa.select(vector_store_files).where(_files.vector_store_id == vector_store_id)
        if batch_id is not None:
            query = query.where(_files.batch_id == batch_id)
        if status is not None:
            query = query.where(_files.status == status)

        def cursor_of(file_id: str) -> Any:
            return sa.select(_files.seq).where(_files.vector_store_id == vector_store_id, _files.file_id == file_id)

        def read(connection: sa.Connection) -> Page:
            _visible_store(connection, vector_store_id, caller)
            if batch_id is not None:
                _batch_row(connection, vector_store_id, batch_id)
            rows, has_more = read_page(connection, query, _files.seq, cursor_of, page)
            return Page([file_object(row) for row in rows], has_more)

        return await self.db.read(read)

    async def update_file(
        self, vector_store_id: str, file_id: str, attributes: dict[str, Any] | None, caller: Caller
    ) -> dict[str, Any]:
        def update(connection: sa.Connection) -> dict[str, Any]:
            _visible_store(connection, vector_store_id, caller)
            row = _file_row(connection, vector_store_id, file_id)
            connection.execute(vector_store_files.update().where(_files.seq == row.seq).values(attributes=attributes))
            return file_object(_file_row(connection, vector_store_id, file_id))

        return await self.db.write(update)

    async def remove_file(self, vector_store_id: str, file_id: str, caller: Caller) -> None:
        """Takes the file out of the store (the File itself stays); its chunks are the index's to remove."""

        def remove(connection: sa.Connection) -> None:
            _visible_store(connection, vector_store_id, caller)
            row = _file_row(connection, vector_store_id, file_id)
            connection.execute(vector_store_files.delete().where(_files.seq == row.seq))

        await self.db.write(remove)

    async def forget_files(self, file_ids: Sequence[str]) -> list[tuple[str, str]]:
        """Takes deleted Files out of every store that held them; returns the (store, file) pairs that went."""
        if not file_ids:
            return []
        statement = (
            vector_store_files.delete()
            .where(_files.file_id.in_(list(file_ids)))
            .returning(_files.vector_store_id, _files.file_id)
        )
        return await self.db.write(lambda connection: [tuple(row) for row in connection.execute(statement)])

    async def forget_missing_files(self, limit: int = 1000) -> list[tuple[str, str]]:
        """Takes out of their stores the files whose File is gone though nothing told the stores (a server
        that stopped between the two); returns the (store, file) pairs that went."""

        def forget(connection: sa.Connection) -> list[tuple[str, str]]:
            missing = sa.select(files.c.id).where(files.c.id == _files.file_id).exists()
            rows = list(
                connection.execute(
                    sa.select(_files.seq, _files.vector_store_id, _files.file_id).where(~missing).limit(limit)
                )
            )
            if rows:
                connection.execute(vector_store_files.delete().where(_files.seq.in_([row.seq for row in rows])))
            return [(row.vector_store_id, row.file_id) for row in rows]

        return await self.db.write(forget)

    # File batches -------------------------------------------------------------------------------------

    async def create_batch(
        self, vector_store_id: str, batch_id: str, new_files: list[NewFile], caller: Caller, param: str
    ) -> dict[str, Any]:
        now = int(time.time())

        def create(connection: sa.Connection) -> dict[str, Any]:
            store = _live_store(connection, vector_store_id, caller)
            _check_files(connection, [new.file_id for new in new_files], caller, param)
            connection.execute(
                vector_store_file_batches.insert().values(
                    id=batch_id, vector_store_id=store.id, owner=store.owner, created_at=now
                )
            )
            _add_files(connection, store, new_files, batch_id, now)
            return _batch_as_object(connection, _batch_row(connection, store.id, batch_id))

        return await self._write_retrying(create)

    async def get_batch(self, vector_store_id: str, batch_id: str, caller: Caller) -> dict[str, Any]:
        def read(connection: sa.Connection) -> dict[str, Any]:
            _visible_store(connection, vector_store_id, caller)
            return _batch_as_object(connection, _batch_row(connection, vector_store_id, batch_id))

        return await self.db.read(read)

    async def cancel_batch(
        self, vector_store_id: str, batch_id: str, caller: Caller
    ) -> tuple[dict[str, Any], list[str]]:
        """Cancels the batch's files still in progress; the batch, and the ids of the files cancelled.

        A batch that has ended (none of its files in progress) is a 400, as cancelling anything ended is.
        """

        def cancel(connection: sa.Connection) -> tuple[dict[str, Any], list[str]]:
            _visible_store(connection, vector_store_id, caller)
            row = _batch_row(connection, vector_store_id, batch_id)
            current = _batch_as_object(connection, row)
            if current["status"] != "in_progress":
                raise InvalidRequestError(
                    f"Cannot cancel file batch '{batch_id}': its status is already '{current['status']}'.",
                    code="invalid_state",
                )
            cancelled = list(
                connection.execute(
                    vector_store_files.update()
                    .where(_files.batch_id == batch_id, _files.status == "in_progress")
                    .values(status="cancelled", claim=None, claimed_until=None)
                    .returning(_files.file_id)
                ).scalars()
            )
            connection.execute(vector_store_file_batches.update().where(_batches.id == batch_id).values(cancelled=True))
            return _batch_as_object(connection, _batch_row(connection, vector_store_id, batch_id)), cancelled

        return await self.db.write(cancel)

    # Ingestion's claims -------------------------------------------------------------------------------

    async def store_for_ingestion(self, vector_store_id: str) -> VectorStoreInfo | None:
        query = sa.select(vector_stores).where(_stores.id == vector_store_id)

        def read(connection: sa.Connection) -> VectorStoreInfo | None:
            row = connection.execute(query).first()
            return _info(row) if row is not None else None

        return await self.db.read(read)

    async def claim(
        self,
        slots: int,
        token: str,
        lease_seconds: float,
        max_attempts: int,
        busy: Mapping[str, int],
        served: Mapping[str, float],
        working: Collection[int] = (),
    ) -> tuple[list[Claim], list[Claim]]:
        """Claims up to `slots` files waiting for a server, fairly across stores: each store's oldest first; of
        stores with as many files waiting, the one this server is busy with least (`busy`: its files in
        progress here, by store), then the one it served longest ago (`served`: when, by store) goes first.

        `working`: the files (by `seq`) this server is ingesting already, which it does not claim again should
        its lease on them have lapsed (a renewal held up): the renewal that comes finds its claim still holds.

        Returns the claims to work on, and those given up: files claimed more than `max_attempts` times
        (their servers died under them), which are failed here.
        """
        now = time.time()

        def claim(connection: sa.Connection) -> tuple[list[Claim], list[Claim]]:
            rank = sa.func.row_number().over(partition_by=_files.vector_store_id, order_by=_files.seq).label("rank")
            waiting = _pending(now)
            if working:
                waiting = sa.and_(waiting, _files.seq.not_in(list(working)))
            ranked = sa.select(_files.seq, _files.vector_store_id, rank).where(waiting).subquery()
            candidates = list(
                connection.execute(
                    sa.select(ranked.c.seq, ranked.c.vector_store_id, ranked.c.rank)
                    .where(ranked.c.rank <= slots)
                    .order_by(ranked.c.rank, ranked.c.seq)
                    .limit(slots * 8)
                )
            )
            candidates.sort(
                key=lambda row: (
                    row.rank + busy.get(row.vector_store_id, 0),
                    served.get(row.vector_store_id, 0.0),
                    row.seq,
                )
            )
            taken: list[Claim] = []
            given_up: list[Claim] = []
            for candidate in candidates:
                if len(taken) == slots:
                    break
                own = f"{token}.{candidate.seq}"
                # Another server may have claimed it since it was read: only one UPDATE finds it still pending.
                row = connection.execute(
                    vector_store_files.update()
                    .where(_files.seq == candidate.seq, _pending(now))
                    .values(claim=own, claimed_until=now + lease_seconds, attempts=_files.attempts + 1)
                    .returning(
                        _files.seq, _files.vector_store_id, _files.file_id, _files.chunking_strategy, _files.attempts
                    )
                ).first()
                if row is None:
                    continue
                claimed = Claim(row.seq, own, row.vector_store_id, row.file_id, row.chunking_strategy, row.attempts)
                (given_up if row.attempts > max_attempts else taken).append(claimed)
            for claimed in given_up:
                _end(
                    connection,
                    claimed,
                    "failed",
                    error={
                        "code": "server_error",
                        "message": f"Ingestion was interrupted {max_attempts} times (its server stopped while "
                        "reading this file); it is not tried again.",
                    },
                )
            return taken, given_up

        return await self.db.write(claim)

    async def renew(self, tokens: list[str], lease_seconds: float) -> set[str]:
        """Extends this server's claims; returns those it still holds (a file cancelled or removed is lost)."""
        if not tokens:
            return set()
        statement = (
            vector_store_files.update()
            .where(_files.claim.in_(tokens), _files.status == "in_progress")
            .values(claimed_until=time.time() + lease_seconds)
            .returning(_files.claim)
        )
        return await self.db.write(lambda connection: set(connection.execute(statement).scalars()))

    async def release(self, tokens: list[str]) -> None:
        """Gives claims back unfinished (a server that stops): the next server to claim takes them at once,
        and this attempt does not count against them."""
        if not tokens:
            return
        statement = (
            vector_store_files.update()
            .where(_files.claim.in_(tokens), _files.status == "in_progress")
            .values(
                claim=None, claimed_until=None, attempts=sa.case((_files.attempts > 0, _files.attempts - 1), else_=0)
            )
        )
        await self.db.write(lambda connection: connection.execute(statement))

    async def complete(self, claim: Claim, usage_bytes: int) -> bool:
        """Marks the file `completed`, if this claim still holds it; whether it did."""
        return await self.db.write(lambda connection: _end(connection, claim, "completed", usage_bytes=usage_bytes))

    async def fail(self, claim: Claim, error: dict[str, str]) -> bool:
        """Marks the file `failed` with `error` ({code, message}), if this claim still holds it."""
        return await self.db.write(lambda connection: _end(connection, claim, "failed", error=error))

    async def holds(self, claim: Claim) -> bool:
        """Whether the claim still holds its file (not cancelled, removed or taken over)."""
        query = sa.select(_files.seq).where(
            _files.seq == claim.seq, _files.claim == claim.token, _files.status == "in_progress"
        )
        return await self.db.read(lambda connection: connection.scalar(query) is not None)

    async def owned_by_another(self, claim: Claim) -> bool:
        """Whether the file is still in its store, ingested or claimed by another claim than this one: its
        chunks are then that claim's, or the result of it."""
        query = sa.select(_files.status, _files.claim).where(
            _files.vector_store_id == claim.vector_store_id, _files.file_id == claim.file_id
        )
        row = await self.db.read(lambda connection: connection.execute(query).first())
        if row is None:
            return False
        return row.status == "completed" or (row.status == "in_progress" and row.claim != claim.token)

    async def set_dimensions(self, vector_store_id: str, dimensions: int) -> int | None:
        """Records the size of the store's vectors if it has none yet; the size it has (None: no such store)."""

        def record(connection: sa.Connection) -> int | None:
            connection.execute(
                vector_stores.update()
                .where(_stores.id == vector_store_id, _stores.embedding_dimensions.is_(None))
                .values(embedding_dimensions=dimensions)
            )
            return connection.scalar(sa.select(_stores.embedding_dimensions).where(_stores.id == vector_store_id))

        return await self.db.write(record)

    async def _write_retrying(self, work: Any) -> Any:
        # Two requests adding the same file to a store at once: one insert meets the other's unique key.
        # Its transaction is rolled back; done again, it finds the row and goes on from there.
        try:
            return await self.db.write(work)
        except sa.exc.IntegrityError:
            return await self.db.write(work)


def _info(row: Any) -> VectorStoreInfo:
    return VectorStoreInfo(
        id=row.id,
        owner=row.owner,
        embedding_model=row.embedding_model,
        embedding_dimensions=row.embedding_dimensions,
        expired=_expired(row, time.time()),
    )


def _end(
    connection: sa.Connection,
    claim: Claim,
    status: str,
    *,
    usage_bytes: int = 0,
    error: dict[str, str] | None = None,
) -> bool:
    result = connection.execute(
        vector_store_files.update()
        .where(_files.seq == claim.seq, _files.claim == claim.token, _files.status == "in_progress")
        .values(status=status, usage_bytes=usage_bytes, last_error=error, claim=None, claimed_until=None)
    )
    return bool(result.rowcount)
