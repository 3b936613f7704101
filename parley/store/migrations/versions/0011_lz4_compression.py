"""On PostgreSQL, the large values of responses and conversations compressed with lz4 rather than pglz.

A value over about 2 KB is compressed where it is stored (TOAST). A background job's events are about 60 KB a
job (bench/background.py's jobs of 200 tokens), and PostgreSQL's own pglz took 0.5 to 0.58 ms of its CPU an
insert of them, lz4 0.18 to 0.20 ms, to the same size (a microbenchmark of 500 inserts of one job's events):
a fifth to a third of PostgreSQL's CPU a job. Values written before keep their compression until rewritten.

Only where the server has lz4 (PostgreSQL 14 and later, built with it, as Debian's and the official images
are); elsewhere nothing changes. SQLite compresses nothing.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = (("response_events", "events"), ("response_items", "data"), ("conversation_items", "data"))


def _set_compression(method: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Each ALTER run dynamically, so that a server without lz4 (or before 14, without SET COMPRESSION) is told
    # so here, and goes on as before.
    statements = " ".join(
        f"EXECUTE 'ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}';" for table, column in _COLUMNS
    )
    op.execute(
        f"DO $$ BEGIN {statements} EXCEPTION WHEN OTHERS THEN "
        f"RAISE NOTICE 'no % compression here: %', '{method}', SQLERRM; END $$"
    )


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("pglz")
