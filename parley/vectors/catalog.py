"""The files of vector stores as a search sees them, kept in memory: which may be searched, and their attributes.

A search takes only chunks of a store's files that are `completed`, whose File is still there and not expired,
and that pass the request's `filters`. Asking the database each time means reading every file of the store and
parsing its attributes: 20 to 45 ms at 8,500 files (100,000 chunks) on either database, most of a search's
time. So each process keeps a copy of each searched store's files (`StoreFiles`), read again only when the
store's files version (`vector_store_file_versions`) has moved: the database bumps it itself (triggers of
migration 0008) whenever a file is
added or removed or its status or attributes change, and the search reads it with the store's index state, in
its own transaction. Expiry is by the clock, so the copy keeps each File's `expires_at` and tests it at each
search. Filters are tested by parley.vectors.filters.FileAttributes, and the files a filter allows are kept
with the copy for the next search with the same filter.

A store of more files than `max_files` is not copied: its searches ask the database (ChunkIndex's SQL path).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa

from parley.store.tables import files as _files
from parley.store.tables import vector_store_files as _store_files
from parley.vectors.filters import FileAttributes

# Files of one store that a copy may hold; past this the store is searched through SQL alone. A file takes
# about 1 KB here (its id, attributes and their columns), so this is tens of MB at most.
MAX_FILES = 50_000
# Files of all stores that the copies may hold in all; the least recently searched store goes first.
MAX_FILES_IN_ALL = 200_000
# Filters whose allowed files a copy keeps (the most recently used).
_KEPT_FILTERS = 32

Mask = np.ndarray[Any, np.dtype[np.bool_]]


@dataclass(slots=True)
class StoreFiles:
    """One store's files as of `version` (its `files_version`)."""

    version: int
    file_ids: list[str]
    searchable: Mask  # completed, and the File is there
    expires_at: np.ndarray[Any, np.dtype[np.float64]]  # the File's expiry; inf for never
    usage_bytes: np.ndarray[Any, np.dtype[np.int64]]
    attributes: FileAttributes
    _filtered: OrderedDict[bytes, Mask] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allowed(self, checked_filter: dict[str, Any] | None, now: float) -> Mask:
        """Which files a search with `checked_filter` (parley.vectors.filters.check_filter's) may take, now."""
        mask = self.searchable & (self.expires_at > now)
        if checked_filter is None:
            return mask
        key = orjson.dumps(checked_filter)
        with self._lock:
            passed = self._filtered.get(key)
            if passed is not None:
                self._filtered.move_to_end(key)
        if passed is None:
            passed = self.attributes.matches(checked_filter)
            with self._lock:
                self._filtered[key] = passed
                while len(self._filtered) > _KEPT_FILTERS:
                    self._filtered.popitem(last=False)
        return mask & passed

    def share(self, mask: Mask) -> float:
        """The part of the store's content (by bytes of text) in the files of `mask`, 0 to 1."""
        total = int(self.usage_bytes[self.searchable].sum())
        if total <= 0:
            return float(mask.sum()) / max(1, len(self.file_ids))
        return float(self.usage_bytes[mask].sum()) / total


class FileCatalog:
    """The copies of stores' files (see the module docstring). Thread-safe: SQLite's reads run on several
    threads; a copy, once made, is only replaced."""

    def __init__(self, max_files: int = MAX_FILES, max_files_in_all: int = MAX_FILES_IN_ALL) -> None:
        self.max_files = max_files
        self.max_files_in_all = max_files_in_all
        self._copies: OrderedDict[str, StoreFiles] = OrderedDict()
        self._lock = threading.Lock()

    def current(self, connection: sa.Connection, store: str, files_version: int) -> StoreFiles | None:
        """The store's files as of `files_version` (read with the store's index state, in this transaction), or
        None for a store of more than `max_files` files."""
        with self._lock:
            copy = self._copies.get(store)
            if copy is not None:
                self._copies.move_to_end(store)
        if copy is not None and copy.version >= files_version:
            return copy
        copy = self._read(connection, store, files_version)
        with self._lock:
            if copy is None:
                self._copies.pop(store, None)
                return None
            kept = self._copies.get(store)
            if kept is None or kept.version < copy.version:
                self._copies[store] = copy
            self._copies.move_to_end(store)
            total = sum(len(c.file_ids) for c in self._copies.values())
            while total > self.max_files_in_all and len(self._copies) > 1:
                _, dropped = self._copies.popitem(last=False)
                total -= len(dropped.file_ids)
        return copy

    def drop(self, store: str) -> None:
        with self._lock:
            self._copies.pop(store, None)

    def _read(self, connection: sa.Connection, store: str, version: int) -> StoreFiles | None:
        count = connection.execute(
            sa.select(sa.func.count()).select_from(_store_files).where(_store_files.c.vector_store_id == store)
        ).scalar_one()
        if count > self.max_files:
            return None
        query = (
            sa.select(
                _store_files.c.file_id,
                _store_files.c.status,
                _store_files.c.usage_bytes,
                _store_files.c.attributes,
                _files.c.id.is_not(None).label("present"),
                _files.c.expires_at,
            )
            .select_from(_store_files.outerjoin(_files, _files.c.id == _store_files.c.file_id))
            .where(_store_files.c.vector_store_id == store)
        )
        rows = connection.execute(query).all()
        return StoreFiles(
            version=version,
            file_ids=[row.file_id for row in rows],
            searchable=np.fromiter(
                (row.status == "completed" and bool(row.present) for row in rows), dtype=bool, count=len(rows)
            ),
            expires_at=np.fromiter(
                (np.inf if row.expires_at is None else float(row.expires_at) for row in rows),
                dtype=np.float64,
                count=len(rows),
            ),
            usage_bytes=np.fromiter((int(row.usage_bytes or 0) for row in rows), dtype=np.int64, count=len(rows)),
            attributes=FileAttributes([row.attributes for row in rows]),
        )


__all__ = ["FileCatalog", "StoreFiles"]
