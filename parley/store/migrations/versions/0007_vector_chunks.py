"""Vector stores' chunk index: chunks with their vectors, their keyword postings, term counts, and each store's
index state (see parley.vectors.index for the design and the measurements behind it).

- SQLite: a chunk's vector is a float32 blob (read into memory and searched there, or by sqlite-vec's
  `vec_distance_cosine`); its keyword postings are in a contentless FTS5 table.
- PostgreSQL: a pgvector `embedding` column, with an HNSW index per vector width, created when a store of that
  width gets its first chunks; the keyword postings in a `tsvector` column with a GIN index.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if not sqlite:
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "vector_store_indexes",
        # The store's number in its chunks' keyword postings (see parley.vectors.index).
        sa.Column("key", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("vector_store_id", sa.String(64), nullable=False, unique=True),
        sa.Column("dimensions", sa.Integer, nullable=True),
        sa.Column("chunks", sa.BigInteger, nullable=False, server_default="0"),
        # Bumped by every change to the store's chunks, and `removals` by those that remove some: an
        # in-process copy of the store's vectors knows from them whether it is current.
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("removals", sa.BigInteger, nullable=False, server_default="0"),
        sqlite_autoincrement=True,
    )
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("vector_store_id", sa.String(64), nullable=False),
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
    ]
    if sqlite:
        columns.append(sa.Column("embedding", sa.LargeBinary, nullable=False))
    # AUTOINCREMENT: ids are never reused, so that a chunk id names one chunk for good.
    op.create_table("vector_store_chunks", *columns, sqlite_autoincrement=True)
    op.create_index("ix_vector_store_chunks_file", "vector_store_chunks", ["vector_store_id", "file_id", "position"])
    # A store's chunks in id order: what an in-memory copy of its vectors reads to catch up.
    op.create_index("ix_vector_store_chunks_store", "vector_store_chunks", ["vector_store_id", "id"])
    op.create_table(
        "vector_store_terms",
        sa.Column("vector_store_id", sa.String(64), primary_key=True),
        sa.Column("term", sa.String(255), primary_key=True),
        sa.Column("chunks", sa.BigInteger, nullable=False),
    )
    if sqlite:
        # Contentless: the postings only; a chunk's terms are written by parley.vectors.index, and removed
        # by rowid (contentless_delete, SQLite 3.43).
        op.execute(
            "CREATE VIRTUAL TABLE vector_store_chunks_fts USING fts5("
            "terms, content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 2')"
        )
    else:
        # `embedding` of any width: each width has its own partial HNSW index (parley.vectors.index).
        op.execute("ALTER TABLE vector_store_chunks ADD COLUMN embedding vector NOT NULL")
        op.add_column("vector_store_chunks", sa.Column("terms", postgresql.TSVECTOR, nullable=False))
        op.create_index("ix_vector_store_chunks_terms", "vector_store_chunks", ["terms"], postgresql_using="gin")
        # A chunk's row keeps its small columns only, its text, vector and terms out of line: a keyword search
        # visits the row of every chunk holding a term (GIN gives no ids without them), and on 100,000 chunks
        # that took the table from about 400 MB of rows to 12 MB and the search from 57 to 40 ms (loaded machine).
        op.execute(
            "ALTER TABLE vector_store_chunks ALTER COLUMN embedding SET STORAGE EXTERNAL, "
            "ALTER COLUMN terms SET STORAGE EXTERNAL"
        )
        op.execute("ALTER TABLE vector_store_chunks SET (toast_tuple_target = 128)")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("DROP TABLE vector_store_chunks_fts")
    op.drop_table("vector_store_terms")
    op.drop_table("vector_store_chunks")
    op.drop_table("vector_store_indexes")
