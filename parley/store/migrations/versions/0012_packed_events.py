"""A background response's kept events compressed by Parley (zlib), as bytes: `response_events.events`.

A job's stream is mostly its deltas, each a JSON object of the same keys: about 60 KB a job of 200 tokens
(bench/background.py), 4 KB once compressed. Stored as text, SQLite wrote those 60 KB as 15 pages into its log,
under its one write lock, and copied them again at each checkpoint, which also holds the lock; PostgreSQL
parsed them inside the JSON parameter of `write_together` and compressed them itself (migration 0011). See
`parley.store.responses._pack` for what it measured.

The rows kept before are compressed here, a thousand at a time.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_CHUNK = 1000


def _convert(source: str, target: str, change: Callable[[Any], Any]) -> None:
    """Writes each row's `source` column, changed by `change`, into its `target` column, in chunks of rows in key
    order."""
    table = sa.table(
        "response_events",
        sa.column("response_id", sa.String),
        sa.column("first", sa.Integer),
        sa.column(source),
        sa.column(target),
    )
    connection = op.get_bind()
    after: tuple[str, int] | None = None
    while True:
        query = sa.select(table.c.response_id, table.c.first, table.c[source])
        if after is not None:
            query = query.where(sa.tuple_(table.c.response_id, table.c.first) > sa.tuple_(*after))
        rows = connection.execute(query.order_by(table.c.response_id, table.c.first).limit(_CHUNK)).all()
        if not rows:
            return
        connection.execute(
            table.update()
            .where(table.c.response_id == sa.bindparam("key_id"), table.c.first == sa.bindparam("key_first"))
            .values({target: sa.bindparam("value")}),
            [{"key_id": row[0], "key_first": row[1], "value": change(row[2])} for row in rows],
        )
        after = (rows[-1][0], rows[-1][1])


def upgrade() -> None:
    op.add_column("response_events", sa.Column("packed", sa.LargeBinary, nullable=True))
    _convert("events", "packed", lambda text: zlib.compress(text.encode(), 1))
    # On SQLite, batch mode makes the table again (no table refers to this one); on PostgreSQL, plain ALTERs.
    with op.batch_alter_table("response_events") as batch:
        batch.drop_column("events")
        batch.alter_column("packed", new_column_name="events", existing_type=sa.LargeBinary, nullable=False)
    if op.get_bind().dialect.name == "postgresql":
        # Compressed already: PostgreSQL need not try again (EXTERNAL: kept out of line, uncompressed).
        op.execute("ALTER TABLE response_events ALTER COLUMN events SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.add_column("response_events", sa.Column("text", sa.Text, nullable=True))
    _convert("events", "text", lambda packed: zlib.decompress(packed).decode())
    with op.batch_alter_table("response_events") as batch:
        batch.drop_column("events")
        batch.alter_column("text", new_column_name="events", existing_type=sa.Text, nullable=False)
