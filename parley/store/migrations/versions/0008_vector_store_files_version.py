"""Vector stores' files version: `vector_store_file_versions.version`, bumped by the database itself whenever a
store's files change in what a search reads of them (a file added or removed, its status or its attributes).

A search keeps each store's files, with their attributes, in memory (parley.vectors.catalog) and reads them
again only when this number has moved. Triggers keep it, so that no writer of `vector_store_files`, today's or a
later one, can forget to: a stale copy would search a removed file, or filter by old attributes. It has a table of
its own: kept on `vector_store_indexes`, whose row a file's indexing holds locked while it writes its chunks, each
file's completion waited for the indexing of the next, and PostgreSQL's ingestion fell from about 210 to 170
chunks a second.

- SQLite: a trigger a row (SQLite has no others), which updates the counter in place.
- PostgreSQL: a trigger a statement, with transition tables, so that a batch of 2,000 files added bumps each
  store once, not 2,000 times; updates that change neither status nor attributes (lease renewals) bump nothing.

And, on PostgreSQL, a chunk's `vector_store_id` and `file_id` are kept in its row (storage PLAIN). With 0007's
`toast_tuple_target` of 128 bytes, PostgreSQL had moved both out of line too, and a search paid a TOAST read for
each chunk it tested: fetching 3,000 keyword postings with their files took 27 ms, and 7 ms once they were back
in the rows. Rows written before keep their out-of-line ids until rewritten (a file added again is).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _bump(store: str) -> str:
    return (
        f"INSERT INTO vector_store_file_versions (vector_store_id, version) VALUES ({store}, 1) "
        "ON CONFLICT (vector_store_id) DO UPDATE SET version = vector_store_file_versions.version + 1"
    )


def upgrade() -> None:
    op.create_table(
        "vector_store_file_versions",
        sa.Column("vector_store_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER vector_store_files_added AFTER INSERT ON vector_store_files "
            f"BEGIN {_bump('NEW.vector_store_id')}; END"
        )
        op.execute(
            "CREATE TRIGGER vector_store_files_removed AFTER DELETE ON vector_store_files "
            f"BEGIN {_bump('OLD.vector_store_id')}; END"
        )
        op.execute(
            "CREATE TRIGGER vector_store_files_changed AFTER UPDATE OF status, attributes ON vector_store_files "
            "WHEN OLD.status IS NOT NEW.status OR OLD.attributes IS NOT NEW.attributes "
            f"BEGIN {_bump('NEW.vector_store_id')}; END"
        )
        return
    op.execute(
        "ALTER TABLE vector_store_chunks ALTER COLUMN vector_store_id SET STORAGE PLAIN, "
        "ALTER COLUMN file_id SET STORAGE PLAIN"
    )
    # One function for the three statements; the stores are bumped in their ids' order, so that two statements
    # bumping the same stores take turns rather than deadlock.
    op.execute(
        """
        CREATE FUNCTION vector_store_files_bump() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            stores text[];
        BEGIN
            IF TG_OP = 'INSERT' THEN
                SELECT array_agg(DISTINCT vector_store_id) INTO stores FROM new_rows;
            ELSIF TG_OP = 'DELETE' THEN
                SELECT array_agg(DISTINCT vector_store_id) INTO stores FROM old_rows;
            ELSE
                SELECT array_agg(DISTINCT n.vector_store_id) INTO stores
                FROM new_rows AS n JOIN old_rows AS o ON o.seq = n.seq
                WHERE n.status IS DISTINCT FROM o.status OR n.attributes::text IS DISTINCT FROM o.attributes::text;
            END IF;
            IF stores IS NOT NULL THEN
                INSERT INTO vector_store_file_versions (vector_store_id, version)
                    SELECT store, 1 FROM unnest(stores) AS store ORDER BY store
                    ON CONFLICT (vector_store_id)
                    DO UPDATE SET version = vector_store_file_versions.version + 1;
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER vector_store_files_added AFTER INSERT ON vector_store_files "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION vector_store_files_bump()"
    )
    op.execute(
        "CREATE TRIGGER vector_store_files_removed AFTER DELETE ON vector_store_files "
        "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION vector_store_files_bump()"
    )
    op.execute(
        "CREATE TRIGGER vector_store_files_changed AFTER UPDATE ON vector_store_files "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION vector_store_files_bump()"
    )


def downgrade() -> None:
    for trigger in ("vector_store_files_added", "vector_store_files_removed", "vector_store_files_changed"):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"DROP TRIGGER {trigger}")
        else:
            op.execute(f"DROP TRIGGER {trigger} ON vector_store_files")
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP FUNCTION vector_store_files_bump()")
        op.execute(
            "ALTER TABLE vector_store_chunks ALTER COLUMN vector_store_id SET STORAGE EXTENDED, "
            "ALTER COLUMN file_id SET STORAGE EXTENDED"
        )
    op.drop_table("vector_store_file_versions")
